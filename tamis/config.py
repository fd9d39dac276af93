"""Every scan setting, its default and its allowed values, once; and the constraint types.

:class:`ScanConfig` is the one home of a scan's defaults: :func:`tamis.scan`'s signature, the
CLI's options and :class:`~tamis.engine.context.RunContext` all read them from here.
:class:`ColumnSpec` says which input column holds what. The allowed values of the settings
(:data:`DEVICES`, :data:`PRECISIONS`, :data:`PROJECTIONS`, :data:`ENGINES`) are declared here and
nowhere else; the modules that implement them (the backend, the projection, the search
registry) read them from here, and a test checks each engine named is registered.

Constraints (scikit-learn's discipline): a check declares
``_parameter_constraints = {"k": Interval(int, 1, None), ...}`` once; :func:`validate_params`
raises :class:`~tamis.errors.ConfigError` naming the parameter, the value seen and what is
allowed, when work starts.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError

#: where a scan computes: the GPU when one is usable ("auto"), or the one named
DEVICES = ("auto", "cpu", "gpu")
#: storage of the normalised embedding matrix
PRECISIONS = ("float32", "float16")
#: map methods; "umap" = tamis' own UMAP layout, "umap-learn" = umap-learn's (optional package);
#: "auto" = tamis' UMAP (PCA for stores too small for a manifold map); "none" = no map
PROJECTIONS = ("auto", "umap", "umap-learn", "tsne", "pca", "none")
#: the map's dimensions
PROJECTION_DIMS = (2, 3)
#: the similarity search's engines (tamis.engine.search registers one class per name but "auto")
ENGINES = ("auto", "exact", "ivf", "faiss")
#: neighbours per row in the shared neighbour graph when neither a check nor the scan names k
DEFAULT_K = 10
#: the near-duplicate thresholds the sweep reports (and --near-duplicate-fraction chooses from)
NEAR_DUPLICATE_SWEEP = (0.90, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
#: what the exclusion list drops: the flagged rows, or every row of a flagged row's group (--group-col)
EXCLUDE_BY = ("row", "group")
#: the CLI writes a report with a map by default; the Python API computes none unless asked
CLI_PROJECTION = "auto"
#: bytes one near-duplicate pair costs on its way through the search and the checks (measured
#: upper bound: candidate ids, canonical rescoring, the sorted list, groups and tables)
BYTES_PER_PAIR = 100
#: the share of the machine's memory the pair list may take when max_pairs is not given
PAIR_MEMORY_SHARE = 0.25


def default_max_pairs() -> int:
    """The default pair budget: :data:`PAIR_MEMORY_SHARE` of this machine's memory at
    :data:`BYTES_PER_PAIR` a pair (64M pairs on a 24 GiB machine); 50M where memory is unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 50_000_000
    return max(1_000_000, int(total * PAIR_MEMORY_SHARE / BYTES_PER_PAIR))


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (int or float) in [low, high]; ``closed`` says which ends count."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"  # "both", "left", "right", "neither"
    none_ok: bool = False  # None stands for "the scan's setting"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, numbers.Integral):
            return False
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False    # NaN compares false with every bound; inf (and 1e400) is no setting
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        text = f"{'an integer' if self.kind is int else 'a finite number'} in {left}{low}, {high}{right}"
        return text + " (or None)" if self.none_ok else text


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


def validate_params(owner: str, params: dict[str, Any], constraints: dict[str, Any]) -> None:
    """Raise ConfigError for the first parameter whose value its constraint refuses."""
    for name, value in params.items():
        constraint = constraints.get(name)
        if constraint is None:
            raise ConfigError(f"{owner}: unknown parameter {name!r}; known parameters: "
                              f"{', '.join(sorted(constraints)) or 'none'}")
        if not constraint.accepts(value):
            raise ConfigError(f"{owner}: parameter {name}={value!r} is not {constraint.describe()}")


