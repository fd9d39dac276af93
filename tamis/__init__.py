"""tamis: find what is wrong with an ML dataset stored as embeddings, on GPU or CPU.

>>> import tamis
>>> report = tamis.scan("store.npz", device="auto")          # doctest: +SKIP
>>> report.counts()                                           # doctest: +SKIP
>>> tamis.write_report(report, "tamis-report")               # doctest: +SKIP

``import tamis`` imports no GPU package; CuPy is loaded only when a GPU run starts.
"""

from ._version import __version__
from .checks import REGISTRY as CHECKS
from .config import ColumnSpec, ScanConfig
from .engine.backend import Backend, gpu_available, resolve_backend
from .errors import (
    ConfigError,
    DeviceError,
    InputError,
    OutputError,
    PairLimitError,
    TamisError,
)
from .io.readers import load_store
from .io.store import Store
from .pipeline import add_to_index, scan
from .report.folder import read_report, write_report
from .report.model import Report

__all__ = [
    "__version__", "scan", "add_to_index", "load_store", "Report", "write_report", "read_report", "Store", "ColumnSpec", "ScanConfig", "CHECKS",
    "Backend", "resolve_backend", "gpu_available",
    "TamisError", "InputError", "ConfigError", "DeviceError", "OutputError", "PairLimitError",
]
