"""The GPU path's CPU-checkable parts: NaN semantics of the fused CUDA kernels, the
fused optimizer updates, CuPy's generator state, backend-aware lowering, chunking
and the scratch cap.

The fused kernels' sources are run through a small NumPy emulation of CUDA's
elementwise C (`emulate`): max/min are CUDA's fmax/fmin, which drop a NaN,
comparisons with NaN are false, `?:` selects per element.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.ops import OPS, conv_kernels, norm
from cnndsl.ops.conv import conv_geometry
from cnndsl.ops.conv_kernels import forward_method, input_grad_method, kernel_grad_method
from cnndsl.passes.memory import SCRATCH, estimate_memory
from cnndsl.runtime.backends import Capabilities
from cnndsl.runtime.backends.cupy_backend import (
    CupyBackend,
    CupyKernels,
    GpuWorkers,
    kernel_sources,
    optimizer_sources,
)
from cnndsl.runtime.backends.numpy_backend import NumpyBackend
from cnndsl.runtime.lower import lower
from cnndsl.runtime.workers import Workers
from cnndsl.training import guards
from cnndsl.training.model import Model
from cnndsl.training.optimizers import SGD, Adam, RMSprop

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ops"))
from op_cases import get_case, make_ctx  # noqa: E402

# ---- a NumPy emulation of CUDA elementwise C ----

_TOKEN = re.compile(r"\s*(\(T\)|\|\||&&|[<>!=]=|[-+*/?:()<>,=;]|[A-Za-z_]\w*|\d+\.?\d*)")


def _tokens(src: str) -> list[str]:
    out, pos = [], 0
    src = src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        assert m is not None, f"cannot read C at {src[pos:]!r}"
        out.append(m.group(1))
        pos = m.end()
    return out


class _Expr:
    """Recursive descent over a C expression: ?:, ||, &&, comparisons, + - * /, calls, (T)."""

    def __init__(self, tokens: list[str], env: dict[str, Any]) -> None:
        self.t, self.i, self.env = tokens, 0, env

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.t[self.i]
        assert want is None or tok == want, f"expected {want}, got {tok}"
        self.i += 1
        return tok

    def ternary(self) -> Any:
        cond = self.logic_or()
        if self.peek() != "?":
            return cond
        self.take("?")
        a = self.ternary()
        self.take(":")
        b = self.ternary()
        return np.where(cond, a, b)

    def logic_or(self) -> Any:
        v = self.logic_and()
        while self.peek() == "||":
            self.take()
            v = np.logical_or(v, self.logic_and())
        return v

    def logic_and(self) -> Any:
        v = self.compare()
        while self.peek() == "&&":
            self.take()
            v = np.logical_and(v, self.compare())
        return v

    def compare(self) -> Any:
        ops = {">": np.greater, "<": np.less, ">=": np.greater_equal, "<=": np.less_equal}
        ops |= {"==": np.equal, "!=": np.not_equal}
        v = self.additive()
        if self.peek() in ops:
            v = ops[self.take()](v, self.additive())
        return v

    def additive(self) -> Any:
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self) -> Any:
        v = self.unary()
        while self.peek() in ("*", "/"):
            v = v * self.unary() if self.take() == "*" else v / self.unary()
        return v

    def unary(self) -> Any:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "(T)":
            self.take()
            return self.env["T"](self.unary())
        return self.primary()

    def primary(self) -> Any:
        tok = self.take()
        if tok == "(":
            v = self.ternary()
            self.take(")")
            return v
        if tok in ("true", "false"):
            return np.bool_(tok == "true")
        if tok[0].isdigit():
            return float(tok)
        if self.peek() == "(":  # CUDA's float max/min are fmax/fmin: a NaN operand is dropped
            self.take("(")
            args = [self.ternary()]
            while self.peek() == ",":
                self.take(",")
                args.append(self.ternary())
            self.take(")")
            return {"max": np.fmax, "min": np.fmin, "sqrt": np.sqrt}[tok](*args)
        return self.env[tok]


def emulate(body: str, inputs: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Run an ElementwiseKernel body (statements `[T] name = expr;`) over NumPy arrays."""
    env: dict[str, Any] = {"T": np.dtype(dtype).type, **inputs}
    for statement in filter(str.strip, body.split(";")):
        tokens = _tokens(statement)
        if tokens[0] == "T":
            tokens = tokens[1:]
        name, eq, rest = tokens[0], tokens[1], tokens[2:]
        assert eq == "="
        parser = _Expr(rest, env)
        env[name] = np.asarray(parser.ternary(), dtype=dtype)
        assert parser.i == len(rest), f"unread C in {statement!r}"
    return env