def coerce(text: str) -> Any:
    """A CLI string as the Python value it spells (int, float, bool, None or the string)."""
    low = text.strip().lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def summarise(value: Any) -> Any:
    """``value`` as it goes into summary.json: plain values as they are, data as a short description.

    A parameter may hold a whole store (off_topic's in-memory references); the summary records
    what it was, never the arrays themselves.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and \
            all(v is None or isinstance(v, (bool, int, float, str, dict)) for v in value.values()):
        return {k: summarise(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    if isinstance(value, dict):
        return "<in-memory data: " + ", ".join(f"{k}={summarise(v)}" for k, v in value.items()) + ">"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class ColumnSpec:
    """Which column holds which input; ``None`` means "detect the usual names"."""

    embedding: str | None = None
    label: str | None = None
    path: str | None = None
    split: str | None = None
    id: str | None = None
    pred_probs: str | None = None
    quality: str | None = None
    group: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, value: "ColumnSpec | dict | None") -> "ColumnSpec":
        """``value`` as a ColumnSpec: itself, a dict of its fields, or the default for None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"columns={value!r} is neither a ColumnSpec nor a dict of column names")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(f"unknown column option {unknown[0]!r}; the options are: {', '.join(known)}")
        return cls(**value)


@dataclass
class ScanConfig:
    """Options of one scan, with their defaults; validated by :meth:`validate` when the scan starts.

    device : "auto" (GPU when usable, else CPU), "cpu" or "gpu".
    checks : names of the checks to run (None: every check whose inputs are present).
    params : per-check parameters, e.g. ``{"class_imbalance": {"min_fraction": 0.1}}``.
    precision : "float32", or "float16" to halve the memory of the normalised matrix.
    projection, projection_dims : the map (:data:`PROJECTIONS`) and its dimensions (2 or 3).
    threshold : cosine similarity at or above which two rows are near duplicates; the default
        of every duplicate-family check's own ``threshold``.
    engine : the similarity search (:data:`ENGINES`) behind the pairs and the neighbour graph.
    k : neighbours per row in the shared graph (None: :data:`DEFAULT_K`, lowered for tiny stores).
    exclude_by : "row" (the exclusion list holds the rows the checks exclude) or "group" (with a
        group column: every row of a group one of whose rows is excluded, reason ``group``).
    near_duplicate_fraction : when given, the scan's threshold is chosen from
        :data:`NEAR_DUPLICATE_SWEEP`: the lowest that leaves at most this share of the valid rows with
        a near duplicate (``summary.json -> threshold_choice`` says which and why).
    max_pairs : the most near-duplicate pairs the scan may hold (None: :func:`default_max_pairs`);
        a threshold that gives more stops with a :class:`~tamis.errors.PairLimitError`.
    search_params : parameters of the chosen engine (the CLI's ``--param search.NAME=VALUE``).
    columns : which column holds what.
    image_root : the folder image paths are resolved against and confined to (None: the store's
        folder; an in-memory store then has none), for the checks that read pixels and the thumbnails.
    metadata_cols : the store's other columns the ``metadata`` check reads (the CLI's
        ``--metadata-cols a,b``); None: every column that holds no input (list and nested columns
        are skipped). A name the store lacks is a :class:`~tamis.errors.ConfigError`, and so is
        naming columns for a scan that runs no check reading them.
    """

    device: str = "auto"
    checks: list[str] | None = None
    params: dict[str, dict] = field(default_factory=dict)
    precision: str = "float32"
    projection: str = "none"
    projection_dims: int = 2
    threshold: float = 0.95
    engine: str = "auto"
    k: int | None = None
    search_params: dict = field(default_factory=dict)
    columns: ColumnSpec = field(default_factory=ColumnSpec)
    max_pairs: int | None = None
    near_duplicate_fraction: float | None = None
    exclude_by: str = "row"
    image_root: str | None = None
    metadata_cols: list[str] | None = None

    _parameter_constraints = {
        "device": Options(DEVICES),
        "precision": Options(PRECISIONS),
        "projection": Options(PROJECTIONS),
        "projection_dims": Options(PROJECTION_DIMS),
        "threshold": Interval(float, 0, 1, closed="right"),
        "engine": Options(ENGINES),
        "k": Interval(int, 1, None, none_ok=True),
        "max_pairs": Interval(int, 1, None, none_ok=True),
        "near_duplicate_fraction": Interval(float, 0, 1, closed="neither", none_ok=True),
        "exclude_by": Options(EXCLUDE_BY),
    }

    def validate(self) -> "ScanConfig":
        validate_params("scan", {name: getattr(self, name) for name in self._parameter_constraints},
                        self._parameter_constraints)
        if self.checks is not None and (not isinstance(self.checks, (list, tuple))
                                        or not all(isinstance(c, str) for c in self.checks)):
            raise ConfigError(f"checks={self.checks!r} is not a list of check names; pass e.g. checks=['invalid', "
                              "'near_duplicate'] or a comma-separated string")
        if not isinstance(self.params, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                        for k, v in self.params.items()):
            raise ConfigError(f"params={self.params!r} is not a dict of check name -> dict of parameters; pass e.g. "
                              "params={'outlier': {'iqr_factor': 3.0}}")
        if not isinstance(self.search_params, dict):
            raise ConfigError(f"search_params={self.search_params!r} is not a dict of engine parameters; pass e.g. "
                              "search_params={'n_buckets': 500}")
        if self.metadata_cols is not None and (
                not isinstance(self.metadata_cols, (list, tuple)) or not self.metadata_cols
                or not all(isinstance(c, str) and c for c in self.metadata_cols)):
            raise ConfigError(f"metadata_cols={self.metadata_cols!r} is not a list of column names; pass e.g. "
                              "metadata_cols=['age', 'brand'] or a comma-separated string, or leave it out to read "
                              "every other column")
        if self.checks is not None and not self.checks:
            raise ConfigError("checks=[] names no check; leave it out to run every check that applies")
        return self

    def as_dict(self) -> dict:
        d = asdict(self)
        d["columns"] = self.columns.as_dict()
        d["params"] = summarise(self.params)
        d["search_params"] = summarise(self.search_params)
        return d


