"""cnndsl (NumPy backend) against PyTorch CPU: training steps and an inference pass.

    python benchmarks/bench_step.py                # the whole comparison -> RESULTS.md
    python benchmarks/bench_step.py --repeats 3 --steps 2 --nets fashion_mnist

Networks, batch 64, the same layers in both frameworks (benchmarks/torch_models.py):

- fashion_mnist:  training step of specs/fashion_mnist.cnn (28×28×1)
- resnet18_cifar: training step of a CIFAR-sized ResNet-18 (32×32×3, 3×3 stem,
  no pooling; zoo.resnet18 at size=32 keeps the ImageNet stem, which shrinks
  the maps to 8×8 before the first stage and does 15× less work)
- mobilenet96:    training step of zoo.mobilenet at 96×96×3
- resnet34_infer: inference forward of specs/resnet34.cnn at 224×224×3
  (cnndsl folds batchnorm into the convolutions first, `passes/fold.py`;
  PyTorch runs eval() under inference_mode)

A training step is forward, backward and an SGD (momentum 0.9) update.
Each measurement runs in its own subprocess (fresh heap, its own peak RSS),
the two frameworks alternate which goes first, and each subprocess times
several steps after a warm-up step. The table gives medians; ratio = cnndsl
/ torch. Unless --no-profile, the first cnndsl worker of each network also
reports where the step time goes, by op (a separate subprocess, not timed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench_notes import LIMITS, NOTES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCH = 64
LR, MOMENTUM = 0.01, 0.9

RESNET18_CIFAR = """
# ResNet-18 for CIFAR-sized inputs: a 3×3 stem without pooling, then four stages.
defaults conv(kernel=3, stride=1, padding=same, bias=false)

block residual_unit(filters, stride=1) {
    main = input
        -> conv(filters, stride=stride) -> batchnorm -> relu
        -> conv(filters) -> batchnorm
    skip = input
    if stride > 1 {
        skip = input -> conv(filters, 1, stride=stride) -> batchnorm
    }
    return relu(main + skip)
}

network resnet18_cifar(classes=10) {
    input image: [32, 32, 3]
    x = image -> conv(64) -> batchnorm -> relu
    for filters in [64] * 2 + [128] * 2 + [256] * 2 + [512] * 2 {
        x = x -> residual_unit(filters, stride=1 if x.channels == filters else 2)
    }
    return x -> global_avgpool -> dense(classes, activation=softmax)
}
"""

NETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "shape": (28, 28, 1),
        "title": "Fashion-MNIST CNN (28×28×1), training step",
        "spec": str(ROOT / "specs" / "fashion_mnist.cnn"),
        "params": {},
        "train": True,
        "goal": 0.85,
    },
    "resnet18_cifar": {
        "shape": (32, 32, 3),
        "title": "ResNet-18, CIFAR-sized (32×32×3), training step",
        "spec": RESNET18_CIFAR,
        "params": {},
        "train": True,
        "goal": 0.85,
    },
    "mobilenet96": {
        "shape": (96, 96, 3),
        "title": "MobileNet (96×96×3), training step",
        "spec": "zoo.mobilenet",
        "params": {"size": 96},
        "train": True,
        "goal": 1.0,
    },
    "resnet34_infer": {
        "shape": (224, 224, 3),
        "title": "ResNet-34 (224×224×3), inference forward",
        "spec": str(ROOT / "specs" / "resnet34.cnn"),
        "params": {},
        "train": False,
        "goal": 0.5,
    },
}


# ---- workers: one framework, one network, in a fresh process ----


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cnndsl_worker(net: str, steps: int, profile: bool) -> dict[str, Any]:
    """Time `steps` cnndsl training steps or forward passes (with profile: time per op)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import cnndsl
    from cnndsl.ops import OPS
    from cnndsl.passes.fold import fold_inference, fold_weights
    from cnndsl.training.model import Model

    spec = NETS[net]
    network = cnndsl.compile(spec["spec"], **spec["params"])
    model = network.build(seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, *spec["shape"]), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    if spec["train"]:
        model.compile(optimizer={"name": "sgd", "lr": LR, "momentum": MOMENTUM})

        def step() -> None:
            model.train_step(x, y)

    else:
        folded = fold_inference(network.graph)
        weights = fold_weights(folded, dict(zip(model.specs, model.get_weights(), strict=True)))
        model = Model(folded, seed=0)
        model.set_weights([weights[k] for k in model.specs])

        def step() -> None:
            model(x)

    spent: dict[str, float] = defaultdict(float)
    if profile:
        for name, op in OPS.items():
            for method in ("forward", "backward"):
                setattr(op, method, _timed(getattr(op, method), f"{name}.{method}", spent))
    step()  # warm-up: first-touch allocations, BLAS start-up
    spent.clear()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = {"times": times, "rss_mb": peak_rss_mb()}
    if profile:
        result["profile"] = {k: v / steps for k, v in sorted(spent.items(), key=lambda i: -i[1])}
    return result


