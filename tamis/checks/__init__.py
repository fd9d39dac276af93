"""The check registry: every check tamis can run, in the order a scan runs them.

Adding a check is one new module in this package holding one :class:`Check` subclass
(its gallery and panels declared on the class, :mod:`.views`), and one line in
:data:`REGISTRY`; the report shows it with no other change. ``tests/test_check_contract.py``
fails when a module here defines a check that is not registered. :mod:`.base` is the
contract, :mod:`.shared` what several checks share.
"""

from __future__ import annotations

from ..errors import ConfigError
from .ambiguous import Ambiguous
from .base import Check, CheckResult
from .class_imbalance import ClassImbalance
from .class_overlap import ClassOverlap
from .conflicting_labels import ConflictingLabels
from .exact_duplicate import ExactDuplicate
from .image_properties import ImageProperties
from .invalid import InvalidEmbedding
from .label_error import LabelError
from .leakage import Leakage
from .metadata import Metadata
from .near_duplicate import NearDuplicate
from .off_topic import OffTopic
from .outlier import Outlier
from .split_shift import SplitShift

REGISTRY: dict[str, type[Check]] = {cls.name: cls for cls in (
    InvalidEmbedding,
    ExactDuplicate,
    NearDuplicate,
    ConflictingLabels,
    Leakage,
    LabelError,
    Ambiguous,
    ClassOverlap,
    Outlier,
    OffTopic,
    SplitShift,
    ClassImbalance,
    ImageProperties,
    Metadata,
)}


def make_checks(names: list[str] | None = None, params: dict[str, dict] | None = None) -> list[Check]:
    """Instances of the named checks (all when ``names`` is None), in registry order.

    ``params`` maps a check name to its parameters; unknown names and parameters raise
    :class:`ConfigError` (options are never silently ignored).
    """
    params = params or {}
    wanted = list(REGISTRY) if names is None else list(dict.fromkeys(names))
    for name in list(wanted) + list(params):
        if name not in REGISTRY:
            raise ConfigError(f"unknown check {name!r}; the checks are: {', '.join(REGISTRY)}")
    unused = [name for name in params if name not in wanted]
    if unused:
        raise ConfigError(f"parameters were given for check {unused[0]!r}, which this scan does not run; "
                          f"add it to the checks or drop its parameters")
    checks = []
    for name in REGISTRY:
        if name in wanted:
            checks.append(REGISTRY[name]().set_params(**params.get(name, {})))
    return checks


__all__ = ["Check", "CheckResult", "REGISTRY", "make_checks"]
