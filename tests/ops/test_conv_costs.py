"""The conv cost model's terms, and the memory plan counting what its choices need.

Which kernels the model picks per shape is pinned in test_kernels.py
(test_forward_method_by_shape and the two gradient tests).
"""

from __future__ import annotations

from typing import Any

import cnndsl
from cnndsl.ops import conv_costs
from cnndsl.ops.conv_costs import chunk_samples, im2col_terms, predict, winograd_terms
from cnndsl.ops.window import geometry_of


def _geometry(size: int, channels: int) -> Any:
    return geometry_of((size, size, channels), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))


def test_terms_count_what_each_kernel_does() -> None:
    """FLOPs, values moved, per-chunk values (over a chunk's samples) and pixels or tiles."""
    small, big = _geometry(4, 512), _geometry(32, 64)
    assert chunk_samples(small) == 32  # two chunks of one-tile samples at batch 64
    assert chunk_samples(big) == 2  # 32 chunks of 128 tiles
    assert winograd_terms(small, 512) == (
        2.0 * 36 * 512 * 512,
        36.0 * 1024,
        36 * 512 * 512 / 32,
        1.0,
    )
    assert winograd_terms(small, 512, grad=True, kept=True)[1] == 36 * 512  # dz's tiles only
    assert winograd_terms(small, 512, grad=True)[1] == 36 * 1024
    assert winograd_terms(big, 64)[3] == 64  # 8×8 tiles
    assert im2col_terms(small, 512) == (2.0 * 16 * 4608 * 512, 16.0 * 4608, 0.0, 16.0)


def test_predict_weighs_the_terms(monkeypatch: Any) -> None:
    """Seconds = the terms times the kind's nanoseconds per unit."""
    monkeypatch.setitem(conv_costs.COSTS, "im2col", (1.0, 2.0, 3.0, 4.0))
    assert predict("im2col", (1.0, 10.0, 100.0, 1000.0)) == (1 + 20 + 300 + 4000) * 1e-9


def _conv_layer(size: int, channels: int, filters: int) -> tuple[Any, list[Any]]:
    text = (
        f"network n() {{\n input x: [{size}, {size}, {channels}]\n"
        f" return x -> conv({filters}, 3, padding=same)\n}}"
    )
    g = cnndsl.compile(text).graph
    conv = [layer for layer in g if layer.op == "conv"][0]
    return conv, [g[p] for p in conv.inputs]


def test_memory_plan_counts_winograd_grad_sums() -> None:
    """A Winograd dW's 36·c·f sums, for two lanes, on top of the partials; none for im2col."""
    from cnndsl.ops.conv import conv_geometry
    from cnndsl.ops.conv_kernels import kernel_grad_method, kernel_grad_partials
    from cnndsl.passes.memory import shared_scratch

    for size, c, f, winograd in ((4, 512, 512, True), (4, 512, 1024, False), (32, 4, 4, False)):
        conv, inputs = _conv_layer(size, c, f)
        geo = conv_geometry(conv.attrs, (size, size, c))
        assert (kernel_grad_method(geo, f) == "winograd") is winograd
        partials = kernel_grad_partials(64, geo, f, 4) * 9 * c * f * 4
        sums = 2 * 36 * c * f * 4 if winograd else 0
        assert shared_scratch(conv, inputs, 64, 4) == (36 * c * f * 4, partials + sums)


def test_chunk_samples_follow_the_kernels_chunks() -> None:
    """The model costs per-chunk values over the chunks conv2d really cuts a batch into."""
    from cnndsl.ops.conv_kernels import _winograd_chunks

    for size in (2, 4, 7, 8, 14, 16, 28, 32, 56):
        geo = _geometry(size, 64)
        chunks = _winograd_chunks(conv_costs.PLAN_BATCH, geo)
        assert chunk_samples(geo) == conv_costs.PLAN_BATCH / len(chunks)
