"""Convolution kernels: chunked im2col + GEMM (depthwise: `depthwise_kernels`).

The op classes in `cnndsl.ops.conv` define what conv, depthwise_conv and
separable_conv mean; this module holds how they run. Arrays are NHWC
batches; kernels are Keras-shaped [fh, fw, c_in, c_out].

conv2d (groups = 1) works through chunks of whole samples (`Workers`):

- forward: copy a chunk's patches into a reused column buffer
  (nb·oh·ow, fh·fw·c) and multiply by the kernel (fh·fw·c, f) straight
  into the output; bias and a fused relu are applied while the chunk is
  hot. A 1×1 convolution multiplies the pixels directly, without columns;
  a 3×3 stride-1 one runs as Winograd F(4×4, 3×3) (`winograd`) where the
  measured cost model (`conv_costs`) predicts it faster, chosen at lowering
  from the layer's shape (`forward_method`).
- backward: the same chunks rebuild their columns (nothing but the input
  is kept from the forward pass) for dW = colsᵀ·dz, written one partial
  per chunk and summed in chunk order (the same bits for any lane count).
  dW is colsᵀ·dz, or Winograd with the roles turned where that pays
  (`kernel_grad_method`). The input gradient is one of three variants,
  chosen at lowering from the layer's shape (`input_grad_method`):
    "full":     stride 1 only: dx is the correlation of the zero-padded dz
                with the flipped, transposed kernel: columns of dz, one GEMM.
    "winograd": the same correlation by F(4×4, 3×3), for wide 3×3 convs.
    "col2im":   dcols = dz·Wᵀ, then each kernel offset scatter-adds its
                slice onto the (padded) input: any stride and dilation.
  The first layer of a network computes no input gradient at all.

Grouped convolutions (groups > 1) take the plain whole-batch path
(`grouped_kernels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cnndsl.ops import winograd
from cnndsl.ops.conv_costs import im2col_seconds, winograd_grad_seconds, winograd_seconds
from cnndsl.ops.registry import Array
from cnndsl.ops.window import NOPAD, Geometry, Pads, im2col_view, padded, tap, unpad2d
from cnndsl.runtime.workers import Workers

GEMM_ROWS = 512  # fewest output pixels per backward chunk: keeps the dW partials few
WINOGRAD_CHUNK_TILES = 128  # fewest tiles per Winograd chunk: the rows of its 36 GEMMs
PARTIALS_BYTES = 64 << 20  # the kernel gradient's partial sums, where more than MIN_PARTIALS
MIN_PARTIALS = 8  # partials a layer may keep whatever their size (lanes stay busy)
LANE_SCRATCH = 64 << 20  # bytes of chunk scratch a CPU lane keeps (the memory plan's SCRATCH)
PLANNED_ITEMSIZE = 4  # float32: lowering chooses before the dtype is known


def winograd_shape(geo: Geometry) -> bool:
    """Whether F(4×4, 3×3) can run this conv: a 3×3 stride-1 undilated kernel."""
    return (geo.kernel, geo.stride, geo.dilation) == ((3, 3), (1, 1), (1, 1))


def grad_sums_bytes(geo: Geometry, filters: int, itemsize: int) -> int:
    """Scratch a lane holds for a Winograd dW: its 36 per-point sums of c·f values."""
    return winograd.SPAN**2 * geo.channels * filters * itemsize


def winograd_fits(geo: Geometry, filters: int) -> bool:
    """Whether F(4×4, 3×3) is predicted faster than im2col for this conv (dx: the same test).

    By the measured cost model (`conv_costs`): Winograd's 36 GEMMs do 4× fewer
    multiplies but run slower when c or f is small (thin GEMMs), and its tiles
    overhang maps whose size is no multiple of 4 (wasted work).
    """
    return winograd_shape(geo) and winograd_seconds(geo, filters) < im2col_seconds(geo, filters)


def forward_method(geo: Geometry, filters: int) -> str:
    """How conv2d_forward runs this shape: "gemm" (1×1), "winograd" or "im2col"."""
    if geo.pointwise:
        return "gemm"
    return "winograd" if winograd_fits(geo, filters) else "im2col"


def kernel_grad_method(geo: Geometry, filters: int) -> str:
    """How conv2d's backward computes dW for this shape: "gemm" (1×1), "winograd" or "im2col".

    Winograd with the roles turned where the cost model predicts it faster,
    reading the tiles the forward pass kept when that ran as Winograd too,
    and only where its 36·c·f per-point sums fit a lane's scratch
    (`grad_sums_bytes`; 38 MB at 512 channels in and out, counted by the
    memory plan through `Conv.shared_scratch`).
    """
    if geo.pointwise:
        return "gemm"
    if not winograd_shape(geo) or grad_sums_bytes(geo, filters, PLANNED_ITEMSIZE) > LANE_SCRATCH:
        return "im2col"
    kept = forward_method(geo, filters) == "winograd"
    faster = winograd_grad_seconds(geo, filters, kept) < im2col_seconds(geo, filters)
    return "winograd" if faster else "im2col"


def input_grad_method(geo: Geometry, filters: int) -> str:
    """How conv2d's backward computes dx for this shape: "winograd", "full" or "col2im".

    "full" and "col2im" cost the same GEMM flops. "full" copies fh·fw·f values
    per input pixel into columns of dz; "col2im" writes fh·fw·c values of
    dcols per output pixel and adds them back in fh·fw strided passes, and its
    GEMM has the short inner dimension f (slow in BLAS). "full" needs stride
    1; "winograd" is "full" done by F(4×4, 3×3), taken where the cost model
    predicts it faster than the other two's choice (costed as im2col: dz's
    columns for "full", x's for "col2im").
    """
    if geo.pointwise:
        return "gemm"
    full = geo.transposed(filters)
    if full is None:
        return "col2im"
    # NOTE: measured on the benchmark networks' layers (benchmarks/RESULTS.md):
    # "full" is up to 25% faster where f <= c on maps of 7×7 and more (every
    # stride-1 ResNet conv); where f = 2c the two tie, and on 4×4 maps (dz's
    # columns there are mostly padding) col2im is faster.
    big = geo.out[0] * geo.out[1] >= 36
    other = "full" if filters <= geo.channels and big else "col2im"
    cost = im2col_seconds(full, geo.channels) if other == "full" else im2col_seconds(geo, filters)
    if winograd_shape(full) and winograd_seconds(full, geo.channels) < cost:
        return "winograd"
    return other


# ---- im2col into scratch ----


def padded_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    name: str,
    x: Array,
    n0: int,
    n1: int,
    p: Pads,
    value: float = 0.0,
) -> Array:
    """Samples n0:n1 of x padded with `value`, in a reused buffer (x itself if p is zero)."""
    if p == NOPAD:
        return x[n0:n1]
    (t, _), (l, _) = p
    nb, h, w, c = n1 - n0, x.shape[1], x.shape[2], x.shape[3]
    buf = workers.scratch(xp, lane, name, (nb, *padded((h, w), p), c), x.dtype)
    buf[:, :t] = value
    buf[:, t + h :] = value
    buf[:, t : t + h, :l] = value
    buf[:, t : t + h, l + w :] = value
    buf[:, t : t + h, l : l + w] = x[n0:n1]
    return buf


def columns(xp: Any, workers: Workers, lane: int, name: str, src: Array, geo: Geometry) -> Array:
    """im2col of padded samples src (nb, hp, wp, c): (nb·oh·ow, fh·fw·c) in a reused buffer.

    With one channel the buffer is tap-major, (fh·fw, nb·oh·ow), and the
    result its transposed view. NOTE: pixel-major columns of a one-channel
    input copy runs of fw values (7 for a 7×7 stem); tap-major ones copy
    whole output rows, and BLAS reads either layout. Measured on the
    Fashion-MNIST stem (7×7, 1 → 64, 28×28), one core: columns 3.4× faster,
    the GEMM 1.4×.
    """
    nb, _, _, c = src.shape
    (oh, ow), (fh, fw) = geo.out, geo.kernel
    if c == 1:
        taps = workers.scratch(xp, lane, name + "_taps", (fh, fw, nb, oh, ow), src.dtype)
        view = im2col_view(xp, src, geo)[..., 0].transpose(3, 4, 0, 1, 2)
        xp.copyto(taps, view)
        return taps.reshape(fh * fw, nb * oh * ow).T
    cols = workers.scratch(xp, lane, name, (nb, oh, ow, fh, fw, c), src.dtype)
    xp.copyto(cols, im2col_view(xp, src, geo))
    return cols.reshape(nb * oh * ow, fh * fw * c)


def _gemm_rows(
    xp: Any, workers: Workers, lane: int, x: Array, n0: int, n1: int, geo: Geometry
) -> Array:
    """The left GEMM operand of samples n0:n1: their pixels (1×1) or im2col columns."""
    if geo.pointwise:
        return _pointwise_rows(xp, workers, lane, x, n0, n1, geo)
    src = padded_chunk(xp, workers, lane, "xpad", x, n0, n1, geo.pads)
    return columns(xp, workers, lane, "cols", src, geo)


def _pointwise_rows(
    xp: Any, workers: Workers, lane: int, x: Array, n0: int, n1: int, geo: Geometry
) -> Array:
    """The pixels a 1×1 conv visits in samples n0:n1, as (pixels, c) rows."""
    c = x.shape[3]
    if geo.stride == (1, 1):
        return x[n0:n1].reshape(-1, c)
    sub = x[n0:n1, :: geo.stride[0], :: geo.stride[1]][:, : geo.out[0], : geo.out[1]]
    buf = workers.scratch(xp, lane, "pointwise", sub.shape, x.dtype)
    xp.copyto(buf, sub)
    return buf.reshape(-1, c)


def _chunks(
    workers: Workers, n: int, geo: Geometry, itemsize: int, winograd: bool = False
) -> list[tuple[int, int]]:
    """Chunks of whole samples, each with at least GEMM_ROWS output pixels where possible.

    winograd: for a kernel whose GEMMs are Winograd's (`_winograd_chunks` where
    the workers chunk for the caches; else by bytes, like im2col's columns).
    """
    whole = workers.chunking == "whole"
    if winograd and not whole:
        return _winograd_chunks(n, geo)
    if winograd:  # a GPU: as few chunks as its buffers of tiles allow
        return workers.batch_chunks(n, _winograd_sample_bytes(geo, itemsize))
    pixels = geo.out[0] * geo.out[1]
    per_sample = pixels * max(geo.columns, 1) * itemsize
    chunks = workers.batch_chunks(n, per_sample)
    size = chunks[0][1] - chunks[0][0] if chunks else 1
    least = -(-GEMM_ROWS // max(pixels, 1))
    if size < least and not whole:  # NOTE: a GPU's chunks are its scratch cap's: keep it
        size = min(n, least)
        chunks = [(lo, min(n, lo + size)) for lo in range(0, n, size)]
    return chunks


def _winograd_sample_bytes(geo: Geometry, itemsize: int) -> int:
    """Bytes of one sample's transformed tiles, input and output (taking f ≈ c)."""
    th, tw = winograd.tiles(geo.out)
    return 2 * winograd.SPAN**2 * th * tw * geo.channels * itemsize


