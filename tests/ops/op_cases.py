"""Small cases for every registered op, shared by the op test suites.

`CASES[op]` lists (arguments, input shapes) pairs chosen to reach each code
path: `same` padding with the extra pixel bottom/right, strides with and
without dilation, groups, 1×1 convs, fused activations, training and
inference. Shapes are tiny (batch 2, about 5×5, 2–4 channels) so that
finite differences and direct loops stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnndsl.ops import OPS
from cnndsl.ops.registry import Attrs, Context

Shape = tuple[int, ...]
BATCH = 2
SEED = 1234  # dropout masks: every context built here draws the same mask


@dataclass(frozen=True)
class Case:
    """One op call: positional and keyword arguments, input shapes (no batch axis)."""

    op: str
    inputs: tuple[Shape, ...]
    args: tuple[Any, ...] = ()
    kw: dict[str, Any] = field(default_factory=dict)
    training: bool = False
    scale: float = 1.0  # spread of the random inputs
    distinct: bool = False  # inputs far apart (max pools: no ties, stable argmax)
    batch: int = BATCH
    note: str = ""
    lowered: dict[str, Any] = field(default_factory=dict)  # attrs lowering adds (activation=)

    @property
    def attrs(self) -> Attrs:
        """The bound attributes, with those lowering adds."""
        return OPS[self.op].bind(*self.args, **self.kw).replace(**self.lowered)

    @property
    def id(self) -> str:
        """A readable test id."""
        return f"{self.op}-{self.note}" if self.note else self.op


def _c(op: str, inputs: Shape | tuple[Shape, ...], *args: Any, **kw: Any) -> Case:
    keys = ("training", "scale", "distinct", "batch", "note", "lowered")
    opts = {k: kw.pop(k) for k in keys if k in kw}
    shapes = (inputs,) if isinstance(inputs[0], int) else inputs
    return Case(op, shapes, args, kw, **opts)  # type: ignore[arg-type]


_ACT = {"scale": 3.0}
_WINOGRAD = {"forward": "winograd", "input_grad": "winograd", "kernel_grad": "winograd"}
CASES: dict[str, list[Case]] = {
    "conv": [
        _c("conv", (5, 5, 3), 4, 3, note="valid"),
        _c("conv", (5, 5, 3), 4, (2, 3), padding="same", note="same-asymmetric"),
        _c("conv", (6, 5, 2), 3, 3, 2, padding="same", activation="relu", note="same-s2"),
        _c("conv", (5, 5, 4), 4, 3, padding="same", dilation=2, groups=2, note="groups-dil"),
        _c(
            "conv",
            (7, 6, 2),
            3,
            (2, 3),
            2,
            padding=1,
            dilation=(2, 1),
            activation="tanh",
            note="stride-dilation-pad",
        ),  # fmt: skip
        _c("conv", (5, 5, 3), 2, 1, 2, bias=False, note="1x1-s2"),
        _c("conv", (4, 4, 3), 2, 1, activation="gelu", note="1x1"),
        _c("conv", (4, 4, 4), 4, 1, groups=4, note="1x1-groups"),
        # Winograd F(4×4, 3×3) for forward, dx and dW (lowering picks it for 32+ channels)
        # on maps that are no multiple of 4: edge tiles overhang, in part or whole rows.
        _c(
            "conv",
            (6, 7, 3),
            4,
            3,
            padding="same",
            activation="relu",
            lowered=_WINOGRAD,
            note="winograd",
        ),
        _c("conv", (9, 6, 2), 3, 3, bias=False, lowered=_WINOGRAD, note="winograd-valid"),
    ],
    "depthwise_conv": [
        _c("depthwise_conv", (5, 5, 3), 3, depth_multiplier=2, padding="same", note="same-m2"),
        _c(
            "depthwise_conv",
            (6, 6, 2),
            2,
            2,
            padding="same",
            activation="relu6",
            scale=4.0,
            note="s2-relu6",
        ),  # fmt: skip
        _c("depthwise_conv", (6, 5, 2), (3, 2), dilation=(1, 2), bias=False, note="dilated"),
    ],
    "separable_conv": [
        _c("separable_conv", (5, 5, 3), 4, 3, padding="same", depth_multiplier=2, note="same"),
        _c("separable_conv", (6, 6, 2), 3, 3, 2, bias=False, activation="swish", note="s2"),
    ],
    "dense": [
        _c("dense", (6,), 4, activation="sigmoid", note="sigmoid"),
        _c("dense", (5,), 3, bias=False, note="nobias"),
        _c("dense", (4,), 3, activation="softmax", note="softmax"),
    ],
    "maxpool": [
        _c("maxpool", (5, 5, 3), 2, distinct=True, note="valid"),
        _c("maxpool", (6, 5, 2), 3, 2, padding="same", distinct=True, note="same-s2"),
        _c("maxpool", (5, 5, 2), 3, 1, padding=1, distinct=True, note="pad1"),
        _c("maxpool", (5, 6, 2), (2, 3), (1, 2), distinct=True, note="rect"),
        _c("maxpool", (5, 4, 2), 2, padding="same", distinct=True, note="same-odd"),
    ],
    "avgpool": [
        _c("avgpool", (5, 5, 3), 2, note="valid"),
        _c("avgpool", (6, 5, 2), 3, 2, padding="same", note="same-s2"),
        _c("avgpool", (5, 5, 2), 3, 1, padding="same", note="same-s1"),
        _c("avgpool", (5, 5, 2), 3, 2, padding=1, note="pad1"),
        _c("avgpool", (5, 6, 2), (2, 3), (1, 2), note="rect"),
        # One 3×3 window over a 1×2 map: the kernel reads 1×2 pixels, divides by 9.
        _c("avgpool", (1, 2, 2), 3, 3, padding=1, note="cut-window"),
    ],
    "global_avgpool": [_c("global_avgpool", (4, 5, 3))],
    "global_maxpool": [_c("global_maxpool", (4, 5, 3), distinct=True)],
    "batchnorm": [
        _c("batchnorm", (4, 4, 3), training=True, note="train"),
        _c("batchnorm", (4, 4, 3), note="infer"),
        _c("batchnorm", (5,), training=True, batch=4, note="vector-train"),
        _c("batchnorm", (3, 3, 2), center=False, scale=False, training=True, note="plain"),
        _c("batchnorm", (3, 3, 2), momentum=0.9, epsilon=0.01, scale=False, note="infer-beta"),
        # relu/relu6 fused by lowering; scale 4 puts inference outputs past 6
        _c("batchnorm", (4, 3, 3), training=True, lowered={"activation": "relu"}, note="relu"),
        _c("batchnorm", (6,), batch=5, lowered={"activation": "relu"}, scale=4.0, note="relu-inf"),
        _c("batchnorm", (4, 4, 3), training=True, lowered={"activation": "relu6"}, note="relu6"),
        _c("batchnorm", (4, 4, 3), lowered={"activation": "relu6"}, scale=4.0, note="relu6-inf"),
    ],
    "lrn": [
        _c("lrn", (3, 3, 7), 2, bias=2.0, alpha=0.5, beta=0.75, note="r2"),
        _c("lrn", (2, 2, 4), scale=10.0, note="defaults"),
        _c("lrn", (6,), 1, alpha=0.3, beta=0.5, note="vector-r1"),
        _c("lrn", (2, 2, 3), 0, alpha=0.2, note="r0"),
    ],
    "dropout": [
        _c("dropout", (4, 4, 3), 0.5, training=True, note="train"),
        _c("dropout", (4, 4, 3), 0.3, note="infer"),
        _c("dropout", (6,), 0.0, training=True, note="rate0"),
    ],
    "flatten": [_c("flatten", (3, 4, 2)), _c("flatten", (5,), note="vector")],
    "zeropad": [
        _c("zeropad", (3, 4, 2), 1, note="1"),
        _c("zeropad", (3, 3, 2), ((1, 2), (0, 3)), note="sides"),
        _c("zeropad", (3, 3, 1), (2, 1), note="pair"),
    ],
    "concat": [
        _c("concat", ((4, 4, 2), (4, 4, 3)), note="channels"),
        _c("concat", ((2, 3, 2), (1, 3, 2)), axis=0, note="axis0"),
        _c("concat", ((4, 4, 1), (4, 4, 2), (4, 4, 3)), note="three"),
        _c("concat", ((3,), (4,)), note="vectors"),
    ],
    "add": [
        _c("add", ((4, 4, 3), (4, 4, 3)), note="two"),
        _c("add", ((4, 4, 3), (4, 4, 3), (4, 4, 3)), note="three"),
        _c("add", ((5,), (5,)), note="vectors"),
    ],
    "multiply": [
        _c("multiply", ((4, 4, 3), (3,)), note="se"),
        _c("multiply", ((4, 4, 3), (4, 4, 3)), note="same"),
        _c("multiply", ((4, 1, 3), (4, 3)), note="both-broadcast"),
        _c("multiply", ((3, 2), (2,), (3, 1)), note="three"),
    ],
    "relu": [_c("relu", (4, 4, 3), **_ACT)],
    "relu6": [_c("relu6", (4, 4, 3), scale=5.0)],
    "leaky_relu": [_c("leaky_relu", (4, 4, 3), **_ACT), _c("leaky_relu", (6,), 0.2, note="0.2")],
    "elu": [_c("elu", (4, 4, 3), **_ACT), _c("elu", (6,), 0.5, note="0.5")],
    "sigmoid": [_c("sigmoid", (4, 4, 3), **_ACT)],
    "tanh": [_c("tanh", (4, 4, 3), **_ACT)],
    "softmax": [
        _c("softmax", (4, 4, 3), **_ACT),
        _c("softmax", (6,), **_ACT, note="vector"),
        _c("softmax", (3, 4), 0, **_ACT, note="axis0"),
    ],
    "swish": [_c("swish", (4, 4, 3), **_ACT)],
    "gelu": [_c("gelu", (4, 4, 3), **_ACT)],
    "identity": [_c("identity", (4, 4, 3))],
    "upsample": [
        _c("upsample", (3, 4, 2), note="nearest-2"),
        _c("upsample", (2, 3, 2), (3, 2), note="nearest-3x2"),
        _c("upsample", (3, 4, 2), interpolation="bilinear", note="bilinear-2"),
        _c("upsample", (3, 2, 2), (3, 1), interpolation="bilinear", note="bilinear-3x1"),
        _c("upsample", (1, 2, 1), 4, interpolation="bilinear", note="bilinear-4-one-row"),
    ],
    "conv_transpose": [
        _c("conv_transpose", (3, 3, 2), 3, 3, note="valid"),
        _c("conv_transpose", (3, 4, 2), 2, 3, 2, activation="relu", note="valid-s2"),
        _c("conv_transpose", (3, 3, 3), 2, 3, 2, padding="same", note="same-s2"),
        _c("conv_transpose", (2, 3, 2), 3, 4, 2, padding="same", bias=False, note="same-k4"),
        _c(
            "conv_transpose",
            (3, 2, 2),
            2,
            (3, 2),
            (2, 3),
            padding="same",
            output_padding=(1, 2),
            activation="tanh",
            note="same-outpad",
        ),  # fmt: skip
        _c("conv_transpose", (2, 2, 2), 2, 2, 3, note="valid-k-below-s"),
        _c("conv_transpose", (3, 3, 2), 2, 3, 2, output_padding=1, note="valid-outpad"),
    ],
    "crop": [
        _c("crop", (5, 6, 2), 1, note="1"),
        _c("crop", (5, 5, 2), ((0, 2), (1, 3)), note="sides"),
        _c("crop", (4, 5, 3), (1, 2), note="pair"),
    ],
    "preprocess": [
        _c("preprocess", (4, 3, 3), "caffe", note="caffe"),
        _c("preprocess", (3, 4, 3), "torch", fit="stretch", note="torch"),
        _c("preprocess", (3, 3, 2), "tf", note="tf-2-channels"),
        _c("preprocess", (5,), "tf", note="tf-vector"),
    ],
    "rescale": [
        _c("rescale", (4, 4, 3), 0.5, -1, note="scale-offset"),
        _c("rescale", (5,), 2.0, note="vector"),
    ],
    "resize": [
        _c("resize", (3, 4, 2), 5, 6, note="bilinear-up"),
        _c("resize", (6, 5, 2), 3, 2, note="bilinear-down"),
        _c("resize", (4, 5, 2), 6, 3, interpolation="nearest", note="nearest"),
        _c("resize", (6, 4, 2), 3, 3, crop_to_aspect_ratio=True, note="crop-aspect"),
    ],
    "center_crop": [
        _c("center_crop", (5, 6, 2), 3, 4, note="odd"),
        _c("center_crop", (4, 4, 2), 2, 3, note="even"),
        _c("center_crop", (3, 4, 2), 5, 4, note="smaller-resizes"),
    ],
    "random_flip": [
        _c("random_flip", (4, 5, 2), "horizontal", training=True, batch=4, note="horizontal"),
        _c("random_flip", (4, 5, 2), training=True, batch=5, note="both"),
        _c("random_flip", (3, 4, 2), "vertical", training=True, batch=4, note="vertical"),
        _c("random_flip", (3, 4, 2), note="infer"),
    ],
    "random_crop": [
        _c("random_crop", (5, 6, 2), 3, 4, training=True, batch=3, note="train"),
        _c("random_crop", (4, 4, 2), 4, 2, training=True, batch=3, note="train-full-height"),
        _c("random_crop", (5, 6, 2), 3, 4, note="infer-resizes"),
    ],
    "random_rotation": [
        _c("random_rotation", (5, 4, 2), 0.2, training=True, note="reflect"),
        _c(
            "random_rotation",
            (4, 4, 2),
            (0.1, 0.3),
            fill_mode="constant",
            fill_value=0.5,
            training=True,
            note="constant",
        ),  # fmt: skip
        _c(
            "random_rotation",
            (4, 5, 1),
            0.25,
            fill_mode="nearest",
            interpolation="nearest",
            training=True,
            note="nearest",
        ),  # fmt: skip
        _c("random_rotation", (4, 4, 2), 0.2, note="infer"),
    ],
    "random_zoom": [
        _c("random_zoom", (5, 5, 2), 0.3, training=True, note="reflect"),
        _c(
            "random_zoom",
            (4, 6, 2),
            (-0.4, 0.2),
            (0.1, 0.6),
            fill_mode="wrap",
            training=True,
            note="wrap-both-factors",
        ),  # fmt: skip
        _c("random_zoom", (4, 4, 2), 0.3, note="infer"),
    ],
    "random_translation": [
        _c("random_translation", (5, 5, 2), 0.2, 0.3, training=True, note="reflect"),
        _c(
            "random_translation",
            (4, 5, 2),
            (-0.5, 0.5),
            0.4,
            fill_mode="constant",
            training=True,
            note="constant",
        ),  # fmt: skip
        _c("random_translation", (4, 4, 2), 0.2, 0.2, note="infer"),
    ],
    "random_contrast": [
        _c("random_contrast", (4, 4, 3), 0.5, training=True, scale=0.3, note="clipped"),
        _c(
            "random_contrast",
            (3, 4, 2),
            (0.2, 0.8),
            value_range=(-9, 9),
            training=True,
            note="unclipped",
        ),  # fmt: skip
        _c("random_contrast", (3, 3, 2), 0.5, note="infer"),
    ],
}

# The augmentation layers: random in training, drawing from ctx.rng (cnndsl/ops/augmentation.py).
RANDOM_OPS = (
    "random_flip",
    "random_crop",
    "random_rotation",
    "random_zoom",
    "random_translation",
    "random_contrast",
)

ALL_CASES = [case for op in sorted(CASES) for case in CASES[op]]


def op_params() -> list[Any]:
    """(op, index) for every registered op but `input`: a missing case fails, not skips."""
    import pytest

    return [
        pytest.param(op, i, id=CASES[op][i].id if op in CASES else op)
        for op in sorted(set(OPS) - {"input"})
        for i in range(len(CASES.get(op, [])) or 1)
    ]


# Ops whose kernels the NumPy backend's Numba overrides replace
# (cnndsl/runtime/backends/numba_kernels). Their cases run twice in the
# definition, finite-difference and PyTorch suites: NumPy's kernels, then the
# compiled ones. test_jit_kernels keeps this set equal to the ops that look
# one of the overrides up.
JIT_OPS: frozenset[str] = frozenset(
    {"batchnorm", "conv", "depthwise_conv", "separable_conv", "maxpool", "avgpool"}
)


def op_kernel_params() -> list[Any]:
    """(op, index, jit) for op_params(), and again with jit=True for the ops in JIT_OPS."""
    import pytest

    params = []
    for p in op_params():
        op, i = p.values
        params.append(pytest.param(op, i, False, id=p.id))
        if op in JIT_OPS:
            params.append(pytest.param(op, i, True, id=f"{p.id}-jit"))
    return params


class RecordingOverrides(Mapping[str, Any]):
    """A backend's overrides that note which of them a kernel looked up and found."""

    def __init__(self, overrides: Mapping[str, Any]) -> None:
        self._overrides = dict(overrides)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        value = self._overrides[key]
        self.used.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key in self._overrides:
            return self[key]
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._overrides)

    def __len__(self) -> int:
        return len(self._overrides)


