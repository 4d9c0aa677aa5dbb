"""Compile time: ResNet-34 end to end, and generated chains of growing length.

Prints a table of layers vs seconds and the time per layer, so linear growth
shows as a flat last column. Usage: python benchmarks/bench_compile.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cnndsl

ROOT = Path(__file__).resolve().parent.parent


def chain(n: int) -> str:
    """A network of n alternating conv/relu layers on a small input."""
    links = "\n".join(
        "        -> conv(4, 1)" if i % 2 == 0 else "        -> relu" for i in range(n)
    )
    return f"network chain() {{\n    input x: [8, 8, 4]\n    return x\n{links}\n}}\n"


def best_of(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Median wall time of fn() over a few runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    """Run the benchmark and print the results."""
    cnndsl.compile(ROOT / "specs" / "resnet34.cnn")  # build the parser once
    t = best_of(lambda: cnndsl.compile(ROOT / "specs" / "resnet34.cnn"))
    print(f"resnet34.cnn: {t * 1000:.1f} ms")
    print(f"{'layers':>8} {'seconds':>9} {'µs/layer':>9}")
    for n in (500, 1000, 2000, 5000, 10000):
        text = chain(n)
        t = best_of(lambda text=text: cnndsl.compile(text, max_layers=20000), repeats=1)
        print(f"{n:>8} {t:>9.3f} {t / n * 1e6:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
