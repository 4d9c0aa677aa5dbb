"""Measure the conv cost model's constants (cnndsl/ops/conv_costs.py COSTS) on this machine.

    python benchmarks/measure_conv_costs.py            # print COSTS to paste into conv_costs.py
    python benchmarks/measure_conv_costs.py --check    # also each shape's measured and predicted

Times the kernels themselves (conv2d_forward and conv2d_backward's dW, with the
backend's compiled Winograd transforms where Numba is installed) on one lane
and one BLAS thread, batch 64, over SHAPES (3×3 stride-1 convs from 3 to 512
channels, maps from 4×4 to 32×32), alternating the methods; each time is the
median of REPEATS after a warm-up. Then fits, per kernel, nanoseconds per
GEMM FLOP, per value copied or transformed, per per-chunk value and per
pixel or tile
(`conv_costs.im2col_terms`, `winograd_terms`) by least squares on relative
error, dropping a term whose fitted cost comes out negative. Other load only
slows a run: run it on a quiet machine and note the load average it prints.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnndsl.ops import conv_costs  # noqa: E402
from cnndsl.ops.conv_kernels import conv2d_backward, conv2d_forward  # noqa: E402
from cnndsl.ops.window import Geometry, geometry_of  # noqa: E402
from cnndsl.runtime.workers import Workers  # noqa: E402

BATCH = conv_costs.PLAN_BATCH
REPEATS = 5
# (map size, c, f): the benchmark networks' 3×3 stride-1 convs and the edges around them
SHAPES = (
    (32, 4, 4),
    (32, 8, 8),
    (32, 8, 32),
    (32, 3, 64),
    (32, 16, 16),
    (28, 16, 64),
    (32, 32, 32),
    (32, 64, 64),
    (16, 64, 128),
    (14, 16, 32),
    (14, 128, 128),
    (16, 128, 128),
    (8, 256, 256),
    (7, 256, 256),
    (6, 256, 256),
    (4, 256, 256),
    (4, 512, 512),
    (3, 512, 512),
    (2, 512, 512),
)


def _overrides() -> dict[str, Callable[..., Any]]:
    try:
        from cnndsl.runtime.backends.numba_kernels import overrides
    except ImportError:  # NOTE: without Numba the NumPy transforms are what runs
        return {}
    return overrides()


def time_kernels(size: int, c: int, f: int, fast: dict[str, Any]) -> dict[str, float]:
    """Median seconds per sample of each kernel on one (size, size, c) -> f conv."""
    rng = np.random.default_rng(0)
    geo = geometry_of((size, size, c), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    x = rng.standard_normal((BATCH, size, size, c), dtype=np.float32)
    k = rng.standard_normal((3, 3, c, f), dtype=np.float32)
    dz = rng.standard_normal((BATCH, size, size, f), dtype=np.float32)
    workers = Workers()

    def forward(method: str) -> Callable[[], Any]:
        return lambda: conv2d_forward(np, x, k, None, geo, False, workers, method, None, fast)

    def grad(method: str) -> Callable[[], Any]:
        return lambda: conv2d_backward(
            np, x, dz, k, geo, want_dx=False, want_db=False, method="full", relu_out=None,
            workers=workers, kernel_method=method, overrides=fast,
        )  # fmt: skip

    runs = {
        "im2col": forward("im2col"),
        "winograd": forward("winograd"),
        "winograd_grad": grad("winograd"),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(REPEATS):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) / BATCH for name, t in times.items()}


def terms(kind: str, geo: Geometry, f: int) -> conv_costs.Terms:
    """The model's terms of one sample for a kernel (dW measured without kept tiles)."""
    if kind == "im2col":
        return conv_costs.im2col_terms(geo, f)
    return conv_costs.winograd_terms(geo, f, grad=kind == "winograd_grad", kept=False)


def fit(rows: list[conv_costs.Terms], seconds: list[float]) -> tuple[float, ...]:
    """Nanoseconds per unit of each term, by least squares on relative error, all >= 0."""
    a = np.array(rows) / np.array(seconds)[:, None] * 1e-9
    b = np.ones(len(seconds))
    used = [j for j in range(a.shape[1]) if a[:, j].any()]
    while True:
        coef, *_ = np.linalg.lstsq(a[:, used], b, rcond=None)
        if (coef >= 0).all():
            break
        used.pop(int(np.argmin(coef)))
    out = [0.0] * a.shape[1]
    for j, value in zip(used, coef, strict=True):
        out[j] = float(f"{value:.4g}")
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    """Measure, fit and print COSTS (with --check, each shape's fit too)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print measured and predicted")
    args = parser.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        pass
    fast = _overrides()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    measured = {}
    for size, c, f in SHAPES:
        measured[size, c, f] = time_kernels(size, c, f, fast)
    costs = {}
    for kind in ("im2col", "winograd", "winograd_grad"):
        rows, secs = [], []
        for (size, c, f), times in measured.items():
            geo = geometry_of((size, size, c), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
            rows.append(terms(kind, geo, f))
            secs.append(times[kind])
        costs[kind] = fit(rows, secs)
    if args.check:
        conv_costs.COSTS.update(costs)
        for (size, c, f), times in measured.items():
            geo = geometry_of((size, size, c), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
            predicted = {kind: conv_costs.predict(kind, terms(kind, geo, f)) for kind in times}
            cells = [f"{k} {times[k] * 1e6:.0f}/{predicted[k] * 1e6:.0f}" for k in times]
            print(f"{size}×{size}×{c}→{f} µs/sample measured/predicted: " + ", ".join(cells))
    today = datetime.date.today().isoformat()
    print(f"# measured {today}, {platform.machine()}, {os.cpu_count()} cores,")
    print(f"# load average {load:.2f}, one thread, float32, compiled transforms: {bool(fast)}")
    print("COSTS = {")
    for kind, coef in costs.items():
        print(f'    "{kind}": {coef!r},')
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