def jit_overrides() -> RecordingOverrides:
    """The NumPy backend's compiled kernels, or a skip where Numba is missing or switched off."""
    import pytest

    from cnndsl.runtime.backends import numba_kernels

    if not numba_kernels.available():
        pytest.skip("Numba is not installed (or CNNDSL_JIT=0): no compiled kernels to check")
    return RecordingOverrides(numba_kernels.overrides())


def get_case(op: str, i: int) -> Case:
    """CASES[op][i], failing with a clear message for an op without cases."""
    import pytest

    if op not in CASES:
        pytest.fail(f"op '{op}' has no case in tests/ops/op_cases.py")
    return CASES[op][i]


def make_inputs(case: Case, rng: np.random.Generator, dtype: Any = np.float64) -> list[Any]:
    """Random inputs with the batch axis first."""
    xs = []
    for shape in case.inputs:
        full = (case.batch, *shape)
        if case.distinct:  # a permutation of a grid: neighbours at least 4/size apart
            size = math.prod(full)
            x = (rng.permutation(size) * (4.0 / size) - 2.0).reshape(full)
        else:
            x = rng.normal(size=full) * case.scale
        xs.append(x.astype(dtype))
    return xs


def make_weights(case: Case, rng: np.random.Generator, dtype: Any = np.float64) -> dict[str, Any]:
    """Random weights of the shapes the op declares (variances positive, gamma near 1)."""
    specs = OPS[case.op].weights(case.attrs, *case.inputs)
    ws = {}
    for name, spec in specs.items():
        if name == "moving_variance":
            v = rng.uniform(0.5, 1.5, size=spec.shape)
        elif name == "gamma":
            v = 1 + 0.3 * rng.normal(size=spec.shape)
        else:
            v = 0.5 * rng.normal(size=spec.shape)
        ws[name] = v.astype(dtype)
    return ws


