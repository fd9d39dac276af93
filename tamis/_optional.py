"""Lazy imports of optional, mostly GPU-only, packages.

``import tamis`` never imports CuPy, cuDF, cuML or FAISS. Code that needs one calls
:func:`optional_import`, which returns the module or raises a :class:`DeviceError`
(for GPU packages) or :class:`ConfigError` naming the extra that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError, DeviceError

# package -> (pip extra that provides it, is it GPU-only)
_EXTRAS = {
    "cupy": ("gpu", True),
    "cupyx": ("gpu", True),
    "cudf": ("rapids", True),
    "cuml": ("rapids", True),
    "faiss": ("faiss", False),
    "dask": ("dask", False),
    "distributed": ("dask", False),
}


def optional_import(name: str) -> ModuleType:
    """Import ``name`` or raise an error that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        top = name.split(".")[0]
        extra, gpu_only = _EXTRAS.get(top, (None, False))
        hint = f"pip install 'tamis[{extra}]'" if extra else f"pip install {top}"
        cls = DeviceError if gpu_only else ConfigError
        raise cls(f"optional package {top!r} is not installed ({exc}); install it with: {hint}") from exc


def has_module(name: str) -> bool:
    """True when ``name`` can be imported (the import is attempted, then cached by Python)."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken CUDA install raises more than ImportError
        return False
    return True
