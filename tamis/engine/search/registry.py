"""The engines behind :mod:`tamis.engine.search`, the ``auto`` rule, and what a search reports.

A backend is one module with one class registered here (:func:`register`): it serves both
pairs and neighbours, says whether it is installed for a device (:meth:`SearchEngine.unavailable`),
and whether its answers are exact. ``auto`` (:func:`choose`) is the one rule, used by the
local and the Dask executors alike.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ...config import ENGINES as CONFIG_ENGINES
from ...errors import ConfigError

__all__ = ["SearchEngine", "SearchOptions", "ENGINES", "register", "get_engine", "engine_names",
           "choose", "EXACT_WORK", "PAIR_RECALL", "KNN_RECALL"]

#: approximate engines must reach these, measured on a sample (else they widen, then give up
#: to the exact engine)
PAIR_RECALL = 0.99
KNN_RECALL = 0.95

#: ``auto`` runs ``exact`` while N * N * d / workers is at most this; ``ivf`` above it.
#: CPU pairs: N ~ 20,000 at d = 512 (~1.5 s on two cores); CPU neighbours: N ~ 30,000;
#: GPU pairs: N ~ 500,000 (float16 tensor-core tiles); GPU neighbours: N ~ 1,400,000.
EXACT_WORK = {("cpu", "pairs"): 2.1e11, ("cpu", "neighbours"): 4.6e11,
              ("gpu", "pairs"): 1.3e14, ("gpu", "neighbours"): 1.0e15}


@dataclass
class SearchOptions:
    """Everything a backend takes besides the rows (validated by :mod:`tamis.engine.search`)."""

    xp: ModuleType = np
    memory_bytes: int | None = None
    progress: Callable[[int], Any] | None = None       # called with rows (pairs) or 0 (ticks)
    seed: int = 0
    target_recall: float | None = None                 # None: the engine's default
    #: shared between the calls of one scan (the ivf engine's k-means lives here)
    state: dict = field(default_factory=dict)
    #: engine-specific parameters (e.g. ``n_buckets``, ``n_probe``, ``index``)
    params: dict = field(default_factory=dict)
    #: the most candidate pairs a pair search may hold (None: no limit); see ``tiles.PairBudget``
    max_pairs: int | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.xp is np else "gpu"


class SearchEngine:
    """Base class: a backend serving pairs and neighbours with canonical similarities."""

    name: str = ""
    exact: bool = False
    #: engine-specific parameters it accepts (others are an error, never ignored)
    parameters: tuple[str, ...] = ()

    def unavailable(self, xp: ModuleType) -> str | None:
        """None when the engine can run on ``xp``'s device, else why not (with the fix)."""
        return None

    def pairs(self, X: Any, threshold: float, opt: SearchOptions) -> tuple[Any, Any, Any, dict]:
        """``(row_a, row_b, similarity, info)``: pairs ``a < b``, sorted, canonical similarity."""
        raise NotImplementedError

    def neighbours(self, X: Any, k: int, opt: SearchOptions) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(indices, similarities, info)``: (N, k) host arrays, self excluded, sorted."""
        raise NotImplementedError


ENGINES: dict[str, SearchEngine] = {}


def register(cls: type[SearchEngine]) -> type[SearchEngine]:
    """Class decorator: one registry line per backend; its name must be one :data:`tamis.config.ENGINES`
    declares (the one list of allowed values)."""
    if cls.name not in CONFIG_ENGINES:
        raise RuntimeError(f"engine {cls.name!r} is not declared in tamis.config.ENGINES; add it there")
    ENGINES[cls.name] = cls()
    return cls


def engine_names() -> tuple[str, ...]:
    """``auto`` and every engine, as :data:`tamis.config.ENGINES` declares them."""
    return CONFIG_ENGINES


def get_engine(name: str, xp: ModuleType) -> SearchEngine:
    """The registered engine ``name``, checked to be usable on ``xp``'s device."""
    names = engine_names()
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r} is not one of {', '.join(names)}; use 'auto' to let "
                          "tamis choose")
    engine = ENGINES[name]
    reason = engine.unavailable(xp)
    if reason:
        raise ConfigError(f"engine={name!r} cannot run here: {reason}")
    return engine


def choose(task: str, n: int, d: int, device: str, workers: int = 1) -> str:
    """The ``auto`` rule: ``exact`` while the all-pairs work ``N * N * d / workers`` is at most
    :data:`EXACT_WORK` for the task (``pairs`` or ``neighbours``) and device (``cpu`` or
    ``gpu``), else ``ivf`` (always installed). Installed
    FAISS / cuVS are never chosen by ``auto``: tamis' own ivf engine is faster on the
    measured stores (README, benchmarks); name them with ``--engine``."""
    work = float(n) * float(n) * float(d) / max(1, workers)
    return "exact" if work <= EXACT_WORK[(device, task)] else "ivf"


def check_positive_int(name: str, value: Any, example: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name}={value!r} is not a positive integer; pass one ({example}) "
                          "or leave it out for the default")
    return int(value)


def check_unit(name: str, value: Any, example: str, closed_low: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        (0 <= value <= 1 if closed_low else 0 < value <= 1)
    if not ok or math.isnan(float(value)):
        raise ConfigError(f"{name}={value!r} is outside {'[0' if closed_low else '(0'}, 1]; pass e.g. {example}")
    return float(value)
