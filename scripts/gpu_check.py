"""The device checks of scripts/gpu_check.sh: the CuPy backend against NumPy at realistic sizes.

    python3 scripts/gpu_check.py [--dry-run] [--out DIR] [--only NAME,...]

Each check prints one line per case (PASS/FAIL, the relative error, the time)
and the run writes gpu_check.json to --out. Checks, in order:

- conv: every conv algorithm (im2col, Winograd, 1×1 GEMM; input gradient
  full, col2im, Winograd; kernel gradient im2col, Winograd; cuDNN where
  nvidia-cudnn-frontend imports), 56×56×64, batch 8, float32 on the device
  against float64 NumPy;
- batchnorm: the fused CUDA kernels (none, relu, relu6) with NaNs in the
  input: NaN where NumPy has NaN, the rest close;
- dropout: CuPy's generator (masks are device arrays, the kept fraction,
  dx = dy·mask) and its state saved and restored (the NaN re-run);
- ops: every op of the registry, its test cases scaled to 56×56×64 where
  the op's shape allows, forward and backward;
- resnet18: one training step's gradients at 224×224, batch 8, within 1e-3
  (relative, per weight array) of float64 NumPy's;
- optimizers: each optimizer's fused update (one kernel a weight array) against
  the NumPy update over a few steps, a NaN gradient included, and the time of a
  step fused and not;
- transfers: a training step brings its numbers (loss, metrics, finite check)
  to the host in one transfer; where CuPy still has cupyx.allow_synchronize,
  any other synchronising call in the step is a failure naming where.
- nccl: 2 ranks (mpiexec, 2 GPUs) train as one process, their gradients
  summed by NCCL on device buffers; with 1 GPU, NCCL on one rank
  (scripts/gpu_check_nccl.py).

--dry-run: NumPy stands in for CuPy, at small sizes (a check of this script
on a CPU; the comparisons are then float32 NumPy against float64 NumPy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ops"))
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check_nccl  # noqa: E402  (scripts/, beside this file)

import cnndsl  # noqa: E402
from cnndsl.ops import OPS, norm  # noqa: E402
from cnndsl.ops.registry import Context  # noqa: E402
from cnndsl.runtime.backends.cupy_backend import CupyBackend  # noqa: E402
from cnndsl.training import guards  # noqa: E402
from cnndsl.training.model import Model  # noqa: E402
from cnndsl.training.optimizers import SGD, Adam, Optimizer, RMSprop  # noqa: E402

CONV_TOL = 1e-4  # float32 against float64, norm-wise: about 100× float32's rounding
OP_TOL = 1e-3
GRAD_TOL = 1e-3  # the bound for a full training step's gradients


class Checks:
    """Runs checks on one device backend and keeps their results."""

    def __init__(self, dry_run: bool) -> None:
        self.dry = dry_run
        self.backend = CupyBackend(xp=np, chunking="whole") if dry_run else CupyBackend()
        self.xp = self.backend.xp
        self.results: list[dict[str, Any]] = []
        # (height/width, channels, batch): realistic on the device, small in a dry run
        self.hw, self.channels, self.batch = (12, 32, 2) if dry_run else (56, 64, 8)

    def ctx(self, training: bool = True) -> Context:
        b = self.backend
        return Context(training=training, rng=b.rng, overrides=b.overrides, workers=b.workers)

    def host(self, a: Any) -> np.ndarray:
        return self.backend.to_host(a)

    def record(self, check: str, case: str, error: float, tol: float, seconds: float) -> None:
        ok = bool(error <= tol)  # NOTE: a NaN error fails
        self.results.append(
            {"check": check, "case": case, "error": error, "tol": tol, "ok": ok, "s": seconds}
        )
        print(
            f"{'PASS' if ok else 'FAIL'} {check:9} {case:48} rel err {error:.2e}"
            f" (tol {tol:.0e}) {seconds * 1000:8.1f} ms",
            flush=True,
        )

    def fail(self, check: str, case: str, why: str) -> None:
        self.results.append({"check": check, "case": case, "error": why, "ok": False})
        print(f"FAIL {check:9} {case:48} {why}", flush=True)

    # ---- running an op both ways ----

    def op_both(
        self, op: str, a: Any, xs: list[np.ndarray], ws: dict[str, np.ndarray], dy: np.ndarray,
        training: bool,
    ) -> tuple[list[np.ndarray], list[np.ndarray], float]:  # fmt: skip
        """(device results, float64 NumPy results, device seconds): y, dxs, weight grads."""
        out = []
        seconds = 0.0
        for xp, dtype, device in ((np, np.float64, False), (self.xp, np.float32, True)):
            w = {k: xp.asarray(v.astype(dtype)) for k, v in ws.items()}
            x = [xp.asarray(v.astype(dtype)) for v in xs]
            ctx = self.ctx(training) if device else Context(training=training)
            start = time.perf_counter()
            y, saved = OPS[op].forward(xp, a, x, w, ctx)
            dxs, dws = OPS[op].backward(xp, a, saved, xp.asarray(dy.astype(dtype)), w, ctx)
            if device:
                self.backend.synchronize()
                seconds = time.perf_counter() - start
            names = sorted(k for k in dws if dws[k] is not None)
            values = [y, *[d for d in dxs if d is not None], *(dws[k] for k in names)]
            out.append([self.host(v).astype(np.float64) for v in values])
        return out[1], out[0], seconds

    # ---- the checks ----

    def conv(self) -> None:
        """Every conv algorithm against float64 NumPy."""
        rng = np.random.default_rng(0)
        hw, c, n = self.hw, self.channels, self.batch
        x = rng.normal(size=(n, hw, hw, c))
        variants = [
            (3, {"forward": "im2col", "input_grad": "full", "kernel_grad": "im2col"}),
            (3, {"forward": "im2col", "input_grad": "col2im", "kernel_grad": "im2col"}),
            (3, {"forward": "winograd", "input_grad": "winograd", "kernel_grad": "winograd"}),
            (1, {"forward": "gemm", "input_grad": "gemm", "kernel_grad": "gemm"}),
        ]
        try:
            from cnndsl.runtime.backends import cudnn

            if not self.dry and cudnn.available():
                variants.append(
                    (3, {"forward": "cudnn", "input_grad": "cudnn", "kernel_grad": "cudnn"})
                )
            else:
                print(f"skip conv cudnn: {cudnn.unavailable_reason()}", flush=True)
        except ImportError:
            print("skip conv cudnn: no cnndsl.runtime.backends.cudnn", flush=True)
        for k, methods in variants:
            a = OPS["conv"].bind(c, k, padding="same", bias=True).replace(**methods)
            ws = {"kernel": rng.normal(size=(k, k, c, c)) / math.sqrt(k * k * c)}
            ws["bias"] = rng.normal(size=c)
            dy = rng.normal(size=(n, hw, hw, c))
            name = f"{k}x{k} " + "/".join(methods.values())
            self.compare("conv", name, "conv", a, [x], ws, dy, True, CONV_TOL)

    def compare(
        self, check: str, name: str, op: str, a: Any, xs: list[np.ndarray],
        ws: dict[str, np.ndarray], dy: np.ndarray, training: bool, tol: float,
    ) -> None:  # fmt: skip
        try:
            got, want, seconds = self.op_both(op, a, xs, ws, dy, training)
        except Exception as e:  # one failing case must not hide the others
            self.fail(check, name, f"{type(e).__name__}: {e}")
            traceback.print_exc()
            return
        errors = [relative(g, w) for g, w in zip(got, want, strict=True)]
        self.record(check, name, max(errors, default=0.0), tol, seconds)

    def batchnorm(self) -> None:
        """The fused kernels keep NaNs where NumPy does; without NaNs they match NumPy."""
        rng = np.random.default_rng(1)
        hw, c, n = self.hw, self.channels, self.batch
        x = rng.normal(size=(n, hw, hw, c))
        ws = {
            "gamma": rng.uniform(0.5, 2, c), "beta": rng.normal(size=c),
            "moving_mean": np.zeros(c), "moving_variance": np.ones(c),
        }  # fmt: skip
        dy = rng.normal(size=x.shape)
        kernels = self.backend.overrides
        for act in ("none", "relu", "relu6"):
            a = OPS["batchnorm"].bind().replace(activation=act)
            self.compare("batchnorm", f"fused {act}", "batchnorm", a, [x], ws, dy, True, OP_TOL)
            # NaNs: the affine kernel and the masked gradient, on the device and in NumPy
            xn = (3 * x).astype(np.float32)
            xn[0, 0, 0, :], xn[-1, 1, 2, 3] = np.nan, np.nan
            scale = rng.uniform(0.5, 2, c).astype(np.float32)
            shift = rng.normal(size=c).astype(np.float32)
            workers = self.backend.workers
            want = norm.affine(np, xn, scale, shift, act, workers)
            start = time.perf_counter()
            dev = self.xp.asarray
            got = self.host(
                kernels["batchnorm_affine"](self.xp, dev(xn), dev(scale), dev(shift), act, workers)
            )
            self.backend.synchronize()
            same_nans = np.array_equal(np.isnan(got), np.isnan(want))
            finite = ~np.isnan(want)
            error = relative(got[finite], want[finite]) if same_nans else math.inf
            self.record(
                "batchnorm", f"NaN {act} affine", error, OP_TOL, time.perf_counter() - start
            )
            dyn = dy.astype(np.float32)
            dyn[1, 0, 0, :] = np.nan
            saved = norm.BatchNormSaved(
                xn, xn.mean(axis=(0, 1, 2)), np.ones(c, np.float32), want, True
            )
            dsaved = norm.BatchNormSaved(dev(xn), dev(saved.mean), dev(saved.inv), dev(want), True)
            sums = norm.dz_sums(np, dyn, saved, act, workers)
            dsums = kernels["batchnorm_dz_sums"](self.xp, dev(dyn), dsaved, act, workers)
            ok = all(
                np.array_equal(np.isnan(self.host(g)), np.isnan(w))
                for g, w in zip(dsums, sums, strict=True)
            )
            self.record("batchnorm", f"NaN {act} dz sums", 0.0 if ok else math.inf, OP_TOL, 0.0)

    def dropout(self) -> None:
        """Masks from the device generator; its state saved and restored gives the same masks."""
        hw, c, n = self.hw, self.channels, self.batch
        rate = 0.3
        a = OPS["dropout"].bind(rate)
        rng = np.random.default_rng(2)
        x = self.xp.asarray(rng.uniform(1, 2, (n, hw, hw, c)).astype(np.float32))
        dy = self.xp.asarray(rng.normal(size=(n, hw, hw, c)).astype(np.float32))
        start = time.perf_counter()
        state = guards.rng_state(self.backend.rng)
        y, saved = OPS["dropout"].forward(self.xp, a, [x], {}, self.ctx())
        (dx,), _ = OPS["dropout"].backward(self.xp, a, saved, dy, {}, self.ctx())
        self.backend.synchronize()
        seconds = time.perf_counter() - start
        on_device = type(y) is type(x) and y.dtype == x.dtype
        mask = self.host(y) / self.host(x)
        kept = float((mask > 0).mean())
        values_ok = np.allclose(mask[mask > 0], 1 / (1 - rate), rtol=1e-6)
        grad = relative(self.host(dx), self.host(dy) * mask)
        self.record(
            "dropout",
            "device arrays, scaled mask",
            0.0 if on_device and values_ok else math.inf,
            0.0,
            seconds,
        )
        self.record("dropout", f"kept fraction {kept:.4f}", abs(kept - (1 - rate)), 0.01, 0.0)
        self.record("dropout", "dx = dy·mask", grad, 1e-6, 0.0)
        if state is None:
            self.fail("dropout", "rng state", "the device generator's state is not capturable")
            return
        guards.set_rng_state(self.backend.rng, state)
        again, _ = OPS["dropout"].forward(self.xp, a, [x], {}, self.ctx())
        same = np.array_equal(self.host(again), self.host(y))
        self.record("dropout", "same mask after set_rng_state", 0.0 if same else math.inf, 0.0, 0.0)

    def ops(self) -> None:
        """Every op of the registry, its cases at realistic sizes where the shape allows."""
        from op_cases import CASES, draws_randoms

        rng = np.random.default_rng(3)
        big = (self.hw, self.hw, self.channels)
        for op in sorted(OPS):
            if op == "input":
                continue
            if op not in CASES:
                self.fail("ops", op, "no test case in tests/ops/op_cases.py")
                continue
            for i, case in enumerate(CASES[op]):
                if draws_randoms(case):
                    continue  # dropout: the `dropout` check
                shapes = case.inputs
                if all(len(s) == 3 for s in shapes):
                    try:
                        OPS[op].shape(case.attrs, *(big,) * len(shapes))
                        OPS[op].weights(case.attrs, *(big,) * len(shapes))
                        shapes = (big,) * len(shapes)
                    except Exception:  # NOTE: attrs tied to the case's own sizes
                        pass
                xs = [rng.normal(size=(self.batch, *s)) * case.scale for s in shapes]
                if case.distinct:
                    xs = [x + np.arange(x.size).reshape(x.shape) * 1e-3 for x in xs]
                specs = OPS[op].weights(case.attrs, *shapes)
                ws = {}
                for k, spec in specs.items():
                    ws[k] = rng.normal(size=spec.shape) * 0.3
                    if "variance" in k:
                        ws[k] = np.abs(ws[k]) + 0.5
                y_shape = OPS[op].shape(case.attrs, *shapes)
                dy = rng.normal(size=(self.batch, *y_shape))
                name = f"{op}[{i}] {case.note} {'x'.join(map(str, shapes[0]))}"
                self.compare("ops", name, op, case.attrs, xs, ws, dy, case.training, OP_TOL)

    def resnet18(self) -> None:
        """A ResNet-18 training step: gradients within GRAD_TOL of float64 NumPy's."""
        # NOTE: not 32×32 at batch 2 in a dry run: batchnorm over 8 values, float32 too coarse
        size, n = (64, 4) if self.dry else (224, 8)
        g = cnndsl.compile(ROOT / "specs" / "resnet18.cnn", classes=10, size=size).graph
        rng = np.random.default_rng(4)
        x = rng.random((n, size, size, 3), dtype=np.float32)
        y = rng.integers(0, 10, n)
        device = Model(g, backend=self.backend, seed=0)
        reference = Model(g, backend="numpy", seed=0, dtype="float64")
        reference.set_weights(device.get_weights())
        for m in (device, reference):
            m.compile(optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9})
        start = time.perf_counter()
        _, got = device.gradients(x, y)
        seconds = time.perf_counter() - start
        _, want = reference.gradients(x.astype(np.float64), y)
        keys = sorted(want)
        flat = relative(
            np.concatenate([got[k].ravel() for k in keys]),
            np.concatenate([want[k].ravel() for k in keys]),
        )
        self.record("resnet18", f"all {len(keys)} gradients, one vector", flat, GRAD_TOL, seconds)
        # NOTE: batchnorm's gamma/beta gradients are sums of terms that nearly cancel
        # (a batchnorm further on undoes shifts), so float32 loses more digits there.
        for kind, tol in (("kernel", GRAD_TOL), ("gamma", 10 * GRAD_TOL), ("beta", 10 * GRAD_TOL)):
            errors = {k: relative(got[k], want[k]) for k in keys if k.endswith(":" + kind)}
            worst = max(errors, key=lambda k: errors[k])
            self.record("resnet18", f"worst {worst}", errors[worst], tol, 0.0)
        start = time.perf_counter()
        loss, _ = device.train_step(x, y)
        self.backend.synchronize()
        self.record(
            "resnet18",
            "train_step runs, loss finite",
            0.0 if math.isfinite(loss) else math.inf,
            0.0,
            time.perf_counter() - start,
        )

    def optimizers(self) -> None:
        """Each fused optimizer update against NumPy's, NaN gradients included; step times."""
        fused = self.backend.overrides.get("optimizer_update")
        if fused is None:
            print("optimizers: no fused update (NumPy standing in): NumPy against NumPy")
        c = self.channels
        shapes = {"conv:kernel": (3, 3, c, c), "dense:kernel": (c * 16, 100), "bn:gamma": (c,)}
        makers: dict[str, Callable[[], Optimizer]] = {
            "sgd": lambda: SGD(lr=0.1, decay=0.01),
            "sgd momentum": lambda: SGD(lr=0.1, momentum=0.9),
            "sgd nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
            "adam": lambda: Adam(lr=1e-3, decay=0.01),
            "rmsprop": lambda: RMSprop(lr=1e-3),
        }
        rng = np.random.default_rng(5)
        for name, make in makers.items():
            start = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
            want, reference = {k: v.copy() for k, v in start.items()}, make()
            got = {k: self.xp.asarray(v) for k, v in start.items()}
            device, plain = make(), make()
            times: dict[str, float] = {"fused": 0.0, "unfused": 0.0}
            for step in range(3):
                grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
                if step == 1:
                    grads["conv:kernel"][0, 1, 2, 3] = np.nan
                dev = {k: self.xp.asarray(g) for k, g in grads.items()}
                with np.errstate(invalid="ignore"):
                    reference.step(np, want, grads)
                for label, opt, params, how in (
                    ("fused", device, got, fused),
                    ("unfused", plain, {k: v.copy() for k, v in got.items()}, None),
                ):
                    self.backend.synchronize()
                    t0 = time.perf_counter()
                    opt.step(self.xp, params, dev, fused=how)
                    self.backend.synchronize()
                    times[label] += time.perf_counter() - t0
            errors = []
            for key in shapes:
                g, w = self.host(got[key]), want[key]
                nans = np.array_equal(np.isnan(g), np.isnan(w))
                nans &= bool(np.isnan(w).any()) == (key == "conv:kernel")  # where the NaN went
                finite = ~np.isnan(w)
                errors.append(relative(g[finite], w[finite]) if nans else math.inf)
            case = f"{name}: unfused {times['unfused'] * 1000:.2f} ms for 3 steps"
            self.record("optimizer", case, max(errors), 1e-5, times["fused"])

    def transfers(self) -> None:
        """One device-to-host transfer a training step; no other synchronising call in it."""
        size, n = (32, 4) if self.dry else (64, 16)
        g = cnndsl.compile(ROOT / "specs" / "resnet18.cnn", classes=10, size=size).graph
        rng = np.random.default_rng(6)
        x = rng.random((n, size, size, 3), dtype=np.float32)
        y = rng.integers(0, 10, n)
        model = Model(g, backend=self.backend, seed=0)
        model.compile(optimizer="adam", metrics=["accuracy", "top5"])
        metrics = [(i, fn) for _, i, fn in _metric_fns(model)]
        model._train_step(x, [y], None, metrics)  # warm-up: kernels compiled
        backend, to_host = self.backend, self.backend.to_host
        counted: list[Any] = []
        strict = None if self.dry else getattr(_cupyx(), "allow_synchronize", None)

        def counting(a: Any) -> np.ndarray:
            counted.append(getattr(a, "shape", None))
            if strict is None:
                return to_host(a)
            with strict(True):
                return to_host(a)

        backend.to_host = counting  # type: ignore[method-assign]
        try:
            start = time.perf_counter()
            for _ in range(3):
                if strict is None:
                    model._train_step(x, [y], None, metrics)
                else:
                    with strict(False):
                        model._train_step(x, [y], None, metrics)
            seconds = (time.perf_counter() - start) / 3
        except Exception as e:  # cupyx.DeviceSynchronized: where the step waited
            where = traceback.extract_tb(e.__traceback__)
            inside = [f for f in where if "cnndsl" in f.filename] or where
            self.fail("transfers", "no other sync", f"{type(e).__name__} at {inside[-1]}")
            return
        finally:
            del backend.to_host  # type: ignore[method-assign]
        per_step = len(counted) / 3
        self.record("transfers", f"to_host per step: {per_step:g}", abs(per_step - 1), 0.0, seconds)
        if strict is None:
            print("transfers: no cupyx.allow_synchronize here: other syncs not looked for")


