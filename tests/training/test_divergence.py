"""Runs that diverge: nothing non-finite is saved, an exploding loss is warned about, and
weights that would not fit are refused before they are allocated."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.formats.weights import save_weights
from cnndsl.runtime import memory_guard
from cnndsl.training import guards
from cnndsl.training.guards import (
    LossExplosion,
    LossExplosionWarning,
    OutOfMemoryPlan,
    non_finite_weights,
)
from cnndsl.training.model import ModelError

TINY = """
network tiny(classes=3) {
    input image: [6, 6, 1]
    return image
        -> conv(4, 3, padding=same, name="c1") -> batchnorm(name="bn") -> relu
        -> maxpool(2) -> flatten -> dense(8, activation=relu, name="fc")
        -> dense(classes, activation=softmax, name="head")
}
"""


def toy(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, n)


def build() -> Any:
    return cnndsl.compile(TINY).build(seed=0)


def test_finite_weights_save_and_load(tmp_path) -> None:
    model = build()
    assert non_finite_weights(model) == []
    model.save(tmp_path / "w.npz")
    other = build()
    other.load(tmp_path / "w.npz")
    assert all(np.array_equal(model.params[k], other.params[k]) for k in model.params)


@pytest.mark.parametrize("key", ["fc:kernel", "bn:moving_variance"])
def test_non_finite_weights_are_never_saved(tmp_path, key: str) -> None:
    model = build()
    model.params[key][...] = np.inf  # a moving statistic counts as much as a weight
    assert non_finite_weights(model) == [key]
    with pytest.raises(ModelError, match=f"not saved: .*{key}.*diverged"):
        model.save(tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists()
    save_weights(model, tmp_path / "forced.npz", force=True)  # asked for: written as is
    assert np.isinf(np.load(tmp_path / "forced.npz")[key]).all()


def test_a_last_step_that_diverges_leaves_weights_save_refuses() -> None:
    # One step with a learning rate that overflows the update: the step's own loss and
    # gradients were finite, so the step guard lets it through; only the weights show it.
    model = build()
    x, y = toy()
    model.compile(optimizer={"name": "sgd", "lr": 3e38})
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert non_finite_weights(model)
    with pytest.raises(ModelError, match="diverged"):
        save_weights(model, "unused.npz")


def test_an_exploding_loss_warns_once_naming_the_layer() -> None:
    model = build()
    x, y = toy()
    model.compile(optimizer={"name": "adam", "lr": 1e6})
    watch = LossExplosion(x[:8], y[:8])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=30, batch_size=4, verbose=0, callbacks=[watch])
    found = [w for w in caught if issubclass(w.category, LossExplosionWarning)]
    assert len(found) == 1
    message = str(found[0].message)
    assert "more than 100 times" in message and "in layer '" in message
    layer = message.split("in layer '")[1].split("'")[0]
    assert layer in {"c1", "bn", "fc", "head"}


def test_a_steady_run_does_not_warn() -> None:
    model = build()
    x, y = toy()
    model.compile(optimizer={"name": "adam", "lr": 1e-3})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossExplosionWarning)
        model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[LossExplosion(x, y)])


def test_the_warning_names_the_layer_with_the_largest_gradient_norm() -> None:
    model = build()
    x, y = toy(8)
    _, grads = model.gradients(x, y)
    norms: dict[str, float] = {}
    for key, g in grads.items():
        layer = key.split(":")[0]
        norms[layer] = norms.get(layer, 0.0) + float((g.astype(np.float64) ** 2).sum())
    best = max(norms, key=norms.__getitem__)
    assert guards.largest_gradient(model, x, y).startswith(f"in layer '{best}'")


def test_weights_that_do_not_fit_are_refused_before_allocation(monkeypatch) -> None:
    net = cnndsl.compile(TINY, classes=200_000_000)
    monkeypatch.setattr(memory_guard, "available_memory", lambda backend: (10**9, "a test figure"))
    with pytest.raises(OutOfMemoryPlan, match="parameters in float32.*nothing was allocated"):
        net.build()


def test_weights_that_fit_are_built(monkeypatch) -> None:
    net = cnndsl.compile(TINY)
    needed = net.total_params * 4
    monkeypatch.setattr(
        memory_guard, "available_memory", lambda backend: (needed * 4, "a test figure")
    )
    net.build()
    monkeypatch.setattr(
        memory_guard, "available_memory", lambda backend: (needed // 2, "a test figure")
    )
    with pytest.raises(OutOfMemoryPlan):
        net.build()


def test_the_weights_check_asks_the_models_backend() -> None:
    seen: list[Any] = []

    def figure(backend: Any) -> tuple[int, str]:
        seen.append(backend)
        return 10**12, "x"

    original = memory_guard.available_memory
    memory_guard.available_memory = figure  # type: ignore[assignment]
    try:
        model = build()
    finally:
        memory_guard.available_memory = original  # type: ignore[assignment]
    assert seen and seen[0] is model.backend
