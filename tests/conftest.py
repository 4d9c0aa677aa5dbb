"""Shared fixtures: the array modules the op kernels run on (numpy; cupy with a GPU), and
test-sized chunks."""

from __future__ import annotations

import importlib
from typing import Any

import pytest


def _cupy_or_skip() -> Any:
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception as e:  # driver missing or broken
        pytest.skip(f"no usable CUDA device: {e}")
    return cupy


@pytest.fixture(params=["numpy", "cupy"])
def xp(request: pytest.FixtureRequest) -> Any:
    """The array module for kernels; the cupy run is skipped without CuPy and a device."""
    return importlib.import_module("numpy") if request.param == "numpy" else _cupy_or_skip()


@pytest.fixture
def cupy() -> Any:
    """CuPy, or a skip without CuPy and a device."""
    return _cupy_or_skip()


@pytest.fixture(autouse=True)
def test_sized_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split even tiny test batches into chunks (several partial sums, every lane busy).

    In use, a streaming chunk or a kernel-transform block carries at least
    256 KiB, so that a lane's dispatch pays for itself; test arrays are far
    smaller, and would run as one chunk on one lane. CLI tests run the
    defaults in their own processes, as does test_kernels' test of them.
    """
    from cnndsl.ops import winograd
    from cnndsl.runtime import workers

    monkeypatch.setattr(workers, "MIN_CHUNK_BYTES", 0)
    monkeypatch.setattr(winograd, "TRANSFORM_BLOCK_BYTES", 1)
