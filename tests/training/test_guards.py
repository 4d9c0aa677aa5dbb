"""Run-time guards: the memory plan against the memory available; non-finite losses located."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime import memory_guard
from cnndsl.training import guards
from cnndsl.training.guards import NonFiniteLoss, OutOfMemoryPlan, check_memory, parse_size
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> maxpool(2) -> flatten -> dense(8, activation=relu, name="fc") -> dropout(0.5)
        -> dense(classes, activation=softmax, name="head")
}
"""


def toy(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, n)


def build() -> Any:
    return cnndsl.compile(TINY).build(seed=0)


# ---- memory ----


def test_training_peak_and_workspace_by_hand() -> None:
    from cnndsl.passes.memory import estimate_memory

    net = cnndsl.compile(
        "network n() {\n input x: [4, 4, 1]\n return x -> conv(2, 1) -> relu -> flatten\n}"
    )
    mem = estimate_memory(net.graph, batch=8)
    # Floats per sample: input 16, conv 32, relu 32, flatten 32. Saved for backward: all
    # (112); gradients alive at once: the two largest (64). Weights 4, grads 4, 1 slot 4.
    # Kernel-gradient partials: one a chunk (the batch is one chunk) of 1·1·1·2 values.
    assert mem.training_peak == (112 + 64) * 8 * 4 + 3 * 4 * 4 + 1 * 2 * 4
    net = cnndsl.compile("network n() {\n input x: [5, 5, 2]\n return x -> conv(3, 3)\n}")
    mem = estimate_memory(net.graph, batch=4)
    # im2col columns: 3·3 outputs × 3·3·2 taps = 162 floats a sample, 4 samples, 4 bytes;
    # the input (50) and output (27) alive at once, plus 57 weights. Shared by the lanes:
    # the Winograd kernel transform, 36 values per (c, f) pair.
    assert mem.workspace == 162 * 4 * 4 + 36 * 2 * 3 * 4
    assert mem.inference_peak == (50 + 27) * 4 * 4 + 57 * 4


def test_training_peak_counts_the_winograd_tiles_a_conv_keeps(monkeypatch: Any) -> None:
    """36 values per 4×4 output tile and input channel, where forward and dW are Winograd."""
    from cnndsl.ops import OPS
    from cnndsl.passes.memory import estimate_memory, kept_for_training

    def graph(channels: int) -> Any:
        body = "return x -> conv(32, 3, padding=same)"
        return cnndsl.compile(f"network n() {{\n input x: [8, 8, {channels}]\n {body}\n}}").graph

    wide, thin = graph(32), graph(8)  # thin: im2col (Winograd needs 32 channels)
    conv = [layer for layer in wide if layer.op == "conv"][0]
    assert kept_for_training(conv, [wide[p] for p in conv.inputs]) == 36 * 2 * 2 * 32
    conv = [layer for layer in thin if layer.op == "conv"][0]
    assert kept_for_training(conv, [thin[p] for p in conv.inputs]) == 0
    with_tiles = estimate_memory(wide, batch=3).training_peak
    monkeypatch.setattr(type(OPS["conv"]), "kept_for_training", lambda *a: 0)
    assert with_tiles - estimate_memory(wide, batch=3).training_peak == 36 * 2 * 2 * 32 * 3 * 4


def test_kernel_gradient_partials_in_the_plan() -> None:
    """The plan counts the partials the kernel keeps (`kernel_grad_partials`, tested there)."""
    from cnndsl.ops.conv import conv_geometry
    from cnndsl.ops.conv_kernels import kernel_grad_partials
    from cnndsl.passes.memory import shared_scratch

    text = "network n() {\n input x: [14, 14, 512]\n return x -> conv(1024, 3)\n}"
    g = cnndsl.compile(text).graph
    conv = [layer for layer in g if layer.op == "conv"][0]
    inputs = [g[p] for p in conv.inputs]
    geo = conv_geometry(conv.attrs, (14, 14, 512))
    # 12×12 outputs, im2col dW (Winograd's 512·1024 per-point sums would overflow a lane's
    # scratch): chunks of 4 samples (512 GEMM rows or more), so 16 chunks at batch 64, whose
    # 19 MB partials are summed in 8 runs (64 MiB / 19 MB is 3, fewer than MIN_PARTIALS);
    # one chunk at batch 4 or 1.
    for batch, count in ((1, 1), (4, 1), (64, 8)):
        assert kernel_grad_partials(batch, geo, 1024, 4) == count
        transform, partials = shared_scratch(conv, inputs, batch, 4)
        assert (transform, partials) == (36 * 512 * 1024 * 4, count * 9 * 512 * 1024 * 4)


