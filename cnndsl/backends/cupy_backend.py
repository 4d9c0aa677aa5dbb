"""The CuPy backend: arrays on an NVIDIA GPU, the same kernels run by CuPy.

CuPy is imported only when this backend is created. Tests pass `xp=numpy`
so that this module's code path runs in CI without a GPU: then `to_host`
falls back to `numpy.asarray` and `synchronize` does nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnndsl.backends.base import Backend, BackendError


class CupyBackend(Backend):
    """Device arrays on the current CUDA device."""

    name = "cupy"

    def __init__(self, seed: int = 0, xp: Any = None, device: int | None = None) -> None:
        if xp is None:
            xp = _import_cupy()
            if device is not None:
                xp.cuda.Device(device).use()
        super().__init__(xp, seed)

    def to_host(self, a: Any) -> np.ndarray:
        asnumpy = getattr(self.xp, "asnumpy", None)
        return asnumpy(a) if asnumpy is not None else np.asarray(a)

    def synchronize(self) -> None:
        cuda = getattr(self.xp, "cuda", None)
        if cuda is not None:
            cuda.get_current_stream().synchronize()


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "the cupy backend needs CuPy: pip install 'cnndsl[gpu]' (cupy-cuda12x)"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise BackendError(f"the cupy backend found no usable CUDA device: {e}") from e
    if count == 0:
        raise BackendError("the cupy backend found no CUDA device")
    return cupy


def create(seed: int = 0, **options: Any) -> CupyBackend:
    """Entry point used by `get_backend("cupy")`; options: xp, device."""
    return CupyBackend(seed=seed, **options)