def _cupyx() -> Any:
    try:
        import cupyx
    except ImportError:
        return None
    return cupyx


def _metric_fns(model: Model) -> list[tuple[str, int, Any]]:
    from cnndsl.training.losses import get_metric

    return [(key, i, get_metric(name)) for key, i, name in model._metric_keys()]


def relative(got: np.ndarray, want: np.ndarray) -> float:
    """‖got − want‖ / ‖want‖ (absolute where want is all zeros)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    scale = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / (scale if scale > 0 else 1.0)


CHECKS: dict[str, Callable[[Checks], None]] = {
    "conv": Checks.conv,
    "batchnorm": Checks.batchnorm,
    "dropout": Checks.dropout,
    "ops": Checks.ops,
    "resnet18": Checks.resnet18,
    "optimizers": Checks.optimizers,
    "transfers": Checks.transfers,
    "nccl": gpu_check_nccl.run,  # data-parallel sums on device buffers (its own module)
}


def main(argv: list[str] | None = None) -> int:
    """Run the checks; 0 if every one passed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="NumPy in place of CuPy, small")
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    parser.add_argument("--only", default=",".join(CHECKS), help="checks to run, comma-separated")
    args = parser.parse_args(argv)
    checks = Checks(args.dry_run)
    print(f"backend {checks.backend} xp {checks.xp.__name__} {checks.backend.capabilities}")
    for name in args.only.split(","):
        start = time.perf_counter()
        try:
            CHECKS[name](checks)
        except Exception as e:  # report and go on to the next check
            checks.fail(name, "(whole check)", f"{type(e).__name__}: {e}")
            traceback.print_exc()
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    failed = [r for r in checks.results if not r["ok"]]
    print(f"== {len(checks.results) - len(failed)} passed, {len(failed)} failed")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(checks.results, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
