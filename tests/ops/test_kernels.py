"""Kernel variants against each other: every fast path equals the plain one it replaces.

float64 throughout, tight tolerances. The plain references are the whole-batch
grouped im2col kernel (groups=1) and relu written as plain NumPy (batchnorm's:
test_batchnorm_kernels.py).
Chunking and threads must not change a single bit: the threaded workers and the
serial ones, one chunk or many, give identical results.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from cnndsl.ops import OPS
from cnndsl.ops.conv_kernels import (
    WINOGRAD_CHUNK_TILES,
    _winograd_chunks,
    conv2d_backward,
    conv2d_forward,
    forward_method,
    input_grad_method,
    kept_tiles_size,
    kernel_grad_method,
)
from cnndsl.ops.depthwise_kernels import depthwise2d_backward, depthwise2d_forward
from cnndsl.ops.grouped_kernels import grouped_conv2d, grouped_conv2d_backward
from cnndsl.ops.registry import Context
from cnndsl.ops.window import geometry_of, same_padding
from cnndsl.runtime.backends.numpy_backend import ThreadWorkers
from cnndsl.runtime.workers import SERIAL, Workers

TIGHT = {"rtol": 1e-12, "atol": 1e-12}

# (input h, w, c; filters; kernel; stride; dilation; pads ((top, bottom), (left, right)))
CONVS = [
    ((6, 6, 3), 4, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),  # same, "full"
    ((7, 5, 2), 3, (3, 3), (2, 2), (1, 1), ((1, 1), (0, 1))),  # same /2, extra pixel after
    ((6, 6, 2), 5, (3, 2), (1, 1), (2, 1), ((2, 2), (0, 1))),  # dilated, rectangular
    ((5, 5, 4), 9, (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0))),  # valid, f > 2c: col2im
    ((6, 6, 3), 4, (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0))),  # 1×1: a GEMM
    ((7, 7, 3), 4, (1, 1), (2, 2), (1, 1), ((0, 0), (0, 0))),  # strided 1×1
    ((5, 5, 2), 3, (1, 1), (1, 1), (1, 1), ((1, 1), (1, 1))),  # padded 1×1: im2col
    ((5, 7, 3), 4, (3, 3), (1, 1), (1, 1), ((2, 0), (0, 1))),  # odd, uneven pads: tiles overhang
    ((3, 3, 2), 2, (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0))),  # one output pixel, one tile
    ((8, 8, 1), 3, (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2))),  # one channel: tap-major columns
    ((9, 8, 1), 4, (3, 3), (2, 2), (2, 1), ((2, 1), (1, 1))),  # ... strided, dilated
]


def winograd_applies(geo: Any) -> bool:
    """F(4×4, 3×3) runs any 3×3 stride-1 undilated conv when asked (the rule picks by speed)."""
    return (geo.kernel, geo.stride, geo.dilation) == ((3, 3), (1, 1), (1, 1))


def small_chunks() -> Workers:
    """Serial workers whose chunks hold one sample each (many chunks, many partials)."""
    return Workers(chunk_bytes=1)


def conv_case(i: int, n: int = 5) -> tuple[Any, ...]:
    shape, f, k, s, d, p = CONVS[i]
    rng = np.random.default_rng(i)
    x = rng.normal(size=(n, *shape))
    kernel = rng.normal(size=(*k, shape[2], f))
    geo = geometry_of(shape, k, s, d, p)
    dz = rng.normal(size=(n, *geo.out, f))
    return x, kernel, geo, dz


@pytest.mark.parametrize("i", range(len(CONVS)))
@pytest.mark.parametrize("workers", [Workers(), small_chunks(), ThreadWorkers(2)])
@pytest.mark.parametrize("method", ["im2col", "winograd"])
def test_conv2d_forward_matches_whole_batch_im2col(i: int, workers: Workers, method: str) -> None:
    x, kernel, geo, _ = conv_case(i)
    if method == "winograd" and not winograd_applies(geo):
        pytest.skip("Winograd F(4×4, 3×3) is for 3×3 stride-1 undilated kernels")
    method = "gemm" if geo.pointwise else method
    bias = np.linspace(-1, 1, kernel.shape[3])
    want, _ = grouped_conv2d(np, x, kernel, geo, 1, SERIAL)
    got = conv2d_forward(np, x, kernel, bias, geo, False, workers, method)
    np.testing.assert_allclose(got, want + bias, **TIGHT)
    relu = conv2d_forward(np, x, kernel, bias, geo, True, workers, method)
    np.testing.assert_allclose(relu, np.maximum(want + bias, 0), **TIGHT)


def direct_conv(x: np.ndarray, kernel: np.ndarray, pads: Any) -> np.ndarray:
    """The definition, stride 1: z[n, i, j, f] = Σ_{u, v, c} xpad[n, i+u, j+v, c]·k[u, v, c, f]."""
    xpad = np.pad(x, ((0, 0), *pads, (0, 0)))
    fh, fw, c, f = kernel.shape
    n, hp, wp, _ = xpad.shape
    z = np.zeros((n, hp - fh + 1, wp - fw + 1, f))
    for b, i, j, k in itertools.product(*(range(d) for d in z.shape)):
        for u, v, ch in itertools.product(range(fh), range(fw), range(c)):
            z[b, i, j, k] += xpad[b, i + u, j + v, ch] * kernel[u, v, ch, k]
    return z


@pytest.mark.parametrize("i", [i for i, case in enumerate(CONVS) if case[2:4] == ((3, 3), (1, 1))])
def test_winograd_matches_the_definition_and_finite_differences(i: int) -> None:
    """Winograd against direct loops (forward, dW) and central differences (dx)."""
    x, kernel, geo, dz = conv_case(i, n=2)
    z = conv2d_forward(np, x, kernel, None, geo, False, SERIAL, "winograd")
    np.testing.assert_allclose(z, direct_conv(x, kernel, geo.pads), **TIGHT)
    dx, dk, _ = conv2d_backward(
        np, x, dz, kernel, geo, want_dx=True, want_db=False, method="winograd",
        relu_out=None, workers=SERIAL, kernel_method="winograd",
    )  # fmt: skip
    assert dx is not None
    # dW[u, v, c, f] = Σ_{n, i, j} xpad[n, i+u, j+v, c]·dz[n, i, j, f]
    xpad = np.pad(x, ((0, 0), *geo.pads, (0, 0)))
    want_dk = np.zeros_like(kernel)
    for u, v, c, f in itertools.product(*(range(d) for d in kernel.shape)):
        for b, row, col in itertools.product(*(range(d) for d in dz.shape[:3])):
            want_dk[u, v, c, f] += xpad[b, row + u, col + v, c] * dz[b, row, col, f]
    np.testing.assert_allclose(dk, want_dk, **TIGHT)
    numeric = np.zeros_like(x)
    step = 1e-6
    for index in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        up, down = (
            conv2d_forward(np, t, kernel, None, geo, False, SERIAL, "winograd")
            for t in (plus, minus)
        )
        numeric[index] = (np.sum(up * dz) - np.sum(down * dz)) / (2 * step)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-7)


def test_winograd_matches_pytorch() -> None:
    """Forward and both gradients of a Winograd-sized conv (float32, 64 channels) against torch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 8, 7, 64)).astype(np.float32)
    kernel = (rng.normal(size=(3, 3, 64, 64)) / 24).astype(np.float32)
    geo = geometry_of(x.shape[1:], (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    assert forward_method(geo, 64) == input_grad_method(geo, 64) == "winograd"
    assert kernel_grad_method(geo, 64) == "winograd"
    dz = rng.normal(size=(3, 8, 7, 64)).astype(np.float32)
    z = conv2d_forward(np, x, kernel, None, geo, False, ThreadWorkers(2))
    dx, dk, _ = conv2d_backward(
        np, x, dz, kernel, geo, want_dx=True, want_db=False, method="winograd",
        relu_out=None, workers=ThreadWorkers(2), kernel_method="winograd",
    )  # fmt: skip
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tk = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    tz = torch.nn.functional.conv2d(tx, tk, padding=1)
    tz.backward(torch.tensor(dz.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(z, tz.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    assert tx.grad is not None
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    assert tk.grad is not None
    np.testing.assert_allclose(dk, tk.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("i", range(len(CONVS)))
@pytest.mark.parametrize("method", ["full", "winograd", "col2im", "gemm"])
def test_conv2d_input_gradient_variants_agree(i: int, method: str) -> None:
    x, kernel, geo, dz = conv_case(i)
    if method == "full" and geo.transposed(kernel.shape[3]) is None:
        pytest.skip("the full-convolution variant needs stride 1")
    if method == "winograd" and not winograd_applies(geo):
        pytest.skip("Winograd F(4×4, 3×3) is for 3×3 stride-1 undilated kernels")
    if (method == "gemm") != geo.pointwise:
        pytest.skip("the GEMM variant is the 1×1 kernels' only one")
    _, xpad = grouped_conv2d(np, x, kernel, geo, 1, SERIAL)
    want_dx, want_dk = grouped_conv2d_backward(np, xpad, dz, kernel, geo, 1, True, SERIAL)
    kernel_methods = ["gemm"] if geo.pointwise else ["im2col"]
    kernel_methods += ["winograd"] if winograd_applies(geo) else []
    for workers, kernel_method in itertools.product(
        (Workers(), small_chunks(), ThreadWorkers(2)), kernel_methods
    ):
        dx, dk, db = conv2d_backward(
            np, x, dz, kernel, geo, want_dx=True, want_db=True, method=method,
            relu_out=None, workers=workers, kernel_method=kernel_method,
        )  # fmt: skip
        np.testing.assert_allclose(dx, want_dx, **TIGHT)
        np.testing.assert_allclose(dk, want_dk, **TIGHT)
        np.testing.assert_allclose(db, dz.sum(axis=(0, 1, 2)), **TIGHT)


@pytest.mark.parametrize("i", range(len(CONVS)))
def test_conv2d_fused_relu_backward_equals_masking_first(i: int) -> None:
    x, kernel, geo, dy = conv_case(i)
    y = conv2d_forward(np, x, kernel, None, geo, True, Workers())
    method = input_grad_method(geo, kernel.shape[3])
    kw = {"want_dx": True, "want_db": True, "method": method, "workers": small_chunks()}
    fused = conv2d_backward(np, x, dy, kernel, geo, relu_out=y, **kw)
    plain = conv2d_backward(np, x, dy * (y > 0), kernel, geo, relu_out=None, **kw)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("i", range(len(CONVS)))
@pytest.mark.parametrize("winograd", [False, True])
def test_threads_and_chunks_do_not_change_a_bit(i: int, winograd: bool) -> None:
    """The threaded workers give the serial workers' exact bits (float32, as trained)."""
    x, kernel, geo, dz = (a.astype(np.float32) if hasattr(a, "astype") else a for a in conv_case(i))
    if winograd and not winograd_applies(geo):
        pytest.skip("Winograd F(4×4, 3×3) is for 3×3 stride-1 undilated kernels")
    method = "winograd" if winograd else input_grad_method(geo, kernel.shape[3])
    forward = "winograd" if winograd else None
    results = []
    for workers in (Workers(chunk_bytes=1 << 10), ThreadWorkers(2), ThreadWorkers(3)):
        workers.chunk_bytes = 1 << 10
        y = conv2d_forward(np, x, kernel, None, geo, True, workers, forward)
        grads = conv2d_backward(
            np, x, dz, kernel, geo, want_dx=True, want_db=True, method=method,
            relu_out=y, workers=workers, kernel_method=forward,
        )  # fmt: skip
        results.append((y, *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("i", [i for i, case in enumerate(CONVS) if case[2:4] == ((3, 3), (1, 1))])
@pytest.mark.parametrize("workers", [Workers(), small_chunks(), ThreadWorkers(2)])
def test_kernel_gradient_from_kept_tiles_equals_recomputed(i: int, workers: Workers) -> None:
    """The forward's transformed tiles, kept, give the bits of tiles made again in backward."""
    x, kernel, geo, dz = conv_case(i)
    keep = np.full(kept_tiles_size(geo, x.shape[0]), np.nan)
    y = conv2d_forward(np, x, kernel, None, geo, True, workers, "winograd", keep)
    np.testing.assert_array_equal(
        y, conv2d_forward(np, x, kernel, None, geo, True, workers, "winograd")
    )
    assert not np.isnan(keep).any()  # every chunk wrote its part
    kw: dict[str, Any] = dict(
        want_dx=True, want_db=True, method="winograd", kernel_method="winograd",
        relu_out=y, workers=workers,
    )  # fmt: skip
    kept = conv2d_backward(np, x, dz, kernel, geo, kept=keep, **kw)
    made = conv2d_backward(np, x, dz, kernel, geo, **kw)
    for a, b in zip(kept, made, strict=True):
        np.testing.assert_array_equal(a, b)


def test_conv_layer_reads_kept_tiles_only_from_its_latest_forward() -> None:
    """Two training forwards before one backward: the first one's tiles were overwritten,
    so its backward makes them again and still gets the first input's gradients."""
    rng = np.random.default_rng(3)
    op = OPS["conv"]
    a = op.bind(6, 3).replace(padding="same", activation="relu")
    w = {"kernel": rng.normal(size=(3, 3, 4, 6)), "bias": rng.normal(size=6)}
    x1, x2 = rng.normal(size=(2, 3, 8, 8, 4))
    dy = rng.normal(size=(3, 8, 8, 6))
    plan = {"forward": "winograd", "input_grad": "winograd", "kernel_grad": "winograd"}
    a = a.replace(**plan)
    ctx = Context(training=True, workers=ThreadWorkers(2), cache={})
    _, saved1 = op.forward(np, a, [x1], w, ctx)
    assert saved1.tiles is not None  # training, Winograd both ways: the tiles are kept
    _, saved2 = op.forward(np, a, [x2], w, ctx)
    assert saved2.tiles is not None and ctx.cache is not None
    assert ctx.cache["owner"] is saved2.tiles[1]  # the second forward owns the buffer now
    got1 = op.backward(np, a, saved1, dy, w, ctx)
    got2 = op.backward(np, a, saved2, dy, w, ctx)
    for x, got in ((x1, got1), (x2, got2)):
        fresh = Context(training=True, workers=ThreadWorkers(2))  # no cache: nothing kept
        _, saved = op.forward(np, a, [x], w, fresh)
        assert saved.tiles is None
        (dx,), grads = op.backward(np, a, saved, dy, w, fresh)
        np.testing.assert_array_equal(got[0][0], dx)
        for name in grads:
            np.testing.assert_array_equal(got[1][name], grads[name])
    _, inference = op.forward(np, a, [x1], w, Context(workers=ThreadWorkers(2), cache={}))
    assert inference.tiles is None  # nothing is kept outside training


@pytest.mark.parametrize("winograd", [False, True])
def test_kernel_gradient_partials_shared_by_runs_of_chunks(
    winograd: bool, monkeypatch: Any
) -> None:
    """Where the partials would outgrow PARTIALS_BYTES, runs of chunks add into one partial:
    the sums equal one partial per chunk, and threads still do not change a bit."""
    from cnndsl.ops import conv_kernels

    x, kernel, geo, dz = conv_case(0, n=7)
    monkeypatch.setattr(conv_kernels, "GEMM_ROWS", 1)  # im2col: a chunk a sample
    monkeypatch.setattr(conv_kernels, "WINOGRAD_CHUNK_TILES", 1)  # Winograd: 4 chunks
    method = "winograd" if winograd else "im2col"
    kw: dict[str, Any] = dict(
        want_dx=True, want_db=True, method="full", relu_out=None, kernel_method=method,
    )  # fmt: skip
    per_chunk = conv2d_backward(np, x, dz, kernel, geo, workers=small_chunks(), **kw)
    monkeypatch.setattr(conv_kernels, "PARTIALS_BYTES", 1)
    monkeypatch.setattr(conv_kernels, "MIN_PARTIALS", 3)  # 7 or 4 chunks in 3 runs
    grouped = []
    for workers in (small_chunks(), ThreadWorkers(2), ThreadWorkers(3)):
        workers.chunk_bytes = 1
        grouped.append(conv2d_backward(np, x, dz, kernel, geo, workers=workers, **kw))
        parts = workers._scratch[("numpy", -1, "dk_parts", np.dtype(np.float64).str)]
        assert parts.size == 3 * kernel.size  # three partials, not one per chunk
    for a, b in zip(per_chunk, grouped[0], strict=True):
        np.testing.assert_allclose(a, b, **TIGHT)
    for other in grouped[1:]:
        for a, b in zip(grouped[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("shape", "filters", "n", "budget"),
    [
        ((14, 14, 32), 32, 64, None),  # Winograd dW: power-of-two chunks
        ((9, 9, 3), 8, 40, None),  # im2col dW
        ((6, 6, 4), 6, 17, 1),  # partials over budget: MIN_PARTIALS runs of chunks
        ((5, 5, 2), 3, 3, None),  # fewer samples than chunks would be
    ],
)
def test_memory_plans_count_the_partials_the_kernel_keeps(
    shape: Any, filters: int, n: int, budget: int | None, monkeypatch: Any
) -> None:
    from cnndsl.ops import conv_kernels
    from cnndsl.ops.conv_kernels import kernel_grad_partials

    if budget is not None:
        monkeypatch.setattr(conv_kernels, "PARTIALS_BYTES", budget)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[2], filters)).astype(np.float32)
    geo = geometry_of(shape, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    dz = rng.normal(size=(n, *geo.out, filters)).astype(np.float32)
    workers = Workers()
    conv2d_backward(
        np, x, dz, kernel, geo, want_dx=False, want_db=False, method="full",
        relu_out=None, workers=workers,
    )  # fmt: skip
    parts = workers._scratch[("numpy", -1, "dk_parts", np.dtype(np.float32).str)]
    assert parts.size == kernel_grad_partials(n, geo, filters, 4) * kernel.size


def test_small_batches_run_as_fewer_chunks_in_use(monkeypatch: Any) -> None:
    """The defaults (not this suite's test-sized chunks): streaming chunks of 256 KiB or
    more, so a digits-sized batch is not cut into eight dispatches of a few KiB each."""
    from cnndsl.ops import winograd

    monkeypatch.undo()  # the defaults, not conftest's test-sized chunks
    w = Workers()
    # 8 KiB a sample: 32 samples make one chunk (not 8 of 4 samples, 32 KiB)
    assert len(w.batch_chunks(32, 8 * 8 * 32 * 4, stream=True)) == 1
    # 49 KiB a sample: 8 chunks of 8 samples (392 KiB), as without the floor
    assert len(w.batch_chunks(64, 14 * 14 * 64 * 4, stream=True)) == 8
    # 12 KiB a sample: chunks of 21 samples (257 KiB), 7 of them, instead of 8 of 16
    assert len(w.batch_chunks(128, 7 * 7 * 64 * 4, stream=True)) == 7
    rows = []
    run = Workers.each
    monkeypatch.setattr(
        Workers, "each", lambda self, chunks, fn: (rows.append(chunks), run(self, chunks, fn))
    )
    kernel = np.ones((3, 3, 32, 32), np.float32)
    winograd.transform_kernel(np, kernel, w)  # 147 KiB of transform: one block
    big = np.ones((3, 3, 128, 128), np.float32)
    winograd.transform_kernel(np, big, w)  # 2.3 MiB: TRANSFORM_BLOCKS blocks
    assert [len(r) for r in rows] == [1, winograd.TRANSFORM_BLOCKS]


def test_partial_groups_are_runs_of_consecutive_chunks() -> None:
    from cnndsl.ops.conv_kernels import MIN_PARTIALS, PARTIALS_BYTES, _partial_groups

    chunks = [(i, i + 1) for i in range(21)]
    assert _partial_groups(chunks, 1) == [(c,) for c in chunks]  # small partials: one a chunk
    big = _partial_groups(chunks, PARTIALS_BYTES // 4)  # 4 fit the budget, but 8 are kept
    assert len(big) == MIN_PARTIALS == 8
    assert [c for run in big for c in run] == chunks
    assert max(map(len, big)) - min(map(len, big)) <= 1
    assert len(_partial_groups(chunks, PARTIALS_BYTES // 12)) == 12
    assert len(_partial_groups(chunks[:5], PARTIALS_BYTES)) == 5  # never more runs than chunks


def test_first_layer_skips_its_input_gradient() -> None:
    x, kernel, geo, dz = conv_case(0)
    dx, dk, db = conv2d_backward(
        np, x, dz, kernel, geo, want_dx=False, want_db=False, method="full",
        relu_out=None, workers=Workers(),
    )  # fmt: skip
    assert dx is None and db is None and dk.shape == kernel.shape


# The method tests pin the cost model's choices (conv_costs.py) where the measured
# winner is clear (measure_conv_costs.py --check: µs a sample, im2col vs Winograd:
# 32×32×4→4 31 vs 42, 32×32×3→64 69 vs 106, 32×32×16→16 104 vs 87, 28×28×16→64
# 212 vs 127, 6×6×256 493 vs 313, 4×4×512 807 vs 473 (dW 572), 2×2×512 283 vs 570).


def _geometry(shape: Any, kernel: int, stride: int, dilation: int = 1) -> Any:
    p = dilation * (kernel // 2) if stride == 1 else 0
    d = (dilation, dilation)
    return geometry_of(shape, (kernel, kernel), (stride, stride), d, ((p, p), (p, p)))


def test_input_gradient_method_by_shape() -> None:
    """Winograd where the cost model predicts it faster; else 'full' (stride 1, f <= c, a map
    of 6×6 or more) or col2im."""

    def method(shape: Any, kernel: int, stride: int, filters: int) -> str:
        return input_grad_method(_geometry(shape, kernel, stride), filters)

    assert method((32, 32, 64), 3, 1, 64) == "winograd"
    assert method((32, 32, 16), 3, 1, 16) == "winograd"  # 1.2× faster at 16 channels
    assert method((7, 7, 256), 3, 1, 256) == "winograd"
    assert method((4, 4, 512), 3, 1, 512) == "winograd"
    assert method((32, 32, 4), 3, 1, 4) == "full"  # thin GEMMs: Winograd 1.4× slower
    assert method((32, 32, 3), 3, 1, 64) == "col2im"  # f > c; Winograd 1.5× slower
    assert method((8, 8, 64), 3, 2, 128) == "col2im"  # stride 2: no 'full' correlation
    assert method((2, 2, 512), 3, 1, 512) == "col2im"  # one 4×4 tile for 2×2: 2× slower
    assert method((8, 8, 16), 1, 2, 64) == "gemm"


def test_kernel_gradient_method_by_shape(monkeypatch: Any) -> None:
    """dW by Winograd where the cost model predicts it faster and its per-point sums fit."""
    from cnndsl.ops import conv_kernels

    def method(shape: Any, filters: int, kernel: int = 3) -> str:
        return kernel_grad_method(_geometry(shape, kernel, 1), filters)

    assert method((32, 32, 64), 64) == "winograd"
    assert method((8, 8, 256), 256) == "winograd"
    assert method((7, 7, 256), 256) == "winograd"  # 2×2 tiles
    assert method((4, 4, 512), 512) == "winograd"  # one tile a sample, but 1.4× faster
    assert method((28, 28, 16), 64) == "winograd"  # 1.5× faster at 16 channels in
    assert method((32, 32, 4), 4) == "im2col"  # thin GEMMs: 1.6× slower
    assert method((2, 2, 512), 512) == "im2col"  # 2.3× slower
    assert method((32, 32, 64), 64, kernel=1) == "gemm"
    # 36·512·1024 float32 sums are 75 MB, over a lane's 64 MiB of scratch: not taken,
    # though predicted faster (as it is with a larger cap).
    assert method((4, 4, 512), 1024) == "im2col"
    monkeypatch.setattr(conv_kernels, "LANE_SCRATCH", 128 << 20)
    assert method((4, 4, 512), 1024) == "winograd"


def test_forward_method_by_shape() -> None:
    """Winograd for 3×3 stride-1 convs where the cost model predicts it faster than im2col."""

    def method(shape: Any, kernel: int, stride: int, filters: int, dilation: int = 1) -> str:
        return forward_method(_geometry(shape, kernel, stride, dilation), filters)

    assert method((14, 14, 128), 3, 1, 128) == "winograd"
    assert method((7, 7, 256), 3, 1, 256) == "winograd"  # 4×4 tiles compute 8×8: 31% over
    assert method((6, 6, 256), 3, 1, 256) == "winograd"  # 78% over, still 1.6× faster
    assert method((32, 32, 64), 3, 1, 64) == "winograd"
    assert method((28, 28, 16), 3, 1, 64) == "winograd"  # 1.7× faster at 16 channels in
    assert method((32, 32, 3), 3, 1, 64) == "im2col"  # 3 channels: Winograd 1.5× slower
    assert method((32, 32, 4), 3, 1, 4) == "im2col"
    assert method((2, 2, 512), 3, 1, 512) == "im2col"  # a 4×4 tile for 2×2: 2× slower
    assert method((16, 16, 128), 3, 2, 128) == "im2col"
    assert method((16, 16, 128), 3, 1, 128, dilation=2) == "im2col"
    assert method((16, 16, 128), 5, 1, 128) == "im2col"
    assert method((16, 16, 128), 1, 1, 128) == "gemm"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 32, 64, 100, 256])
@pytest.mark.parametrize("size", [4, 7, 14, 28, 56])
def test_winograd_chunks_split_the_batch_evenly_into_big_chunks(n: int, size: int) -> None:
    """Whole samples, in order, sizes within one of each other; 2, 4, 8, ... chunks (fewer
    only for a smaller batch), each of WINOGRAD_CHUNK_TILES tiles or more beyond two."""
    geo = geometry_of((size, size, 64), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    chunks = _winograd_chunks(n, geo)
    assert chunks[0][0] == 0 and chunks[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    sizes = [hi - lo for lo, hi in chunks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    count, tiles = len(chunks), (-(-size // 4)) ** 2
    assert count == min(n, 2) or count & (count - 1) == 0
    if count > 2:  # split further only while every chunk keeps its tiles...
        assert min(sizes) * tiles >= WINOGRAD_CHUNK_TILES
    if count >= 2 and 2 * count <= n:  # ... and as far as that goes
        assert n // (2 * count) * tiles < WINOGRAD_CHUNK_TILES


def test_winograd_chunks_on_the_benchmark_layers() -> None:
    """Batch 64: the chunk sizes measured fastest on one core (see _winograd_chunks)."""

    def samples(size: int) -> tuple[int, int]:
        geo = geometry_of((size, size, 64), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
        chunks = _winograd_chunks(64, geo)
        return len(chunks), chunks[0][1] - chunks[0][0]

    assert samples(56) == (64, 1)  # 196 tiles a sample
    assert samples(32) == (32, 2)  # 128 tiles a chunk
    assert samples(28) == (16, 4)  # 196
    assert samples(14) == (8, 8)  # 128
    assert samples(7) == (2, 32)  # 128: fewer would leave one lane idle
    assert samples(4) == (2, 32)  # 32: one tile a sample


# ---- depthwise ----


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize(
    ("stride", "pads"), [((1, 1), ((1, 1), (1, 1))), ((2, 2), ((0, 1), (0, 1)))]
)
def test_depthwise_chunks_and_threads_match_one_chunk(m: int, stride: Any, pads: Any) -> None:
    rng = np.random.default_rng(m)
    x = rng.normal(size=(5, 7, 7, 3))
    kernel = rng.normal(size=(3, 3, 3, m))
    geo = geometry_of(x.shape[1:], (3, 3), stride, (1, 1), pads)
    dz = rng.normal(size=(5, *geo.out, 3 * m))
    # Reference: the depthwise conv as a grouped conv with one group per channel.
    grouped = kernel.reshape(3, 3, 1, 3 * m)
    want, xpad = grouped_conv2d(np, x, grouped, geo, 3, SERIAL)
    want_dx, want_dk = grouped_conv2d_backward(np, xpad, dz, grouped, geo, 3, True, SERIAL)
    for workers in (Workers(), small_chunks(), ThreadWorkers(2)):
        z = depthwise2d_forward(np, x, kernel, geo, workers)
        np.testing.assert_allclose(z, want, **TIGHT)
        dx, dk = depthwise2d_backward(np, x, dz, kernel, geo, True, workers)
        np.testing.assert_allclose(dx, want_dx, **TIGHT)
        np.testing.assert_allclose(dk.reshape(grouped.shape), want_dk, **TIGHT)


# ---- maxpool, relu ----


@pytest.mark.parametrize("inplace", [False, True])
def test_relu_in_place_equals_a_fresh_output(inplace: bool) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 4, 4, 3))
    op = OPS["relu"]
    a = op.bind().replace(inplace=inplace)
    src = x.copy()
    y, saved = op.forward(np, a, [src], {}, Context(workers=ThreadWorkers(2)))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert (y is src) == inplace
    dy = rng.normal(size=x.shape)
    (dx,), _ = op.backward(np, a, saved, dy, {}, Context(workers=ThreadWorkers(2)))
    np.testing.assert_array_equal(dx, dy * (x > 0))


@pytest.mark.parametrize(
    ("n", "size", "stride", "padding"),
    [
        (7, 2, 2, "valid"),
        (8, 2, 2, "valid"),  # windows tile the map
        (7, 2, 2, "same"),  # ... the padded map
        (9, 3, 3, "valid"),  # ... with 3×3 windows
        (7, 3, 2, "same"),
        (7, 3, 1, 1),
        (7, 2, 1, "valid"),
    ],
)
def test_maxpool_ties_go_to_the_first_maximum(n: int, size: int, stride: int, padding: Any) -> None:
    """Relu outputs are full of tied zeros: the gradient goes to the first, once per window."""
    rng = np.random.default_rng(4)
    x = np.maximum(rng.normal(size=(5, n, n, 3)), 0).round(1)
    op = OPS["maxpool"]
    a = op.bind(size, stride, padding=padding)
    y, saved = op.forward(np, a, [x], {}, Context(workers=small_chunks()))
    dy = rng.normal(size=y.shape)
    (dx,), _ = op.backward(np, a, saved, dy, {}, Context(workers=ThreadWorkers(2)))
    # Reference: loop over windows, first maximum in row-major order.
    p = {"valid": 0, "same": None}.get(padding, padding)
    pad = same_padding(n, size, stride) if p is None else (p, p)
    xp_ = np.pad(x, ((0, 0), pad, pad, (0, 0)), constant_values=-np.inf)
    want = np.zeros_like(xp_)
    for b, i, j, c in np.ndindex(y.shape):
        win = xp_[b, i * stride : i * stride + size, j * stride : j * stride + size, c]
        u, v = np.unravel_index(np.argmax(win), win.shape)
        assert win[u, v] == y[b, i, j, c]
        want[b, i * stride + u, j * stride + v, c] += dy[b, i, j, c]
    np.testing.assert_allclose(dx, want[:, pad[0] : pad[0] + n, pad[0] : pad[0] + n], **TIGHT)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_threaded_workers_still_run_in_a_forked_child() -> None:
    """The lane threads stay with the parent; a child (fork) makes its own, never hangs."""
    import multiprocessing

    workers = ThreadWorkers(2)
    seen: list[int] = []
    workers.each(list(range(8)), lambda lane, i: seen.append(i))
    assert sorted(seen) == list(range(8))

    def child() -> None:
        out: list[int] = []
        workers.each(list(range(8)), lambda lane, i: out.append(i))
        raise SystemExit(0 if sorted(out) == list(range(8)) else 1)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child hung in ThreadWorkers.each")
    assert proc.exitcode == 0


@pytest.mark.parametrize("lanes", [2, 3])
def test_partial_sums_over_lanes_keep_the_serial_bits(lanes: int) -> None:
    """sum_partials splits columns over lanes; each column still adds its chunks in order."""
    rng = np.random.default_rng(5)
    parts = rng.standard_normal((9, 3, 3, 64, 700)).astype(np.float32)  # > SMALL_SUM values
    serial = Workers().sum_partials(np, parts)
    threaded = ThreadWorkers(lanes).sum_partials(np, parts)
    assert threaded.shape == parts.shape[1:]
    np.testing.assert_array_equal(threaded, serial)
    np.testing.assert_allclose(serial, parts.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)