def test_the_emulation_drops_nans_in_max_as_cuda_does() -> None:
    """The old relu source, max(z, 0), turns NaN into 0 under CUDA's semantics: the emulation
    must see that, or the NaN tests below could not fail."""
    z = np.array([np.nan, -1.0, 2.0], np.float32)
    got = emulate("y = max(z, (T)0);", {"z": z}, np.float32)["y"]
    np.testing.assert_array_equal(got, [0.0, 0.0, 2.0])


VALUES = np.array([np.nan, -np.inf, -3.0, -0.5, 0.0, 0.5, 5.9, 6.0, 7.5, np.inf], np.float32)


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
def test_fused_affine_keeps_nans_like_numpy(act: str) -> None:
    _, _, body = kernel_sources()[f"bn_affine_{act}"]
    one = np.ones_like(VALUES)
    got = emulate(body, {"x": VALUES, "scale": one, "shift": 0 * one}, np.float32)["y"]
    want = {
        "none": VALUES,
        "relu": np.maximum(VALUES, 0),
        "relu6": np.minimum(np.maximum(VALUES, 0), 6),
    }[act]
    np.testing.assert_array_equal(got, want)  # NaN at the same places
    assert np.isnan(got[0])


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("kind", ["dz", "dx"])
def test_fused_gradients_mask_like_numpy(act: str, kind: str) -> None:
    """dz = dy·mask as NumPy computes it: a NaN or infinite dy stays NaN where masked off."""
    rng = np.random.default_rng(0)
    y = rng.permutation(VALUES)
    dy = rng.permutation(np.array([np.nan, np.inf, *range(8)], np.float32))
    mask = {"none": np.ones(y.shape, bool), "relu": y > 0, "relu6": (y > 0) & (y < 6)}[act]
    _, _, body = kernel_sources()[f"bn_{kind}_{act}"]
    zero = np.zeros_like(y)
    env = {"dy": dy, "y": y, "x": zero, "mean": zero, "inv": zero, "g": zero + 1}
    env |= {"coef": zero, "c": zero}
    with np.errstate(invalid="ignore"):  # inf·0: the NaN the kernels must give
        got = emulate(body, env, np.float32)["dz"]
        want = dy * mask
    np.testing.assert_array_equal(got, want)


# ---- the fused optimizer updates ----


def _names(params: str) -> list[str]:
    return [p.split()[-1] for p in params.split(",")]


class EmulatedKernel:
    """cupy.ElementwiseKernel run by `emulate`: inputs, then outputs updated in place; a
    scalar must come typed as the arrays' T, as CuPy's type placeholder wants it."""

    def __init__(self, ins: str, outs: str, body: str, name: str) -> None:
        self.ins, self.outs, self.body = _names(ins), _names(outs), body

    def __call__(self, *args: Any) -> None:
        assert len(args) == len(self.ins) + len(self.outs)
        dtype = args[-1].dtype
        for a in args:
            assert a.dtype == dtype, "every T argument must have the arrays' dtype"
        env = emulate(self.body, dict(zip(self.ins + self.outs, args, strict=True)), dtype)
        for name, out in zip(self.outs, args[len(self.ins) :], strict=True):
            out[...] = env[name]


EMULATED_CUPY = SimpleNamespace(ElementwiseKernel=EmulatedKernel)

OPTIMIZER_CASES = {
    "sgd": lambda: SGD(lr=0.1, decay=0.3),
    "sgd_momentum": lambda: SGD(lr=0.1, momentum=0.9),
    "sgd_nesterov": lambda: SGD(lr=0.05, momentum=0.8, nesterov=True, decay=0.1),
    "adam": lambda: Adam(lr=0.01, decay=0.2),
    "rmsprop": lambda: RMSprop(lr=0.01, rho=0.8, decay=0.1),
}


