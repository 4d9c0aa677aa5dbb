"""Compile time: spec text to a lowered plan, for zoo networks and chains of growing length.

Prints, for ResNet-34 and ResNet-152, the time from text to a shaped Network
(parse, elaborate, passes) and on to a lowered Plan (`lower`, with fusion);
then a table of generated conv/relu chains: layers vs seconds and µs per
layer, so linear growth shows as a flat last column.
Usage: python benchmarks/bench_compile.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cnndsl
from cnndsl.runtime.lower import lower

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.2  # seconds, ResNet-152 from text to a lowered plan


def chain(n: int) -> str:
    """A network of n alternating conv/relu layers on a small input."""
    links = "\n".join(
        "        -> conv(4, 1)" if i % 2 == 0 else "        -> relu" for i in range(n)
    )
    return f"network chain() {{\n    input x: [8, 8, 4]\n    return x\n{links}\n}}\n"


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
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
    print(f"{'network':>10} {'layers':>7} {'compile':>9} {'+ lower':>9}")
    for name in ("resnet34", "resnet152"):
        text = f"zoo.{name}"
        net = cnndsl.compile(text)
        t_compile = median_time(lambda text=text: cnndsl.compile(text), 5)
        t_total = median_time(lambda text=text: lower(cnndsl.compile(text).graph), 5)
        print(f"{name:>10} {len(net.graph):>7} {t_compile * 1000:>7.1f}ms {t_total * 1000:>7.1f}ms")
        if name == "resnet152":
            verdict = "within" if t_total < GOAL else "OVER"
            print(f"   ResNet-152 text -> plan: {t_total:.3f} s, {verdict} the {GOAL} s goal")
    print(f"\n{'layers':>8} {'compile s':>10} {'lower s':>9} {'µs/layer':>9}")
    for n in (500, 1000, 2000, 5000, 10000):
        text = chain(n)
        start = time.perf_counter()
        net = cnndsl.compile(text, max_layers=20000)
        mid = time.perf_counter()
        lower(net.graph)
        end = time.perf_counter()
        print(f"{n:>8} {mid - start:>10.3f} {end - mid:>9.3f} {(end - start) / n * 1e6:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
