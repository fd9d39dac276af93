"""The compute backend, chosen once per run.

A :class:`Backend` carries the array module ``xp`` (``numpy`` or ``cupy``) and the few
helpers that move data between host and device. Check code is written once against
``ctx.backend.xp`` and never asks which device it runs on (cuML's ``MemoryType.xpy``,
scikit-learn's ``get_namespace``).

``resolve_backend("auto")`` uses the GPU when CuPy is installed and a CUDA device
answers, otherwise the CPU, and logs what it chose; ``"gpu"`` raises
:class:`~tamis.errors.DeviceError` when no GPU is usable; ``"cpu"`` never touches CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from .._optional import optional_import
from ..config import DEVICES
from ..errors import ConfigError, DeviceError

log = logging.getLogger("tamis")

@dataclass(frozen=True)
class Backend:
    """Array module and host/device helpers for one run.

    Attributes
    ----------
    name : "cpu" or "gpu"
    xp : the array module, ``numpy`` or ``cupy``
    device_name : what the driver calls the device (CPU: the processor architecture)
    """

    name: str
    xp: ModuleType
    device_name: str
    info: dict = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        """True on the CuPy backend. For run set-up and reporting, never for check logic."""
        return self.name == "gpu"

    def to_host(self, a: Any) -> np.ndarray:
        """``a`` as a NumPy array (copies device data to the host on GPU)."""
        return to_host(a)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU); used around timings."""
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()


def to_host(a: Any) -> np.ndarray:
    """``a`` (NumPy, CuPy or anything array-like) as a NumPy array; device data is copied."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if get is not None else np.asarray(a)


def cpu_backend() -> Backend:
    import platform

    return Backend(name="cpu", xp=np, device_name=platform.processor() or platform.machine(),
                   info={"numpy": np.__version__})


def _gpu_backend() -> Backend:
    cupy = optional_import("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDA raises its own error types
        raise DeviceError(f"CuPy is installed but CUDA is not usable ({exc}); "
                          "use --device cpu, or fix the CUDA driver") from exc
    if count < 1:
        raise DeviceError("CuPy is installed but no CUDA device was found; use --device cpu")
    try:
        cupy.zeros(1, dtype=cupy.float32).sum().item()  # a real allocation and launch
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info = {"cupy": cupy.__version__,
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
                "total_memory_bytes": int(props.get("totalGlobalMem", 0))}
    except Exception as exc:  # noqa: BLE001
        raise DeviceError(f"the CUDA device did not answer ({exc}); use --device cpu") from exc
    return Backend(name="gpu", xp=cupy, device_name=name, info=info)


def resolve_backend(device: str | Backend = "auto") -> Backend:
    """Pick the backend for ``device`` in {"auto", "cpu", "gpu"} (or pass a Backend through)."""
    if isinstance(device, Backend):
        return device
    if device not in DEVICES:
        raise ConfigError(f"device={device!r} is not one of {', '.join(DEVICES)}; "
                          "use 'auto' to let tamis choose")
    if device == "cpu":
        return cpu_backend()
    if device == "gpu":
        return _gpu_backend()
    try:
        backend = _gpu_backend()
    except DeviceError as exc:
        log.info("device=auto: using the CPU (%s)", exc)
        return cpu_backend()
    log.info("device=auto: using the GPU %s", backend.device_name)
    return backend


def gpu_available() -> bool:
    """True when a CuPy GPU backend can be started here."""
    try:
        _gpu_backend()
    except DeviceError:
        return False
    return True
