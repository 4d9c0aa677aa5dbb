"""The machine's limits, and how close a benchmark step comes to them (a roofline).

    python benchmarks/ceilings.py             # measure the ceilings, cost the networks
    python benchmarks/ceilings.py --json      # the ceilings as JSON

Ceilings are best cases, so each is the fastest of a few repeats:

- GEMM: float32 GFLOP/s of NumPy's BLAS (matmul with out=) on one core and on
  all cores, at a large square shape and at the shapes the benchmark's
  convolutions run (Winograd's batched GEMMs and transforms, im2col). "All
  cores" is the faster of one BLAS call on all threads and one
  single-threaded call per core on Python threads (how cnndsl's lanes run).
- Memory bandwidth: STREAM-like copy, scale, add and triad over float32
  arrays far larger than the caches, in GB/s of bytes read plus written, on
  one thread and on one thread per core over equal slices (NumPy's ufuncs
  release the GIL). NumPy has no one-pass triad: it runs as two passes that
  move five arrays, and counts them.

A step's cost comes from the compiled network (cnndsl.compile: the shape and
MAC passes), see `step_cost`. bench_step.py measures the ceilings at the start
of a run and after each network, keeps each rate's best (other load only
lowers them), and adds `roofline_section`'s tables under its results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (label, batch, m, k, n): batch GEMMs of (m, k)·(k, n), as the kernels call them.
GEMM_SHAPES: tuple[tuple[str, int, int, int, int], ...] = (
    ("square 1024³", 1, 1024, 1024, 1024),
    # Winograd F(4×4, 3×3): 36 GEMMs (tiles, c)·(c, f) a chunk of 128 tiles.
    ("Winograd 36 × (128×128)·(128×128)", 36, 128, 128, 128),
    ("Winograd 36 × (128×256)·(256×256)", 36, 128, 256, 256),
    # Its input transform: kron(Bᵀ, Bᵀ) over the chunk's tiles × channels.
    ("Winograd transform (36×36)·(36×16384)", 1, 36, 36, 16384),
    # im2col of a 3×3 conv, 64 -> 128 channels, 8 samples of 16×16 a chunk.
    ("im2col (2048×576)·(576×128)", 1, 2048, 576, 128),
    # The Fashion-MNIST stem: 7×7 taps of one channel, 8 samples of 28×28.
    ("im2col stem (6272×49)·(49×64)", 1, 6272, 49, 64),
)
STREAM_MIB = 256  # per array: 8× the largest L3 caches of common servers
GEMM_SAMPLE_FLOPS = 1.5e9  # each timed sample: ~15-30 ms at these rates
REPEATS = 3


@dataclass(frozen=True)
class Ceilings:
    """Measured rates: GEMM GFLOP/s and stream GB/s by label, on one core and on all."""

    cores: int
    gemm_one: dict[str, float]
    gemm_all: dict[str, float]
    stream_one: dict[str, float]
    stream_all: dict[str, float]
    measurements: int = 1

    def best(self, other: Ceilings) -> Ceilings:
        """Each rate the higher of two measurements: ceilings are best cases, load only lowers."""

        def top(mine: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
            return {k: max(v, theirs.get(k, 0.0)) for k, v in mine.items()}

        return Ceilings(
            self.cores,
            top(self.gemm_one, other.gemm_one),
            top(self.gemm_all, other.gemm_all),
            top(self.stream_one, other.stream_one),
            top(self.stream_all, other.stream_all),
            self.measurements + other.measurements,
        )

    @property
    def gflops(self) -> float:
        """The GEMM ceiling: the best all-core rate of any shape."""
        return max(self.gemm_all.values())

    @property
    def gbps(self) -> float:
        """The bandwidth ceiling: the best all-core rate of any stream kernel."""
        return max(self.stream_all.values())


@dataclass(frozen=True)
class StepCost:
    """One step's arithmetic and memory traffic, from the compiled network."""

    flops: int
    bytes: int

    def roofline_s(self, ceilings: Ceilings) -> float:
        """The step's time at the ceilings: the slower of its arithmetic and its traffic."""
        return max(self.flops / (ceilings.gflops * 1e9), self.bytes / (ceilings.gbps * 1e9))

    def bound(self, ceilings: Ceilings) -> str:
        """Which ceiling sets the roofline time: 'compute' or 'memory'."""
        compute = self.flops / (ceilings.gflops * 1e9)
        return "compute" if compute >= self.bytes / (ceilings.gbps * 1e9) else "memory"


