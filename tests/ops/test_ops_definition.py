"""Every op's forward kernel against a direct-loop implementation of its definition.

The references below are written from the formulas (LANGUAGE.md, the op
docstrings, Keras' documentation), one output element at a time, with
plain Python loops and `math`: slow, obvious, and sharing no code with the
kernels. Run on each case of tests/ops/op_cases.py in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from op_cases import (
    RANDOM_OPS,
    Case,
    draws_randoms,
    get_case,
    make_ctx,
    make_inputs,
    make_weights,
    op_kernel_params,
    op_params,
    side_pads,
    trainable,
    uniforms,
)

from cnndsl.ops import OPS
from cnndsl.ops.registry import Attrs

Ref = Callable[[Attrs, list[np.ndarray], dict[str, np.ndarray], Case], np.ndarray]

# ---- Scalar activations, straight from their formulas ----


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


SCALAR: dict[str, Callable[[float, Attrs], float]] = {
    "identity": lambda v, a: v,
    "relu": lambda v, a: max(v, 0.0),
    "relu6": lambda v, a: min(max(v, 0.0), 6.0),
    "leaky_relu": lambda v, a: v if v > 0 else a.alpha * v,
    "elu": lambda v, a: v if v > 0 else a.alpha * (math.exp(v) - 1),
    "sigmoid": lambda v, a: _sig(v),
    "tanh": lambda v, a: math.tanh(v),
    "swish": lambda v, a: v * _sig(v),
    "gelu": lambda v, a: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
}


def ref_activation(name: str, a: Attrs, z: np.ndarray) -> np.ndarray:
    """Apply an activation by its definition; softmax along attrs.axis (batch excluded)."""
    if name == "none":
        return z.copy()
    if name == "softmax":
        axis = a.axis % (z.ndim - 1) + 1
        moved = np.moveaxis(z, axis, -1)
        out = np.empty_like(moved)
        for idx in np.ndindex(moved.shape[:-1]):
            row = [math.exp(v) for v in moved[idx]]
            out[idx] = [e / sum(row) for e in row]
        return np.moveaxis(out, -1, axis)
    y = np.empty_like(z)
    for idx in np.ndindex(z.shape):
        y[idx] = SCALAR[name](float(z[idx]), a)
    return y


def fused(a: Attrs, z: np.ndarray) -> np.ndarray:
    """The fused activation of conv/dense with its default arguments."""
    name = a.activation
    return ref_activation(name, OPS[name].bind() if name != "none" else a, z)


def padded(x: np.ndarray, p: tuple, value: float = 0.0) -> np.ndarray:
    """x with p = ((top, bottom), (left, right)) rows/columns of `value` around it."""
    (t, b), (l, r) = p
    n, h, w, c = x.shape
    out = np.full((n, h + t + b, w + l + r, c), value)
    out[:, t : t + h, l : l + w] = x
    return out


def dilated(a: Attrs, kernel: tuple[int, int]) -> tuple[int, int]:
    return tuple(a.dilation[i] * (kernel[i] - 1) + 1 for i in range(2))  # type: ignore[return-value]


def out_size(n: int, f: int, s: int, p: tuple[int, int]) -> int:
    return (n + p[0] + p[1] - f) // s + 1


# ---- References ----


def ref_conv(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x, k = xs[0], w["kernel"]
    fh, fw, cin_g, f = k.shape
    (sh, sw), (dh, dw) = a.stride, a.dilation
    p = side_pads(a.padding, x.shape[1:3], dilated(a, (fh, fw)), a.stride)
    xp = padded(x, p)
    eff = dilated(a, (fh, fw))
    oh, ow = out_size(x.shape[1], eff[0], sh, p[0]), out_size(x.shape[2], eff[1], sw, p[1])
    f_g = f // a.groups
    z = np.zeros((x.shape[0], oh, ow, f))
    for n, i, j, kk in itertools.product(range(x.shape[0]), range(oh), range(ow), range(f)):
        g = kk // f_g  # output channel kk reads the input channels of its group
        acc = w["bias"][kk] if "bias" in w else 0.0
        for u, v, c in itertools.product(range(fh), range(fw), range(cin_g)):
            acc += xp[n, i * sh + u * dh, j * sw + v * dw, g * cin_g + c] * k[u, v, c, kk]
        z[n, i, j, kk] = acc
    return fused(a, z)


def _depthwise(a: Attrs, x: np.ndarray, k: np.ndarray) -> np.ndarray:
    fh, fw, c_in, m = k.shape
    (sh, sw), (dh, dw) = a.stride, a.dilation
    eff = dilated(a, (fh, fw))
    p = side_pads(a.padding, x.shape[1:3], eff, a.stride)
    xp = padded(x, p)
    oh, ow = out_size(x.shape[1], eff[0], sh, p[0]), out_size(x.shape[2], eff[1], sw, p[1])
    z = np.zeros((x.shape[0], oh, ow, c_in * m))
    for n, i, j, c, q in itertools.product(
        range(x.shape[0]), range(oh), range(ow), range(c_in), range(m)
    ):
        z[n, i, j, c * m + q] = sum(
            xp[n, i * sh + u * dh, j * sw + v * dw, c] * k[u, v, c, q]
            for u, v in itertools.product(range(fh), range(fw))
        )
    return z


def ref_depthwise_conv(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    z = _depthwise(a, xs[0], w["kernel"])
    return fused(a, z + w["bias"] if "bias" in w else z)


def ref_separable_conv(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    t = _depthwise(a, xs[0], w["depthwise_kernel"])
    pk = w["pointwise_kernel"][0, 0]
    z = np.zeros((*t.shape[:3], pk.shape[1]))
    for idx in np.ndindex(z.shape):
        *pix, f = idx
        z[idx] = sum(t[(*pix, c)] * pk[c, f] for c in range(pk.shape[0]))
        z[idx] += w["bias"][f] if "bias" in w else 0.0
    return fused(a, z)


def ref_dense(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x, k = xs[0], w["kernel"]
    z = np.zeros((x.shape[0], k.shape[1]))
    for n, u in np.ndindex(z.shape):
        z[n, u] = sum(x[n, i] * k[i, u] for i in range(k.shape[0]))
        z[n, u] += w["bias"][u] if "bias" in w else 0.0
    return fused(a, z)


def _pool(a: Attrs, x: np.ndarray, reduce: Callable[[list[float], int], float]) -> np.ndarray:
    """Windows over the *unpadded* x; reduce(real values, window area) gives each output."""
    (fh, fw), (sh, sw) = a.size, a.stride
    p = side_pads(a.padding, x.shape[1:3], a.size, a.stride)
    oh, ow = out_size(x.shape[1], fh, sh, p[0]), out_size(x.shape[2], fw, sw, p[1])
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for n, i, j, c in np.ndindex(y.shape):
        real = [
            x[n, r, q, c]
            for u, v in itertools.product(range(fh), range(fw))
            for r, q in [(i * sh + u - p[0][0], j * sw + v - p[1][0])]
            if 0 <= r < x.shape[1] and 0 <= q < x.shape[2]
        ]
        y[n, i, j, c] = reduce(real, fh * fw)
    return y


def ref_maxpool(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    return _pool(a, xs[0], lambda real, area: max(real))  # padding never wins


def ref_avgpool(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    if a.padding == "same":  # Keras: mean of the real pixels
        return _pool(a, xs[0], lambda real, area: sum(real) / len(real))
    return _pool(a, xs[0], lambda real, area: sum(real) / area)  # padding zeros count


def ref_global_avgpool(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    y = np.zeros((x.shape[0], x.shape[3]))
    for n, c in np.ndindex(y.shape):
        y[n, c] = sum(x[n, i, j, c] for i in range(x.shape[1]) for j in range(x.shape[2]))
        y[n, c] /= x.shape[1] * x.shape[2]
    return y


def ref_global_maxpool(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    y = np.zeros((x.shape[0], x.shape[3]))
    for n, c in np.ndindex(y.shape):
        y[n, c] = max(x[n, i, j, c] for i in range(x.shape[1]) for j in range(x.shape[2]))
    return y


def ref_batchnorm(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    y = np.zeros_like(x)
    for c in range(x.shape[-1]):
        vals = [float(v) for v in x[..., c].ravel()]
        if case.training:
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / len(vals)  # biased, as Keras
        else:
            mean, var = w["moving_mean"][c], w["moving_variance"][c]
        gamma = w["gamma"][c] if a.scale else 1.0
        beta = w["beta"][c] if a.center else 0.0
        y[..., c] = gamma * (x[..., c] - mean) / math.sqrt(var + a.epsilon) + beta
    act = a.get("activation", "none")  # fused by lowering
    return y if act == "none" else ref_activation(act, OPS[act].bind(), y)


def ref_lrn(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    y = np.zeros_like(x)
    channels = x.shape[-1]
    for idx in np.ndindex(x.shape):
        c = idx[-1]
        sqr_sum = sum(
            x[(*idx[:-1], j)] ** 2
            for j in range(max(0, c - a.radius), min(channels - 1, c + a.radius) + 1)
        )
        y[idx] = x[idx] / (a.bias + a.alpha * sqr_sum) ** a.beta
    return y


def ref_dropout(a: Attrs, xs: list, w: dict, case: Case, xp: Any = np) -> np.ndarray:
    x = xs[0]
    if not case.training:
        return x.copy()
    # the draw the op's ctx.rng makes, in the compute dtype (float32 for float32)
    dtype = np.float32 if x.dtype == np.float32 else np.float64
    u = to_host(make_ctx(case, xp).rng.random(x.shape, dtype=dtype))
    y = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        y[idx] = x[idx] / (1 - a.rate) if u[idx] >= a.rate else 0.0
    return y


def ref_flatten(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    rows = []
    for n in range(x.shape[0]):
        rows.append([x[(n, *idx)] for idx in np.ndindex(x.shape[1:])])  # row-major
    return np.array(rows)


def ref_zeropad(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    (t, b), (l, r) = a.padding
    y = np.zeros((x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3]))
    for n, i, j, c in np.ndindex(x.shape):
        y[n, i + t, j + l, c] = x[n, i, j, c]
    return y


def ref_concat(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    axis = a.axis % (xs[0].ndim - 1) + 1
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.zeros(shape)
    offset = 0
    for x in xs:
        for idx in np.ndindex(x.shape):
            out = list(idx)
            out[axis] += offset
            y[tuple(out)] = x[idx]
        offset += x.shape[axis]
    return y


def ref_preprocess(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    """Keras' preprocess_input (imagenet_utils) on the same pixels scaled to 0-255."""
    pixels = xs[0] * 255  # the op takes [0, 1]; Keras takes 0-255
    y = np.empty_like(pixels)
    for idx in np.ndindex(pixels.shape):
        *rest, c = idx
        if a.mode == "caffe":  # 'RGB'->'BGR', then zero-centre each BGR channel
            bgr = pixels[(*rest, 2 - c)]
            y[idx] = bgr - [103.939, 116.779, 123.68][c]
        elif a.mode == "torch":  # scale to [0, 1], then normalise with ImageNet's mean/std
            y[idx] = (pixels[idx] / 255 - [0.485, 0.456, 0.406][c]) / [0.229, 0.224, 0.225][c]
        else:  # tf: scale to [-1, 1]
            y[idx] = pixels[idx] / 127.5 - 1
    return y


