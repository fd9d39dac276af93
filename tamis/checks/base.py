"""The contract every check follows.

A check is one module holding one :class:`Check` subclass, listed once in
:mod:`tamis.checks` (the registry). It declares

- ``name``: the issue type; the per-sample columns ``is_<name>_issue`` and
  ``<name>_score`` are derived from it here, so they cannot drift;
- ``requires``: the store inputs it needs (from :data:`tamis.io.store.INPUTS`);
- ``_parameter_constraints``: its parameters and their allowed values;
- ``gallery`` and ``panels``: how the report shows it (:mod:`tamis.checks.views`), as data:
  the report draws them by kind, never by the check's name.

``__init__`` only stores parameters (scikit-learn's discipline); they are validated when
:meth:`Check.run` starts. ``run(ctx)`` reads shared artefacts from the
:class:`~tamis.engine.context.RunContext` and returns a :class:`CheckResult`: a flag and a
score per input row (score in [0, 1], lower = worse, NaN where the row was not scored,
e.g. an invalid embedding), a JSON-able summary, optional tables and the rows the keep
policy excludes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ..config import validate_params
from .views import Field, Samples, View

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.context import RunContext


@dataclass
class CheckResult:
    """What one check found.

    flags : (N,) bool, True where the row has this issue
    scores : (N,) float in [0, 1], lower = worse; NaN where the row was not scored
    summary : JSON-able dict, stored under ``summary.json["checks"][name]``
    tables : name -> pyarrow Table, written as ``<name>.parquet`` beside the report
    exclude : rows (input positions) the keep policy drops, with reason ``name``
    columns : extra per-sample columns (name -> (N,) array), e.g. a suggested label
    """

    flags: np.ndarray
    scores: np.ndarray
    summary: dict = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)
    exclude: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    columns: dict[str, Any] = field(default_factory=dict)


class Check:
    """Base class of every check. Subclasses set ``name``, ``requires`` and implement ``_run``."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    #: at least one of these inputs must be present too (e.g. embeddings or pred_probs)
    requires_any: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    #: whether the check looks at rows with unusable embeddings (only ``invalid`` does; the others
    #: leave them out, and a store with no usable row skips them)
    uses_invalid_rows: ClassVar[bool] = False
    #: whether the check reads the neighbour graph (directly or through neighbour votes): when one
    #: of a run's checks does, the pair search and the graph share one bucket scan
    uses_neighbours: ClassVar[bool] = False
    #: how the report shows the flagged rows (:mod:`.views`); default: cards, with the split
    gallery: ClassVar[View] = Samples(fields=(Field("split", "split"),))
    #: summary cards the report shows for this check's tables or summary (:mod:`.views`)
    panels: ClassVar[tuple[View, ...]] = ()
    _parameter_constraints: ClassVar[dict[str, Any]] = {}

    @classmethod
    def issue_column(cls) -> str:
        return f"is_{cls.name}_issue"

    @classmethod
    def score_column(cls) -> str:
        return f"{cls.name}_score"

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their current values."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def set_params(self, **params: Any) -> "Check":
        validate_params(self.name, params, self._parameter_constraints)
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def missing_inputs(self, available: frozenset[str]) -> list[str]:
        """Inputs this check lacks; an unmet ``requires_any`` reads as "a or b"."""
        missing = [name for name in self.requires if name not in available]
        if self.requires_any and not set(self.requires_any) & set(available):
            missing.append(" or ".join(self.requires_any))
        return missing

    def skip_reason(self, available: frozenset[str]) -> str | None:
        """Why this check cannot run on a store with ``available`` inputs, or None."""
        missing = self.missing_inputs(available)
        return f"needs {', '.join(missing)}, which the store does not have" if missing else None

    def context_skip_reason(self, ctx: "RunContext") -> str | None:
        """Why this check cannot run in this scan although the store holds its inputs (e.g. there is
        no folder to read the images from), or None; the scan then lists it under ``checks_skipped``
        with the reason (an error when the check was asked for by name)."""
        return None

    def run(self, ctx: "RunContext") -> CheckResult:
        """Validate parameters, run the check, and hold its result to the contract."""
        validate_params(self.name, self.get_params(), self._parameter_constraints)
        result = self._run(ctx)
        self._check_contract(result, ctx.n)
        return result

    def _run(self, ctx: "RunContext") -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_contract(self, result: CheckResult, n: int) -> None:
        """An internal error (not the user's) when a check breaks the result schema."""
        flags = np.asarray(result.flags)
        scores = np.asarray(result.scores)
        if flags.shape != (n,) or flags.dtype != bool:
            raise _ContractError(f"check {self.name!r} returned flags of shape {flags.shape} and dtype "
                                 f"{flags.dtype}; expected ({n},) bool")
        if scores.shape != (n,) or scores.dtype.kind != "f":
            raise _ContractError(f"check {self.name!r} returned scores of shape {scores.shape}; expected ({n},) float")
        scored = scores[~np.isnan(scores)]
        if len(scored) and (scored.min() < 0 or scored.max() > 1):
            raise _ContractError(f"check {self.name!r} returned scores outside [0, 1] "
                                 f"({scored.min():.4g} .. {scored.max():.4g})")
        exclude = np.asarray(result.exclude)
        if len(exclude) and (exclude.min() < 0 or exclude.max() >= n):
            raise _ContractError(f"check {self.name!r} excluded rows outside 0..{n - 1}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for JSON summaries); others unchanged."""
    return value.item() if isinstance(value, np.generic) else value


class _ContractError(RuntimeError):
    """A check broke the result contract: a bug in tamis, never bad input."""

