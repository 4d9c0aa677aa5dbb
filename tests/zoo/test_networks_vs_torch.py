"""Whole networks against PyTorch: the same weights copied in, forward and every gradient.

Each torch network below is written by hand in plain PyTorch (NCHW), the way
one would port the Keras model: `same` padding is TensorFlow's (the extra
pixel bottom/right, so an explicit F.pad before a valid conv or pool), and
dense layers read the features in NHWC order. Keras BN momentum 0.99 is torch
momentum 0.01; torch's running_var uses the unbiased batch variance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cnndsl
from cnndsl.frontend.grammar import resource_path
from cnndsl.training.model import Model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

TOL = 1e-4  # relative error of each gradient tensor (norm of difference / norm), float32
# NOTE: ResNet-34 runs in float64 with a tight tolerance. In float32 the gradients of the
# layers below the last stage differ from torch's by ~2%: the stride-2 unit there
# normalises 16 values per channel (batch 4 at 2×2), and batchnorm's backward cancels
# nearly equal terms. Both frameworks agree to 1e-14 in float64, so that is the check.
TOL64 = 1e-9


def tf_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow `same`: out = ceil(n/s); the extra pixel of padding goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def pad_same(x: Any, k: int, s: int, value: float = 0.0) -> Any:
    top, bottom = tf_pads(x.shape[2], k, s)
    left, right = tf_pads(x.shape[3], k, s)
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv(nn.Module):  # type: ignore[misc]
    """Keras Conv2D: optional TF `same` padding, then a valid torch convolution."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        bias: bool = True,
        same: bool = True,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.k, self.stride, self.same = k, stride, same
        self.conv = nn.Conv2d(cin, cout, k, stride, bias=bias, groups=groups)

    def forward(self, x: Any) -> Any:
        return self.conv(pad_same(x, self.k, self.stride) if self.same else x)


def maxpool_same(x: Any, k: int, s: int) -> Any:
    return F.max_pool2d(pad_same(x, k, s, value=-float("inf")), k, s)


def bn(c: int) -> Any:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def nhwc_flatten(x: Any) -> Any:
    return x.permute(0, 2, 3, 1).flatten(1)


# ---- the networks, as one would write them in PyTorch ----