def _winograd_chunks(n: int, geo: Geometry) -> list[tuple[int, int]]:
    """As many chunks as keep WINOGRAD_CHUNK_TILES tiles each: a power of two, at least two.

    NOTE: each of a chunk's 36 GEMMs (tiles, c)·(c, f) streams its own c×f
    slice of the transformed kernel, so a chunk of few tiles is bound by that
    read, not by the multiplies. Measured on one core, batch 64, forward and
    weight gradient, from 32×32×64 to 7×7×512 maps: 128-256 tiles a chunk ran
    up to 1.6× faster than the im2col chunk sizes (4 MiB of columns: 1 sample
    of a 28×28 map, 32-44 tiles on 7×7 and 8×8 maps), and slower again from
    about 400 tiles, where a chunk's buffers outgrow the caches. A power-of-two
    count of near-equal chunks keeps two or four lanes evenly loaded; it never
    depends on the lanes, so the weight gradient's partials are summed the
    same way however many threads run them.
    """
    th, tw = winograd.tiles(geo.out)
    count = 2
    while count * 2 <= n and n // (count * 2) * th * tw >= WINOGRAD_CHUNK_TILES:
        count *= 2
    count = min(count, n)
    return [(i * n // count, (i + 1) * n // count) for i in range(count)]


# ---- conv2d forward and backward ----


def kept_tiles_size(geo: Geometry, n: int) -> int:
    """Values of a batch of n samples' transformed Winograd tiles (36 per tile and channel)."""
    th, tw = winograd.tiles(geo.out)
    return winograd.SPAN * winograd.SPAN * n * th * tw * geo.channels


def _kept_chunk(kept: Array | None, geo: Geometry, n0: int, n1: int) -> Array | None:
    """Samples n0:n1's part of a kept-tiles buffer as (36, tiles·c), or None."""
    if kept is None:
        return None
    per_sample = kept_tiles_size(geo, 1)
    return kept[n0 * per_sample : n1 * per_sample].reshape(winograd.SPAN * winograd.SPAN, -1)


def conv2d_forward(
    xp: Any,
    x: Array,
    kernel: Array,
    bias: Array | None,
    geo: Geometry,
    relu: bool,
    workers: Workers,
    method: str | None = None,
    keep: Array | None = None,
    overrides: Mapping[str, Callable[..., Any]] | None = None,
) -> Array:
    """z = x ⋆ kernel (+ bias, then relu if asked) for groups = 1; a fresh (N, oh, ow, f) array.

    method: forward_method's choice (derived from the shape if not given).
    keep: for a Winograd forward, a buffer of `kept_tiles_size` values that
    receives x's transformed tiles for conv2d_backward's `kept`. overrides:
    the backend's, for Winograd's transforms (`winograd.correlate_chunk`).
    """
    n = x.shape[0]
    fh, fw, c, f = kernel.shape
    oh, ow = geo.out
    z = xp.empty((n, oh, ow, f), dtype=xp.result_type(x, kernel))
    z2 = z.reshape(-1, f)
    wmat = kernel.reshape(fh * fw * c, f)
    u = None
    if (method or forward_method(geo, f)) == "winograd":
        u = winograd.transform_kernel(xp, kernel, workers)

    def run(lane: int, chunk: tuple[int, int]) -> None:
        n0, n1 = chunk
        out = z2[n0 * oh * ow : n1 * oh * ow]
        if u is not None:  # bias and relu are applied as the tiles are written out
            tiles = _kept_chunk(keep, geo, n0, n1)
            winograd.correlate_chunk(
                xp, workers, lane, x[n0:n1], geo.pads, u, z[n0:n1], tiles, bias, relu, overrides
            )
            return
        a = _gemm_rows(xp, workers, lane, x, n0, n1, geo)
        xp.matmul(a, wmat, out=out)
        if bias is not None:
            out += bias
        if relu:
            xp.maximum(out, 0, out=out)

    chunks = _chunks(workers, n, geo, x.dtype.itemsize, winograd=u is not None)
    workers.each(chunks, run)
    return z


def conv2d_backward(
    xp: Any,
    x: Array,
    dy: Array,
    kernel: Array,
    geo: Geometry,
    *,
    want_dx: bool,
    want_db: bool,
    method: str,
    relu_out: Array | None,
    workers: Workers,
    kernel_method: str | None = None,
    kept: Array | None = None,
    overrides: Mapping[str, Callable[..., Any]] | None = None,
) -> tuple[Array | None, Array, Array | None]:
    """(dx or None, dkernel, dbias or None) of conv2d_forward for groups = 1.

    relu_out: the forward output when a relu was fused; then dz = dy·(y > 0)
    is formed chunk by chunk instead of as a whole-batch array. method is
    input_grad_method's choice ("gemm" for 1×1 convs), kernel_method
    kernel_grad_method's (derived from the shape if not given). kept: x's
    transformed tiles as conv2d_forward's `keep` left them, for a Winograd
    kernel gradient (made again per chunk if None). overrides: as conv2d_forward's.
    """
    n = x.shape[0]
    fh, fw, c, f = kernel.shape
    oh, ow = geo.out
    k = fh * fw * c
    dtype = xp.result_type(x, dy, kernel)
    wmat = kernel.reshape(k, f)
    dy2 = dy.reshape(-1, f)
    y2 = relu_out.reshape(-1, f) if relu_out is not None else None
    winograd_dk = (kernel_method or kernel_grad_method(geo, f)) == "winograd"
    chunks = _chunks(workers, n, geo, x.dtype.itemsize, winograd=winograd_dk)
    groups = _partial_groups(chunks, k * f * dtype.itemsize)
    # One partial per group of chunks, summed in group order below (lane -1: shared).
    dk_parts = workers.scratch(xp, -1, "dk_parts", (len(groups), k, f), dtype)
    db_parts = workers.scratch(xp, -1, "db_parts", (len(groups), f), dtype) if want_db else None
    dx = xp.empty(x.shape, dtype=dtype) if want_dx else None
    full = geo.transposed(f) if method in ("full", "winograd") else None
    wfull = ufull = None
    if want_dx and method in ("full", "winograd"):
        assert full is not None, f"the '{method}' input gradient needs stride 1"
        # dx = dz ⋆ W', W'[u, v, f, c] = W[fh−1−u, fw−1−v, c, f]
        if method == "winograd":
            ufull = winograd.transform_kernel(xp, kernel, workers, flipped=True)
        else:
            flipped = xp.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
            wfull = flipped.reshape(-1, c)
    index = {group: i for i, group in enumerate(groups)}

    def run(lane: int, group: tuple[tuple[int, int], ...]) -> None:
        i = index[group]
        for j, chunk in enumerate(group):
            if j == 0:  # the group's first chunk writes its partials, the others add to them
                chunk_grads(lane, chunk, dk_parts[i], db_parts[i] if db_parts is not None else None)
                continue
            dk_more = workers.scratch(xp, lane, "dk_more", (k, f), dtype)
            db_more = workers.scratch(xp, lane, "db_more", (f,), dtype) if want_db else None
            chunk_grads(lane, chunk, dk_more, db_more)
            dk_parts[i] += dk_more
            if db_parts is not None:
                db_parts[i] += db_more

    def chunk_grads(lane: int, chunk: tuple[int, int], dk_part: Array, db_part: Any) -> None:
        n0, n1 = chunk
        rows = slice(n0 * oh * ow, n1 * oh * ow)
        if y2 is not None:
            dz = workers.scratch(xp, lane, "dz", (rows.stop - rows.start, f), dtype)
            xp.multiply(dy2[rows], y2[rows] > 0, out=dz)
        else:
            dz = dy2[rows]
        if winograd_dk:
            dz4 = dz.reshape(n1 - n0, oh, ow, f)
            part = dk_part.reshape(fh * fw, c * f)
            tiles = _kept_chunk(kept, geo, n0, n1)
            winograd.kernel_grad_chunk(
                xp, workers, lane, x[n0:n1], geo.pads, dz4, part, tiles, overrides
            )
        else:
            a = _gemm_rows(xp, workers, lane, x, n0, n1, geo)
            xp.matmul(a.T, dz, out=dk_part)
        if db_part is not None:
            workers.colsum(xp, dz, out=db_part)
        if dx is None:
            return
        if geo.pointwise:
            _pointwise_dx(xp, dz, wmat, dx, n0, n1, geo)
        elif full is not None and ufull is not None:
            dz4 = dz.reshape(n1 - n0, oh, ow, f)
            winograd.correlate_chunk(
                xp, workers, lane, dz4, full.pads, ufull, dx[n0:n1], overrides=overrides
            )
        elif full is not None and wfull is not None:
            dzpad = padded_chunk(
                xp, workers, lane, "dzpad", dz.reshape(n1 - n0, oh, ow, f), 0, n1 - n0, full.pads
            )
            dcols = columns(xp, workers, lane, "cols", dzpad, full)
            xp.matmul(dcols, wfull, out=dx[n0:n1].reshape(-1, c))
        else:
            _col2im_chunk(xp, workers, lane, dz, wmat, dx, n0, n1, geo)

    workers.each(groups, run)
    dk = workers.sum_partials(xp, dk_parts)  # a fresh array: the partials stay in scratch
    db = db_parts.sum(axis=0) if db_parts is not None else None
    return dx, dk.reshape(kernel.shape), db


def kernel_grad_partials(n: int, geo: Geometry, filters: int, itemsize: int) -> int:
    """How many kernel-gradient partials conv2d_backward keeps for a batch of n (memory plans)."""
    winograd_dk = kernel_grad_method(geo, filters) == "winograd"
    chunks = _chunks(Workers(), n, geo, itemsize, winograd=winograd_dk)
    k = geo.kernel[0] * geo.kernel[1] * geo.channels
    return len(_partial_groups(chunks, k * filters * itemsize))


def _partial_groups(
    chunks: list[tuple[int, int]], partial_bytes: int
) -> list[tuple[tuple[int, int], ...]]:
    """The chunks in runs of consecutive ones, each run summing into one kernel-gradient partial.

    One run per chunk while the partials fit PARTIALS_BYTES, else as few runs
    as fit, but MIN_PARTIALS or more. NOTE: a partial is fh·fw·c·f values: for
    a 512→512 3×3 conv 9.4 MB, and at one partial per chunk VGG-16's 28×28
    convs kept 64 of them. The runs depend on the chunks and sizes only, never
    on the lanes, so the sums have the same bits however many threads run them.
    """
    count = len(chunks)
    if count * partial_bytes > PARTIALS_BYTES:
        count = min(count, max(MIN_PARTIALS, PARTIALS_BYTES // max(partial_bytes, 1)))
    n = len(chunks)
    return [tuple(chunks[i * n // count : (i + 1) * n // count]) for i in range(count)]


def _pointwise_dx(
    xp: Any, dz: Array, wmat: Array, dx: Array, n0: int, n1: int, geo: Geometry
) -> None:
    c = dx.shape[3]
    if geo.stride == (1, 1):
        xp.matmul(dz, wmat.T, out=dx[n0:n1].reshape(-1, c))
        return
    part = dx[n0:n1]
    part[...] = 0
    oh, ow = geo.out
    target = part[:, : oh * geo.stride[0] : geo.stride[0], : ow * geo.stride[1] : geo.stride[1]]
    target[...] = (dz @ wmat.T).reshape(n1 - n0, oh, ow, c)


def _col2im_chunk(
    xp: Any,
    workers: Workers,
    lane: int,
    dz: Array,
    wmat: Array,
    dx: Array,
    n0: int,
    n1: int,
    geo: Geometry,
) -> None:
    """dx[n0:n1] from dcols = dz·Wᵀ, scatter-added one kernel offset at a time."""
    nb, (oh, ow), (fh, fw) = n1 - n0, geo.out, geo.kernel
    c = dx.shape[3]
    dcols = workers.scratch(xp, lane, "cols", (nb * oh * ow, fh * fw * c), dx.dtype)
    xp.matmul(dz, wmat.T, out=dcols)
    d6 = dcols.reshape(nb, oh, ow, fh, fw, c)
    if geo.pads == NOPAD:
        target = dx[n0:n1]
    else:
        hp, wp = geo.padded
        target = workers.scratch(xp, lane, "dxpad", (nb, hp, wp, c), dx.dtype)
    target[...] = 0
    for u in range(fh):
        for v in range(fw):
            tap(target, u, v, geo.stride, geo.dilation, geo.out)[...] += d6[:, :, :, u, v]
    if geo.pads != NOPAD:
        dx[n0:n1] = unpad2d(target, geo.pads)