def test_every_optimizer_setting_has_a_fused_kernel() -> None:
    names = {OPTIMIZER_CASES[case]().fused_update(0.1)[0] for case in OPTIMIZER_CASES}
    assert names == set(OPTIMIZER_CASES)
    assert {f"update_{n}" for n in names} == set(optimizer_sources())
    for name, (ins, outs, _) in optimizer_sources().items():
        opt = OPTIMIZER_CASES[name.removeprefix("update_")]()
        assert len(_names(ins)) == 1 + len(opt.fused_update(0.1)[1])  # g, then the scalars
        assert set(_names(outs)) <= {"w", *opt.slots}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_fused_updates_match_the_numpy_optimizers(case: str, dtype: Any) -> None:
    """Several steps (decay, Adam's bias correction of each step count) from a resumed
    state, with a NaN and an infinite gradient: the same bits as the NumPy updates."""
    rng = np.random.default_rng(1)
    shapes = {"a:kernel": (3, 4, 5), "b:bias": (7,)}
    start = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
    reference, fused = OPTIMIZER_CASES[case](), OPTIMIZER_CASES[case]()
    for opt in (reference, fused):  # a resumed run: the step count starts at 10
        opt.iterations = 10
        for slot in opt.slots:
            opt.state[slot] = {
                k: np.abs(rng.normal(size=s)).astype(dtype) for k, s in shapes.items()
            }
    fused.state = {slot: {k: v.copy() for k, v in t.items()} for slot, t in reference.state.items()}
    want = {k: v.copy() for k, v in start.items()}
    got = {k: v.copy() for k, v in start.items()}
    update = CupyKernels(EMULATED_CUPY).overrides()["optimizer_update"]
    for step in range(4):
        grads = {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}
        if step == 2:
            grads["a:kernel"][1, 2, 3], grads["b:bias"][4] = np.nan, np.inf
        with np.errstate(invalid="ignore"):
            reference.step(np, want, grads)
            fused.step(np, got, grads, fused=update)
    assert fused.iterations == reference.iterations == 14
    for key in shapes:
        np.testing.assert_array_equal(got[key], want[key])
        for slot in reference.slots:
            np.testing.assert_array_equal(fused.state[slot][key], reference.state[slot][key])
    assert np.isnan(got["a:kernel"][1, 2, 3]) and not np.isfinite(got["b:bias"][4])
    assert np.isfinite(np.delete(got["a:kernel"].reshape(-1), 1 * 20 + 2 * 5 + 3)).all()


