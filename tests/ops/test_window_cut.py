"""Pools whose `same` windows reach far past the input: cut to what they read, same results.

The definition by direct loops: output i covers input rows [i·s − top, i·s − top + f)
clipped to the input (Keras' `same`: top = total padding // 2); max takes the
largest value there, avg the mean over the real pixels only.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cnndsl.ops import OPS
from cnndsl.ops.registry import Context
from cnndsl.ops.window import same_padding


def pooled_by_loops(x: np.ndarray, f: int, s: int, reduce: str) -> np.ndarray:
    n = x.shape[1]
    out = -(-n // s)
    top, _ = same_padding(n, f, s)
    y = np.empty((x.shape[0], out, out, x.shape[3]))
    for i, j in itertools.product(range(out), repeat=2):
        r0, r1 = max(0, i * s - top), min(n, i * s - top + f)
        c0, c1 = max(0, j * s - top), min(n, j * s - top + f)
        window = x[:, r0:r1, c0:c1, :]
        y[:, i, j] = window.max(axis=(1, 2)) if reduce == "max" else window.mean(axis=(1, 2))
    return y


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("n,f,s", [(5, 9, 1), (5, 12, 2), (4, 40, 3), (3, 3, 1), (6, 7, 4)])
def test_wide_same_windows_match_the_definition(op: str, n: int, f: int, s: int) -> None:
    x = np.random.default_rng(n * 100 + f).normal(size=(2, n, n, 3))
    attrs = OPS[op].bind(f, stride=s, padding="same")
    y, saved = OPS[op].forward(np, attrs, [x], {}, Context())
    np.testing.assert_allclose(y, pooled_by_loops(x, f, s, op[:3]), rtol=1e-12)
    # Backward is forward's transpose: <dy, J·dx> = <Jᵀ·dy, dx> on random vectors.
    dy = np.random.default_rng(1).normal(size=y.shape)
    (dx,), _ = OPS[op].backward(np, attrs, saved, dy, {}, Context())
    if op == "avgpool":  # linear: compare with a random direction directly
        v = np.random.default_rng(2).normal(size=x.shape)
        jv, _ = OPS[op].forward(np, attrs, [v], {}, Context())
        assert np.vdot(dy, jv) == pytest.approx(np.vdot(dx, v), rel=1e-10)
    else:  # each output's gradient goes to one input of its window
        assert dx.sum() == pytest.approx(dy.sum(), rel=1e-10)


def test_cut_geometry_reads_the_same_rows() -> None:
    geo = OPS["avgpool"].geometry(OPS["avgpool"].bind(10**9, stride=1, padding="same"), (7, 7, 1))
    cut = geo.reading()
    assert geo.out == cut.out == (7, 7)
    assert cut.kernel == (13, 13) and cut.pads == ((6, 6), (6, 6))  # (7 - 1)·1 + 7
