"""The NumPy backend's compiled kernels: switched on and off, and listed for the op suites.

Their results are checked op by op in tests/ops (definition, finite
differences, PyTorch), as NumPy's are, for the ops in op_cases.JIT_OPS.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cnndsl.ops import OPS
from cnndsl.runtime.backends import BackendError, get_backend, numba_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from op_cases import (  # noqa: E402
    CASES,
    JIT_OPS,
    jit_overrides,
    make_ctx,
    make_inputs,
    make_weights,
)


def test_jit_ops_are_the_ops_that_look_up_a_compiled_kernel() -> None:
    """JIT_OPS (which cases the op suites run twice) names exactly the ops that use one."""
    users = set()
    for op, cases in CASES.items():
        for case in cases:
            overrides = jit_overrides()
            rng = np.random.default_rng(0)
            xs, ws = make_inputs(case, rng), make_weights(case, rng)
            ctx = make_ctx(case, np, overrides=overrides)
            y, saved = OPS[op].forward(np, case.attrs, xs, ws, ctx)
            OPS[op].backward(np, case.attrs, saved, np.ones_like(y), ws, ctx)
            if overrides.used:
                users.add(op)
    assert users == set(JIT_OPS)


def test_every_override_is_used_by_some_op() -> None:
    overrides = jit_overrides()
    for op, cases in CASES.items():
        for case in cases:
            rng = np.random.default_rng(0)
            xs, ws = make_inputs(case, rng), make_weights(case, rng)
            ctx = make_ctx(case, np, overrides=overrides)
            y, saved = OPS[op].forward(np, case.attrs, xs, ws, ctx)
            OPS[op].backward(np, case.attrs, saved, np.ones_like(y), ws, ctx)
    assert overrides.used == set(numba_kernels.overrides())


def test_the_backend_has_the_compiled_kernels_unless_told_not_to() -> None:
    jit_overrides()  # skips without Numba
    assert get_backend("numpy").jit == bool(numba_kernels.MODULES)
    off = get_backend("numpy", jit=False)
    assert not off.jit and not off.overrides


def test_cnndsl_jit_0_switches_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNDSL_JIT", "0")
    assert not numba_kernels.available()
    assert get_backend("numpy").overrides == {}
    with pytest.raises(BackendError, match="CNNDSL_JIT"):
        get_backend("numpy", jit=True)