def test_workspace_is_capped_for_chunked_convs_only() -> None:
    """Plain convs run in chunks (scratch capped); grouped convs build every sample's columns."""
    from cnndsl.passes.memory import SCRATCH, estimate_memory

    def workspace(groups: int, batch: int) -> int:
        text = (
            "network n() {\n input x: [32, 32, 8]\n"
            f" return x -> conv(8, 3, padding=same, groups={groups})\n}}"
        )
        return estimate_memory(cnndsl.compile(text).graph, batch=batch).workspace

    per_sample = (32 * 32 * 3 * 3 * 8 + 34 * 34 * 8) * 4  # columns + input padded to 34×34
    transform = 36 * 8 * 8 * 4  # shared by the lanes (not for grouped convs)
    assert workspace(1, 1) == per_sample + transform
    assert workspace(1, 256) == SCRATCH + transform < per_sample * 256
    # backward holds the column gradients of both groups at once: all 8 channels
    assert workspace(2, 256) == per_sample * 256


@pytest.mark.parametrize(
    ("text", "size"),
    [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("100k", 102400), ("4096", 4096)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "8X", "-1G", "1e9"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_tight_memory_trains_without_the_kept_winograd_tiles() -> None:
    """A batch that fits only without the tiles convs keep for backward trains without them,
    to the same weights; with room to spare the tiles are kept."""
    from cnndsl.passes.memory import estimate_memory

    text = (
        "network n() {\n input x: [8, 8, 32]\n"
        " return x -> conv(32, 3, padding=same, activation=relu) -> flatten -> dense(3)\n}"
    )
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8, 8, 32), dtype=np.float32), rng.integers(0, 3, 16)
    net = cnndsl.compile(text)
    mem = estimate_memory(net.graph, 16, 1)
    assert mem.kept == 36 * 2 * 2 * 32 * 16 * 4  # the conv runs forward and dW as Winograd
    weights = []
    for spare in (1 << 20, -mem.kept // 2):  # room to spare; then too little for the tiles
        model = net.build(seed=0)
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        fixed = 2 * max(s.size for s in model.specs.values()) * 4
        model.max_memory = mem.training_peak + fixed + spare
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False)
        held = model.layer_buffer_bytes()
        assert held == (mem.kept if spare > 0 else 0)
        weights.append({k: v.copy() for k, v in model.params.items()})
    for k in weights[0]:
        np.testing.assert_array_equal(weights[0][k], weights[1][k])


def test_fit_and_predict_refuse_a_plan_larger_than_max_memory() -> None:
    x, y = toy()
    model = build()
    model.max_memory = 40 << 10
    with pytest.raises(OutOfMemoryPlan) as info:
        model.fit(x, y, epochs=1, batch_size=32)
    err = info.value
    message = str(err)
    assert f"needs about {err.needed / 1024:.2f} KiB" in message
    assert "only 40.00 KiB is available (the figure set by --max-memory)" in message
    assert f"the largest batch that fits is {err.largest_batch}:" in message
    assert err.largest_batch >= 1 and err.largest_batch < 32
    check_memory(model, err.largest_batch, training=True)  # fits exactly
    with pytest.raises(OutOfMemoryPlan):
        check_memory(model, err.largest_batch + 1, training=True)
    model.fit(x, y, epochs=1, batch_size=err.largest_batch)  # and it trains
    model.max_memory = 1000
    with pytest.raises(OutOfMemoryPlan, match="not even a batch of 1 fits"):
        model.predict(x)
    assert isinstance(err, ModelError)


def test_guard_uses_the_memory_the_machine_has_free(monkeypatch: Any) -> None:
    model = build()
    monkeypatch.setattr(
        memory_guard, "available_memory", lambda backend: (1024, "MemAvailable test")
    )
    with pytest.raises(OutOfMemoryPlan, match=r"available \(MemAvailable test\)"):
        model.evaluate(*toy())
    monkeypatch.setattr(memory_guard, "available_memory", lambda backend: None)
    model.evaluate(*toy())  # unknown: no refusal


