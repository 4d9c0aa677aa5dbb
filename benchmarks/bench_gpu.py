"""GPU timings: cnndsl's CuPy backend against PyTorch CUDA on the same GPU (gpu_check.sh).

    python3 benchmarks/bench_gpu.py [--steps 5] [--out DIR]

Training steps (forward, backward, SGD momentum update) at batch 64 of the
Fashion-MNIST CNN (specs/fashion_mnist.cnn, 28×28×1) and ResNet-34
(specs/resnet34.cnn, 224×224×3), the same layers in both frameworks
(benchmarks/torch_models.py). Both take the batch from host memory every step.
Times are medians of `--steps` steps after two warm-up steps (CuPy compiles its
kernels in the first), each closed by a device synchronisation. PyTorch is
optional: without it (or without CUDA in it) only cnndsl's times are printed.
PyTorch runs twice: as it comes (cuDNN may use TF32 for convolutions) and with
TF32 off, which is the arithmetic cnndsl's float32 GEMMs do (CuPy uses TF32
only with CUPY_TF32=1; gpu_check.sh sets 0). Memory is reserved bytes on both:
CuPy's memory pool (`total_bytes`, what it holds from the driver) and
PyTorch's `max_memory_reserved`. --winograd lets the CuPy backend choose Winograd.
Writes gpu_results.md and gpu_results.json to --out (default: $OUT if set).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 64
LR, MOMENTUM = 0.01, 0.9
NETS = {  # name: (spec, input shape, benchmarks/torch_models.py MODELS key); quick one first
    "fashion_mnist": ("specs/fashion_mnist.cnn", (28, 28, 1), "fashion_mnist"),
    "resnet34": ("specs/resnet34.cnn", (224, 224, 3), "resnet34_infer"),
}


def timed(step: Callable[[], None], sync: Callable[[], None], steps: int) -> list[float]:
    """Seconds per step, each closed by `sync`, after two warm-up steps."""
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def cnndsl_times(
    net: str, steps: int, standin: bool = False, winograd: bool = False
) -> dict[str, Any]:
    """cnndsl on the cupy backend: step times and the memory pool's high-water mark.

    standin=True runs the same code with NumPy standing in for CuPy (a dry run on a CPU).
    """
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import cnndsl
    from cnndsl.runtime.backends.cupy_backend import CupyBackend
    from cnndsl.training.model import Model

    spec, shape, _ = NETS[net]
    backend = CupyBackend(xp=np, winograd=winograd) if standin else CupyBackend(winograd=winograd)
    pool = getattr(backend.xp, "get_default_memory_pool", None)
    if pool is not None:
        pool().free_all_blocks()  # reserved bytes: this network's, not the last one's
    model = Model(cnndsl.compile(str(ROOT / spec)).graph, backend=backend, seed=0)
    model.compile(optimizer={"name": "sgd", "lr": LR, "momentum": MOMENTUM})
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, *shape), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    times = timed(lambda: model.train_step(x, y), model.backend.synchronize, steps)
    return {"times": times, "memory_mb": pool().total_bytes() / 2**20 if pool else 0.0}


def torch_times(net: str, steps: int, tf32: bool) -> dict[str, Any] | None:
    """PyTorch CUDA, or None where torch or CUDA is missing."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    sys.path.insert(0, str(HERE))
    from torch_models import MODELS

    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    _, shape, name = NETS[net]
    model = MODELS[name]().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    h, w, c = shape
    x = torch.rand(BATCH, c, h, w)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x.cuda()), y.cuda()).backward()
        opt.step()

    torch.cuda.empty_cache()  # reserved bytes: this network's, not the last one's
    torch.cuda.reset_peak_memory_stats()
    times = timed(step, torch.cuda.synchronize, steps)
    return {"times": times, "memory_mb": torch.cuda.max_memory_reserved() / 2**20}


def main(argv: list[str] | None = None) -> int:
    """Time every network, print the table, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    parser.add_argument(
        "--standin", action="store_true", help="NumPy in place of CuPy, no PyTorch: a dry run"
    )
    parser.add_argument("--winograd", action="store_true", help="let the CuPy backend use Winograd")
    args = parser.parse_args(argv)
    rows: dict[str, dict[str, Any]] = {}
    for net in args.nets.split(","):
        rows[net] = {"cnndsl": cnndsl_times(net, args.steps, args.standin, args.winograd)}
        rows[net]["torch"] = None if args.standin else torch_times(net, args.steps, tf32=True)
        rows[net]["torch_fp32"] = None if args.standin else torch_times(net, args.steps, False)
        # Print and write after every network: a run stopped by a timeout keeps what it had.
        table = render(rows)
        print(table, flush=True)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_results.md").write_text(table + "\n")
            (out / "gpu_results.json").write_text(json.dumps(rows, indent=1))
    return 0


def render(rows: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: median step per framework, ratios, memory."""

    def med(r: dict[str, Any] | None) -> str:
        return f"{statistics.median(r['times']) * 1000:.1f} ms" if r else "n/a"

    def ratio(r: dict[str, Any], t: dict[str, Any] | None) -> str:
        if not t:
            return "n/a"
        return f"{statistics.median(r['times']) / statistics.median(t['times']):.2f}×"

    lines = [
        f"Training step, batch {BATCH}, float32; ratio = cnndsl / PyTorch.",
        "",
        "| network | cnndsl (cupy) | PyTorch | ratio | PyTorch, TF32 off | ratio |"
        " cnndsl reserved | PyTorch reserved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, r in rows.items():
        t, f = r["torch"], r["torch_fp32"]
        peak = f"{t['memory_mb']:.0f} MiB" if t else "n/a"
        lines.append(
            f"| {net} | {med(r['cnndsl'])} | {med(t)} | {ratio(r['cnndsl'], t)} | {med(f)} |"
            f" {ratio(r['cnndsl'], f)} | {r['cnndsl']['memory_mb']:.0f} MiB | {peak} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