def test_the_stand_in_keeps_the_numpy_updates() -> None:
    assert "optimizer_update" not in CupyKernels(np).overrides()
    assert "optimizer_update" not in CupyBackend(xp=np).overrides


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_optimizer_sources_compile_as_c(ctype: str) -> None:
    lines = ["#include <math.h>", f"typedef {ctype} T;"]
    for name, (ins, outs, body) in optimizer_sources().items():
        lines.append(f"void {name}({ins}, {outs}) {{ {body} }}")
    done = subprocess.run(
        ["gcc", "-fsyntax-only", "-Wall", "-Werror", "-x", "c", "-"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# ---- CuPy's generator state ----


class FakeCupyBits:
    """CuPy's cuRAND bit generator as its source has it: `state()` is a method returning a
    device pointer; the states are the int8 device array `_state`, advanced by each draw."""

    def __init__(self, seed: int) -> None:
        self._state = np.random.default_rng(seed).integers(0, 127, 48).astype(np.int8)

    def state(self) -> int:
        return self._state.ctypes.data

    def draw(self, n: int) -> np.ndarray:
        seed = int(np.abs(self._state.astype(np.int64)).sum())
        self._state += 1  # in place, as the cuRAND kernels do
        return np.random.default_rng(seed).random(n)


class FakeCupyGenerator:
    def __init__(self, seed: int) -> None:
        self.bit_generator = FakeCupyBits(seed)

    def random(self, shape: Any) -> np.ndarray:
        return self.bit_generator.draw(int(np.prod(shape))).reshape(shape)


@pytest.mark.parametrize("make", [np.random.default_rng, FakeCupyGenerator])
def test_rng_state_restores_the_same_draws(make: Any) -> None:
    rng = make(5)
    rng.random(3)
    saved = guards.rng_state(rng)
    first = rng.random((2, 4))
    guards.set_rng_state(rng, saved)
    np.testing.assert_array_equal(rng.random((2, 4)), first)
    assert not np.array_equal(rng.random((2, 4)), first)


def test_rng_state_of_cupy_keeps_the_method_and_the_buffer() -> None:
    rng = FakeCupyGenerator(1)
    pointer = rng.bit_generator.state()
    guards.set_rng_state(rng, guards.rng_state(rng))
    assert callable(rng.bit_generator.state)
    assert rng.bit_generator.state() == pointer  # restored in place: kernels keep the pointer


def test_rng_state_without_a_capturable_state_is_none() -> None:
    class Bare:
        def random(self, shape: Any) -> np.ndarray:
            return np.zeros(shape)

    assert guards.rng_state(Bare()) is None
    guards.set_rng_state(Bare(), None)


def test_op_contexts_take_the_generator_of_the_module_under_test() -> None:
    class FakeRandom:
        @staticmethod
        def default_rng(seed: int) -> FakeCupyGenerator:
            return FakeCupyGenerator(seed)

    class FakeXp:
        random = FakeRandom

    ctx = make_ctx(get_case("dropout", 0), FakeXp)
    assert isinstance(ctx.rng, FakeCupyGenerator)
    assert isinstance(make_ctx(get_case("dropout", 0)).rng, np.random.Generator)


# ---- backend-aware lowering ----


def _resnet() -> Any:
    return cnndsl.compile(ROOT / "specs" / "resnet18.cnn").graph


def test_the_numpy_plan_keeps_the_cpu_choices() -> None:
    g = _resnet()
    cpu = lower(g, capabilities=NumpyBackend(threads=1).capabilities)
    assert cpu == lower(g)
    checked = 0
    for layer in g:
        if layer.op != "conv" or layer.attrs.groups != 1:
            continue
        step = cpu.steps[cpu.index(layer.path)]
        geo = conv_geometry(layer.attrs, g[layer.inputs[0]].shape)
        f = layer.attrs.filters
        assert step.attrs.get("forward") == forward_method(geo, f)
        assert step.attrs.get("input_grad") == input_grad_method(geo, f)
        assert step.attrs.get("kernel_grad") == kernel_grad_method(geo, f)
        checked += 1
    assert checked > 10
    assert any(s.attrs.get("forward") == "winograd" for s in cpu.steps if s.op == "conv")


def test_a_backend_without_winograd_never_gets_a_winograd_step() -> None:
    g = _resnet()
    backend = CupyBackend(xp=np)
    assert "winograd" not in backend.capabilities.conv_algorithms
    plan = lower(g, capabilities=backend.capabilities)
    cpu = lower(g)
    changed = 0
    for ours, theirs in zip(plan.steps, cpu.steps, strict=True):
        for key in ("forward", "input_grad", "kernel_grad"):
            assert ours.attrs.get(key) != "winograd"
            if theirs.attrs.get(key) != "winograd":
                assert ours.attrs.get(key) == theirs.attrs.get(key)
            else:
                changed += 1
    assert changed > 0
    with_winograd = lower(g, capabilities=CupyBackend(xp=np, winograd=True).capabilities)
    assert with_winograd == cpu


# ---- chunking and the scratch cap ----

SPEC = """
network n(classes=3) {
    input image: [12, 12, 32]
    return image -> conv(32, 3, padding=same) -> batchnorm -> relu
        -> conv(32, 3, padding=same, activation=relu) -> global_avgpool
        -> dense(classes, activation=softmax)
}
"""


def test_gpu_workers_run_winograd_as_few_chunks() -> None:
    geo = conv_geometry(OPS["conv"].bind(32, 3, padding="same"), (12, 12, 32))
    assert len(conv_kernels._chunks(Workers(), 16, geo, 4, winograd=True)) >= 2
    assert len(conv_kernels._chunks(GpuWorkers(), 16, geo, 4, winograd=True)) == 1
    small = GpuWorkers(chunk_bytes=64 << 10)
    chunks = conv_kernels._chunks(small, 16, geo, 4, winograd=True)
    assert len(chunks) > 1 and chunks[-1][1] == 16


@pytest.mark.parametrize("winograd", [False, True])
def test_whole_batch_chunking_trains_like_numpy_within_the_cap(winograd: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 12, 12, 32)), rng.integers(0, 3, 16)
    g = cnndsl.compile(SPEC).graph
    cap = 1 << 20
    backend = CupyBackend(xp=np, chunking="whole", scratch_bytes=cap, winograd=winograd)
    assert backend.capabilities.scratch_bytes == cap
    # float64: the two backends run other kernels (whole-batch chunks, no Winograd)
    reference = Model(g, backend="numpy", seed=1, dtype="float64")
    ours = Model(g, backend=backend, seed=1, dtype="float64")
    if winograd:
        assert any(s.attrs.get("forward") == "winograd" for s in ours.plan.steps)
    for _ in range(2):
        want, got = reference.train_step(x, y)[0], ours.train_step(x, y)[0]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    for a, b in zip(reference.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    one_sample = 12 * 12 * 9 * 32 * 8  # one sample's im2col columns
    lane_buffers = [buf.nbytes for key, buf in backend.workers._scratch.items() if key[1] != -1]
    assert lane_buffers and max(lane_buffers) <= max(cap, one_sample)


def test_the_memory_plan_counts_the_backends_scratch_cap() -> None:
    g = cnndsl.compile(SPEC).graph
    # a batch of 1024's columns and padded inputs (14×14 with `same`): 187 MiB
    cols = (12 * 12 * 9 * 32 + 14 * 14 * 32) * 4 * 1024
    assert cols > SCRATCH
    cpu = estimate_memory(g, 1024)
    gpu = estimate_memory(g, 1024, scratch=1 << 29)
    assert gpu.workspace - cpu.workspace == cols - SCRATCH
    small, big = (
        Model(g, backend=CupyBackend(xp=np, chunking="whole", scratch_bytes=s), seed=0)
        for s in (SCRATCH, 1 << 29)
    )
    need = estimate_memory(g, 1024, 1, 4, SCRATCH).training_peak
    for model in (small, big):
        model.max_memory = need + (8 << 20)
    guards.check_memory(small, 1024, training=True)
    with pytest.raises(guards.OutOfMemoryPlan):
        guards.check_memory(big, 1024, training=True)


def test_capabilities_default_to_every_kernel_and_cache_chunks() -> None:
    caps = Capabilities()
    assert {"im2col", "winograd", "full", "col2im", "gemm"} <= caps.conv_algorithms
    assert caps.chunking == "cache" and caps.scratch_bytes is None
    assert NumpyBackend(threads=1).capabilities == caps


def test_cupy_backend_rejects_bad_options() -> None:
    from cnndsl.runtime.backends import BackendError

    with pytest.raises(BackendError, match="chunking"):
        CupyBackend(xp=np, chunking="tiles")
    with pytest.raises(BackendError, match="scratch_bytes"):
        CupyBackend(xp=np, scratch_bytes=0)


def test_whole_batch_sums_are_accumulated_in_float64() -> None:
    """One chunk of a whole batch: batchnorm's column sums over N·H·W rows keep float64's
    accuracy (summed in float32 they lost 3e-3 of ResNet-18's gradients)."""
    rng = np.random.default_rng(0)
    a = (rng.random((1 << 18, 3)) + 10).astype(np.float32)
    want = a.astype(np.float64).sum(axis=0)
    got = GpuWorkers().colsum(np, a)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-7)
    out = np.empty(3, np.float64)
    GpuWorkers().colsum(np, a, out=out)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    mean, var = norm.batch_moments(np, a.reshape(1 << 10, 16, 16, 3), GpuWorkers())
    np.testing.assert_allclose(mean, want / len(a), rtol=1e-6)
