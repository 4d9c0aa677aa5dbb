"""Grouped convolution kernels (groups > 1): whole-batch im2col, one GEMM per group."""

from __future__ import annotations

from typing import Any

from cnndsl.ops.registry import Array
from cnndsl.ops.window import Geometry, im2col_view, pad2d, tap, unpad2d
from cnndsl.runtime.workers import Workers


def grouped_conv2d(
    xp: Any, x: Array, kernel: Array, geo: Geometry, groups: int, workers: Workers
) -> tuple[Array, Array]:
    """(z, padded x) of a grouped conv: one im2col view, one GEMM per group (over the lanes)."""
    fh, fw, cin_g, f = kernel.shape
    n = x.shape[0]
    xpad = pad2d(xp, x, geo.pads)
    view = im2col_view(xp, xpad, geo)
    f_g = f // groups
    zs = []
    for g in range(groups):
        cols = view[..., g * cin_g : (g + 1) * cin_g].reshape(-1, fh * fw * cin_g)
        kernel_g = kernel[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g)
        zs.append(workers.matmul(xp, cols, kernel_g))
    return xp.concatenate(zs, axis=1).reshape(n, *geo.out, f), xpad


def grouped_conv2d_backward(
    xp: Any,
    xpad: Array,
    dz: Array,
    kernel: Array,
    geo: Geometry,
    groups: int,
    want_dx: bool,
    workers: Workers,
) -> tuple[Array | None, Array]:
    """(dx or None, dkernel) of grouped_conv2d: dW = colsᵀ·dz, dcols = dz·Wᵀ, col2im."""
    fh, fw, cin_g, f = kernel.shape
    view = im2col_view(xp, xpad, geo)
    f_g = f // groups
    dks, dcols = [], []
    for g in range(groups):
        cols = view[..., g * cin_g : (g + 1) * cin_g].reshape(-1, fh * fw * cin_g)
        dz_g = dz[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g)
        dks.append(workers.matmul(xp, cols.T, dz_g).reshape(fh, fw, cin_g, f_g))
        if want_dx:
            w_g = kernel[..., g * f_g : (g + 1) * f_g].reshape(-1, f_g)
            dcols.append(workers.matmul(xp, dz_g, w_g.T).reshape(*view.shape[:5], cin_g))
    dk = xp.concatenate(dks, axis=3)
    if not want_dx:
        return None, dk
    dcol = xp.concatenate(dcols, axis=5)
    dxpad = xp.zeros(xpad.shape, dtype=dcol.dtype)
    for u in range(fh):
        for v in range(fw):
            tap(dxpad, u, v, geo.stride, geo.dilation, geo.out)[...] += dcol[:, :, :, u, v]
    return unpad2d(dxpad, geo.pads), dk
