"""Every op against PyTorch: same inputs and weights, forward and every gradient.

Weights are copied across with Keras layouts permuted to PyTorch's
(NHWC -> NCHW, [fh, fw, in, out] -> [out, in, fh, fw]); Keras' asymmetric
`same` padding becomes an explicit F.pad. Run in float32 (rtol 1e-4) and
float64 (rtol 1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from op_cases import (
    SEED,
    Case,
    get_case,
    make_ctx,
    make_inputs,
    make_weights,
    op_kernel_params,
    uniforms,
)
from op_cases import side_pads as keras_pads
from test_ops_definition import affine_params  # Keras' transforms from the drawn parameters

from cnndsl.ops import OPS
from cnndsl.ops.registry import Attrs

torch = pytest.importorskip("torch")
F = torch.nn.functional
T = Any  # torch.Tensor


def nchw(x: T) -> T:
    return x.permute(0, 3, 1, 2)


def nhwc(x: T) -> T:
    return x.permute(0, 2, 3, 1)


def pad_like_keras(
    a: Attrs, x: T, kernel: tuple[int, int], dilation: tuple[int, int], value: float = 0.0
) -> T:
    """x (NCHW) with the op's padding applied explicitly (F.pad takes left, right, top, bottom)."""
    eff = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    (t, b), (l, r) = keras_pads(a.padding, tuple(x.shape[2:]), eff, a.stride)
    return F.pad(x, (l, r, t, b), value=value)


TORCH_ACT: dict[str, Callable[[Attrs, T], T]] = {
    "identity": lambda a, x: x,
    "relu": lambda a, x: F.relu(x),
    "relu6": lambda a, x: F.relu6(x),
    "leaky_relu": lambda a, x: F.leaky_relu(x, a.alpha),
    "elu": lambda a, x: F.elu(x, a.alpha),
    "sigmoid": lambda a, x: torch.sigmoid(x),
    "tanh": lambda a, x: torch.tanh(x),
    "softmax": lambda a, x: torch.softmax(x, dim=a.axis % (x.dim() - 1) + 1),
    "swish": lambda a, x: F.silu(x),
    "gelu": lambda a, x: F.gelu(x),  # approximate='none': the erf form
}


def fused(a: Attrs, z: T) -> T:
    name = "identity" if a.activation == "none" else a.activation
    return TORCH_ACT[name](OPS[name].bind(), z)


