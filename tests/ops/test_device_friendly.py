"""gelu and dropout as a GPU wants them: no boolean-mask indexing, draws in the compute dtype.

On a GPU, indexing with a boolean mask waits for the device (the result's
size is the mask's count), and float64 draws for a float32 model make and
move twice the bits. Checked on NumPy; the values against the definitions
are in test_ops_definition.py and test_ops_vs_torch.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cnndsl.ops import OPS
from cnndsl.ops.act import erfc
from cnndsl.ops.registry import Context
from cnndsl.training.distributed import ShardedGenerator


class NoMaskIndexing(np.ndarray):
    """An array that refuses boolean-mask indexing; ufuncs pass the type on to results."""

    def __getitem__(self, key: Any) -> Any:
        _refuse_masks(key)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        _refuse_masks(key)
        super().__setitem__(key, value)


def _refuse_masks(key: Any) -> None:
    for k in key if isinstance(key, tuple) else (key,):
        if isinstance(k, np.ndarray) and k.dtype == bool:
            raise AssertionError("boolean-mask indexing: a wait for the device on a GPU")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_runs_without_boolean_mask_indexing(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    # every range of erfc's formulas: |x/√2| <= 0.47, up to 4, beyond
    x = (rng.normal(size=(4, 5, 6)) * 4).astype(dtype)
    op, a = OPS["gelu"], OPS["gelu"].bind()
    y, saved = op.forward(np, a, [x.view(NoMaskIndexing)], {}, Context())
    dx, _ = op.backward(np, a, saved, np.ones_like(x).view(NoMaskIndexing), {}, Context())
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.flat]).reshape(x.shape)
    pdf = np.exp(-0.5 * x.astype(np.float64) ** 2) / math.sqrt(2 * math.pi)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(np.asarray(y), x * cdf, **tol)
    np.testing.assert_allclose(np.asarray(dx[0]), cdf + x * pdf, **tol)


def test_erfc_at_the_ends_and_nan() -> None:
    for dtype in (np.float32, np.float64):
        x = np.array([np.nan, np.inf, -np.inf, 40.0, -40.0, 0.0], dtype)
        np.testing.assert_array_equal(erfc(np, x), np.array([np.nan, 0, 2, 0, 2, 1], dtype))
    y, _ = OPS["gelu"].forward(np, OPS["gelu"].bind(), [np.array([np.nan, np.inf])], {}, Context())
    assert np.isnan(y[0]) and y[1] == np.inf


class RecordingGenerator:
    """numpy's Generator, noting the dtype of each uniform draw."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.dtypes: list[Any] = []

    def random(self, size: Any = None, dtype: Any = np.float64) -> np.ndarray:
        self.dtypes.append(np.dtype(dtype))
        return self.rng.random(size, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_draws_in_the_compute_dtype(dtype: Any) -> None:
    x = np.ones((6, 5, 4), dtype)
    rng = RecordingGenerator(3)
    op, a = OPS["dropout"], OPS["dropout"].bind(0.4)
    y, mask = op.forward(np, a, [x], {}, Context(training=True, rng=rng))
    assert rng.dtypes == [np.dtype(dtype)]
    u = np.random.default_rng(3).random(x.shape, dtype)
    np.testing.assert_array_equal(y, np.where(u >= 0.4, x / (1 - 0.4), 0).astype(dtype))
    assert y.dtype == mask.dtype == dtype


def test_sharded_float32_draws_are_the_global_batchs() -> None:
    """Each rank keeps its samples' rows of the global batch's float32 draw."""
    whole = np.random.default_rng(9).random((7, 3), np.float32)
    parts = []
    for shard in (slice(0, 3), slice(3, 5), slice(5, 7)):
        rng = ShardedGenerator(np.random.default_rng(9), shard, 7)
        parts.append(rng.random((shard.stop - shard.start, 3), dtype=np.float32))
    assert all(p.dtype == np.float32 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