def _timed(fn: Any, label: str, spent: dict[str, float]) -> Any:
    def wrapper(*args: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            spent[label] += time.perf_counter() - start

    return wrapper


def torch_worker(net: str, steps: int) -> dict[str, Any]:
    """Time `steps` PyTorch training steps (or eval forward passes) of the same network."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch.nn.functional as F
    from torch_models import MODELS

    torch.manual_seed(0)
    model = MODELS[net]()
    h, w, c = NETS[net]["shape"]
    x = torch.rand(BATCH, c, h, w)
    y = torch.randint(0, 10, (BATCH,))
    if NETS[net]["train"]:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"times": times, "rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}


# ---- the driver ----


def run_worker(framework: str, net: str, steps: int, profile: bool) -> dict[str, Any]:
    """Run one worker in a fresh subprocess and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", framework, "--net", net, "--steps", str(steps)]
    if profile:
        cmd.append("--profile")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{framework} worker for {net} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy as np

    info = {
        "cpu": cpu,
        "cores": str(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "os": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "not installed"
    try:
        from threadpoolctl import threadpool_info

        np.ones((2, 2)) @ np.ones((2, 2))
        blas = [
            f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
            for i in threadpool_info()
            if i["user_api"] == "blas"
        ]
        info["numpy BLAS"] = ", ".join(blas)
    except ImportError:
        pass
    return info


def load_average() -> str:
    """The 1-minute load average (other processes on the machine skew absolute times)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --worker, one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="subprocess pairs per network")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument("--nets", default=",".join(NETS), help="comma-separated networks")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="results file")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the per-op cnndsl breakdown"
    )
    parser.add_argument("--worker", choices=["cnndsl", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [net for net in args.nets.split(",") if net not in NETS]
    if unknown:
        parser.error(f"unknown network {', '.join(unknown)}; choose from {', '.join(NETS)}")

    if args.worker:
        if args.worker == "cnndsl":
            result = cnndsl_worker(args.net, args.steps, args.profile)
        else:
            result = torch_worker(args.net, args.steps)
        print(json.dumps(result))
        return 0

    from ceilings import measure_ceilings_apart, roofline_section

    rows = []
    profiles = {}
    loads = [load_average()]
    ceilings = measure_ceilings_apart()  # GEMM and bandwidth, for the roofline table
    for net in args.nets.split(","):
        runs: dict[str, list[dict[str, Any]]] = {"cnndsl": [], "torch": []}
        for r in range(args.repeats):
            order = ["cnndsl", "torch"] if r % 2 == 0 else ["torch", "cnndsl"]
            for framework in order:
                result = run_worker(framework, net, args.steps, False)
                runs[framework].append(result)
                print(
                    f"{net} {framework} repeat {r + 1}: median step"
                    f" {statistics.median(result['times']):.3f} s",
                    file=sys.stderr,
                )
        med = {f: statistics.median(statistics.median(x["times"]) for x in runs[f]) for f in runs}
        # Each pair ran back to back, so the ratio within a pair sees the same load.
        pairs = [
            statistics.median(a["times"]) / statistics.median(b["times"])
            for a, b in zip(runs["cnndsl"], runs["torch"], strict=True)
        ]
        rss = {f: max(x["rss_mb"] for x in runs[f]) for f in runs}
        rows.append((net, med, pairs, rss))
        if not args.no_profile:
            profiles[net] = run_worker("cnndsl", net, args.steps, True).get("profile", {})
        loads.append(load_average())
        ceilings = ceilings.best(measure_ceilings_apart())  # load only lowers them
    roofline = roofline_section(rows, NETS, BATCH, ceilings)
    write_results(Path(args.out), rows, profiles, args, loads, roofline)
    print(Path(args.out).read_text())
    return 0


def write_results(
    path: Path,
    rows: list[Any],
    profiles: dict[str, Any],
    args: argparse.Namespace,
    loads: list[str],
    roofline: list[str],
) -> None:
    """The results table, the limits table, the machine and the date, as Markdown."""
    nets = "" if args.nets == ",".join(NETS) else f" --nets {args.nets}"
    lines = [
        "# cnndsl (NumPy backend) vs PyTorch CPU",
        "",
        f"Command: `python benchmarks/bench_step.py --repeats {args.repeats}"
        f" --steps {args.steps}{nets}`  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "A training step is forward, backward and an SGD (momentum 0.9) update on a batch"
        f" of {BATCH} random samples in training mode; the inference row times one forward"
        " pass in inference mode (cnndsl with batchnorm folded into the convolutions,"
        " PyTorch eval() under inference_mode). Each framework runs in its own subprocess;"
        f" {args.repeats} subprocesses per framework, alternating which goes first, each"
        f" timing {args.steps} steps after a warm-up step. Times are medians; ratio ="
        " cnndsl / PyTorch, the median over back-to-back pairs (lower is better for"
        " cnndsl), and the pairs' lowest and highest; goal: the issue's target ratio."
        " Peak RSS is the largest of the"
        " subprocesses' (the whole process: interpreter, libraries, data, model).",
        "",
        "| network | batch | cnndsl | PyTorch | ratio | pairs | goal | cnndsl peak RSS |"
        " PyTorch peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net, med, pairs, rss in rows:
        lines.append(
            f"| {NETS[net]['title']} | {BATCH} | {med['cnndsl'] * 1000:.0f} ms |"
            f" {med['torch'] * 1000:.0f} ms | {statistics.median(pairs):.2f}× |"
            f" {min(pairs):.2f}-{max(pairs):.2f}× | ≤ {NETS[net]['goal']:g}× |"
            f" {rss['cnndsl']:.0f} MiB | {rss['torch']:.0f} MiB |"
        )
    lines += roofline
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()]
    lines.append(
        f"- load average (1 min) before the run and after each network: {', '.join(loads)}"
        " (2 cores: anything above ~2 means other processes shared them)"
    )
    if profiles:
        lines += ["", "## What limits cnndsl", ""]
        for net, profile in profiles.items():
            total = sum(profile.values()) or 1.0
            share = {
                family: sum(v for k, v in profile.items() if k.split(".")[0] in ops) / total
                for family, ops in FAMILIES.items()
            }
            parts = ", ".join(f"{family} {value:.0%}" for family, value in share.items() if value)
            lines.append(f"- {NETS[net]['title']}: {parts} of the time inside kernels.")
            if net in NOTES:
                lines.append(f"  {NOTES[net]}")
        lines += ["", LIMITS]
    for net, profile in profiles.items():
        total = sum(profile.values()) or 1.0
        lines += [
            "",
            f"## Where the time goes: {NETS[net]['title']}",
            "",
            "| kernel | ms per step | share |",
            "|---|---:|---:|",
        ]
        for label, seconds in list(profile.items())[:10]:
            lines.append(f"| {label} | {seconds * 1000:.1f} | {seconds / total:.0%} |")
    path.write_text("\n".join(lines) + "\n")


FAMILIES = {
    "convolution": ("conv", "depthwise_conv", "separable_conv"),
    "batchnorm": ("batchnorm",),
    "pooling": ("maxpool", "avgpool", "global_avgpool", "global_maxpool"),
    "activations": ("relu", "relu6", "softmax", "sigmoid", "tanh", "identity"),
    "residual adds": ("add",),
    "dense": ("dense",),
}


if __name__ == "__main__":
    sys.exit(main())