# ---- measuring ----


def core_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """Limit NumPy's BLAS to `count` threads inside the block (no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(count, user_api="blas"):
        yield


def run_lanes(work: Callable[[int], None], lanes: int) -> float:
    """Seconds for `lanes` threads to run work(0..lanes-1) at once, from a common start."""
    if lanes == 1:
        start = time.perf_counter()
        work(0)
        return time.perf_counter() - start
    barrier = threading.Barrier(lanes + 1)

    def lane(i: int) -> None:
        barrier.wait()
        work(i)

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(lanes)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def gemm_rate(shape: tuple[int, int, int, int], lanes: int, threads: int) -> float:
    """Best float32 GFLOP/s of `lanes` concurrent GEMM loops, each BLAS call on `threads`."""
    batch, m, k, n = shape
    lead = (batch,) if batch > 1 else ()
    rng = np.random.default_rng(0)
    operands = [
        (
            rng.random((*lead, m, k), dtype=np.float32),
            rng.random((*lead, k, n), dtype=np.float32),
            np.empty((*lead, m, n), dtype=np.float32),
        )
        for _ in range(lanes)
    ]
    flops = 2 * batch * m * k * n
    calls = max(1, round(GEMM_SAMPLE_FLOPS / flops))

    def work(i: int) -> None:
        a, b, out = operands[i]
        for _ in range(calls):
            np.matmul(a, b, out=out)

    with blas_threads(threads):
        for i in range(lanes):  # warm-up: BLAS start-up, first touch of out
            np.matmul(operands[i][0], operands[i][1], out=operands[i][2])
        best = min(run_lanes(work, lanes) for _ in range(REPEATS))
    return lanes * calls * flops / best / 1e9


def stream_kernels(
    a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> dict[str, tuple[int, Callable[[slice], None]]]:
    """STREAM's kernels as NumPy calls on a slice: name -> (arrays moved, kernel)."""

    def triad(s: slice) -> None:
        np.multiply(c[s], 3.0, out=a[s])
        np.add(a[s], b[s], out=a[s])

    return {
        "copy": (2, lambda s: np.copyto(a[s], b[s])),
        "scale": (2, lambda s: np.multiply(b[s], 3.0, out=a[s])),
        # In place, a written line was just read: no read-for-ownership (as SGD, relu).
        "scale in place": (2, lambda s: np.multiply(a[s], 3.0, out=a[s])),
        "add": (3, lambda s: np.add(b[s], c[s], out=a[s])),
        "triad (two NumPy passes)": (5, triad),
    }


