"""Overlapping-tile application of an image-to-image function, blended without seams.

Large images do not fit through a network at once. :func:`tiled_apply` cuts the
inputs into overlapping tiles, runs the function on each, and blends the
outputs with weights that ramp smoothly across the overlaps, so no seam shows.
The function may change the spatial size by a fixed ``scale`` (4 for an x4
super-resolver, 8 for a VAE decoder, 1/8 for an encoder): tiles are placed at
``scale`` times their input position.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


def tile_spans(length: int, tile: int, overlap: int, *, align: int = 1) -> list[tuple[int, int]]:
    """Return ``(start, stop)`` spans of at most ``tile`` covering ``[0, length)``.

    Consecutive spans overlap by at least ``overlap``; the last span ends flush
    with ``length`` (so every span is exactly ``tile`` long unless ``length <
    tile``, in which case there is one span). Starts are multiples of
    ``align``, which then must divide ``tile`` and ``length``.
    """
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if tile <= 0 or overlap < 0:
        raise ValueError(f"need tile > 0 and overlap >= 0, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [(0, length)]
    if tile % align or length % align:
        raise ValueError(
            f"tile ({tile}) and length ({length}) must be multiples of align ({align})"
        )
    # The stride is rounded down to the alignment so the overlap never shrinks.
    stride = (tile - overlap) // align * align
    if stride <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return [(s, s + tile) for s in starts]


def _ramp(n: int, ramp: int, start: bool, stop: bool) -> torch.Tensor:
    """1-D weights: a raised-cosine rise over ``ramp`` samples at each flagged end.

    Samples sit at half-integer positions on the ramp, so no weight is zero.
    """
    w = torch.ones(n, dtype=torch.float32)
    ramp = min(ramp, n)
    if ramp > 0:
        pos = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
        rise = (0.5 - 0.5 * torch.cos(math.pi * pos)).float()
        if start:
            w[:ramp] = torch.minimum(w[:ramp], rise)
        if stop:
            w[n - ramp :] = torch.minimum(w[n - ramp :], rise.flip(0))
    return w


def blend_weights(
    h: int,
    w: int,
    ramp_h: int,
    ramp_w: int | None = None,
    *,
    top: bool = True,
    bottom: bool = True,
    left: bool = True,
    right: bool = True,
) -> torch.Tensor:
    """Return an ``(h, w)`` float32 weight map, 1 inside and ramping smoothly to the edges.

    A raised-cosine ramp of ``ramp_h`` rows (``ramp_w`` columns) is applied at
    each edge whose flag is true; edges on the image border keep weight 1 so
    they are not needlessly down-weighted. Weights are strictly positive.
    """
    ramp_w = ramp_h if ramp_w is None else ramp_w
    rows = _ramp(h, ramp_h, top, bottom)
    cols = _ramp(w, ramp_w, left, right)
    return rows[:, None] * cols[None, :]


def _scaled(n: int, scale: float) -> int:
    out = n * scale
    if abs(out - round(out)) > 1e-6:
        raise ValueError(f"size {n} times scale {scale} is not an integer")
    return int(round(out))


def tiled_apply(
    fn: Callable[..., torch.Tensor],
    *inputs: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float = 1.0,
    progress: bool = False,
    with_box: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``inputs`` and blend the results.

    All inputs are NCHW with the same H and W and are sliced into the same
    tiles; ``fn(*tiles)`` must return an NCHW tensor whose spatial size is
    ``scale`` times the tile's. Outputs are accumulated in float32 with
    :func:`blend_weights` over the overlaps and normalised by the summed
    weights; the result has ``fn``'s output dtype. If the inputs fit in one
    tile, ``fn(*inputs)`` is returned unchanged. With ``with_box``, ``fn`` is
    also given the tile's ``(top, bottom, left, right)`` as a last argument.
    """
    if not inputs:
        raise ValueError("tiled_apply needs at least one input tensor")
    height, width = inputs[0].shape[-2:]
    for t in inputs[1:]:
        if t.shape[-2:] != (height, width):
            raise ValueError(
                f"all inputs must share H and W: {tuple(inputs[0].shape)} vs {tuple(t.shape)}"
            )
    if height <= tile and width <= tile:
        return fn(*inputs, (0, height, 0, width)) if with_box else fn(*inputs)

    # A downscaling fn (an encoder) needs tile starts on its stride.
    align = max(1, int(round(1 / scale))) if scale < 1 else 1
    rows = tile_spans(height, tile, overlap, align=align)
    cols = tile_spans(width, tile, overlap, align=align)
    ramp = _scaled(overlap // align * align, scale) if overlap else 0

    jobs = [(r, c) for r in rows for c in cols]
    if progress:
        jobs = tqdm(jobs, desc="tiles", leave=False)

    acc: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    out_dtype = inputs[0].dtype
    for (r0, r1), (c0, c1) in jobs:
        tiles = [t[..., r0:r1, c0:c1] for t in inputs]
        out = fn(*tiles, (r0, r1, c0, c1)) if with_box else fn(*tiles)
        oh, ow = _scaled(r1 - r0, scale), _scaled(c1 - c0, scale)
        if out.shape[-2:] != (oh, ow):
            raise ValueError(
                f"fn returned spatial size {tuple(out.shape[-2:])} for a tile of "
                f"{(r1 - r0, c1 - c0)}; expected {(oh, ow)} (scale={scale})"
            )
        if acc is None:
            out_dtype = out.dtype
            full = (*out.shape[:-2], _scaled(height, scale), _scaled(width, scale))
            acc = torch.zeros(full, dtype=torch.float32, device=out.device)
            weight_sum = torch.zeros(full[-2:], dtype=torch.float32, device=out.device)
        wmap = blend_weights(
            oh, ow, ramp, top=r0 > 0, bottom=r1 < height, left=c0 > 0, right=c1 < width
        ).to(out.device)
        y0, x0 = _scaled(r0, scale), _scaled(c0, scale)
        acc[..., y0 : y0 + oh, x0 : x0 + ow] += out.float() * wmap
        weight_sum[y0 : y0 + oh, x0 : x0 + ow] += wmap
    return (acc / weight_sum).to(out_dtype)


# ---------------------------------------------------------------------------------------
# Gaussian-weighted tiles of a fixed size (HYPIR's rule, after CCSR): every tile is
# exactly ``size`` long, starts step by ``stride`` and a last tile sits flush with the
# end; outputs are blended with one Gaussian bump per tile.


def stride_starts(length: int, size: int, stride: int) -> list[int]:
    """Tile starts ``0, stride, 2*stride, ...`` that fit in ``length``, plus
    ``length - size`` when those do not end flush. ``length`` must be ``>= size``."""
    if size <= 0 or stride <= 0 or length < size:
        raise ValueError(f"need length >= size > 0 and stride > 0, got {length}, {size}, {stride}")
    starts = list(range(0, length - size + 1, stride))
    if (length - size) % stride:
        starts.append(length - size)
    return starts


def gaussian_tile_weights(height: int, width: int) -> torch.Tensor:
    """``[height, width]`` float64 weights: a Gaussian of variance 0.01 in units of the
    side, centred at ``(width - 1) / 2`` across and at ``height / 2`` down (the published
    rule centres the rows half a pixel lower), scaled by ``1 / sqrt(2 pi 0.01)`` per axis."""
    var = 0.01
    norm = math.sqrt(2 * math.pi * var)

    def bump(n: int, mid: float) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(x - mid) * (x - mid) / (n * n) / (2 * var)) / norm

    return torch.outer(bump(height, height / 2), bump(width, (width - 1) / 2))