#: the defaults, for signatures and help texts that show them (never a second copy of a value)
DEFAULTS = ScanConfig()


@dataclass(frozen=True)
class Condition:
    """One ``--fail-on`` condition: issue ``name`` ``op`` ``limit`` (a count, or a share of the rows
    when ``percent``)."""

    name: str
    op: str
    limit: float
    percent: bool = False

    def __str__(self) -> str:
        value = f"{self.limit:g}%" if self.percent else f"{self.limit:g}"
        return f"{self.name}{self.op}{value}"

    def violated(self, count: int, n_rows: int) -> bool:
        value = 100.0 * count / max(1, n_rows) if self.percent else count
        return {">": value > self.limit, ">=": value >= self.limit}[self.op]


def parse_fail_on(text: str | list | None) -> list[Condition]:
    """``"leakage>0,label_error>2%,near_duplicate>=1000"`` as conditions (a list of such strings
    too). A scan fails (CLI exit 3) when any holds: "fail on more than"."""
    if text is None:
        return []
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        match = _CONDITION.fullmatch(item.replace(" ", ""))
        if match is None:
            raise ConfigError(f"--fail-on condition {item!r} is not ISSUE>N, ISSUE>=N or ISSUE>P%, e.g. "
                              "leakage>0,label_error>2%")
        name, op, number, percent = match.groups()
        limit = float(number)
        if percent and limit > 100:
            raise ConfigError(f"--fail-on condition {item!r}: a share of the rows is at most 100%")
        out.append(Condition(name, op, limit, bool(percent)))
    return out


_CONDITION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(>=|>)(\d+(?:\.\d+)?)(%?)")
