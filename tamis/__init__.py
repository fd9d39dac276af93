"""tamis: find what is wrong with an ML dataset stored as embeddings, on GPU or CPU.

>>> import tamis
>>> report = tamis.scan("store.npz", device="auto")          # doctest: +SKIP
>>> report.counts()                                           # doctest: +SKIP
>>> report.save("tamis-report")                               # doctest: +SKIP

``import tamis`` imports no GPU package; CuPy is loaded only when a GPU run starts.
"""

from ._version import __version__
from .engine.backend import Backend, gpu_available, resolve_backend
from .checks import REGISTRY as CHECKS
from .pipeline import ScanConfig, scan
from .io.readers import load_store
from .report.model import Report
from .io.store import ColumnSpec, Store
from .errors import ConfigError, DeviceError, InputError, TamisError

__all__ = [
    "__version__", "scan", "load_store", "Report", "Store", "ColumnSpec", "ScanConfig", "CHECKS",
    "Backend", "resolve_backend", "gpu_available",
    "TamisError", "InputError", "ConfigError", "DeviceError",
]