def _source_rows(i: int, f: int, n: int) -> tuple[int, int, float]:
    """TensorFlow's resize with half_pixel_centers: (lower, upper, lerp) for output row i."""
    t = (i + 0.5) / f - 0.5
    lower, upper = max(math.floor(t), 0), min(math.ceil(t), n - 1)
    return lower, upper, t - math.floor(t)


def ref_upsample(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    (fh, fw), (batch, h, wd, c) = a.size, x.shape
    y = np.zeros((batch, h * fh, wd * fw, c))
    for n, i, j, k in np.ndindex(y.shape):
        if a.interpolation == "nearest":
            y[n, i, j, k] = x[n, i // fh, j // fw, k]
            continue
        top, bottom, dy = _source_rows(i, fh, h)
        left, right, dx = _source_rows(j, fw, wd)
        upper = x[n, top, left, k] + (x[n, top, right, k] - x[n, top, left, k]) * dx
        lower = x[n, bottom, left, k] + (x[n, bottom, right, k] - x[n, bottom, left, k]) * dx
        y[n, i, j, k] = upper + (lower - upper) * dy
    return y


def ref_add(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    y = np.zeros_like(xs[0])
    for idx in np.ndindex(y.shape):
        y[idx] = sum(x[idx] for x in xs)
    return y


def ref_multiply(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    rank = max(x.ndim for x in xs) - 1
    shapes = [(1,) * (rank + 1 - x.ndim) + x.shape[1:] for x in xs]  # aligned at the right
    out = tuple(max(s[k] for s in shapes) for k in range(rank))
    y = np.zeros((xs[0].shape[0], *out))
    for n, *idx in np.ndindex(y.shape):
        prod = 1.0
        for x, s in zip(xs, shapes, strict=True):
            pick = [i if d > 1 else 0 for i, d in zip(idx, s, strict=True)]
            prod *= x[(n, *pick[rank + 1 - x.ndim :])]
        y[(n, *idx)] = prod
    return y


def _transposed_length(n: int, f: int, s: int, padding: str, extra: int | None) -> int:
    """Keras' deconv_output_length (dilation 1), written from its source."""
    if extra is None:
        return n * s + max(f - s, 0) if padding == "valid" else n * s
    return (n - 1) * s + f - 2 * (f // 2 if padding == "same" else 0) + extra


def ref_conv_transpose(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    """y[o, p, k] = b[k] + Σ x[i, j, c]·w[u, v, k, c] over i·sh + u = o + crop_h (columns alike).

    crop is TensorFlow's `same` on the output length: the input gradient of a
    conv from an L-long input to this n-long one.
    """
    x, kernel = xs[0], w["kernel"]
    n, h, wd, c = x.shape
    (fh, fw), (sh, sw), f = a.kernel, a.stride, a.filters
    extra = a.output_padding or (None, None)
    lh = _transposed_length(h, fh, sh, a.padding, extra[0])
    lw = _transposed_length(wd, fw, sw, a.padding, extra[1])
    ch = max((h - 1) * sh + fh - lh, 0) // 2 if a.padding == "same" else 0
    cw = max((wd - 1) * sw + fw - lw, 0) // 2 if a.padding == "same" else 0
    z = np.zeros((n, lh, lw, f))
    for b in range(n):
        for i in range(h):
            for j in range(wd):
                for u in range(fh):
                    for v in range(fw):
                        o, p = i * sh + u - ch, j * sw + v - cw
                        if 0 <= o < lh and 0 <= p < lw:
                            for k in range(f):
                                z[b, o, p, k] += sum(x[b, i, j, q] * kernel[u, v, k, q]
                                                     for q in range(c))  # fmt: skip
    if "bias" in w:
        z += w["bias"]
    return fused(a, z)


def ref_crop(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    """y[i, j] = x[i + top, j + left] for i < h − top − bottom, j < w − left − right."""
    x = xs[0]
    (t, b), (l, r) = a.cropping
    n, h, wd, c = x.shape
    y = np.empty((n, h - t - b, wd - l - r, c))
    for i in range(h - t - b):
        for j in range(wd - l - r):
            y[:, i, j] = x[:, i + t, j + l]
    return y


# ---- Preprocessing and augmentation (Keras' layers, TensorFlow's kernels) ----


def ref_rescale(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    y = np.empty_like(xs[0])
    for idx in np.ndindex(y.shape):
        y[idx] = xs[0][idx] * a.scale + a.offset
    return y


def resize_source(i: int, n_in: int, n_out: int, interpolation: str) -> list[tuple[int, float]]:
    """(input row, weight) pairs of output row i, half-pixel centres (TensorFlow's resize)."""
    scale = n_in / n_out
    if interpolation == "nearest":
        return [(min(math.floor((i + 0.5) * scale), n_in - 1), 1.0)]
    t = (i + 0.5) * scale - 0.5
    top = max(math.floor(t), 0)
    bottom = min(math.ceil(t), n_in - 1)
    frac = t - math.floor(t)
    return [(top, 1 - frac), (bottom, frac)]


def ref_resize_map(
    x: np.ndarray, th: int, tw: int, interpolation: str, crop_aspect: bool
) -> np.ndarray:
    """x (batch first) resized to th×tw; crop_aspect: Keras' smart_resize window first."""
    if crop_aspect:
        h, w = x.shape[1:3]
        ch, cw = min(h, int(w * th / tw)), min(w, int(h * tw / th))
        top, left = int((h - ch) / 2), int((w - cw) / 2)
        x = x[:, top : top + ch, left : left + cw]
    n, h, w, c = x.shape
    y = np.zeros((n, th, tw, c))
    for i in range(th):
        for j in range(tw):
            for r, wr in resize_source(i, h, th, interpolation):
                for q, wq in resize_source(j, w, tw, interpolation):
                    y[:, i, j] += wr * wq * x[:, r, q]
    return y


def ref_resize(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    return ref_resize_map(xs[0], a.height, a.width, a.interpolation, a.crop_to_aspect_ratio)


def ref_center_crop(a: Attrs, xs: list, w: dict, case: Case) -> np.ndarray:
    x = xs[0]
    h, wd = x.shape[1:3]
    if h < a.height or wd < a.width:  # Keras resizes a smaller map
        return ref_resize_map(x, a.height, a.width, "bilinear", True)
    top, left = (h - a.height) // 2, (wd - a.width) // 2
    y = np.empty((x.shape[0], a.height, a.width, x.shape[3]))
    for n, i, j, c in np.ndindex(y.shape):
        y[n, i, j, c] = x[n, top + i, left + j, c]
    return y


def ref_random_flip(a: Attrs, xs: list, w: dict, case: Case, xp: Any = np) -> np.ndarray:
    x = xs[0]
    if not case.training:
        return x.copy()
    modes = [m for m in ("horizontal", "vertical") if m in a.mode]
    flips = dict(zip(modes, uniforms(case, len(modes), xp), strict=True))
    h, wd = x.shape[1:3]
    y = np.empty_like(x)
    for n, i, j, c in np.ndindex(x.shape):
        src_i = h - 1 - i if "vertical" in flips and flips["vertical"][n] < 0.5 else i
        src_j = wd - 1 - j if "horizontal" in flips and flips["horizontal"][n] < 0.5 else j
        y[n, i, j, c] = x[n, src_i, src_j, c]
    return y


def ref_random_crop(a: Attrs, xs: list, w: dict, case: Case, xp: Any = np) -> np.ndarray:
    x = xs[0]
    if not case.training:
        return ref_resize_map(x, a.height, a.width, "bilinear", True)
    h, wd = x.shape[1:3]
    u_top, u_left = uniforms(case, 2, xp)
    y = np.empty((x.shape[0], a.height, a.width, x.shape[3]))
    for n, i, j, c in np.ndindex(y.shape):
        top = math.floor(u_top[n] * (h - a.height + 1))
        left = math.floor(u_left[n] * (wd - a.width + 1))
        y[n, i, j, c] = x[n, top + i, left + j, c]
    return y


def tf_map_coordinate(t: float, n: int, mode: str) -> float:
    """TensorFlow's ImageProjectiveTransformV3 fill-mode mapping, branch for branch."""
    if mode == "constant":
        return t
    if mode == "reflect":
        if t < 0:
            if n <= 1:
                t = 0
            else:
                sz2 = 2 * n
                if t < -sz2:
                    t = sz2 * int(-t / sz2) + t
                t = t + sz2 if t < -n else -t - 1
        elif t > n - 1:
            if n <= 1:
                t = 0
            else:
                sz2 = 2 * n
                t -= sz2 * int(t / sz2)
                if t >= n:
                    t = sz2 - t - 1
    elif mode == "wrap":
        if t < 0:
            t = 0 if n <= 1 else t + n * (int(-t / (n - 1)) + 1)
        elif t > n - 1:
            t = 0 if n <= 1 else t - n * int(t / (n - 1))
    return min(max(t, 0), n - 1)


def tf_transform(x: np.ndarray, m: list[float], a: Attrs) -> np.ndarray:
    """One image [h, w, c] through the affine map m = (a0, a1, a2, b0, b1, b2), per pixel."""
    h, w, _ = x.shape
    fill = a.fill_value if a.fill_mode == "constant" else 0.0

    def read(r: float, q: float) -> np.ndarray:
        inside = 0 <= r <= h - 1 and 0 <= q <= w - 1
        return x[int(r), int(q)] if inside else np.full(x.shape[2], fill)

    y = np.empty_like(x)
    for r in range(h):
        for q in range(w):
            cx = tf_map_coordinate(m[0] * q + m[1] * r + m[2], w, a.fill_mode)
            cy = tf_map_coordinate(m[3] * q + m[4] * r + m[5], h, a.fill_mode)
            if a.interpolation == "nearest":
                y[r, q] = read(round_half_away(cy), round_half_away(cx))
                continue
            y0, x0 = math.floor(cy), math.floor(cx)
            top = (x0 + 1 - cx) * read(y0, x0) + (cx - x0) * read(y0, x0 + 1)
            bottom = (x0 + 1 - cx) * read(y0 + 1, x0) + (cx - x0) * read(y0 + 1, x0 + 1)
            y[r, q] = (y0 + 1 - cy) * top + (cy - y0) * bottom
    return y


def round_half_away(v: float) -> float:
    """std::round: halves away from zero."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def affine_params(a: Attrs, case: Case, h: int, w: int, xp: Any) -> list[list[float]]:
    """Per sample, the transform Keras builds from the drawn parameters (its formulas)."""
    out = []
    if case.op == "random_rotation":
        (u,) = uniforms(case, 1, xp)
        for v in u:
            angle = 2 * math.pi * (a.factor[0] + (a.factor[1] - a.factor[0]) * v)
            c, s = math.cos(angle), math.sin(angle)
            x_off = ((w - 1) - (c * (w - 1) - s * (h - 1))) / 2
            y_off = ((h - 1) - (s * (w - 1) + c * (h - 1))) / 2
            out.append([c, -s, x_off, s, c, y_off])
    elif case.op == "random_zoom":
        draws = uniforms(case, 1 if a.width_factor is None else 2, xp)
        for n in range(case.batch):
            lo, hi = a.height_factor
            zh = 1 + lo + (hi - lo) * draws[0][n]
            zw = zh
            if a.width_factor is not None:
                lo, hi = a.width_factor
                zw = 1 + lo + (hi - lo) * draws[1][n]
            out.append([zw, 0, (w - 1) / 2 * (1 - zw), 0, zh, (h - 1) / 2 * (1 - zh)])
    else:
        u_h, u_w = uniforms(case, 2, xp)
        for n in range(case.batch):
            dy = (a.height_factor[0] + (a.height_factor[1] - a.height_factor[0]) * u_h[n]) * h
            dx = (a.width_factor[0] + (a.width_factor[1] - a.width_factor[0]) * u_w[n]) * w
            out.append([1, 0, -dx, 0, 1, -dy])
    return out


def ref_affine(a: Attrs, xs: list, w: dict, case: Case, xp: Any = np) -> np.ndarray:
    x = xs[0]
    if not case.training:
        return x.copy()
    params = affine_params(a, case, x.shape[1], x.shape[2], xp)
    return np.stack([tf_transform(x[n], params[n], a) for n in range(x.shape[0])])


def ref_random_contrast(a: Attrs, xs: list, w: dict, case: Case, xp: Any = np) -> np.ndarray:
    x = xs[0]
    if not case.training:
        return x.copy()
    (u,) = uniforms(case, 1, xp)
    lower, upper = a.factor
    lo, hi = a.value_range
    y = np.empty_like(x)
    n_, h, wd, ch = x.shape
    for n in range(n_):
        k = 1 - lower + (lower + upper) * u[n]
        for c in range(ch):
            mean = sum(x[n, i, j, c] for i in range(h) for j in range(wd)) / (h * wd)
            for i in range(h):
                for j in range(wd):
                    y[n, i, j, c] = min(max((x[n, i, j, c] - mean) * k + mean, lo), hi)
    return y


REFS: dict[str, Ref] = {
    "conv": ref_conv,
    "depthwise_conv": ref_depthwise_conv,
    "separable_conv": ref_separable_conv,
    "dense": ref_dense,
    "maxpool": ref_maxpool,
    "avgpool": ref_avgpool,
    "global_avgpool": ref_global_avgpool,
    "global_maxpool": ref_global_maxpool,
    "batchnorm": ref_batchnorm,
    "lrn": ref_lrn,
    "dropout": ref_dropout,
    "flatten": ref_flatten,
    "zeropad": ref_zeropad,
    "concat": ref_concat,
    "add": ref_add,
    "multiply": ref_multiply,
    "preprocess": ref_preprocess,
    "upsample": ref_upsample,
    "conv_transpose": ref_conv_transpose,
    "crop": ref_crop,
    "rescale": ref_rescale,
    "resize": ref_resize,
    "center_crop": ref_center_crop,
    "random_flip": ref_random_flip,
    "random_crop": ref_random_crop,
    "random_rotation": ref_affine,
    "random_zoom": ref_affine,
    "random_translation": ref_affine,
    "random_contrast": ref_random_contrast,
    **{
        name: (lambda a, xs, w, case, name=name: ref_activation(name, a, xs[0]))
        for name in [*SCALAR, "softmax"]
    },
}


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of a numpy or cupy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize(("op", "i", "jit"), op_kernel_params())
def test_forward_matches_definition(op: str, i: int, jit: bool, xp: Any) -> None:
    if jit and xp is not np:
        pytest.skip("the compiled kernels are the NumPy backend's")
    case = get_case(op, i)
    assert op in REFS, f"op '{op}' has no reference implementation here"
    rng = np.random.default_rng(7)
    xs, ws = make_inputs(case, rng), make_weights(case, rng)
    # references of random ops draw from the generator of the module under test
    random = op == "dropout" or op in RANDOM_OPS
    expected = REFS[op](case.attrs, xs, ws, case, *((xp,) if random else ()))
    dev_ws = {k: xp.asarray(v.copy()) for k, v in ws.items()}  # batchnorm updates in place
    ctx = make_ctx(case, xp, jit)
    y, _ = OPS[op].forward(xp, case.attrs, [xp.asarray(x) for x in xs], dev_ws, ctx)
    np.testing.assert_allclose(to_host(y), expected, rtol=1e-10, atol=1e-12)
    if op == "batchnorm" and case.training:  # moving stats moved toward the batch's (biased)
        m = case.attrs.momentum
        axes = tuple(range(xs[0].ndim - 1))
        mean, var = xs[0].mean(axis=axes), ((xs[0] - xs[0].mean(axis=axes)) ** 2).mean(axes)
        np.testing.assert_allclose(
            to_host(dev_ws["moving_mean"]), m * ws["moving_mean"] + (1 - m) * mean, rtol=1e-12
        )
        np.testing.assert_allclose(
            to_host(dev_ws["moving_variance"]),
            m * ws["moving_variance"] + (1 - m) * var,
            rtol=1e-12,
        )


@pytest.mark.parametrize(("op", "i"), op_params())
def test_cupy_matches_numpy(op: str, i: int, cupy: Any) -> None:
    """The same kernels on CuPy give NumPy's outputs and gradients.

    Where the op draws randoms (dropout in training) CuPy's generator draws
    other numbers than NumPy's: that case is checked against its definition
    with CuPy's draws (test_forward_matches_definition) and its backward here
    against the mask the forward kept.
    """
    xp = cupy
    case = get_case(op, i)
    rng = np.random.default_rng(3)
    xs, ws = make_inputs(case, rng), make_weights(case, rng)
    dy = rng.normal(size=(case.batch, *OPS[op].shape(case.attrs, *case.inputs)))
    results = []
    for mod in (np, xp):
        w = {k: mod.asarray(v.copy()) for k, v in ws.items()}
        ctx = make_ctx(case, mod)
        y, saved = OPS[op].forward(mod, case.attrs, [mod.asarray(x) for x in xs], w, ctx)
        dxs, dws = OPS[op].backward(mod, case.attrs, saved, mod.asarray(dy), w, make_ctx(case, mod))
        if draws_randoms(case):
            if op == "dropout":  # y = x·m and dx = dy·m for the same mask m
                m = to_host(y) / xs[0]
                np.testing.assert_allclose(to_host(dxs[0]), dy * m, rtol=1e-10, atol=1e-12)
            elif (
                op != "random_contrast"
            ):  # linear for the drawn parameters: <y − y(0), dy> = <x, dx>
                y0, _ = OPS[op].forward(mod, case.attrs, [mod.zeros_like(mod.asarray(xs[0]))],
                                        w, make_ctx(case, mod))  # fmt: skip
                lhs = float(np.sum((to_host(y) - to_host(y0)) * dy))
                assert lhs == pytest.approx(float(np.sum(xs[0] * to_host(dxs[0]))), rel=1e-9)
            continue
        results.append(
            [to_host(y), *map(to_host, dxs), *(to_host(dws[k]) for k in trainable(case))]
        )
    if results:
        for ours, ref in zip(results[1], results[0], strict=True):
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_erfc_matches_math() -> None:
    from cnndsl.ops.act import erfc

    x = np.concatenate([np.linspace(-9, 9, 3601), [0.0, 0.46875, 4.0, -4.0, 27.0, -27.0]])
    # erf = 1 − erfc, to within the rounding of 1 − erfc (a few 1e-16 absolute).
    np.testing.assert_allclose(1 - erfc(np, x), [math.erf(v) for v in x], rtol=0, atol=5e-16)
    np.testing.assert_allclose(erfc(np, x), [math.erfc(v) for v in x], rtol=1e-13, atol=0)
    x32 = x.astype(np.float32)
    assert erfc(np, x32).dtype == np.float32
    ref32 = [math.erfc(float(v)) for v in x32]
    np.testing.assert_allclose(erfc(np, x32)[np.abs(x) < 9], np.array(ref32)[np.abs(x) < 9],
                               rtol=2e-6)  # fmt: skip


def test_max_ties_send_the_gradient_to_the_first_maximum() -> None:
    """Equal values: the first in row-major order wins, as PyTorch's max pooling."""
    ctx = make_ctx(get_case("maxpool", 0))
    x = np.zeros((1, 2, 4, 1))  # two 2×2 windows of zeros
    a = OPS["maxpool"].bind(2)
    _, saved = OPS["maxpool"].forward(np, a, [x], {}, ctx)
    (dx,), _ = OPS["maxpool"].backward(np, a, saved, np.ones((1, 1, 2, 1)), {}, ctx)
    assert dx[0, :, :, 0].tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    a = OPS["global_maxpool"].bind()
    _, saved = OPS["global_maxpool"].forward(np, a, [x], {}, ctx)
    (dx,), _ = OPS["global_maxpool"].backward(np, a, saved, np.ones((1, 1)), {}, ctx)
    assert dx[0, :, :, 0].tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("size", [(2, 2), (3, 1), (1, 4)])
def test_upsample_backward_is_the_transpose(interpolation: str, size: tuple) -> None:
    """upsample is linear: <upsample(x), dy> = <x, backward(dy)> for any x and dy."""
    a = OPS["upsample"].bind(size, interpolation=interpolation)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 5, 2))
    dy = rng.normal(size=(2, 3 * size[0], 5 * size[1], 2))
    ctx = make_ctx(get_case("upsample", 0))
    y, saved = OPS["upsample"].forward(np, a, [x], {}, ctx)
    (dx,), _ = OPS["upsample"].backward(np, a, saved, dy, {}, ctx)
    assert float(np.sum(y * dy)) == pytest.approx(float(np.sum(x * dx)), rel=1e-12)
