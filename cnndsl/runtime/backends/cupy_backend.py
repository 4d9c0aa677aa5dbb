"""The CuPy backend: arrays on an NVIDIA GPU, the same plan and kernels run by CuPy.

CuPy is imported only when this backend is created. Everything the NumPy
backend runs runs here too (the kernels are written against `xp`); this
backend adds:

- workers that run each kernel's chunks one after another, in chunks of up to
  GPU_CHUNK_BYTES (the GPU is parallel already; few large launches);
- fused elementwise kernels for batchnorm + activation (`CupyKernels`,
  cupy.ElementwiseKernel), passed to the ops as `ctx.overrides`.

Tests pass `xp=numpy`: then this module's code path runs in CI without a GPU.
Each fused kernel then falls back to the generic NumPy kernel it replaces
(the results stay bit for bit those of the NumPy backend), `to_host` falls back
to `numpy.asarray` and `synchronize` does nothing. The CUDA sources are also
compiled as C by the tests where a C compiler exists (`kernel_sources`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnndsl.ops import norm
from cnndsl.runtime.backends.base import Backend, BackendError
from cnndsl.runtime.workers import Workers

GPU_CHUNK_BYTES = 1 << 29  # 512 MiB of im2col columns per launch at most

# Activation applied to z, and its derivative's mask from the output y, in CUDA C.
ACTIVATION = {"none": "z", "relu": "max(z, (T)0)", "relu6": "min(max(z, (T)0), (T)6)"}
MASK = {"none": "true", "relu": "y > (T)0", "relu6": "y > (T)0 && y < (T)6"}


def kernel_sources() -> dict[str, tuple[str, str, str]]:
    """name -> (in_params, out_params, body) of every fused kernel, as ElementwiseKernel takes."""
    src: dict[str, tuple[str, str, str]] = {}
    for act in ACTIVATION:
        src[f"bn_affine_{act}"] = (
            "T x, T scale, T shift",
            "T y",
            f"T z = x * scale + shift; y = {ACTIVATION[act]};",
        )
        # With no activation there is no saved output: dy itself is dz.
        y_in = "T y, " if act != "none" else ""
        src[f"bn_dz_{act}"] = (
            f"T dy, {y_in}T x, T mean, T inv",
            "T dz, T p",
            f"dz = ({MASK[act]}) ? dy : (T)0; p = dz * ((x - mean) * inv);",
        )
        src[f"bn_dx_{act}"] = (
            f"T dy, {y_in}T x, T g, T coef, T c",
            "T dx",
            f"T dz = ({MASK[act]}) ? dy : (T)0; dx = g * dz + coef * x + c;",
        )
    return src


class CupyKernels:
    """The fused batchnorm kernels, built on first use (CuPy compiles them on first call).

    With an array module that has no ElementwiseKernel (NumPy standing in),
    every method runs the generic kernel from `cnndsl.ops.norm` instead.
    """

    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self.real = hasattr(xp, "ElementwiseKernel")
        self._built: dict[str, Any] = {}

    def _kernel(self, name: str) -> Any:
        if name not in self._built:
            ins, outs, body = kernel_sources()[name]
            self._built[name] = self.xp.ElementwiseKernel(ins, outs, body, f"cnndsl_{name}")
        return self._built[name]

    def overrides(self) -> dict[str, Callable[..., Any]]:
        """The entries of ctx.overrides these kernels provide."""
        return {
            "batchnorm_affine": self.batchnorm_affine,
            "batchnorm_dz_sums": self.batchnorm_dz_sums,
            "batchnorm_dx": self.batchnorm_dx,
        }

    def batchnorm_affine(
        self, xp: Any, x: Any, scale: Any, shift: Any, act: str, workers: Workers
    ) -> Any:
        """y = act(x·scale + shift) per channel, one launch."""
        if not self.real:
            return norm.affine(xp, x, scale, shift, act, workers)
        return self._kernel(f"bn_affine_{act}")(x, scale, shift)

    def batchnorm_dz_sums(
        self, xp: Any, dy: Any, s: norm.BatchNormSaved, act: str, workers: Workers
    ) -> tuple[Any, Any]:
        """(Σ dz, Σ dz·xhat) per channel in float64: one launch, then two column sums."""
        if not self.real:
            return norm.dz_sums(xp, dy, s, act, workers)
        ys = (s.y,) if act != "none" else ()
        dz, p = self._kernel(f"bn_dz_{act}")(dy, *ys, s.x, s.mean, s.inv)
        c = dy.shape[-1]
        sdz = workers.colsum(xp, dz.reshape(-1, c)).astype(xp.float64)
        sdzx = workers.colsum(xp, p.reshape(-1, c)).astype(xp.float64)
        return sdz, sdzx

    def batchnorm_dx(
        self,
        xp: Any,
        dy: Any,
        s: norm.BatchNormSaved,
        act: str,
        g: Any,
        coef: Any,
        const: Any,
        workers: Workers,
    ) -> Any:
        """dx = g·dz + coef·x + const per channel, dz masked by the activation: one launch."""
        if not self.real:
            return norm.dx_affine(xp, dy, s, act, g, coef, const, workers)
        ys = (s.y,) if act != "none" else ()
        t = dy.dtype
        return self._kernel(f"bn_dx_{act}")(
            dy, *ys, s.x, g.astype(t), coef.astype(t), const.astype(t)
        )


class CupyBackend(Backend):
    """Device arrays on the current CUDA device."""

    name = "cupy"

    def __init__(self, seed: int = 0, xp: Any = None, device: int | None = None) -> None:
        if xp is None:
            xp = _import_cupy()
            if device is not None:
                xp.cuda.Device(device).use()
        super().__init__(xp, seed)
        self.kernels = CupyKernels(xp)
        self.overrides = self.kernels.overrides()
        if self.kernels.real:
            self.workers = Workers(chunk_bytes=GPU_CHUNK_BYTES, min_chunks=1)
        # NOTE: NumPy standing in keeps the NumPy backend's chunking, so the two
        # backends agree bit for bit in the tests.

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