def stream_rates(lanes: int, mib: int = STREAM_MIB) -> dict[str, float]:
    """Best GB/s (bytes read + written) of each stream kernel, the arrays split over lanes."""
    size = mib * 2**20 // 4
    a, b, c = (np.full(size, v, dtype=np.float32) for v in (0.0, 1.0, 2.0))  # touched
    bounds = np.linspace(0, size, lanes + 1).astype(int)
    parts = [slice(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    rates = {}
    for name, (arrays, kernel) in stream_kernels(a, b, c).items():

        def work(i: int, kernel: Callable[[slice], None] = kernel) -> None:
            kernel(parts[i])

        best = min(run_lanes(work, lanes) for _ in range(REPEATS))
        rates[name] = arrays * size * 4 / best / 1e9
    return rates


def measure_ceilings() -> Ceilings:
    """Measure the GEMM and bandwidth ceilings (a few seconds; best of REPEATS each)."""
    cores = core_count()
    gemm_one, gemm_all = {}, {}
    for label, *shape in GEMM_SHAPES:
        dims = (shape[0], shape[1], shape[2], shape[3])
        gemm_one[label] = gemm_rate(dims, lanes=1, threads=1)
        gemm_all[label] = max(gemm_rate(dims, 1, cores), gemm_rate(dims, cores, 1))
    return Ceilings(cores, gemm_one, gemm_all, stream_rates(1), stream_rates(cores))


def measure_ceilings_apart() -> Ceilings:
    """measure_ceilings in a fresh subprocess, so that its arrays stay out of this process.

    Linux carries a process's peak RSS over into the processes it starts
    (ru_maxrss survives fork and exec): 768 MiB of stream arrays here would
    show as every later benchmark worker's peak.
    """
    done = subprocess.run(
        [sys.executable, __file__, "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring the ceilings failed:\n{done.stderr}")
    return Ceilings(**json.loads(done.stdout))


# ---- a step's cost ----


def fuses_into_producer(layer: Any, input_size: int) -> bool:
    """Whether a layer's output need not exist as a tensor of its own.

    An activation or dropout can run inside the pass that makes its input, a
    zero border folds into the next conv's padding, and a reshape of as many
    values is a view.
    """
    from cnndsl.ops import OPS

    op = OPS[layer.op]
    if op.is_activation or op.dropped_at_inference or op.zero_border(layer.attrs) is not None:
        return True
    return op.family == "shape" and math.prod(layer.shape) == input_size


def step_cost(graph: Any, batch: int, train: bool, itemsize: int = 4) -> StepCost:
    """FLOPs and bytes of one step (train: forward, backward, SGD with momentum) of a graph.

    FLOPs: 2 per MAC of the MAC pass (direct convolution, as PyTorch counts),
    forward; in training each layer with trainable weights again for its weight
    gradient, and each layer again for its input gradient unless nothing before
    it trains (the executor skips those, e.g. the first conv's). Bytes, a lower
    bound: forward writes each tensor once and reads it once; training reads it
    once more in backward and writes and reads its gradient where one is
    needed; weights are read once (inference) or read, read for dx, gradient
    written and SGD-with-momentum read 3 and wrote 2 (8 passes, training).
    """
    requires: dict[str, bool] = {}
    flops = values = 0
    for layer in graph:
        grad_in = any(requires[i] for i in layer.inputs)
        own = train and layer.trainable_params > 0
        requires[layer.path] = own or grad_in
        flops += 2 * layer.macs * batch * (1 + own + (train and grad_in))
        size = math.prod(layer.shape) * batch
        if layer.op == "input":
            values += size * (2 if train else 1)  # read forward, and by dW in backward
            continue
        input_size = math.prod(graph[layer.inputs[0]].shape) * batch if layer.inputs else 0
        if fuses_into_producer(layer, input_size):
            continue
        backward = 1 + 2 * requires[layer.path] if train else 0  # read it; its gradient, w + r
        values += size * (2 + backward)
    params = sum(layer.params for layer in graph)
    trainable = sum(layer.trainable_params for layer in graph) if train else 0
    return StepCost(int(flops), int((values + params + 7 * trainable) * itemsize))


def net_cost(net: dict[str, Any], batch: int) -> StepCost:
    """The step cost of one of bench_step.py's NETS entries, the graph as its worker runs it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import cnndsl
    from cnndsl.passes.fold import fold_inference

    graph = cnndsl.compile(net["spec"], **net["params"]).graph
    if not net["train"]:
        graph = fold_inference(graph)
    return step_cost(graph, batch, bool(net["train"]))


# ---- reporting ----

MODEL = (
    "FLOPs count 2 per multiply-add of the compiler's MAC pass (direct convolution,"
    " as PyTorch's FLOP counter counts, so Winograd's fewer multiplies show as a"
    " higher rate): forward, and in training each weighted layer's weight gradient"
    " and each layer's input gradient (not the first layer's, which no weight"
    " before it needs). Bytes are a lower bound: forward writes each activation"
    " once and reads it once, backward reads it once more and writes and reads its"
    " gradient; activations, dropout, flatten and zero padding count as fused into"
    " the layer before; weights move once at inference, 8 times in training"
    " (forward, dx, dW, and SGD with momentum reading three arrays and writing two)."
    " Roofline time = max(FLOPs / GEMM ceiling, bytes / bandwidth ceiling), with the"
    " all-core ceilings below; a framework's time is given as a multiple of it, and"
    " in brackets the share of the ceiling it reaches. A share above 100% means fewer"
    " operations than counted (Winograd) or ceilings lowered by other load."
)


def roofline_section(
    rows: list[Any], nets: dict[str, dict[str, Any]], batch: int, ceilings: Ceilings
) -> list[str]:
    """Markdown: each row's FLOPs, bytes, achieved rates and times over the roofline time."""
    lines = [
        "",
        "## Against the machine's limits",
        "",
        MODEL,
        "",
        "| network | GFLOP/step | MB/step | roofline time | cnndsl GFLOP/s | cnndsl GB/s |"
        " cnndsl / roofline | PyTorch GFLOP/s | PyTorch GB/s | PyTorch / roofline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, med, *_ in rows:
        cost = net_cost(nets[net], batch)
        roof = cost.roofline_s(ceilings)
        cells = [
            nets[net]["title"],
            f"{cost.flops / 1e9:.2f}",
            f"{cost.bytes / 1e6:.0f}",
            f"{roof * 1000:.1f} ms ({cost.bound(ceilings)})",
        ]
        for framework in ("cnndsl", "torch"):
            seconds = med[framework]
            cells += [
                f"{cost.flops / seconds / 1e9:.1f}",
                f"{cost.bytes / seconds / 1e9:.2f}",
                f"{seconds / roof:.1f}× ({roof / seconds:.0%})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", *ceiling_tables(ceilings)]


def ceiling_tables(ceilings: Ceilings) -> list[str]:
    """Markdown tables of the measured GEMM rates and stream bandwidths."""
    lines = [
        f"Ceilings: GEMM {ceilings.gflops:.0f} GFLOP/s, bandwidth {ceilings.gbps:.1f} GB/s"
        f" (each rate the best of {ceilings.measurements} measurement(s) spread over the"
        f" run, each the best of {REPEATS} timings):",
        "",
        f"| float32 GEMM, NumPy BLAS | GFLOP/s, 1 core | GFLOP/s, {ceilings.cores} cores |",
        "|---|---:|---:|",
    ]
    for label in ceilings.gemm_one:
        lines.append(
            f"| {label} | {ceilings.gemm_one[label]:.1f} | {ceilings.gemm_all[label]:.1f} |"
        )
    lines += [
        "",
        f"| memory, {STREAM_MIB} MiB float32 arrays | GB/s, 1 thread |"
        f" GB/s, {ceilings.cores} threads |",
        "|---|---:|---:|",
    ]
    for label in ceilings.stream_one:
        lines.append(
            f"| {label} | {ceilings.stream_one[label]:.1f} | {ceilings.stream_all[label]:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure and print the ceilings, and the benchmark networks' step costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the ceilings as JSON only")
    args = parser.parse_args(argv)
    ceilings = measure_ceilings()
    if args.json:
        print(json.dumps(asdict(ceilings), indent=1))
        return 0
    print("\n".join(ceiling_tables(ceilings)))
    from bench_step import BATCH, NETS

    print("\n| network | GFLOP/step | MB/step | roofline time | bound |\n|---|---:|---:|---:|---|")
    for spec in NETS.values():
        cost = net_cost(spec, BATCH)
        print(
            f"| {spec['title']} | {cost.flops / 1e9:.2f} | {cost.bytes / 1e6:.0f} |"
            f" {cost.roofline_s(ceilings) * 1000:.1f} ms | {cost.bound(ceilings)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