def gaussian_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    size: int,
    stride: int,
    *,
    scale: float = 1,
    channels: int | None = None,
) -> torch.Tensor:
    """``fn`` over ``size`` x ``size`` tiles of ``x`` ([B,C,H,W], ``H, W >= size``) at
    :func:`stride_starts`, the outputs (``scale`` times the tile's size, ``channels``
    channels, default ``x``'s) blended with :func:`gaussian_tile_weights` in ``x``'s
    dtype; tile positions scale by ``scale`` (truncated), e.g. ``1/8`` for an encoder,
    ``8`` for a decoder. Tiles run row by row, left to right."""

    def scaled(n: int) -> int:
        return int(n // round(1 / scale)) if scale < 1 else int(n * scale)

    b, c, h, w = x.shape
    out = torch.zeros((b, channels or c, scaled(h), scaled(w)), dtype=x.dtype, device=x.device)
    count = torch.zeros(out.shape, dtype=torch.float32, device=x.device)
    weights = gaussian_tile_weights(scaled(size), scaled(size)).to(x.device, x.dtype)
    for top in stride_starts(h, size, stride):
        for left in stride_starts(w, size, stride):
            tile = fn(x[..., top : top + size, left : left + size])
            rows = slice(scaled(top), scaled(top + size))
            cols = slice(scaled(left), scaled(left + size))
            out[..., rows, cols] += tile * weights
            count[..., rows, cols] += weights
    return out / count
