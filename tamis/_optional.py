"""Lazy imports of optional, mostly GPU-only, packages.

``import tamis`` never imports CuPy, cuDF, cuML, FAISS, Dask or pylance. Code that needs one
calls :func:`optional_import`, which returns the module or raises a :class:`DeviceError`
(for GPU packages) or :class:`ConfigError` naming the extra that installs it (and the package
itself where pip knows it by another name: ``lance`` is ``pylance``).
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
    "lance": ("lance", False),
}
#: package -> the name pip installs it by, where the two differ
_PIP_NAMES = {
    "lance": "pylance",
}


def optional_import(name: str, needed_for: str | None = None) -> ModuleType:
    """Import ``name`` or raise an error that says how to install it; ``needed_for`` (e.g. a store's
    path and format) starts the message, saying what needed the package."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        extra, gpu_only = _EXTRAS.get(top, (None, False))
        pip = _PIP_NAMES.get(top, top)
        hint = f"pip install {pip}"
        if extra is not None:
            hint = f"pip install 'tamis[{extra}]'" if pip == top else f"{hint} (or: pip install 'tamis[{extra}]')"
        what = f"{needed_for} needs the optional package {top!r}, which" if needed_for else f"optional package {top!r}"
        cls = DeviceError if gpu_only else ConfigError
        raise cls(f"{what} is not installed ({exc}); install it with: {hint}") from exc


def has_module(name: str) -> bool:
    """True when ``name`` can be imported (the import is attempted, then cached by Python)."""
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken CUDA install raises more than ImportError
        return False
    return True
