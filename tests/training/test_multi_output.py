"""Networks with several outputs train as Keras multi-output models.

A loss per output and loss weights; the gradient of the weighted total is
checked against finite differences (float64), against the weighted sum of
the single-output networks' gradients, and one SGD step against PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.runtime.executor import ModelError
from cnndsl.source import CnnError

TRUNK = '    input x: [4, 4, 1]\n    h = x -> flatten -> dense(6, activation=tanh, name="trunk")\n'
CLS = 'h -> dense(3, activation=softmax, name="cls")'
BOX = 'h -> dense(2, activation=sigmoid, name="box")'


def spec(returned: str, train: str = "") -> str:
    section = f"    train {{\n{train}    }}\n" if train else ""
    return f"network heads() {{\n{TRUNK}{section}    return {returned}\n}}\n"


def two_heads(train: str = "", dtype: str = "float64", **kw: Any) -> Any:
    return cnndsl.compile(spec(f"({CLS}, {BOX})", train)).build(seed=0, dtype=dtype, **kw)


def data(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 4, 1))
    return x, rng.integers(0, 3, n), rng.random((n, 2))


WEIGHTS = [1.0, 0.3]
LOSSES = ["sparse_categorical_crossentropy", "mean_squared_error"]


# ---- gradients ----


def test_total_gradient_equals_finite_differences() -> None:
    model = two_heads().compile(loss=LOSSES, loss_weights=WEIGHTS)
    x, yc, yb = data()
    _, grads = model.gradients(x, [yc, yb], training=False)
    names = list(model.weights)
    base = model.get_weights()
    eps = 1e-6
    for k, name in enumerate(names):
        for idx in np.ndindex(base[k].shape):
            values = []
            for sign in (1, -1):
                moved = [w.copy() for w in base]
                moved[k][idx] += sign * eps
                model.set_weights(moved)
                values.append(model.gradients(x, [yc, yb], training=False)[0])
            numeric = (values[0] - values[1]) / (2 * eps)
            assert grads[name][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (name, idx)
    model.set_weights(base)


def _single(head: str, loss: str, reference: Any) -> Any:
    single = cnndsl.compile(spec(head, f"        loss = {loss}\n")).build(seed=0, dtype="float64")
    single.set_weights([reference.weights[k] for k in single.weights])
    return single


def test_total_gradient_is_the_weighted_sum_of_single_output_gradients() -> None:
    model = two_heads().compile(loss=LOSSES, loss_weights=WEIGHTS)
    x, yc, yb = data()
    total, grads = model.gradients(x, {"cls": yc, "box": yb})
    cls_loss, cls_grads = _single(CLS, LOSSES[0], model).gradients(x, yc)
    box_loss, box_grads = _single(BOX, LOSSES[1], model).gradients(x, yb)
    assert total == pytest.approx(WEIGHTS[0] * cls_loss + WEIGHTS[1] * box_loss, rel=1e-12)
    assert set(grads) == set(cls_grads) | set(box_grads)
    for name, g in grads.items():
        expected = WEIGHTS[0] * cls_grads.get(name, 0) + WEIGHTS[1] * box_grads.get(name, 0)
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_each_output_fuses_its_own_activation_with_its_loss() -> None:
    model = two_heads().compile(loss=["sparse_categorical_crossentropy", "binary_crossentropy"])
    assert model._heads_plan(model.losses)[1] == (True, True)
    model.compile(loss=["sparse_categorical_crossentropy", "mean_squared_error"])
    assert model._heads_plan(model.losses)[1] == (True, False)
    # An output that another step reads keeps its activation: that step needs it.
    chained = cnndsl.compile(
        spec('(c, c -> dense(2, name="after"))').replace("    return", f"    c = {CLS}\n    return")
    ).build(seed=0)
    assert chained._heads_plan(chained.losses)[1] == (False, False)


def test_one_sgd_step_equals_pytorch() -> None:
    torch = pytest.importorskip("torch")
    model = two_heads(
        "        optimizer = sgd(lr=0.1)\n"
        "        loss = [sparse_categorical_crossentropy, mean_squared_error]\n"
        "        loss_weights = [1, 0.3]\n"
    )
    x, yc, yb = data()
    w = model.weights
    linear = {}
    for layer, (n_in, n_out) in {"trunk": (16, 6), "cls": (6, 3), "box": (6, 2)}.items():
        lin = torch.nn.Linear(n_in, n_out, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w[f"{layer}:kernel"].T.copy()))
            lin.bias.copy_(torch.from_numpy(w[f"{layer}:bias"]))
        linear[layer] = lin
    params = [p for lin in linear.values() for p in lin.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    h = torch.tanh(linear["trunk"](torch.from_numpy(x.reshape(len(x), -1))))
    logits, box = linear["cls"](h), torch.sigmoid(linear["box"](h))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yc))
    loss = loss + 0.3 * torch.nn.functional.mse_loss(box, torch.from_numpy(yb))
    opt.zero_grad()
    loss.backward()
    opt.step()
    value, _ = model.train_step(x, (yc, yb))
    assert value == pytest.approx(loss.item(), abs=1e-12)
    after = model.weights
    for layer, lin in linear.items():
        np.testing.assert_allclose(
            after[f"{layer}:kernel"], lin.weight.detach().numpy().T, atol=1e-6
        )
        np.testing.assert_allclose(after[f"{layer}:bias"], lin.bias.detach().numpy(), atol=1e-6)


# ---- the API ----


def test_fit_evaluate_predict_with_list_and_dict_labels() -> None:
    x, yc, yb = data(24)
    a, b = two_heads(dtype="float32"), two_heads(dtype="float32")
    ha = a.fit(x, [yc, yb], epochs=2, batch_size=8, validation_split=0.25, loss_weights=WEIGHTS)
    hb = b.fit(
        x,
        {"box": yb, "cls": yc},
        epochs=2,
        batch_size=8,
        validation_split=0.25,
        loss_weights={"cls": 1.0, "box": 0.3},
    )
    assert ha.history == hb.history
    # Accuracy by default for each output trained with a cross-entropy (binary too).
    keys = {"loss", "cls_loss", "box_loss", "cls_accuracy", "box_accuracy"}
    assert set(ha.history) == keys | {f"val_{k}" for k in keys}
    for prefix in ("", "val_"):
        for e in range(2):
            parts = ha.history[f"{prefix}cls_loss"][e] + 0.3 * ha.history[f"{prefix}box_loss"][e]
            assert ha.history[f"{prefix}loss"][e] == pytest.approx(parts, rel=1e-5)
    assert ha.params["loss"] == {"cls": LOSSES[0], "box": "binary_crossentropy"}
    assert ha.params["loss_weights"] == {"cls": 1.0, "box": 0.3}
    probs, boxes = a.predict(x, batch_size=5)
    assert probs.shape == (24, 3) and boxes.shape == (24, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    scores = a.evaluate(x, (yc, yb))
    assert scores["cls_accuracy"] == np.mean(probs.argmax(axis=1) == yc)
    bce = -np.mean(yb * np.log(boxes) + (1 - yb) * np.log(1 - boxes))
    assert scores["box_loss"] == pytest.approx(bce, rel=1e-4)
    assert scores == a.evaluate(x, {"cls": yc, "box": yb})
    logits, _ = a.predict(x, logits=True)
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, rtol=1e-5
    )


def test_metrics_per_output_by_dict() -> None:
    model = two_heads(dtype="float32")
    x, yc, yb = data(16)
    model.compile(metrics={"cls": ["accuracy", "top2"], "box": "mse"})
    scores = model.evaluate(x, [yc, yb])
    assert set(scores) == {"loss", "cls_loss", "box_loss", "cls_accuracy", "cls_top2", "box_mse"}
    _, boxes = model.predict(x)
    assert scores["box_mse"] == pytest.approx(np.mean((boxes - yb) ** 2), rel=1e-5)


def test_wrong_labels_and_settings_say_what_to_change() -> None:
    model = two_heads()
    x, yc, yb = data()
    with pytest.raises(ModelError, match="list or tuple in return order, or a dict"):
        model.fit(x, yc, epochs=1)
    with pytest.raises(ModelError, match="1 given for 2 outputs"):
        model.fit(x, [yc], epochs=1)
    with pytest.raises(ModelError, match="no output named 'boxes'.*cls, box"):
        model.fit(x, {"cls": yc, "boxes": yb}, epochs=1)
    with pytest.raises(ModelError, match="labels of output box has 5"):
        model.fit(x, [yc, yb[:5]], epochs=1)
    with pytest.raises(ModelError, match="loss_weights: 3 given"):
        model.compile(loss_weights=[1, 2, 3])
    with pytest.raises(ModelError, match="3 given for 2 outputs"):
        two_heads("        loss = [mse, mse, mse]\n")


def test_train_section_takes_a_loss_and_a_weight_per_output() -> None:
    model = two_heads(
        "        loss = [categorical_crossentropy, mse]\n        loss_weights = [1, 0.3]\n"
    )
    assert [loss.name for loss in model.losses] == [
        "categorical_crossentropy",
        "mean_squared_error",
    ]
    assert model.loss_weights == [1.0, 0.3]
    with pytest.raises(CnnError, match="loss_weights must be numbers >= 0"):
        two_heads("        loss_weights = [1, -1]\n")


def test_summary_names_each_output_with_its_loss() -> None:
    text = two_heads("        loss_weights = [1, 0.3]\n").summary()
    assert "cls: sparse_categorical_crossentropy" in text
    assert "box: binary_crossentropy × 0.3" in text


# ---- checkpoints ----


def test_resume_with_two_outputs_is_bit_exact(tmp_path: Path) -> None:
    x, yc, yb = data(40)
    kw: dict[str, Any] = {"epochs": 2, "batch_size": 8, "validation_split": 0.2, "verbose": 0}
    reference = two_heads(dtype="float32")
    expected = reference.fit(x, [yc, yb], loss_weights=WEIGHTS, **kw)
    full = tmp_path / "all"
    two_heads(dtype="float32").fit(
        x, [yc, yb], loss_weights=WEIGHTS, checkpoint_dir=full, checkpoint_every=3, keep=100, **kw
    )
    names = sorted(p.name for p in full.iterdir())
    assert len(names) >= 3
    for name in names:
        one = tmp_path / name
        one.mkdir()
        (one / name).write_bytes((full / name).read_bytes())
        resumed = two_heads(dtype="float32")
        history = resumed.fit(
            x, {"cls": yc, "box": yb}, loss_weights=WEIGHTS, checkpoint_dir=one, resume=True, **kw
        )
        assert history.history == expected.history, name
        for u, v in zip(resumed.get_weights(), reference.get_weights(), strict=True):
            assert np.array_equal(u, v), name
    with pytest.raises(ModelError):  # other box labels: other data
        two_heads(dtype="float32").fit(
            x, [yc, yb + 0.5], loss_weights=WEIGHTS, checkpoint_dir=one, resume=True, **kw
        )


# ---- the zoo: GoogLeNet's auxiliary classifiers ----


def test_googlenet_aux_returns_three_outputs_weighted_as_the_paper() -> None:
    spec = Path(__file__).resolve().parents[2] / "specs" / "googlenet.cnn"
    plain, aux = cnndsl.compile(spec), cnndsl.compile(spec, aux=True)
    assert plain.graph.outputs == ["linear"]
    # Figure 3 at 224: a 1×1 conv of 128 on 4a's 512 (4d's 528) channels, dense
    # 4·4·128 -> 1024, dense 1024 -> 1000; weights and biases.
    extra = sum(c * 128 + 128 + 2048 * 1024 + 1024 + 1024 * 1000 + 1000 for c in (512, 528))
    assert aux.total_params == plain.total_params + extra
    model = cnndsl.compile(spec, aux=True, size=96, classes=3).build(seed=0)
    assert model.output_names == ["linear", "aux1", "aux2"]
    assert model.loss_weights == [1.0, 0.3, 0.3]
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 96, 96, 3), dtype=np.float32), np.array([0, 2])
    main, aux1, aux2 = model.predict(x)
    assert main.shape == aux1.shape == aux2.shape == (2, 3)
    total, grads = model.gradients(x, [y, y, y], training=False)
    scores = model.evaluate(x, {"linear": y, "aux1": y, "aux2": y})
    parts = scores["linear_loss"] + 0.3 * (scores["aux1_loss"] + scores["aux2_loss"])
    assert total == pytest.approx(scores["loss"], rel=1e-5)
    assert scores["loss"] == pytest.approx(parts, rel=1e-5)
    assert np.abs(grads["aux1/linear:kernel"]).sum() > 0


def test_a_non_finite_step_names_where_with_two_outputs() -> None:
    from cnndsl.training.guards import NonFiniteLoss

    model = two_heads(dtype="float32")
    x, yc, yb = data(4)
    x[0, 0, 0, 0] = np.inf
    before = model.get_weights()
    with pytest.raises(NonFiniteLoss, match="the input batch"):
        model.train_step(x, [yc, yb])
    for u, v in zip(model.get_weights(), before, strict=True):
        assert np.array_equal(u, v)
