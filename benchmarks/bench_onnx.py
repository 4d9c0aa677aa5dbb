"""Inference: cnndsl against ONNX Runtime on the same exported file, as ratios in one run.

ONNX Runtime is what a user would deploy instead of cnndsl's own executor, so
it is the peer for inference speed. For each network, the model is exported
with `cnndsl export`'s code (NHWC input, as the spec), both run the same
batch back to back, alternating, and the table gives the median time of
each and their ratio (cnndsl / ONNX Runtime: below 1 means cnndsl is faster).
The outputs are checked equal first. Needs the `onnx` extra.

Usage: python benchmarks/bench_onnx.py [--repeats 7] [--batch 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cnndsl
from cnndsl.formats.onnx_export import export_onnx

# (zoo network, spec parameters): sizes a shared 2-core machine runs in seconds.
NETWORKS = {
    "resnet34": {"size": 112, "classes": 1000},
    "mobilenet": {"size": 128, "classes": 1000},
}


def alternating(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall times of first() and second(), called in turn `repeats` times after a warm-up each.

    Alternating, so drift on a shared machine hits both alike.
    """
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table of medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("needs the onnx extra: pip install 'cnndsl[onnx]'", file=sys.stderr)
        return 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"batch {args.batch}, {args.repeats} repeats, {args.threads} threads,"
          f" onnxruntime {ort.__version__}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'network':<22} {'cnndsl ms':>10} {'ORT ms':>9} {'ratio':>7}")
    rng = np.random.default_rng(0)
    for name, params in NETWORKS.items():
        net = cnndsl.compile(f"zoo.{name}", **params)
        model = net.build(seed=0)
        x = rng.random((args.batch, *net.input_shape), dtype=np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model, path)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        ours = model.predict(x, batch_size=args.batch)
        theirs = session.run(None, feed)[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5)
        cn, rt = alternating(
            lambda m=model, x=x: m.predict(x, batch_size=args.batch),
            lambda s=session, f=feed: s.run(None, f),
            args.repeats,
        )
        a, b = statistics.median(cn), statistics.median(rt)
        label = f"{name} {params['size']}²"
        print(f"{label:<22} {a * 1000:>10.1f} {b * 1000:>9.1f} {a / b:>6.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