def test_available_memory_reads_meminfo_cgroups_and_cupy(tmp_path: Path, monkeypatch: Any) -> None:
    found = guards.available_memory(build().backend)
    assert found is not None and found[0] > 0
    # cgroup v2: limit 1000 MiB, usage 900 MiB of which 300 MiB is reclaimable cache.
    (tmp_path / "memory.max").write_text(f"{1000 << 20}\n")
    (tmp_path / "memory.current").write_text(f"{900 << 20}\n")
    (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {300 << 20}\n")
    monkeypatch.setattr(memory_guard, "CGROUP", tmp_path)
    assert memory_guard._cgroup_headroom() == (
        400 << 20,
        f"the cgroup limit in {tmp_path}/memory.max",
    )
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_guard._cgroup_headroom() is None

    runtime = types.SimpleNamespace(memGetInfo=lambda: (5 << 30, 80 << 30))
    pool = types.SimpleNamespace(free_bytes=lambda: 1 << 30)
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=runtime), get_default_memory_pool=lambda: pool
    )
    backend = types.SimpleNamespace(name="cupy", xp=fake)
    assert guards.available_memory(backend) == (6 << 30, memory_guard.GPU_SOURCE)


def test_cli_max_memory_refuses_with_both_figures_and_the_largest_batch(
    tmp_path: Path, capsys: Any
) -> None:
    from cnndsl.cli import main

    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    data = tmp_path / "toy.npz"
    np.savez(data, x=toy(40)[0], y=toy(40)[1])
    argv = ["run", str(spec), "--data", str(data), "--epochs", "1", "-q", "--batch-size", "16"]
    assert main([*argv, "--max-memory", "40K"]) == 1
    err = capsys.readouterr().err
    assert re.search(
        r"error: training with batch 16 needs about [\d.]+ KiB by the memory plan, but only"
        r" 40.00 KiB is available .*; the largest batch that fits is \d+: use --batch-size \d+",
        err,
    ), err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main([*argv, "--max-memory", "lots"])
    assert info.value.code == 2


# ---- non-finite losses ----


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_stops_with_step_and_layer(tmp_path: Path) -> None:
    x, y = toy()
    model = build()
    with pytest.raises(NonFiniteLoss) as info:
        model.fit(
            x,
            y,
            epochs=3,
            batch_size=8,
            optimizer={"name": "sgd", "lr": 1e30},
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
        )
    err = info.value
    assert err.step is not None and err.step >= 2
    message = str(err)
    assert f"(step {err.step} of the run)" in message
    assert re.search(r"non-finite values first appear in the output of layer '\w+'", message)
    last = tmp_path / f"checkpoint-{err.step - 1:09d}.npz"
    assert err.checkpoint == str(last) and f"the last good checkpoint is kept: {last}" in message
    assert "lower the learning rate" in message
    assert all(np.isfinite(w).all() for w in model.get_weights())  # the bad step not applied


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_injected_inf_is_located_in_its_layer() -> None:
    x, y = toy(8)
    model = build()
    model.params["fc:kernel"][0, 0] = np.inf
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(NonFiniteLoss, match=r"the output of layer 'fc' \(dense, step 6") as info:
        model.train_step(x, y)
    assert "its weights kernel are non-finite" in str(info.value)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = build()
    x[3, 2, 2, 0] = np.nan
    with pytest.raises(NonFiniteLoss, match="the input batch"):
        fresh.train_step(x, y)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_gradient_is_located_after_finite_activations(monkeypatch: Any) -> None:
    from cnndsl.ops import OPS

    x, y = toy(8)
    model = build()
    real = OPS["maxpool"].backward

    def poisoned(*args: Any, **kw: Any) -> Any:
        dxs, dws = real(*args, **kw)
        return [dx * np.inf for dx in dxs], dws

    monkeypatch.setattr(OPS["maxpool"], "backward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"the gradients of layer 'maxpool_1' .*: input 0"):
        model.train_step(x, y)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_targets_are_located_in_the_loss() -> None:
    x, _ = toy(8)
    model = build().compile(loss="mean_squared_error")
    before = [w.copy() for w in model.get_weights()]
    targets = np.full((8, 3), 0.5, np.float32)
    targets[2, 1] = np.inf  # every layer's output stays finite; the loss does not
    with pytest.raises(NonFiniteLoss, match=r"in the loss mean_squared_error \(every layer's"):
        model.train_step(x, targets)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_reports_divergence_with_exit_code_1(tmp_path: Path, capsys: Any) -> None:
    from cnndsl.cli import main

    spec = tmp_path / "tiny.cnn"
    spec.write_text(TINY)
    data = tmp_path / "toy.npz"
    np.savez(data, x=toy(40)[0], y=toy(40)[1])
    argv = ["run", str(spec), "--data", str(data), "--epochs", "2", "-q"]
    assert main([*argv, "--optimizer", "sgd", "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    assert "error: loss became" in err and "non-finite values first appear in" in err
    assert "Traceback" not in err
