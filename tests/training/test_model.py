"""Model: weight initialisation, save/load, freezing, determinism, Keras weight layouts."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.ops import OPS
from cnndsl.training.model import ModelError, fans

SMALL = """
defaults conv(kernel=3, padding=same, activation=relu)
network small(classes=4, width=8) {
    input image: [6, 6, 2]
    return image
        -> conv(width, name="c1") -> batchnorm(name="bn1") -> maxpool(2)
        -> conv(width * 2, name="c2") -> batchnorm(name="bn2")
        -> global_avgpool
        -> dense(16, activation=relu, name="fc") -> dropout(0.3)
        -> dense(classes, activation=softmax, name="head")
}
"""


def small(**params: Any) -> cnndsl.Network:
    return cnndsl.compile(SMALL, **params)


def batch(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 6, 6, 2), dtype=np.float32), rng.integers(0, 4, n)


# ---- initialisation ----


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((3, 3, 16, 32), (144, 288)),  # conv: fh·fw·in, fh·fw·out
        ((300, 200), (300, 200)),  # dense: in, out
        ((5, 5, 8, 2), (200, 50)),  # depthwise [fh, fw, in, m]
        ((1, 1, 64, 10), (64, 10)),
        ((7,), (7, 7)),
    ],
)
def test_fans_follow_keras(shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    assert fans(shape) == expected


def test_weights_allocated_exactly_from_layer_specs() -> None:
    net = small()
    model = net.build(seed=0)
    expected = {
        f"{layer.path}:{name}": spec.shape
        for layer in net.graph
        for name, spec in layer.weights.items()
    }
    assert {k: v.shape for k, v in model.params.items()} == expected
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert model.count_params()["total"] == net.total_params
    assert model.count_params()["non_trainable"] == 2 * (8 + 16)  # moving mean and variance


def test_initial_values_follow_keras_defaults() -> None:
    net = cnndsl.compile(
        'network n() { input x: [300]\n return x -> dense(200, name="d") -> batchnorm(name="b") }'
    )
    model = net.build(seed=1)
    kernel = model.params["d:kernel"]
    limit = math.sqrt(6 / (300 + 200))
    assert kernel.min() >= -limit and kernel.max() <= limit
    assert kernel.max() > 0.99 * limit and kernel.min() < -0.99 * limit
    assert kernel.var() == pytest.approx(limit**2 / 3, rel=0.02)  # U(-l, l) has var l²/3
    assert abs(kernel.mean()) < 0.01 * limit
    assert np.all(model.params["d:bias"] == 0)
    assert np.all(model.params["b:gamma"] == 1) and np.all(model.params["b:beta"] == 0)
    assert np.all(model.params["b:moving_mean"] == 0)
    assert np.all(model.params["b:moving_variance"] == 1)


def test_conv_init_limit_uses_receptive_field() -> None:
    model = cnndsl.compile(
        'network n() { input x: [9, 9, 16]\n return x -> conv(32, 3, name="c") }'
    ).build(seed=0)
    kernel = model.params["c:kernel"]
    assert kernel.shape == (3, 3, 16, 32)
    limit = math.sqrt(6 / (144 + 288))
    assert kernel.max() <= limit and kernel.max() > 0.99 * limit


# ---- determinism ----


def test_same_seed_same_weights_and_training() -> None:
    x, y = batch(32)
    runs = []
    for _ in range(2):
        model = small().build(seed=7)
        history = model.fit(x, y, epochs=2, batch_size=8, optimizer="adam")
        runs.append((model.get_weights(), history.history["loss"]))
    (w1, l1), (w2, l2) = runs
    assert l1 == l2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    other = small().build(seed=8).get_weights()
    assert not np.array_equal(other[0], small().build(seed=7).get_weights()[0])


def test_dropout_masks_come_from_the_seeded_backend() -> None:
    x, _ = batch()
    a = small().build(seed=3)
    b = small().build(seed=3)
    np.testing.assert_array_equal(a(x, training=True), b(x, training=True))
    # Inference is deterministic and differs from a training pass (dropout, batch stats).
    assert not np.allclose(a(x, training=True), a(x))


# ---- save / load ----


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, y = batch()
    model = small().build(seed=0)
    model.fit(x, y, epochs=1, batch_size=4)  # moves weights and moving statistics
    path = tmp_path / "w.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == set(model.params)
        assert "bn1:moving_variance" in f.files and "c1:kernel" in f.files
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left behind

    fresh = small().build(seed=99)
    report = fresh.load(path)
    assert report.complete and len(report.loaded) == len(model.params)
    for a, b in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x), fresh.predict(x))


def test_save_is_atomic(tmp_path: Path, monkeypatch: Any) -> None:
    model = small().build(seed=0)
    path = tmp_path / "w.npz"
    model.save(path)
    before = path.read_bytes()

    def broken(*args: Any, **kw: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        small().build(seed=1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_partial_load_reports_mismatches(tmp_path: Path) -> None:
    source = small(classes=4).build(seed=0)
    path = tmp_path / "w.npz"
    source.save(path)
    fc = '-> dense(16, activation=relu, name="fc")'
    other_spec = SMALL.replace(fc, fc + ' -> dense(16, name="extra")')
    target = cnndsl.compile(other_spec, classes=7).build(seed=1)
    head_before = target.params["head:kernel"].copy()
    report = target.load(path)
    assert ("head:kernel", (16, 4), (16, 7)) in report.mismatched
    assert ("head:bias", (4,), (7,)) in report.mismatched
    assert set(report.missing) == {"extra:kernel", "extra:bias"}
    assert report.unexpected == []
    assert "c1:kernel" in report.loaded and not report.complete
    np.testing.assert_array_equal(target.params["c1:kernel"], source.params["c1:kernel"])
    np.testing.assert_array_equal(target.params["head:kernel"], head_before)
    assert "shape mismatch head:kernel" in report.describe()

    with pytest.raises(ModelError, match="does not match"):
        cnndsl.compile(other_spec, classes=7).build().load(path, strict=True)

    # The other way round: the file has weights the model lacks.
    back = small(classes=4).build(seed=2)
    target.save(path)
    report = back.load(path)
    assert set(report.unexpected) == {"extra:kernel", "extra:bias"}


def test_load_refuses_pickles_and_garbage(tmp_path: Path) -> None:
    model = small().build()
    pickled = tmp_path / "p.npz"
    np.savez(pickled, **{"c1:kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ModelError, match="p.npz"):
        model.load(pickled)
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="g.npz"):
        model.load(garbage)


def test_get_set_weights_use_keras_layouts_and_order() -> None:
    model = small().build(seed=0)
    shapes = [w.shape for w in model.get_weights()]
    assert shapes[:6] == [(3, 3, 2, 8), (8,), (8,), (8,), (8,), (8,)]  # conv, then bn's four
    assert shapes[-2:] == [(16, 4), (4,)]
    new = [np.full(s, i, np.float32) for i, s in enumerate(shapes)]
    model.set_weights(new)
    assert float(model.params["c1:bias"][0]) == 1.0
    assert float(model.params["bn1:gamma"][0]) == 2.0
    with pytest.raises(ModelError, match="c1:kernel"):
        model.set_weights([np.zeros((3, 3, 8, 2))] + new[1:])
    with pytest.raises(ModelError, match="arrays"):
        model.set_weights(new[:-1])


# ---- freezing ----


def test_frozen_weights_stay_bit_identical() -> None:
    x, y = batch()
    model = small().build(seed=0)
    frozen = model.freeze("c*")
    assert frozen == ["c1", "c2"]
    before = {k: v.copy() for k, v in model.params.items()}
    model.compile(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    model.train_step(x, y)
    model.train_step(x, y)
    for key in ("c1:kernel", "c1:bias", "c2:kernel", "c2:bias"):
        np.testing.assert_array_equal(model.params[key], before[key])
    for key in ("bn1:gamma", "fc:kernel", "head:kernel"):
        assert not np.array_equal(model.params[key], before[key])
    assert model.count_params()["trainable"] == model.count_params()["total"] - sum(
        before[k].size for k in before if k.startswith(("c1:", "c2:")) or "moving" in k
    )


def test_frozen_batchnorm_runs_in_inference_mode(monkeypatch: Any) -> None:
    x, y = batch()
    model = small().build(seed=0)
    model.freeze("bn1")
    before = {k: v.copy() for k, v in model.params.items()}
    model.train_step(x, y)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(model.params[f"bn1:{name}"], before[f"bn1:{name}"])
    # The unfrozen batchnorm moved its statistics in the same step.
    assert not np.array_equal(model.params["bn2:moving_mean"], before["bn2:moving_mean"])
    # Frozen bn1 normalises with its moving statistics even in a training pass.
    paths = {id(model._weights[model.plan.index(p)]): p for p in ("bn1", "bn2")}
    seen: dict[str, bool] = {}
    real = OPS["batchnorm"].forward

    def spy(xp: Any, a: Any, xs: Any, w: Any, ctx: Any) -> Any:
        seen[paths[id(w)]] = ctx.training
        return real(xp, a, xs, w, ctx)

    monkeypatch.setattr(OPS["batchnorm"], "forward", spy)
    model(x, training=True)
    assert seen == {"bn1": False, "bn2": True}


def test_unfreeze_and_spec_trainable_false() -> None:
    spec = SMALL.replace('conv(width, name="c1")', 'conv(width, name="c1", trainable=false)')
    x, y = batch()
    model = cnndsl.compile(spec).build(seed=0)
    assert "c1" in model.frozen
    kernel = model.params["c1:kernel"].copy()
    model.train_step(x, y)
    np.testing.assert_array_equal(model.params["c1:kernel"], kernel)
    model.unfreeze("c1")
    model.train_step(x, y)
    assert not np.array_equal(model.params["c1:kernel"], kernel)


def test_freeze_unknown_pattern_is_an_error() -> None:
    with pytest.raises(ModelError, match="no layer path matches 'base/\\*'"):
        small().build().freeze("base/*")


def test_frozen_prefix_skips_backward(monkeypatch: Any) -> None:
    """Layers below every trainable weight cost no backward pass."""
    x, y = batch()
    model = small().build(seed=0)
    model.freeze("c*")
    model.freeze("bn*")
    calls: list[str] = []
    real = OPS["conv"].backward

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append("conv")
        return real(*args, **kw)

    monkeypatch.setattr(OPS["conv"], "backward", spy)
    model.train_step(x, y)
    assert calls == []
    model.unfreeze("c2")
    model.train_step(x, y)
    assert calls == ["conv"]  # c2 needs its weight gradient, c1 still nothing


def test_save_refuses_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        small().build().save(tmp_path / "no" / "such" / "w.npz")
    assert not os.path.exists(tmp_path / "no")


def test_summary_lists_layers_and_totals() -> None:
    model = small().build()
    model.freeze("c1")
    text = model.summary()
    assert "c1 (frozen)" in text and "head" in text
    assert f"Total params: {model.count_params()['total']:,}" in text