class FashionCNN(nn.Module):  # type: ignore[misc]
    """Hands-On ML ch. 14 Fashion-MNIST CNN; returns logits (softmax is in the loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = Conv(1, 64, 7)
        self.c2, self.c3 = Conv(64, 128, 3), Conv(128, 128, 3)
        self.c4, self.c5 = Conv(128, 256, 3), Conv(256, 256, 3)
        self.d1, self.d2, self.d3 = nn.Linear(2304, 128), nn.Linear(128, 64), nn.Linear(64, 10)
        self.order = [self.c1, self.c2, self.c3, self.c4, self.c5, self.d1, self.d2, self.d3]

    def forward(self, x: Any) -> Any:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(F.relu(self.c2(x)))), 2)
        x = F.max_pool2d(F.relu(self.c5(F.relu(self.c4(x)))), 2)
        x = F.dropout(F.relu(self.d1(nhwc_flatten(x))), 0.5, self.training)
        x = F.dropout(F.relu(self.d2(x)), 0.5, self.training)
        return self.d3(x)


class ResidualUnit(nn.Module):  # type: ignore[misc]
    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = Conv(cin, filters, 3, stride, bias=False), bn(filters)
        self.c2, self.b2 = Conv(filters, filters, 3, bias=False), bn(filters)
        self.order: list[Any] = [self.c1, self.b1, self.c2, self.b2]
        self.skip = None
        if stride > 1:
            self.skip = nn.Sequential(Conv(cin, filters, 1, stride, bias=False), bn(filters))
            self.order += [self.skip[0], self.skip[1]]

    def forward(self, x: Any) -> Any:
        main = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(main + (x if self.skip is None else self.skip(x)))


class ResNet34(nn.Module):  # type: ignore[misc]
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.stem_bn = Conv(3, 64, 7, 2, bias=False), bn(64)
        self.order: list[Any] = [self.stem, self.stem_bn]
        units, cin = [], 64
        for filters in [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3:
            unit = ResidualUnit(cin, filters, 1 if filters == cin else 2)
            units.append(unit)
            self.order += unit.order
            cin = filters
        self.units = nn.ModuleList(units)
        self.head = nn.Linear(512, classes)
        self.order.append(self.head)

    def forward(self, x: Any) -> Any:
        x = maxpool_same(F.relu(self.stem_bn(self.stem(x))), 3, 2)
        for unit in self.units:
            x = unit(x)
        return self.head(x.mean(dim=(2, 3)))


class Inception(nn.Module):  # type: ignore[misc]
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> None:
        super().__init__()
        self.b1 = Conv(cin, c1, 1)
        self.b2r, self.b2 = Conv(cin, c3r, 1), Conv(c3r, c3, 3)
        self.b3r, self.b3 = Conv(cin, c5r, 1), Conv(c5r, c5, 5)
        self.b4 = Conv(cin, pp, 1)
        self.head = nn.Linear(c1 + c3 + c5 + pp, 5)
        self.order = [self.b1, self.b2r, self.b2, self.b3r, self.b3, self.b4, self.head]

    def forward(self, x: Any) -> Any:
        y = torch.cat(
            [
                F.relu(self.b1(x)),
                F.relu(self.b2(F.relu(self.b2r(x)))),
                F.relu(self.b3(F.relu(self.b3r(x)))),
                F.relu(self.b4(maxpool_same(x, 3, 1))),
            ],
            dim=1,
        )
        return self.head(y.mean(dim=(2, 3)))


class SeparableConv(nn.Module):  # type: ignore[misc]
    """Keras SeparableConv2D: depthwise (groups = in) then pointwise 1×1."""

    def __init__(self, cin: int, filters: int, k: int, bias: bool) -> None:
        super().__init__()
        self.depthwise = Conv(cin, cin, k, bias=False, groups=cin)
        self.pointwise = nn.Conv2d(cin, filters, 1, bias=bias)

    def forward(self, x: Any) -> Any:
        return self.pointwise(self.depthwise(x))


class SeXception(nn.Module):  # type: ignore[misc]
    """conv -> squeeze-and-excitation -> xception entry block -> head."""

    def __init__(self, c: int = 16, ratio: int = 4, filters: int = 24) -> None:
        super().__init__()
        self.conv = Conv(3, c, 3)
        self.se1, self.se2 = nn.Linear(c, c // ratio), nn.Linear(c // ratio, c)
        self.s1, self.n1 = SeparableConv(c, filters, 3, bias=False), bn(filters)
        self.s2, self.n2 = SeparableConv(filters, filters, 3, bias=False), bn(filters)
        self.skip, self.nskip = Conv(c, filters, 1, 2, bias=False), bn(filters)
        self.head = nn.Linear(filters, 5)
        self.order = [
            self.conv,
            self.se1,
            self.se2,
            self.s1,
            self.n1,
            self.s2,
            self.n2,
            self.skip,
            self.nskip,
            self.head,
        ]

    def forward(self, x: Any) -> Any:
        x = F.relu(self.conv(x))
        scale = torch.sigmoid(self.se2(F.relu(self.se1(x.mean(dim=(2, 3))))))
        x = x * scale[:, :, None, None]
        main = self.n2(self.s2(F.relu(self.n1(self.s1(x)))))
        main = maxpool_same(main, 3, 2)
        y = main + self.nskip(self.skip(x))
        return self.head(y.mean(dim=(2, 3)))


# ---- weights across: Keras layouts <-> torch layouts ----


def pairs(
    model: Model, order: list[Any]
) -> list[tuple[str, Any, Callable[[Any], Any], Callable[[Any], Any]]]:
    """(cnndsl key, torch tensor, keras->torch, torch->keras) for every weight."""
    steps = [s for s in model.plan.steps if s.weights]
    assert len(steps) == len(order), (len(steps), len(order))
    conv_k = (lambda k: k.transpose(3, 2, 0, 1), lambda t: t.permute(2, 3, 1, 0))
    dense_k = (lambda k: k.T, lambda t: t.T)
    same = (lambda k: k, lambda t: t)
    out = []
    for step, mod in zip(steps, order, strict=True):

        def key(name: str, step: Any = step) -> str:
            return f"{step.path}:{name}"

        if isinstance(mod, Conv | nn.Conv2d):
            conv = mod.conv if isinstance(mod, Conv) else mod
            out.append((key("kernel"), conv.weight, *conv_k))
            if conv.bias is not None:
                out.append((key("bias"), conv.bias, *same))
        elif isinstance(mod, nn.Linear):
            out.append((key("kernel"), mod.weight, *dense_k))
            out.append((key("bias"), mod.bias, *same))
        elif isinstance(mod, nn.BatchNorm2d):
            out += [
                (key("gamma"), mod.weight, *same),
                (key("beta"), mod.bias, *same),
                (key("moving_mean"), mod.running_mean, *same),
                (key("moving_variance"), mod.running_var, *same),
            ]
        elif isinstance(mod, SeparableConv):
            c = mod.depthwise.conv.weight.shape[0]
            out.append(
                (
                    key("depthwise_kernel"),
                    mod.depthwise.conv.weight,
                    lambda k, c=c: k.transpose(2, 3, 0, 1).reshape(c, 1, *k.shape[:2]),
                    lambda t, c=c: t.reshape(c, 1, *t.shape[2:]).permute(2, 3, 0, 1),
                )
            )
            out.append((key("pointwise_kernel"), mod.pointwise.weight, *conv_k))
            if mod.pointwise.bias is not None:
                out.append((key("bias"), mod.pointwise.bias, *same))
        else:
            raise AssertionError(f"no mapping for {type(mod).__name__}")
    return out


def copy_into(model: Model, net: Any) -> None:
    """Random (non-default) values for every cnndsl weight, then the same into torch."""
    rng = np.random.default_rng(0)
    for key, tensor, to_torch, _ in pairs(model, net.order):
        value = model.params[key]
        if "moving_variance" in key or "gamma" in key:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
        elif "moving_mean" in key or "beta" in key or key.endswith(":bias"):
            value[...] = rng.normal(0, 0.1, value.shape)
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(to_torch(value))))


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def compare(
    model: Model, net: Any, x: np.ndarray, y: np.ndarray, training: bool, tol: float = TOL
) -> None:
    """Forward probabilities, loss and every weight gradient agree within tol."""
    copy_into(model, net)
    net.train(training)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    # Inference forward (moving statistics).
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(xt), dim=1).numpy()
    assert rel(model.predict(x), expected) < tol
    # Loss and gradients.
    net.train(training)
    logits = net(xt)
    loss = F.cross_entropy(logits, torch.from_numpy(y))
    net.zero_grad()
    loss.backward()
    value, grads = model.gradients(x, y, training=training)
    assert value == pytest.approx(loss.item(), rel=tol)
    checked = 0
    for key, tensor, _, to_keras in pairs(model, net.order):
        if "moving" in key:
            continue
        err = rel(grads[key], to_keras(tensor.grad).numpy())
        assert err < tol, f"{key}: relative error {err:.2e}"
        checked += 1
    assert checked == len(grads)


# ---- the tests ----


def test_fashion_mnist_cnn() -> None:
    torch.manual_seed(0)
    model = cnndsl.compile(str(resource_path("specs") / "fashion_mnist.cnn")).build(seed=0)
    rng = np.random.default_rng(1)
    x = rng.random((4, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 4)
    compare(model, FashionCNN(), x, y, training=False)  # dropout off: same function


def resnet34(dtype: str = "float64") -> tuple[Model, Any]:
    """ResNet-34 at 64×64 from the shipped spec, and its torch twin in the same precision."""
    net = cnndsl.compile(str(resource_path("specs") / "resnet34.cnn"), size=64)
    twin = ResNet34()
    return Model(net.graph, seed=0, dtype=dtype), twin.double() if dtype == "float64" else twin


def test_resnet34_forward_and_gradients() -> None:
    model, net = resnet34()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 64, 64, 3))
    y = rng.integers(0, 10, 4)
    compare(model, net, x, y, training=True, tol=TOL64)  # batch statistics


def test_resnet34_float32_forward() -> None:
    model, net = resnet34("float32")
    copy_into(model, net)
    x = np.random.default_rng(6).normal(size=(4, 64, 64, 3)).astype(np.float32)
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), 1)
    assert rel(model.predict(x), expected.numpy()) < TOL


def test_resnet34_sgd_momentum_steps_match_torch() -> None:
    model, net = resnet34()
    copy_into(model, net)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 64, 64, 3))
    y = rng.integers(0, 10, 4)
    before = {k: v.copy() for k, v in model.params.items()}
    model.compile(optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    for _ in range(2):  # the second step uses the momentum buffer
        model.train_step(x, y)
        opt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        opt.step()
    for key, tensor, _, to_keras in pairs(model, net.order):
        ours = model.params[key]
        theirs = to_keras(tensor.detach()).numpy()
        assert not np.array_equal(ours, before[key]), f"{key} did not move"
        if key.endswith("moving_variance"):
            # torch averages the unbiased variance (factor m/(m-1), m = N·h·w values per
            # channel); the update is linear, so undo that factor on what the steps added.
            shape = model.plan.steps[model.plan.index(key.split(":")[0])].shape
            m = 4 * shape[0] * shape[1]
            decayed = 0.99**2 * before[key]
            assert rel((ours - decayed) * m / (m - 1), theirs - decayed) < TOL64, key
        else:
            assert rel(ours, theirs) < TOL64, key


def test_inception_block() -> None:
    model = cnndsl.compile(INCEPTION).build(seed=0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 8, 8, 6)).astype(np.float32)
    compare(model, Inception(6, 4, 3, 5, 2, 3, 2), x, rng.integers(0, 5, 3), training=True)


def test_se_block_and_separable_convolutions() -> None:
    model = cnndsl.compile(SE_XCEPTION).build(seed=0)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
    compare(model, SeXception(), x, rng.integers(0, 5, 3), training=True)


INCEPTION = """
defaults conv(padding=same, activation=relu)

block inception(c1, c3_reduce, c3, c5_reduce, c5, pool_proj) {
    return concat(
        input -> conv(c1, 1),
        input -> conv(c3_reduce, 1) -> conv(c3, 3),
        input -> conv(c5_reduce, 1) -> conv(c5, 5),
        input -> maxpool(3, stride=1, padding=same) -> conv(pool_proj, 1),
    )
}

network net() {
    input image: [8, 8, 6]
    return image -> inception(4, 3, 5, 2, 3, 2) -> global_avgpool
        -> dense(5, activation=softmax)
}
"""

# LANGUAGE.md's squeeze-excite and Xception entry blocks, as examples/language keeps them.
SE_XCEPTION = (
    (Path(__file__).resolve().parents[2] / "examples" / "language" / "se_xception.cnn").read_text(
        encoding="utf-8"
    )
    + """
network net() {
    input image: [8, 8, 3]
    return image -> conv(16, 3, padding=same, activation=relu) -> se(ratio=4)
        -> xception_entry(24) -> global_avgpool -> dense(5, activation=softmax)
}
"""
)
