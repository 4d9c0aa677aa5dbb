"""The CuPy backend: arrays on an NVIDIA GPU, the same plan and kernels run by CuPy.

CuPy is imported only when this backend is created. Everything the NumPy
backend runs runs here too (the kernels are written against `xp`); this
backend adds:

- workers that run each kernel's chunks one after another, in chunks of up to
  `scratch_bytes` (the GPU is parallel already; few large launches), and
  capabilities that keep lowering to one whole-batch GEMM per conv (no
  Winograd unless asked for) and tell the memory plan that scratch;
- fused elementwise kernels for batchnorm + activation (`CupyKernels`,
  cupy.ElementwiseKernel), passed to the ops as `ctx.overrides`;
- one fused elementwise kernel per optimizer update (`optimizer_sources`):
  a weight array and its slots updated in one launch, not four to eight.

Tests pass `xp=numpy`: then this module's code path runs in CI without a GPU.
Each fused kernel then falls back to the generic NumPy kernel it replaces
(the results stay bit for bit those of the NumPy backend; the optimizers keep
their NumPy updates), `to_host` falls back to `numpy.asarray` and
`synchronize` does nothing. The CUDA sources are also
compiled as C by the tests where a C compiler exists (`kernel_sources`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cnndsl.ops import norm
from cnndsl.runtime.backends.base import (
    ALL_CONV_ALGORITHMS,
    Backend,
    BackendError,
    Capabilities,
)
from cnndsl.runtime.workers import Workers

GPU_CHUNK_BYTES = 1 << 29  # 512 MiB of im2col columns per launch at most (the default cap)

# Activation applied to z, and its derivative's mask from the output y, in CUDA C.
# NOTE: CUDA's max/min on floats are fmax/fmin, which return the other operand
# for a NaN; NumPy's maximum/minimum keep the NaN, and the layer-by-layer NaN
# search relies on that. So a NaN z passes through explicitly (z != z).
ACTIVATION = {
    "none": "z",
    "relu": "(z > (T)0 || z != z) ? z : (T)0",
    "relu6": "(z != z) ? z : ((z > (T)6) ? (T)6 : ((z > (T)0) ? z : (T)0))",
}
MASK = {"none": "true", "relu": "y > (T)0", "relu6": "y > (T)0 && y < (T)6"}
# Where the mask is off NumPy computes dy·0 (NaN for a NaN or infinite dy), not 0.
MASKED = "({mask}) ? dy : dy * (T)0"


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
            f"dz = {MASKED.format(mask=MASK[act])}; p = dz * ((x - mean) * inv);",
        )
        src[f"bn_dx_{act}"] = (
            f"T dy, {y_in}T x, T g, T coef, T c",
            "T dx",
            f"T dz = {MASKED.format(mask=MASK[act])}; dx = g * dz + coef * x + c;",
        )
    return src


# Each optimizer's update of one weight array w (gradient g) and its slots, named as
# the optimizer's slots, with its scalars in the order `Optimizer.fused_update` gives.
# The expressions round as the NumPy updates in cnndsl/training/optimizers.py do
# (the scalars arrive rounded to T, as NumPy rounds Python floats against T arrays);
# the GPU may still contract a·b + c into one FMA, so its results differ in the last bit.
OPTIMIZER_UPDATES = {
    "sgd": ("T lr", "T w", "w = w - lr * g;"),
    "sgd_momentum": (
        "T lr, T momentum",
        "T w, T velocity",
        "velocity = velocity * momentum - lr * g; w = w + velocity;",
    ),
    "sgd_nesterov": (
        "T lr, T momentum",
        "T w, T velocity",
        "velocity = velocity * momentum - lr * g; w = w + (momentum * velocity - lr * g);",
    ),
    "adam": (
        "T alpha, T beta_1, T one_minus_beta_1, T beta_2, T one_minus_beta_2, T epsilon",
        "T w, T m, T v",
        "m = m * beta_1 + one_minus_beta_1 * g; v = v * beta_2 + one_minus_beta_2 * (g * g);"
        " w = w - alpha * m / (sqrt(v) + epsilon);",
    ),
    "rmsprop": (
        "T lr, T rho, T one_minus_rho, T epsilon",
        "T w, T rms",
        "rms = rms * rho + one_minus_rho * (g * g); w = w - lr * g / (sqrt(rms) + epsilon);",
    ),
}


def optimizer_sources() -> dict[str, tuple[str, str, str]]:
    """name -> (in_params, out_params, body) of every fused optimizer update (outputs in place)."""
    return {
        f"update_{name}": (f"T g, {scalars}", outs, body)
        for name, (scalars, outs, body) in OPTIMIZER_UPDATES.items()
    }


def _names(params: str) -> list[str]:
    return [p.split()[-1] for p in params.split(",")]


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
            ins, outs, body = {**kernel_sources(), **optimizer_sources()}[name]
            self._built[name] = self.xp.ElementwiseKernel(ins, outs, body, f"cnndsl_{name}")
        return self._built[name]

    def overrides(self) -> dict[str, Callable[..., Any]]:
        """The entries of ctx.overrides these kernels provide (and the optimizers' update)."""
        found: dict[str, Callable[..., Any]] = {
            "batchnorm_affine": self.batchnorm_affine,
            "batchnorm_dz_sums": self.batchnorm_dz_sums,
            "batchnorm_dx": self.batchnorm_dx,
        }
        if self.real:  # NOTE: NumPy standing in keeps the optimizers' own NumPy updates
            found["optimizer_update"] = self.optimizer_update
        return found

    def optimizer_update(
        self, name: str, scalars: tuple[float, ...], g: Any, w: Any, slots: dict[str, Any]
    ) -> None:
        """Update w and its slots in place from g in one launch (`optimizer_sources`)."""
        _, outs, _ = optimizer_sources()[f"update_{name}"]
        t = w.dtype.type  # NOTE: scalars typed as the arrays, as NumPy rounds them
        outputs = [w if out == "w" else slots[out] for out in _names(outs)]
        self._kernel(f"update_{name}")(g, *(t(s) for s in scalars), *outputs)

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
        sdz = xp.sum(dz.reshape(-1, c), axis=0, dtype=xp.float64)
        sdzx = xp.sum(p.reshape(-1, c), axis=0, dtype=xp.float64)
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


class GpuWorkers(Workers):
    """Serial chunks, as few as `chunk_bytes` allows: whole batches where they fit."""

    chunking = "whole"

    def __init__(self, chunk_bytes: int = GPU_CHUNK_BYTES) -> None:
        super().__init__(chunk_bytes=chunk_bytes, min_chunks=1)

    def colsum(self, xp: Any, a: Any, out: Any = None) -> Any:
        """Column sums accumulated in float64, in a's dtype (or out's).

        NOTE: a whole batch is one chunk here, so batchnorm's sums run over
        N·H·W rows at once (100,000 for ResNet at 224², batch 8); summed in
        float32 (the base class's ones-vector GEMM) they lost up to 3e-3 of
        ResNet-18's gradients against float64, where the CPU's chunks, summed
        in float64, keep 2e-5.
        """
        total = xp.sum(a, axis=0, dtype=xp.float64)
        if out is None:
            return total.astype(a.dtype)
        out[...] = total
        return out


class CupyBackend(Backend):
    """Device arrays on the current CUDA device.

    scratch_bytes: the cap on each scratch buffer a kernel keeps (im2col
    columns, Winograd tiles): chunks are cut to fit it, and the memory plan
    counts it (`Capabilities.scratch_bytes`). winograd: let lowering choose
    Winograd where the CPU measurements would (off by default: on a GPU one
    whole-batch im2col GEMM per conv is the safe choice until Winograd is
    measured faster there). chunking: "whole" (the default on a GPU) or
    "cache"; with NumPy standing in the default is "cache", the NumPy
    backend's chunking, so that the two agree bit for bit in the tests.
    cudnn: run convolutions through cuDNN (nvidia-cudnn-frontend; None: where it
    imports, on a GPU; True without it is an error); tf32: let cuDNN use TF32.
    device: the GPU to use; None: under an MPI launcher, this rank's local rank
    modulo the GPU count (`device_for_rank`), else the current device.
    """

    name = "cupy"

    def __init__(
        self,
        seed: int = 0,
        xp: Any = None,
        device: int | None = None,
        scratch_bytes: int = GPU_CHUNK_BYTES,
        winograd: bool = False,
        chunking: str | None = None,
        cudnn: bool | None = None,
        tf32: bool = False,
    ) -> None:
        if xp is None:
            xp = _import_cupy()
            if device is None:  # NOTE: under an MPI launcher, one GPU per rank on each machine
                from cnndsl.training.device_allreduce import device_for_rank

                device = device_for_rank(xp.cuda.runtime.getDeviceCount())
            if device is not None:
                xp.cuda.Device(device).use()
        super().__init__(xp, seed)
        if scratch_bytes < 1:
            raise BackendError(f"scratch_bytes must be positive, got {scratch_bytes}")
        self.kernels = CupyKernels(xp)
        self.overrides = self.kernels.overrides()
        chunking = chunking or ("whole" if self.kernels.real else "cache")
        if chunking not in ("whole", "cache"):
            raise BackendError(f"chunking must be 'whole' or 'cache', got '{chunking}'")
        if chunking == "whole":
            self.workers = GpuWorkers(scratch_bytes)
        algorithms = ALL_CONV_ALGORITHMS if winograd else ALL_CONV_ALGORITHMS - {"winograd"}
        self.cudnn = _cudnn_convolutions(xp, self.kernels.real, cudnn, tf32)
        if self.cudnn is not None:
            self.overrides = {**self.overrides, **self.cudnn.overrides()}
            algorithms = algorithms | {"cudnn"}
        self.capabilities = Capabilities(
            conv_algorithms=algorithms,
            chunking=chunking,
            scratch_bytes=scratch_bytes if chunking == "whole" else None,
        )

    def to_host(self, a: Any) -> np.ndarray:
        asnumpy = getattr(self.xp, "asnumpy", None)
        return asnumpy(a) if asnumpy is not None else np.asarray(a)

    def synchronize(self) -> None:
        cuda = getattr(self.xp, "cuda", None)
        if cuda is not None:
            cuda.get_current_stream().synchronize()


def _cudnn_convolutions(xp: Any, gpu: bool, wanted: bool | None, tf32: bool) -> Any:
    """A CudnnConvolutions where cuDNN is wanted and usable, else None (the cuBLAS path)."""
    if wanted is False or (wanted is None and not gpu):
        return None
    from cnndsl.runtime.backends import cudnn

    if not cudnn.available():
        if wanted:
            raise BackendError(f"cudnn=True, but {cudnn.unavailable_reason()}")
        return None
    if not gpu:
        raise BackendError("cudnn=True needs CuPy on a GPU, not an array module standing in")
    return cudnn.CudnnConvolutions(xp, tf32=tf32)


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "the cupy backend needs CuPy: pip install 'cnndsl[gpu]' for CUDA 12, or"
            " 'cnndsl[gpu-cuda13]' for CUDA 13 (nvidia-smi shows the driver's CUDA version)"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise BackendError(f"the cupy backend found no usable CUDA device: {e}") from e
    if count == 0:
        raise BackendError("the cupy backend found no CUDA device")
    return cupy


def create(seed: int = 0, **options: Any) -> CupyBackend:
    """Entry point used by `get_backend("cupy")`; options: xp, device, scratch_bytes,
    winograd, chunking, cudnn, tf32 (see CupyBackend)."""
    return CupyBackend(seed=seed, **options)