def trainable(case: Case) -> list[str]:
    """Names of the weights that backward must return gradients for."""
    specs = OPS[case.op].weights(case.attrs, *case.inputs)
    return [name for name, spec in specs.items() if spec.trainable]


def make_ctx(case: Case, xp: Any = np, jit: bool = False, **kw: Any) -> Context:
    """A fresh context: the case's training flag and xp's own generator seeded with SEED.

    The generator comes from the array module under test, as a backend's does:
    on CuPy, dropout's mask must be a CuPy array. jit: with the NumPy backend's
    compiled kernels as overrides (`jit_overrides`, which skips without Numba).
    """
    if jit:
        kw.setdefault("overrides", jit_overrides())
    return Context(training=case.training, rng=xp.random.default_rng(SEED), **kw)


def draws_randoms(case: Case) -> bool:
    """Whether the op draws from ctx.rng in this case (its result depends on the generator)."""
    if case.op == "dropout":
        return case.training and case.attrs.rate > 0
    return case.op in RANDOM_OPS and case.training


def uniforms(case: Case, count: int, xp: Any = np) -> list[np.ndarray]:
    """The first `count` draws rng.random(batch) of the case's generator, on the host.

    The augmentation layers draw their parameters in that order (the list in
    cnndsl/ops/augmentation.py's docstring); references rebuild them from it.
    """
    rng = make_ctx(case, xp).rng
    out = []
    for _ in range(count):
        u = rng.random(case.batch)
        out.append(u.get() if hasattr(u, "get") else np.asarray(u))
    return out


def tf_same(n: int, f: int, s: int) -> tuple[int, int]:
    """Keras/TF `same` padding written from LANGUAGE.md: out = ceil(n/s), extra pixel after."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2


def side_pads(
    padding: Any, hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) for padding valid | same | (ph, pw), kernel dilated."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return tf_same(hw[0], kernel[0], stride[0]), tf_same(hw[1], kernel[1], stride[1])
    return (padding[0], padding[0]), (padding[1], padding[1])
