"""Single-pass CPU kernels compiled by Numba: the NumPy backend's overrides.

The kernels in `cnndsl.ops` are written once against `xp` and run as NumPy
passes, several per op; for the memory-bound ops (depthwise convs, batchnorm
with its activation, pooling backward) each pass reads and writes the whole
chunk. The kernels here do the same work in one or two passes, compiled to
machine code on first use (`cache=True`: later processes load them from
disk) and released from the GIL (`nogil=True`), so the backend's lanes run
them side by side on their chunks, as they run NumPy's.

Each module defines `OVERRIDES`: names the ops look up in `ctx.overrides`,
mapped to functions with the signature of the NumPy kernel they replace.
Without Numba, or with CNNDSL_JIT=0 in the environment, there are none and
the NumPy kernels run: same results (within float rounding), slower.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

# The modules that contribute overrides, in the order they are merged.
MODULES: tuple[str, ...] = ("batchnorm", "winograd", "depthwise", "pool")

_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether Numba imports here and CNNDSL_JIT does not switch the kernels off."""
    global _AVAILABLE
    if os.environ.get("CNNDSL_JIT", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if _AVAILABLE is None:
        try:
            import numba  # noqa: F401
        except Exception:  # NOTE: ImportError, or a Numba built for another NumPy
            _AVAILABLE = False
        else:
            _AVAILABLE = True
    return _AVAILABLE


def overrides() -> dict[str, Callable[..., Any]]:
    """Every module's OVERRIDES merged (empty when `available()` is False)."""
    if not available():
        return {}
    merged: dict[str, Callable[..., Any]] = {}
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        merged.update(module.OVERRIDES)
    return merged


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile `fn` the way every kernel here is compiled: nopython, no GIL, cached on disk.

    NOTE: not `parallel=True`: the backend's lanes already run one chunk per
    core, and Numba's own thread pool would compete with them for the cores.
    `fastmath` stays off so NaN and infinity propagate as in NumPy (the NaN
    search relies on it) and sums keep their order.
    """
    import numba

    return numba.njit(nogil=True, cache=True, fastmath=False, error_model="numpy")(fn)
