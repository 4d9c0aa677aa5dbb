"""A training step brings its numbers to the host once: loss, metrics and finite check together.

On a GPU every float() of a device scalar waits for the device. The step's
loss, each output's loss, each metric's sum and the finite check of the loss
and gradients travel in one transfer (guards.step_figures). Checked on NumPy
with a stand-in device whose arrays count each conversion to a host number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.backends.numpy_backend import NumpyBackend
from cnndsl.training import guards
from cnndsl.training.history import Callback
from cnndsl.training.model import Model

SPEC = """
network n(classes=3) {
    input image: [6, 6, 2]
    return image -> conv(4, 3, padding=same) -> batchnorm -> relu -> flatten
        -> dense(8, activation=relu) -> dropout(0.3) -> dense(classes, activation=softmax)
}
"""

TWO_OUTPUTS = """
network two() {
    input x: [6, 6, 2]
    h = x -> flatten -> dense(6, activation=tanh, name="trunk")
    return (h -> dense(3, activation=softmax, name="label"), h -> dense(1, name="size"))
}
"""

METRICS = ["accuracy", "top2", "sparse_categorical_crossentropy"]


class DeviceArray(np.ndarray):
    """An array on the stand-in device: each conversion to a host number is a transfer."""

    transfers: list[str] = []  # noqa: RUF012 (one log for every array: the device's)

    def _host(self, how: str) -> np.ndarray:
        DeviceArray.transfers.append(how)
        return self.view(np.ndarray)

    def __float__(self) -> float:
        return float(self._host("float"))

    def __int__(self) -> int:
        return int(self._host("int"))

    def __bool__(self) -> bool:
        return bool(self._host("bool"))

    def __index__(self) -> int:
        return self._host("index").__index__()

    def item(self, *args: Any) -> Any:
        return self._host("item").item(*args)

    def tolist(self) -> Any:
        return self._host("tolist").tolist()


class DeviceNumpy:
    """NumPy as the device's array module: asarray keeps (or makes) DeviceArrays."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def asarray(self, a: Any, dtype: Any = None, **kw: Any) -> DeviceArray:
        return np.asanyarray(a, dtype, **kw).view(DeviceArray)

    def ascontiguousarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        return np.ascontiguousarray(a, dtype).view(DeviceArray)


class CountingBackend(NumpyBackend):
    """NumPy as a device: uploads give DeviceArrays; to_host and conversions are counted."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.xp = DeviceNumpy()
        self.overrides = {}  # NOTE: the compiled kernels take plain arrays only

    def to_device(self, a: Any, dtype: Any = None) -> Any:
        return super().to_device(a, dtype).view(DeviceArray)

    def to_host(self, a: Any) -> np.ndarray:
        DeviceArray.transfers.append("to_host")
        return np.asarray(a).view(np.ndarray)


class TransfersPerStep(Callback):
    """The transfers each training step made (counted from one batch's end to the next)."""

    def __init__(self) -> None:
        self.per_step: list[list[str]] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        DeviceArray.transfers.clear()

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self.per_step.append(list(DeviceArray.transfers))
        DeviceArray.transfers.clear()


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_training_step_makes_one_transfer(optimizer: str) -> None:
    x, y = _data()
    model = Model(cnndsl.compile(SPEC).graph, backend=CountingBackend(), seed=0)
    assert isinstance(model.params[next(iter(model.params))], DeviceArray)  # the device is used
    count = TransfersPerStep()
    history = model.fit(
        x, y, epochs=2, batch_size=8, optimizer=optimizer, callbacks=[count],
        metrics=METRICS, shuffle=False,
    )  # fmt: skip
    assert len(count.per_step) == 6
    assert all(step == ["to_host"] for step in count.per_step), count.per_step
    # the same run on plain NumPy: the same figures, bit for bit
    reference = cnndsl.compile(SPEC).build(seed=0)
    reference.backend.overrides = {}
    same = reference.fit(
        x, y, epochs=2, batch_size=8, optimizer=optimizer, metrics=METRICS,
        shuffle=False,
    )  # fmt: skip
    assert history.history == same.history


def test_several_outputs_still_make_one_transfer_a_step() -> None:
    x, labels = _data()
    sizes = x.mean(axis=(1, 2, 3))[:, None]
    model = Model(cnndsl.compile(TWO_OUTPUTS).graph, backend=CountingBackend(), seed=0)
    losses = ["sparse_categorical_crossentropy", "mse"]
    model.compile(loss=losses, metrics=["accuracy"], loss_weights=[1.0, 0.5])
    count = TransfersPerStep()
    history = model.fit(x, [labels, sizes], epochs=1, batch_size=8, callbacks=[count])
    assert [len(step) for step in count.per_step] == [1, 1, 1]
    assert {"loss", "label_loss", "size_loss", "label_accuracy"} <= set(history.history)


def test_evaluate_makes_one_transfer_a_batch() -> None:
    x, y = _data()
    model = Model(cnndsl.compile(SPEC).graph, backend=CountingBackend(), seed=0)
    model.compile(metrics=METRICS)
    DeviceArray.transfers.clear()
    model.evaluate(x, y, batch_size=8)
    assert DeviceArray.transfers == ["to_host"] * 3


def test_step_figures_keep_the_values_and_find_non_finite_ones() -> None:
    backend = NumpyBackend(threads=1)
    grads = {"a": np.ones(4, np.float32), "b": np.full(3, 2, np.float32)}
    value = np.float32(0.1)
    scored = [(np.int64(5), 8), (np.float32(1.25), 8)]
    figures = guards.step_figures(backend, value, [value], grads, scored)
    assert figures.finite
    assert figures.loss == float(value) and figures.losses == [float(value)]
    assert figures.metrics == [5.0, 1.25, 8.0, 8.0]
    grads["b"][1] = np.nan
    assert not guards.step_figures(backend, value, [value], grads, []).finite
    grads["b"][1] = np.inf
    assert not guards.step_figures(backend, value, [value], grads, []).finite
    assert not guards.step_figures(backend, np.float32(np.nan), [], {}, []).finite


def test_step_figures_see_past_an_overflowing_sum() -> None:
    """float32 gradients whose sum overflows are finite: the check then looks at each value."""
    big = np.full(4, np.finfo(np.float32).max, np.float32)
    with np.errstate(over="ignore"):
        figures = guards.step_figures(NumpyBackend(threads=1), 1.0, [], {"w": big}, [])
    assert figures.finite


def test_host_scalars_leave_host_numbers_alone() -> None:
    backend = CountingBackend()
    DeviceArray.transfers.clear()
    assert guards.host_scalars(backend, [1, 2.5, np.float64(3.0)]) == [1.0, 2.5, 3.0]
    assert DeviceArray.transfers == []
    on_device = backend.to_device(np.array([4.0, 0.5], np.float32))
    got = guards.host_scalars(backend, [on_device.sum(), 7, on_device[1]])
    assert got == [4.5, 7.0, 0.5]
    assert DeviceArray.transfers == ["to_host"]
