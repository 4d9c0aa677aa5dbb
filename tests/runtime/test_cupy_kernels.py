"""The CuPy backend's fused kernels: dispatched through ctx.overrides, checked three ways.

1. With NumPy standing in (every CI run): the overrides are called and fall back to
   the generic kernels, so the cupy backend trains bit for bit like the numpy one.
2. The CUDA sources compile as C (gcc -fsyntax-only, T = float and double), so a
   typo in a kernel fails here and not first on a GPU.
3. With CuPy and a device: the ElementwiseKernels against the NumPy kernels.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.ops import OPS
from cnndsl.ops.registry import Context
from cnndsl.runtime.backends import get_backend
from cnndsl.runtime.backends.cupy_backend import CupyBackend, CupyKernels, kernel_sources
from cnndsl.training.model import Model

SPEC = """
network n(classes=3) {
    input image: [6, 6, 2]
    return image -> conv(4, 3, padding=same, bias=false) -> batchnorm -> relu
        -> depthwise_conv(3, padding=same) -> batchnorm -> relu6
        -> conv(5, 1) -> batchnorm -> global_avgpool -> dense(classes, activation=softmax)
}
"""


def test_standin_uses_the_overrides_and_matches_numpy_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 6, 6, 2), dtype=np.float32), rng.integers(0, 3, 8)
    net = cnndsl.compile(SPEC)
    # NOTE: NumPy's own kernels, which the stand-in's overrides fall back to (not Numba's)
    reference = Model(net.graph, backend=get_backend("numpy", jit=False), seed=1)
    backend = CupyBackend(xp=np)
    calls: list[str] = []
    for name, fn in list(backend.overrides.items()):

        def counted(*args: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _fn(*args, **kw)

        backend.overrides[name] = counted  # type: ignore[index]
    standin = Model(net.graph, backend=backend, seed=1)
    for _ in range(2):
        assert standin.train_step(x, y)[0] == reference.train_step(x, y)[0]
    for a, b in zip(reference.get_weights(), standin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(calls) == {"batchnorm_affine", "batchnorm_dz_sums", "batchnorm_dx"}


def c_program(sources: dict[str, tuple[str, str, str]], ctype: str) -> str:
    """Each ElementwiseKernel body as a C function: inputs as parameters, outputs as locals."""
    lines = [
        "#include <stdbool.h>",
        f"typedef {ctype} T;",
        "static T max(T a, T b) { return a > b ? a : b; }",
        "static T min(T a, T b) { return a < b ? a : b; }",
    ]
    for name, (ins, outs, body) in sources.items():
        out_names = [p.split()[-1] for p in outs.split(",")]
        decl = " ".join(f"{p.strip()};" for p in outs.split(","))
        used = " ".join(f"(void){n};" for n in out_names)
        lines.append(f"void {name}({ins}) {{ {decl} {body} {used} }}")
    return "\n".join(lines) + "\n"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_cuda_sources_compile_as_c(ctype: str) -> None:
    program = c_program(kernel_sources(), ctype)
    done = subprocess.run(
        ["gcc", "-fsyntax-only", "-Wall", "-Werror", "-x", "c", "-"],
        input=program, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + program


def test_every_activation_has_its_kernels() -> None:
    names = set(kernel_sources())
    for act in ("none", "relu", "relu6"):
        assert {f"bn_affine_{act}", f"bn_dz_{act}", f"bn_dx_{act}"} <= names
    assert not CupyKernels(np).real


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
def test_fused_kernels_on_the_gpu_match_numpy(act: str, cupy: Any) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 5, 5, 4)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    op = OPS["batchnorm"]
    a = op.bind().replace(activation=act)
    w = {
        "gamma": rng.uniform(0.5, 2, 4).astype(np.float32),
        "beta": rng.normal(size=4).astype(np.float32),
        "moving_mean": np.zeros(4, np.float32),
        "moving_variance": np.ones(4, np.float32),
    }
    backend = CupyBackend()
    results = []
    for mod, ctx in (
        (np, Context(training=True)),
        (cupy, Context(training=True, overrides=backend.overrides, workers=backend.workers)),
    ):
        ws = {k: mod.asarray(v.copy()) for k, v in w.items()}
        y, saved = op.forward(mod, a, [mod.asarray(x)], ws, ctx)
        (dx,), grads = op.backward(mod, a, saved, mod.asarray(dy), ws, ctx)
        results.append([backend.to_host(v) for v in (y, dx, grads["gamma"], grads["beta"])])
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gpu_benchmark_runs_with_numpy_standing_in(tmp_path: Any) -> None:
    """benchmarks/bench_gpu.py (what scripts/gpu_check.sh times) end to end, on the CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--standin", "--nets", "fashion_mnist", "--steps", "1", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    table = (tmp_path / "gpu_results.md").read_text()
    assert "| fashion_mnist |" in table and "n/a" in table
