"""Hand-written CuPy kernels, each next to the NumPy reference with the same signature.

Every module here keeps its CUDA source as a module-level string, compiles it lazily on
first use (so importing the module never imports CuPy) with :func:`cuda_function`, which
caches the compiled module per device, source and kernel name.
"""

from __future__ import annotations

import functools
from typing import Any

from .._optional import optional_import


@functools.lru_cache(maxsize=None)
def _compiled(device_id: int, source: str, names: tuple[str, ...], options: tuple[str, ...]) -> Any:
    cupy = optional_import("cupy")
    with cupy.cuda.Device(device_id):
        module = cupy.RawModule(code=source, options=("-std=c++11", *options), name_expressions=names)
        module.compile()
    return module


def cuda_function(source: str, names: tuple[str, ...], name: str, device_id: int,
                  options: tuple[str, ...] = ()) -> Any:
    """Kernel ``name`` of ``source`` compiled (with every one of ``names``, its template
    instantiations, and the compiler ``options``) for one device; compiled on first use, then
    cached."""
    return _compiled(device_id, source, tuple(names), tuple(options)).get_function(name)
