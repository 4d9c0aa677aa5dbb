"""Network.build: backend, seed and dtype reach the model."""

from __future__ import annotations

import numpy as np
import pytest

import cnndsl

SPEC = "network n() {\n    input x: [6, 6, 1]\n    return x -> conv(2, 3) -> flatten -> dense(3)\n}"


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float64])
def test_build_dtype_sets_weights_and_outputs(dtype: object) -> None:
    model = cnndsl.compile(SPEC).build(seed=3, dtype=dtype)
    assert model.dtype == np.dtype(dtype)
    assert {w.dtype for w in model.get_weights()} == {np.dtype(dtype)}
    out = model.predict(np.ones((2, 6, 6, 1)))
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3)


def test_float64_and_float32_builds_start_from_the_same_weights() -> None:
    a = cnndsl.compile(SPEC).build(seed=3, dtype="float64").get_weights()
    b = cnndsl.compile(SPEC).build(seed=3).get_weights()
    for wa, wb in zip(a, b, strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-6)


def test_build_refuses_other_dtypes() -> None:
    with pytest.raises(cnndsl.ModelError, match="float32 or float64, not int8"):
        cnndsl.compile(SPEC).build(dtype="int8")