def t_conv(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = pad_like_keras(a, nchw(xs[0]), a.kernel, a.dilation)
    k = w["kernel"].permute(3, 2, 0, 1)
    z = F.conv2d(x, k, w.get("bias"), stride=a.stride, dilation=a.dilation, groups=a.groups)
    return fused(a, nhwc(z))


def _t_depthwise(a: Attrs, x: T, k: T) -> T:
    fh, fw, c, m = k.shape
    x = pad_like_keras(a, nchw(x), a.kernel, a.dilation)
    weight = k.reshape(fh, fw, c * m).permute(2, 0, 1).unsqueeze(1)  # out channel c·m + q
    return F.conv2d(x, weight, stride=a.stride, dilation=a.dilation, groups=c)


def t_depthwise_conv(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    z = nhwc(_t_depthwise(a, xs[0], w["kernel"]))
    return fused(a, z + w["bias"] if "bias" in w else z)


def t_separable_conv(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    t = _t_depthwise(a, xs[0], w["depthwise_kernel"])
    z = F.conv2d(t, w["pointwise_kernel"].permute(3, 2, 0, 1), w.get("bias"))
    return fused(a, nhwc(z))


def t_dense(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    return fused(a, F.linear(xs[0], w["kernel"].T, w.get("bias")))


def t_maxpool(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = nchw(xs[0])
    if a.padding == "same":
        x = pad_like_keras(a, x, a.size, (1, 1), value=-math.inf)
        return nhwc(F.max_pool2d(x, a.size, a.stride))
    pad = (0, 0) if a.padding == "valid" else a.padding
    return nhwc(F.max_pool2d(x, a.size, a.stride, padding=pad))


def t_avgpool(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = nchw(xs[0])
    if a.padding == "same":  # Keras: divide by the real pixels; sums over zero padding
        total = F.avg_pool2d(pad_like_keras(a, x, a.size, (1, 1)), a.size, a.stride,
                             divisor_override=1)  # fmt: skip
        ones = pad_like_keras(a, torch.ones_like(x[:1, :1]), a.size, (1, 1))
        count = F.avg_pool2d(ones, a.size, a.stride, divisor_override=1)
        return nhwc(total / count)
    pad = (0, 0) if a.padding == "valid" else a.padding
    return nhwc(F.avg_pool2d(x, a.size, a.stride, padding=pad, count_include_pad=True))


def t_batchnorm(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    x = nchw(x) if x.dim() == 4 else x
    y = F.batch_norm(
        x,
        w["moving_mean"].detach().clone(),
        w["moving_variance"].detach().clone(),
        w.get("gamma"),
        w.get("beta"),
        training=case.training,
        momentum=1 - a.momentum,  # torch's momentum weighs the new value
        eps=a.epsilon,
    )
    act = a.get("activation", "none")  # fused by lowering
    y = y if act == "none" else TORCH_ACT[act](OPS[act].bind(), y)
    return nhwc(y) if y.dim() == 4 else y


def t_lrn(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    x = nchw(x) if x.dim() == 4 else x.unsqueeze(-1)  # torch wants (N, C, ...)
    size = 2 * a.radius + 1
    y = F.local_response_norm(x, size, alpha=a.alpha * size, beta=a.beta, k=a.bias)
    return nhwc(y) if y.dim() == 4 else y.squeeze(-1)


def t_dropout(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    if not case.training:
        return F.dropout(x, a.rate, training=False)
    # dropout draws its uniforms in the compute dtype (float32 for float32)
    dtype = np.float32 if x.dtype == torch.float32 else np.float64
    keep = torch.from_numpy(np.random.default_rng(SEED).random(tuple(x.shape), dtype) >= a.rate)
    return x * keep.to(x.dtype) / (1 - a.rate)


def t_zeropad(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    (t, b), (l, r) = a.padding
    return nhwc(F.pad(nchw(xs[0]), (l, r, t, b)))


def t_multiply(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    rank = max(x.dim() for x in xs)
    y = xs[0].reshape(xs[0].shape[0], *(1,) * (rank - xs[0].dim()), *xs[0].shape[1:])
    for x in xs[1:]:
        y = y * x.reshape(x.shape[0], *(1,) * (rank - x.dim()), *x.shape[1:])
    return y


def t_preprocess(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    """torchvision's Normalize and the Keras modes, written with torch ops."""
    x = xs[0]
    if a.mode == "caffe":
        mean_bgr = torch.tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        return torch.flip(x * 255, dims=[-1]) - mean_bgr
    if a.mode == "torch":
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype)
        return nhwc(F.batch_norm(nchw(x), mean, std**2, eps=0.0))
    return x * 2 - 1


def t_upsample(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    """F.interpolate: nearest, or bilinear with half-pixel centres (align_corners=False)."""
    x = nchw(xs[0])
    if a.interpolation == "nearest":
        return nhwc(F.interpolate(x, scale_factor=a.size, mode="nearest"))
    return nhwc(F.interpolate(x, scale_factor=a.size, mode="bilinear", align_corners=False))


def t_conv_transpose(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    """F.conv_transpose2d without padding, then the output window cut (or zero-extended)
    by F.pad: crop before as TensorFlow's `same`, length as Keras' rule."""
    x = nchw(xs[0])
    full = F.conv_transpose2d(x, w["kernel"].permute(3, 2, 0, 1), stride=a.stride)
    extra = a.output_padding or (None, None)
    sides = []
    for axis in (1, 0):  # F.pad lists the last axis first
        n, f, s = x.shape[2 + axis], a.kernel[axis], a.stride[axis]
        if extra[axis] is None:
            length = n * s + max(f - s, 0) if a.padding == "valid" else n * s
        else:
            length = (n - 1) * s + f - 2 * (f // 2 if a.padding == "same" else 0) + extra[axis]
        size = full.shape[2 + axis]
        before = max(size - length, 0) // 2 if a.padding == "same" else 0
        sides += [-before, length - (size - before)]
    z = nhwc(F.pad(full, sides))
    return fused(a, z + w["bias"] if "bias" in w else z)


def t_crop(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    """Negative F.pad crops."""
    (t, b), (l, r) = a.cropping
    return nhwc(F.pad(nchw(xs[0]), (-l, -r, -t, -b)))


def t_resize_map(x: T, th: int, tw: int, interpolation: str, crop_aspect: bool) -> T:
    """F.interpolate (bilinear: align_corners=False; nearest-exact), after Keras'
    smart_resize window where asked."""
    if crop_aspect:
        h, w = x.shape[1:3]
        ch, cw = min(h, int(w * th / tw)), min(w, int(h * tw / th))
        top, left = int((h - ch) / 2), int((w - cw) / 2)
        x = x[:, top : top + ch, left : left + cw]
    mode = "nearest-exact" if interpolation == "nearest" else "bilinear"
    extra = {} if interpolation == "nearest" else {"align_corners": False}
    return nhwc(F.interpolate(nchw(x), size=(th, tw), mode=mode, **extra))


def t_center_crop(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    h, wd = x.shape[1:3]
    if h < a.height or wd < a.width:
        return t_resize_map(x, a.height, a.width, "bilinear", True)
    top, left = (h - a.height) // 2, (wd - a.width) // 2
    return x[:, top : top + a.height, left : left + a.width]


def t_random_flip(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    if not case.training:
        return x
    modes = [m for m in ("horizontal", "vertical") if m in a.mode]
    for mode, u in zip(modes, uniforms(case, len(modes)), strict=True):
        flip = torch.from_numpy(u < 0.5)[:, None, None, None]
        x = torch.where(flip, torch.flip(x, dims=[2 if mode == "horizontal" else 1]), x)
    return x


def t_random_crop(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    if not case.training:
        return t_resize_map(x, a.height, a.width, "bilinear", True)
    h, wd = x.shape[1:3]
    u_top, u_left = uniforms(case, 2)
    crops = []
    for n in range(x.shape[0]):
        top, left = int(u_top[n] * (h - a.height + 1)), int(u_left[n] * (wd - a.width + 1))
        crops.append(x[n, top : top + a.height, left : left + a.width])
    return torch.stack(crops)


def t_affine(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    """F.grid_sample with align_corners=False, whose reflection is TensorFlow's reflect
    (about the border at −1/2), border its nearest, zeros its constant (fill added back)."""
    x = xs[0]
    if not case.training:
        return x
    if a.fill_mode == "wrap":
        pytest.skip("grid_sample has no form of TensorFlow's wrap (checked by definition)")
    n, h, wd, _ = x.shape
    params = affine_params(a, case, h, wd, np)
    rows, cols = np.meshgrid(np.arange(h), np.arange(wd), indexing="ij")
    grids = []
    for m in params:
        cx = m[0] * cols + m[1] * rows + m[2]
        cy = m[3] * cols + m[4] * rows + m[5]
        grids.append(np.stack([(2 * cx + 1) / wd - 1, (2 * cy + 1) / h - 1], axis=-1))
    grid = torch.from_numpy(np.stack(grids)).to(x.dtype)
    pad = {"reflect": "reflection", "nearest": "border", "constant": "zeros"}[a.fill_mode]
    mode = "nearest" if a.interpolation == "nearest" else "bilinear"
    y = F.grid_sample(nchw(x), grid, mode=mode, padding_mode=pad, align_corners=False)
    if a.fill_mode == "constant":
        ones = torch.ones_like(nchw(x)[:, :1])
        inside = F.grid_sample(ones, grid, mode=mode, padding_mode="zeros", align_corners=False)
        y = y + a.fill_value * (1 - inside)
    return nhwc(y)


def t_random_contrast(a: Attrs, xs: list[T], w: dict[str, T], case: Case) -> T:
    x = xs[0]
    if not case.training:
        return x
    (u,) = uniforms(case, 1)
    k = torch.from_numpy(1 - a.factor[0] + (a.factor[0] + a.factor[1]) * u).to(x.dtype)
    mean = x.mean(dim=(1, 2), keepdim=True)
    return torch.clamp((x - mean) * k[:, None, None, None] + mean, *a.value_range)


TORCH: dict[str, Callable[[Attrs, list[T], dict[str, T], Case], T]] = {
    "conv": t_conv,
    "depthwise_conv": t_depthwise_conv,
    "separable_conv": t_separable_conv,
    "dense": t_dense,
    "maxpool": t_maxpool,
    "avgpool": t_avgpool,
    "global_avgpool": lambda a, xs, w, c: xs[0].mean(dim=(1, 2)),
    "global_maxpool": lambda a, xs, w, c: F.adaptive_max_pool2d(nchw(xs[0]), 1).flatten(1),
    "batchnorm": t_batchnorm,
    "lrn": t_lrn,
    "dropout": t_dropout,
    "flatten": lambda a, xs, w, c: torch.flatten(xs[0], 1),
    "zeropad": t_zeropad,
    "concat": lambda a, xs, w, c: torch.cat(xs, dim=a.axis % (xs[0].dim() - 1) + 1),
    "add": lambda a, xs, w, c: sum(xs[1:], xs[0]),
    "multiply": t_multiply,
    "preprocess": t_preprocess,
    "upsample": t_upsample,
    "conv_transpose": t_conv_transpose,
    "crop": t_crop,
    "rescale": lambda a, xs, w, c: xs[0] * a.scale + a.offset,
    "resize": lambda a, xs, w, c: t_resize_map(
        xs[0], a.height, a.width, a.interpolation, a.crop_to_aspect_ratio
    ),
    "center_crop": t_center_crop,
    "random_flip": t_random_flip,
    "random_crop": t_random_crop,
    "random_rotation": t_affine,
    "random_zoom": t_affine,
    "random_translation": t_affine,
    "random_contrast": t_random_contrast,
    **{name: (lambda a, xs, w, c, f=f: f(a, xs[0])) for name, f in TORCH_ACT.items()},
}

TOLERANCE: dict[Any, dict[str, Any]] = {
    np.float32: {"rtol": 1e-4, "atol": 1e-5},
    np.float64: {"rtol": 1e-9, "atol": 1e-11},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("op", "i", "jit"), op_kernel_params())
def test_matches_torch(op: str, i: int, jit: bool, dtype: Any) -> None:
    case = get_case(op, i)
    assert op in TORCH, f"op '{op}' has no PyTorch reference here"
    a = case.attrs
    rng = np.random.default_rng(21)
    xs, ws = make_inputs(case, rng, dtype), make_weights(case, rng, dtype)
    dy = rng.normal(size=(case.batch, *OPS[op].shape(a, *case.inputs))).astype(dtype)
    specs = OPS[op].weights(a, *case.inputs)

    ours_w = {k: v.copy() for k, v in ws.items()}
    y, saved = OPS[op].forward(np, a, xs, ours_w, make_ctx(case, np, jit))
    dxs, dws = OPS[op].backward(np, a, saved, dy, ours_w, make_ctx(case, np, jit))

    t_xs = [torch.tensor(x, requires_grad=True) for x in xs]
    t_ws = {k: torch.tensor(v, requires_grad=specs[k].trainable) for k, v in ws.items()}
    t_y = TORCH[op](a, t_xs, t_ws, case)
    (t_y * torch.from_numpy(dy)).sum().backward()

    tol = TOLERANCE[dtype]
    assert y.dtype == dtype
    np.testing.assert_allclose(y, t_y.detach().numpy(), **tol, err_msg="forward")
    for k, (dx, t_x) in enumerate(zip(dxs, t_xs, strict=True)):
        assert dx.dtype == dtype
        np.testing.assert_allclose(dx, t_x.grad.numpy(), **tol, err_msg=f"input {k}")
    for name, t_w in t_ws.items():
        if specs[name].trainable:
            np.testing.assert_allclose(dws[name], t_w.grad.numpy(), **tol, err_msg=name)

    if op == "batchnorm" and case.training:
        # Keras moves both statistics with the *biased* batch variance; torch's
        # running_var uses the unbiased one, so compare with torch's var directly.
        x = t_xs[0].detach()
        dims = tuple(range(x.dim() - 1))
        m = a.momentum
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        want_mean = m * torch.from_numpy(ws["moving_mean"]) + (1 - m) * mean
        want_var = m * torch.from_numpy(ws["moving_variance"]) + (1 - m) * var
        np.testing.assert_allclose(ours_w["moving_mean"], want_mean.numpy(), **tol)
        np.testing.assert_allclose(ours_w["moving_variance"], want_var.numpy(), **tol)
