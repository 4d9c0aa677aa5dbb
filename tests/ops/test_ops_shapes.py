"""Shape rules, weights, parameter and MAC counts, windows and labels of the ops.

Expected values are written by hand (counted on paper), never computed with
the formula under test. Property tests tie each shape rule to the shape the
forward kernel actually produces, and to PyTorch's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from op_cases import ALL_CASES, CASES, Case, make_ctx, make_inputs, make_weights, tf_same

from cnndsl.ops import OPS
from cnndsl.ops.errors import AttrError, ShapeError
from cnndsl.ops.window import POINTWISE, WHOLE, Window


def test_every_op_has_cases() -> None:
    assert set(CASES) == set(OPS) - {"input"}
    assert all(CASES[op] for op in CASES)


# ---- Literal shape tables ----

SHAPES = [
    # (op, args, kwargs, input shapes, expected output shape)
    ("conv", (6, 5), {}, [(28, 28, 1)], (24, 24, 6)),  # LeNet C1
    ("conv", (8, 3, 2), {"padding": "same"}, [(7, 7, 3)], (4, 4, 8)),  # ceil(7/2)
    ("conv", (8, 3), {"dilation": 2}, [(10, 10, 3)], (6, 6, 8)),  # effective kernel 5
    ("conv", (8, 3, 2), {}, [(7, 7, 3)], (3, 3, 8)),
    ("conv", (8, 3, 2), {"dilation": 2}, [(11, 11, 3)], (4, 4, 8)),  # (11 - 5)/2 + 1
    ("conv", (8, 3), {"padding": 1}, [(5, 5, 3)], (5, 5, 8)),
    ("conv", (8, 3), {"padding": (0, 2)}, [(5, 5, 3)], (3, 7, 8)),
    ("conv", (8, (1, 7)), {"padding": "same"}, [(17, 17, 4)], (17, 17, 8)),  # Inception
    ("conv", (64, 7, 2), {"padding": "same"}, [(224, 224, 3)], (112, 112, 64)),  # ResNet stem
    ("conv", (96, 11, 4), {}, [(227, 227, 3)], (55, 55, 96)),  # AlexNet conv1
    ("conv", (8, 3, 2), {"padding": "same"}, [(8, 8, 3)], (4, 4, 8)),
    ("conv", (8, 1, 2), {}, [(7, 7, 3)], (4, 4, 8)),
    ("conv", (8, 3), {"groups": 4}, [(9, 9, 8)], (7, 7, 8)),
    ("depthwise_conv", (3,), {"depth_multiplier": 2}, [(10, 10, 4)], (8, 8, 8)),
    ("depthwise_conv", (3, 2), {"padding": "same"}, [(112, 112, 32)], (56, 56, 32)),
    ("separable_conv", (16, 3), {"padding": "same"}, [(10, 10, 4)], (10, 10, 16)),
    ("separable_conv", (16, 3, 2), {}, [(10, 10, 4)], (4, 4, 16)),
    ("dense", (10,), {}, [(128,)], (10,)),
    ("maxpool", (2,), {}, [(28, 28, 64)], (14, 14, 64)),
    ("maxpool", (3, 2), {"padding": "same"}, [(112, 112, 64)], (56, 56, 64)),
    ("maxpool", (3, 2), {}, [(13, 13, 256)], (6, 6, 256)),  # AlexNet overlapping pool
    ("maxpool", (3, 1), {"padding": "same"}, [(28, 28, 192)], (28, 28, 192)),
    ("maxpool", ((2, 3),), {}, [(8, 9, 2)], (4, 3, 2)),
    ("maxpool", (3, 1), {"padding": 1}, [(5, 5, 2)], (5, 5, 2)),
    ("avgpool", (2,), {}, [(7, 7, 3)], (3, 3, 3)),
    ("avgpool", (2,), {"padding": "same"}, [(7, 7, 3)], (4, 4, 3)),
    ("global_avgpool", (), {}, [(7, 7, 512)], (512,)),
    ("global_maxpool", (), {}, [(3, 5, 8)], (8,)),
    ("batchnorm", (), {}, [(10, 10, 4)], (10, 10, 4)),
    ("batchnorm", (), {}, [(5,)], (5,)),
    ("lrn", (), {}, [(55, 55, 96)], (55, 55, 96)),
    ("dropout", (0.5,), {}, [(128,)], (128,)),
    ("flatten", (), {}, [(3, 3, 256)], (2304,)),
    ("flatten", (), {}, [(10,)], (10,)),
    ("zeropad", (1,), {}, [(28, 28, 3)], (30, 30, 3)),
    ("zeropad", (((1, 2), (3, 4)),), {}, [(5, 5, 1)], (8, 12, 1)),
    ("zeropad", ((3, 0),), {}, [(5, 5, 1)], (11, 5, 1)),
    ("concat", (), {}, [(28, 28, 64), (28, 28, 32)], (28, 28, 96)),
    ("concat", (), {}, [(7, 7, 1), (7, 7, 2), (7, 7, 3)], (7, 7, 6)),
    ("concat", (), {"axis": 0}, [(2, 5, 3), (4, 5, 3)], (6, 5, 3)),
    ("concat", (), {"axis": 1}, [(2, 5, 3), (2, 1, 3)], (2, 6, 3)),
    ("add", (), {}, [(7, 7, 64), (7, 7, 64)], (7, 7, 64)),
    ("multiply", (), {}, [(7, 7, 64), (64,)], (7, 7, 64)),
    ("multiply", (), {}, [(7, 1, 3), (5, 3)], (7, 5, 3)),
    ("multiply", (), {}, [(1,), (4, 4, 2)], (4, 4, 2)),
    ("relu", (), {}, [(4, 4, 3)], (4, 4, 3)),
    ("softmax", (), {}, [(10,)], (10,)),
    ("leaky_relu", (0.1,), {}, [(2, 3)], (2, 3)),
    ("preprocess", ("caffe",), {}, [(224, 224, 3)], (224, 224, 3)),
    ("preprocess", ("tf",), {"fit": "stretch"}, [(299, 299, 1)], (299, 299, 1)),
    ("upsample", (), {}, [(7, 7, 64)], (14, 14, 64)),
    ("upsample", ((2, 3),), {"interpolation": "bilinear"}, [(5, 4, 3)], (10, 12, 3)),
    ("upsample", (1,), {}, [(3, 9, 2)], (3, 9, 2)),
]


@pytest.mark.parametrize(("op", "args", "kw", "xs", "expected"), SHAPES)
def test_shape_table(op: str, args: tuple, kw: dict, xs: list, expected: tuple) -> None:
    assert OPS[op].shape(OPS[op].bind(*args, **kw), *xs) == expected


def test_input_shape() -> None:
    assert OPS["input"].shape(OPS["input"].bind([28, 28, 1])) == (28, 28, 1)
    with pytest.raises(ShapeError):
        OPS["input"].shape(OPS["input"].bind([28, 0, 1]))
    with pytest.raises(RuntimeError, match="executor"):
        OPS["input"].forward(np, OPS["input"].bind([2]), [], {}, make_ctx(CASES["relu"][0]))


ERRORS = [
    # (op, args, kwargs, input shapes, message pattern)
    ("conv", (6, 5), {}, [(3, 3, 64)], r"output height would be -1"),
    ("conv", (6, 5), {}, [(784,)], r"conv needs a feature map \[height, width, channels\]"),
    ("conv", (6, 3), {"groups": 2}, [(8, 8, 3)], r"divisible by 2; got 3 channels"),
    ("maxpool", (2,), {}, [(1, 5, 3)], r"output height would be 0"),
    ("global_avgpool", (), {}, [(10,)], r"global_avgpool needs a feature map"),
    (
        "dense",
        (10,),
        {},
        [(7, 7, 64)],
        r"^dense needs a vector; got \[7, 7, 64\]: add flatten or global_avgpool before it$",
    ),
    (
        "concat",
        (),
        {},
        [(28, 28, 64), (14, 14, 32)],
        r"^cannot concat \[28, 28, 64\] and \[14, 14, 32\] along axis -1:"
        r" they differ in height and width$",
    ),
    (
        "concat",
        (),
        {},
        [(28, 28, 64), (28, 14, 32), (28, 28, 8)],
        r"^cannot concat \[28, 28, 64\], \[28, 14, 32\] and \[28, 28, 8\] along axis -1:"
        r" they differ in width$",
    ),
    ("concat", (), {}, [(4, 4, 2), (4,)], r"different numbers of axes"),
    ("concat", (), {"axis": 3}, [(4, 4, 2), (4, 4, 2)], r"out of range"),
    (
        "add",
        (),
        {},
        [(28, 28, 64), (14, 14, 128)],
        r"^cannot add tensors of shapes \[28, 28, 64\] and \[14, 14, 128\]$",
    ),
    ("multiply", (), {}, [(7, 7, 64), (32,)], r"^cannot multiply tensors of shapes \[7, 7, 64\]"),
    ("softmax", (2,), {}, [(4, 4)], r"softmax axis 2 is out of range"),
    ("zeropad", (1,), {}, [(10,)], r"zeropad needs a feature map"),
    ("upsample", (2,), {}, [(64,)], r"upsample needs a feature map"),
    ("preprocess", ("caffe",), {}, [(28, 28, 1)], r"needs an RGB image \[height, width, 3\]"),
    ("preprocess", ("torch",), {}, [(3,)], r"got \[3\] \(mode=tf works on any"),
]


@pytest.mark.parametrize(("op", "args", "kw", "xs", "pattern"), ERRORS)
def test_shape_errors(op: str, args: tuple, kw: dict, xs: list, pattern: str) -> None:
    with pytest.raises(ShapeError, match=pattern):
        OPS[op].shape(OPS[op].bind(*args, **kw), *xs)


BAD_ATTRS = [
    ("conv", (6,), {}, "kernel"),  # required
    ("conv", (6, 3), {"groups": 4}, "groups"),  # 6 filters in 4 groups
    ("conv", (6, 3), {"padding": "full"}, "padding"),
    ("conv", (6, 3), {"activation": "relu7"}, "activation"),
    ("conv", (0, 3), {}, "filters"),
    ("maxpool", (3,), {"padding": 2}, "padding"),  # a window of padding alone
    ("dropout", (1.0,), {}, "rate"),
    ("dropout", (-0.1,), {}, "rate"),
    ("zeropad", ((1, 2, 3),), {}, "padding"),
    ("zeropad", (-1,), {}, "padding"),
    ("dense", (), {"units": 10, "bais": True}, "bais"),
    ("upsample", (0,), {}, "size"),
    ("upsample", ((2, 1.5),), {}, "size"),
    ("upsample", (2,), {"interpolation": "bicubic"}, "interpolation"),
    ("preprocess", (), {}, "mode"),  # required: no default is right for every network
    ("preprocess", ("keras",), {}, "mode"),
    ("preprocess", ("tf",), {"fit": "pad"}, "fit"),
]


@pytest.mark.parametrize(("op", "args", "kw", "attr"), BAD_ATTRS)
def test_bad_attrs(op: str, args: tuple, kw: dict, attr: str | None) -> None:
    with pytest.raises(AttrError) as e:
        OPS[op].bind(*args, **kw)
    assert e.value.attr == attr


def test_pool_stride_defaults_to_size() -> None:
    assert OPS["maxpool"].bind(3).stride == (3, 3)
    assert OPS["avgpool"].bind((2, 3)).stride == (2, 3)
    assert OPS["maxpool"].bind(3, 1).stride == (1, 1)


def test_zeropad_forms() -> None:
    bind = OPS["zeropad"].bind
    assert bind(2).padding == ((2, 2), (2, 2))
    assert bind((1, 3)).padding == ((1, 1), (3, 3))
    assert bind([[0, 1], [2, 3]]).padding == ((0, 1), (2, 3))
    assert bind().padding == ((1, 1), (1, 1))


# ---- Weights, parameters, MACs ----

PARAMS = [
    # (op, args, kwargs, input shapes, weight shapes, params, non-trainable params)
    ("conv", (6, 5), {}, [(28, 28, 1)], {"kernel": (5, 5, 1, 6), "bias": (6,)}, 156, 0),
    ("conv", (64, 3), {"bias": False}, [(8, 8, 32)], {"kernel": (3, 3, 32, 64)}, 18432, 0),
    (
        "conv",
        (64, 3),
        {"groups": 4},
        [(8, 8, 32)],
        {"kernel": (3, 3, 8, 64), "bias": (64,)},
        4672,
        0,
    ),  # fmt: skip
    (
        "depthwise_conv",
        (3,),
        {"bias": False},
        [(112, 112, 32)],
        {"kernel": (3, 3, 32, 1)},
        288,
        0,
    ),  # MobileNet conv_dw_1  # fmt: skip
    (
        "depthwise_conv",
        (3,),
        {"depth_multiplier": 2},
        [(8, 8, 4)],
        {"kernel": (3, 3, 4, 2), "bias": (8,)},
        80,
        0,
    ),  # fmt: skip
    # Xception block2_sepconv1: SeparableConv2D(128, 3, use_bias=False) on 64 channels.
    (
        "separable_conv",
        (128, 3),
        {"bias": False},
        [(147, 147, 64)],
        {"depthwise_kernel": (3, 3, 64, 1), "pointwise_kernel": (1, 1, 64, 128)},
        8768,
        0,
    ),  # fmt: skip
    (
        "separable_conv",
        (64, 3),
        {},
        [(8, 8, 32)],
        {"depthwise_kernel": (3, 3, 32, 1), "pointwise_kernel": (1, 1, 32, 64), "bias": (64,)},
        2400,
        0,
    ),  # fmt: skip
    (
        "separable_conv",
        (8, 3),
        {"depth_multiplier": 2},
        [(8, 8, 4)],
        {"depthwise_kernel": (3, 3, 4, 2), "pointwise_kernel": (1, 1, 8, 8), "bias": (8,)},
        72 + 64 + 8,
        0,
    ),  # fmt: skip
    ("dense", (128,), {}, [(2304,)], {"kernel": (2304, 128), "bias": (128,)}, 295040, 0),
    ("dense", (10,), {"bias": False}, [(64,)], {"kernel": (64, 10)}, 640, 0),
    (
        "batchnorm",
        (),
        {},
        [(7, 7, 64)],
        {"gamma": (64,), "beta": (64,), "moving_mean": (64,), "moving_variance": (64,)},
        256,
        128,
    ),  # fmt: skip
    (
        "batchnorm",
        (),
        {"scale": False},
        [(7, 7, 64)],  # InceptionV3's BatchNormalization
        {"beta": (64,), "moving_mean": (64,), "moving_variance": (64,)},
        192,
        128,
    ),  # fmt: skip
    (
        "batchnorm",
        (),
        {"center": False, "scale": False},
        [(10,)],
        {"moving_mean": (10,), "moving_variance": (10,)},
        20,
        20,
    ),  # fmt: skip
    ("maxpool", (2,), {}, [(8, 8, 3)], {}, 0, 0),
    ("lrn", (), {}, [(8, 8, 3)], {}, 0, 0),
    ("dropout", (0.5,), {}, [(8,)], {}, 0, 0),
]


@pytest.mark.parametrize(("op", "args", "kw", "xs", "shapes", "params", "frozen"), PARAMS)
def test_weights_and_params(
    op: str, args: tuple, kw: dict, xs: list, shapes: dict, params: int, frozen: int
) -> None:
    ws = OPS[op].weights(OPS[op].bind(*args, **kw), *xs)
    assert {k: w.shape for k, w in ws.items()} == shapes
    assert sum(w.size for w in ws.values()) == params
    assert sum(w.size for w in ws.values() if not w.trainable) == frozen


def test_weight_initialisers() -> None:
    conv = OPS["conv"].weights(OPS["conv"].bind(4, 3), (5, 5, 2))
    assert (conv["kernel"].init, conv["bias"].init) == ("glorot_uniform", "zeros")
    bn = OPS["batchnorm"].weights(OPS["batchnorm"].bind(), (5, 5, 2))
    inits = {k: (w.init, w.trainable) for k, w in bn.items()}
    assert inits == {
        "gamma": ("ones", True),
        "beta": ("zeros", True),
        "moving_mean": ("zeros", False),
        "moving_variance": ("ones", False),
    }


MACS = [
    # (op, args, kwargs, input shapes, multiply-accumulates per sample)
    ("conv", (6, 5), {}, [(28, 28, 1)], 24 * 24 * 6 * 25),  # 86400
    ("conv", (8, 3), {"groups": 2}, [(5, 5, 4)], 3 * 3 * 8 * 9 * 2),  # 2 inputs per filter
    ("conv", (8, 1, 2), {}, [(7, 7, 3)], 4 * 4 * 8 * 3),
    ("depthwise_conv", (3,), {}, [(10, 10, 4)], 8 * 8 * 4 * 9),
    ("depthwise_conv", (3,), {"depth_multiplier": 2}, [(10, 10, 4)], 8 * 8 * 8 * 9),
    ("separable_conv", (16, 3), {}, [(10, 10, 4)], 8 * 8 * 4 * 9 + 8 * 8 * 4 * 16),
    ("dense", (128,), {}, [(2304,)], 2304 * 128),
    ("maxpool", (2,), {}, [(8, 8, 3)], 0),
    ("add", (), {}, [(4, 4, 3), (4, 4, 3)], 0),
    ("upsample", (2,), {}, [(4, 4, 3)], 0),  # nearest copies
    ("upsample", (2,), {"interpolation": "bilinear"}, [(4, 4, 3)], 8 * 8 * 3 * 4),  # 2×2 blend
]


@pytest.mark.parametrize(("op", "args", "kw", "xs", "macs"), MACS)
def test_macs(op: str, args: tuple, kw: dict, xs: list, macs: int) -> None:
    a = OPS[op].bind(*args, **kw)
    assert OPS[op].macs(a, xs, OPS[op].shape(a, *xs)) == macs


WINDOWS = [
    ("conv", (8, 3, 2), {"dilation": 2}, [(11, 11, 3)], Window((5, 5), (2, 2))),
    ("conv", (8, (1, 7)), {}, [(17, 17, 3)], Window((1, 7), (1, 1))),
    ("depthwise_conv", (3, 2), {}, [(8, 8, 3)], Window((3, 3), (2, 2))),
    ("separable_conv", (8, 3), {"dilation": 3}, [(8, 8, 3)], Window((7, 7), (1, 1))),
    ("maxpool", (3, 2), {}, [(13, 13, 3)], Window((3, 3), (2, 2))),
    ("avgpool", (2,), {}, [(8, 8, 3)], Window((2, 2), (2, 2))),
    ("global_avgpool", (), {}, [(7, 7, 3)], WHOLE),
    ("global_maxpool", (), {}, [(7, 7, 3)], WHOLE),
    ("dense", (10,), {}, [(64,)], WHOLE),
    ("relu", (), {}, [(7, 7, 3)], POINTWISE),
    ("batchnorm", (), {}, [(7, 7, 3)], POINTWISE),
    ("upsample", (2,), {}, [(7, 7, 3)], POINTWISE),  # each output copies one pixel
    ("upsample", ((3, 1),), {"interpolation": "bilinear"}, [(7, 7, 3)], Window((2, 1), (1, 1))),
]


@pytest.mark.parametrize(("op", "args", "kw", "xs", "window"), WINDOWS)
def test_windows(op: str, args: tuple, kw: dict, xs: list, window: Window) -> None:
    assert OPS[op].window(OPS[op].bind(*args, **kw), *xs) == window


LABELS = [
    ("conv", (128, 3, 2), {}, "conv 3×3/2, 128"),
    ("conv", (64, 7), {"activation": "relu"}, "conv 7×7, 64, relu"),
    ("conv", (64, (1, 7)), {}, "conv 1×7, 64"),
    ("maxpool", (2,), {}, "maxpool 2×2/2"),
    ("maxpool", (3, 1), {"padding": "same"}, "maxpool 3×3/1"),
    ("avgpool", (3, 2), {}, "avgpool 3×3/2"),
    ("dense", (128,), {"activation": "relu"}, "dense 128, relu"),
    ("dense", (10,), {}, "dense 10"),
    ("dropout", (0.5,), {}, "dropout 0.5"),
    ("separable_conv", (128, 3), {}, "separable_conv 3×3, 128"),
    ("depthwise_conv", (3, 2), {}, "depthwise_conv 3×3/2"),
    ("leaky_relu", (), {}, "leaky_relu 0.3"),
    ("relu", (), {}, "relu"),
    ("batchnorm", (), {}, "batchnorm"),
    ("global_avgpool", (), {}, "global_avgpool"),
    ("concat", (), {}, "concat"),
    ("upsample", (), {}, "upsample ×2"),
    ("upsample", ((2, 3),), {"interpolation": "bilinear"}, "upsample 2×3, bilinear"),
]


@pytest.mark.parametrize(("op", "args", "kw", "label"), LABELS)
def test_describe(op: str, args: tuple, kw: dict, label: str) -> None:
    assert OPS[op].describe(OPS[op].bind(*args, **kw)) == label


# ---- The rule and the kernel agree ----


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_shape_and_dtype_follow_rule(case: Case, dtype: type) -> None:
    rng = np.random.default_rng(0)
    xs = make_inputs(case, rng, dtype)
    ws = make_weights(case, rng, dtype)
    y, _ = OPS[case.op].forward(np, case.attrs, xs, ws, make_ctx(case))
    assert y.shape == (case.batch, *OPS[case.op].shape(case.attrs, *case.inputs))
    assert y.dtype == dtype


def _run_conv(n: int, k: int, s: int, d: int, padding: object, c: int = 2) -> tuple:
    a = OPS["conv"].bind(3, k, s, padding=padding, dilation=d)
    x = np.random.default_rng(n).normal(size=(1, n, n + 1, c))
    w = {"kernel": np.ones((k, k, c, 3)), "bias": np.zeros(3)}
    y, _ = OPS["conv"].forward(np, a, [x], w, make_ctx(CASES["conv"][0]))
    return a, y


paddings = st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 2))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 3), d=st.integers(1, 3),
       p=paddings)  # fmt: skip
def test_conv_rule_matches_forward(n: int, k: int, s: int, d: int, p: object) -> None:
    eff = d * (k - 1) + 1
    pad = 0 if isinstance(p, str) else p
    assume(p == "same" or n + 2 * pad >= eff)
    a, y = _run_conv(n, k, s, d, p)
    assert y.shape[1:] == OPS["conv"].shape(a, (n, n + 1, 2))
    if p == "same":  # Keras: ceil(n / s) whatever the kernel
        assert y.shape[1:3] == (math.ceil(n / s), math.ceil((n + 1) / s))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 4), s=st.integers(1, 3),
       p=paddings, op=st.sampled_from(["maxpool", "avgpool"]))  # fmt: skip
def test_pool_rule_matches_forward(n: int, k: int, s: int, p: object, op: str) -> None:
    pad = 0 if isinstance(p, str) else p
    assume(p == "same" or n + 2 * pad >= k)
    assume(op == "avgpool" or isinstance(p, str) or 2 * pad <= k)
    a = OPS[op].bind(k, s, padding=p)
    x = np.random.default_rng(n).normal(size=(2, n, n + 2, 3))
    y, _ = OPS[op].forward(np, a, [x], {}, make_ctx(CASES[op][0]))
    assert y.shape[1:] == OPS[op].shape(a, (n, n + 2, 3))
    assert np.isfinite(y).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 3), d=st.integers(1, 3),
       p=paddings)  # fmt: skip
def test_conv_rule_matches_torch(n: int, k: int, s: int, d: int, p: object) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    eff = d * (k - 1) + 1
    x = torch.zeros(1, 2, n, n + 1)
    if p == "same":  # torch's padding='same' is stride 1 only: pad like TF by hand
        (t, b), (l, r) = tf_same(n, eff, s), tf_same(n + 1, eff, s)
        x, p_t = F.pad(x, (l, r, t, b)), 0
    else:
        p_t = 0 if p == "valid" else p
    assume(x.shape[2] + 2 * p_t >= eff)
    y = F.conv2d(x, torch.zeros(3, 2, k, k), stride=s, padding=p_t, dilation=d)
    a = OPS["conv"].bind(3, k, s, padding=p, dilation=d)
    assert OPS["conv"].shape(a, (n, n + 1, 2)) == (y.shape[2], y.shape[3], 3)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 4), s=st.integers(1, 3), p=paddings)
def test_maxpool_rule_matches_torch(n: int, k: int, s: int, p: object) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.zeros(1, 2, n, n + 2)
    if p == "same":
        (t, b), (l, r) = tf_same(n, k, s), tf_same(n + 2, k, s)
        x, p_t = F.pad(x, (l, r, t, b), value=-math.inf), 0
    else:
        p_t = 0 if p == "valid" else p
    assume(x.shape[2] + 2 * p_t >= k and 2 * p_t <= k)
    y = F.max_pool2d(x, k, s, padding=p_t)
    a = OPS["maxpool"].bind(k, s, padding=p)
    assert OPS["maxpool"].shape(a, (n, n + 2, 2)) == (y.shape[2], y.shape[3], 2)
