"""Tiled VAE encode/decode with GroupNorm statistics shared across tiles.

Running the SD autoencoder tile by tile bounds its memory, but every GroupNorm
inside it normalises by statistics of what it sees: a tile whose content is
darker or busier than its neighbours gets its own mean and variance, and comes
out in its own tone, so the seams show however the tiles are blended. Here the
network is run layer by layer over all tiles at once: at each GroupNorm every
tile pauses, the per-group mean and variance are gathered over the tiles' core
regions (which partition the image, so these are exactly the statistics the
untiled GroupNorm would use), and every tile is normalised with them.

What remains tile-local are the convolutions near a tile's edge, which see
zero padding instead of the neighbour, and the middle block's self-attention,
which (as in the DiffBIR release's tiled VAE) attends only within the padded
tile. Each core is therefore extended by a margin of ``pad`` input pixels that
is computed and then cropped away.

The tiling follows the release: the first ``pad`` pixels at each image border
belong to the edge tiles (they need no margin on that side), the rest is split
into equal cores of at most ``tile`` pixels, so no tile the network sees is
larger than ``tile + 2 * pad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffbir.errors import ConfigError
from diffbir.models.cpu_fast import onednn_eligible
from diffbir.models.vae import VAE_SCALE, first_parameter
from diffbir.models.vae_cpu import upsample

Span = tuple[int, int]


# --- the network as a flat list of steps, cut at each GroupNorm -------------------


@dataclass(frozen=True)
class _Apply:
    """A step local to each tile (a convolution, an activation, a resampling)."""

    fn: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _SaveSkip:
    """Start of a residual branch: keep ``fn(h)`` for the matching :class:`_AddSkip`."""

    fn: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _AddSkip:
    """End of a residual branch: ``(skip + h) / divisor``."""

    divisor: float


@dataclass(frozen=True)
class _Norm:
    """A GroupNorm: the point where every tile must wait for the shared statistics."""

    module: nn.GroupNorm


_Step = _Apply | _SaveSkip | _AddSkip | _Norm


def _identity(h: torch.Tensor) -> torch.Tensor:
    return h


def _unsupported(what: str) -> ConfigError:
    return ConfigError(f"tiled VAE: unsupported autoencoder ({what})")


def _group_norm(module: nn.Module) -> _Norm:
    if not isinstance(module, nn.GroupNorm):
        raise _unsupported(f"expected a GroupNorm, found {type(module).__name__}")
    return _Norm(module)


def _resnet_steps(block: nn.Module) -> list[_Step]:
    """A diffusers ``ResnetBlock2D`` without time embedding or resampling."""
    if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None):
        raise _unsupported("a resnet block that resamples")
    if getattr(block, "time_emb_proj", None) is not None:
        raise _unsupported("a resnet block with a time embedding")
    shortcut = block.conv_shortcut if block.conv_shortcut is not None else _identity
    act = block.nonlinearity
    # Dropout is skipped: the VAE is only run for inference here.
    return [
        _SaveSkip(shortcut),
        _group_norm(block.norm1),
        _Apply(act),
        _Apply(block.conv1),
        _group_norm(block.norm2),
        _Apply(act),
        _Apply(block.conv2),
        _AddSkip(float(block.output_scale_factor)),
    ]


def _attention_on_tile(attn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Self-attention of a diffusers ``Attention`` over one tile's pixels, after its GroupNorm.

    Mirrors diffusers' ``AttnProcessor2_0`` for a 4-D input, minus the norm.
    """
    b, c, height, width = h.shape
    tokens = h.reshape(b, c, height * width).transpose(1, 2)
    q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    heads = attn.heads
    head_dim = k.shape[-1] // heads
    q, k, v = (t.view(b, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(q.dtype)
    out = attn.to_out[0](out)
    return out.transpose(1, 2).reshape(b, c, height, width)


def _attention_steps(attn: nn.Module) -> list[_Step]:
    if (
        getattr(attn, "spatial_norm", None) is not None
        or getattr(attn, "norm_q", None) is not None
        or getattr(attn, "norm_k", None) is not None
        or not getattr(attn, "residual_connection", False)
    ):
        raise _unsupported("mid-block attention with spatial/q/k norms or no residual")
    return [
        _SaveSkip(_identity),
        _group_norm(attn.group_norm),
        _Apply(partial(_attention_on_tile, attn)),
        _AddSkip(float(attn.rescale_output_factor)),
    ]


def _mid_block_steps(mid: nn.Module) -> list[_Step]:
    """``UNetMidBlock2D``: a resnet, then (attention, resnet) pairs."""
    steps = _resnet_steps(mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            steps += _attention_steps(attn)
        steps += _resnet_steps(resnet)
    return steps


def _encoder_steps(vae: nn.Module) -> list[_Step]:
    """Image in [-1,1] to the posterior mean, unscaled."""
    enc = vae.encoder
    steps: list[_Step] = [_Apply(enc.conv_in)]
    for block in enc.down_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        for down in block.downsamplers or []:
            steps.append(_Apply(down))
    steps += _mid_block_steps(enc.mid_block)
    steps += [_group_norm(enc.conv_norm_out), _Apply(enc.conv_act), _Apply(enc.conv_out)]
    if getattr(vae, "quant_conv", None) is not None:
        steps.append(_Apply(vae.quant_conv))  # 1x1: as good per tile as on the whole map
    # The moments are (mean, logvar) stacked on channels; keep the mean only.
    steps.append(_Apply(lambda m: m[:, : m.shape[1] // 2]))
    return steps


def _decoder_steps(vae: nn.Module) -> list[_Step]:
    """Unscaled latent to an image in about [-1,1]."""
    dec = vae.decoder
    steps: list[_Step] = []
    if getattr(vae, "post_quant_conv", None) is not None:
        steps.append(_Apply(vae.post_quant_conv))
    steps.append(_Apply(dec.conv_in))
    steps += _mid_block_steps(dec.mid_block)
    # diffusers runs the up blocks in their own dtype (they may be upcast).
    up_dtype = next(dec.up_blocks.parameters()).dtype
    steps.append(_Apply(lambda h: h.to(up_dtype)))
    for block in dec.up_blocks:
        for resnet in block.resnets:
            steps += _resnet_steps(resnet)
        for up in block.upsamplers or []:
            steps.append(_Apply(partial(upsample, up)))  # up(x), by pixel phases on CPU fp32
    steps += [_group_norm(dec.conv_norm_out), _Apply(dec.conv_act), _Apply(dec.conv_out)]
    return steps


def _segments(steps: list[_Step]) -> list[tuple[list[_Step], nn.GroupNorm | None]]:
    """Cut the steps at each GroupNorm: ``(steps up to it, the norm)``; the last has no norm."""
    out: list[tuple[list[_Step], nn.GroupNorm | None]] = []
    run: list[_Step] = []
    for step in steps:
        if isinstance(step, _Norm):
            out.append((run, step.module))
            run = []
        else:
            run.append(step)
    out.append((run, None))
    return out


# --- shared GroupNorm statistics --------------------------------------------------


class _GroupStats:
    """Per-sample, per-group mean and variance merged over tiles, in float32.

    Tiles are merged with the pairwise formula of Chan et al. (count, mean,
    sum of squared deviations), which is exact and does not cancel the way
    sums of squares do.
    """

    def __init__(self, num_groups: int):
        self.num_groups = num_groups
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Fold in the pixels of ``x`` (B, C, h, w), typically a tile's core."""
        b = x.shape[0]
        groups = x.float().reshape(b, self.num_groups, -1)
        n = groups.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(groups, dim=-1, correction=0)
        m2 = var * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, var)``, each (B, groups), biased variance as GroupNorm uses."""
        if self.mean is None:
            raise RuntimeError("no pixels were added to the GroupNorm statistics")
        return self.mean, self.m2 / self.count


def _normalize(
    x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """Apply ``norm`` to ``x`` with given per-group statistics instead of ``x``'s own."""
    b, c = x.shape[:2]
    per_group = c // norm.num_groups
    # Subtract the mean before scaling so half precision does not cancel large terms.
    mean_c = mean.repeat_interleave(per_group, dim=1)
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, dim=1)
    if norm.affine:
        scale = scale * norm.weight.float()
    out = x - mean_c.to(x.dtype).view(b, c, 1, 1)
    out.mul_(scale.to(x.dtype).view(b, c, 1, 1))
    if norm.affine:
        out.add_(norm.bias.to(x.dtype).view(1, c, 1, 1))
    return out


# --- tiles ------------------------------------------------------------------------


def _core_spans(length: int, tile: int, pad: int, align: int) -> list[Span]:
    """Non-overlapping spans covering ``[0, length)``, each at most ``tile + pad`` long.

    The ``pad`` pixels at either border go to the edge spans; the middle
    ``length - 2 * pad`` is cut into as few equal pieces of at most ``tile``
    as possible, rounded up to ``align``. ``tile``, ``pad`` and ``length``
    must be multiples of ``align``.
    """
    inner = length - 2 * pad
    count = max(1, math.ceil(inner / tile))
    if count == 1:
        return [(0, length)]
    # ceil(inner / count) <= tile since count >= inner / tile, so the rounded step
    # fits the tile and the last core is never empty.
    step = math.ceil(inner // align / count) * align
    bounds = [0, *(pad + k * step for k in range(1, count)), length]
    return list(zip(bounds[:-1], bounds[1:]))


def _with_margin(span: Span, pad: int, length: int) -> Span:
    return max(0, span[0] - pad), min(length, span[1] + pad)


@dataclass
class _Tile:
    rows: Span  # input rows the network sees (core plus margin)
    cols: Span
    core_rows: Span  # input rows this tile is responsible for
    core_cols: Span
    h: torch.Tensor | None
    skips: list[torch.Tensor] = field(default_factory=list)

    def core_of(self, h: torch.Tensor) -> torch.Tensor:
        """The part of activation ``h`` (at any resolution) that lies in the core."""
        top, bottom = _rescaled_span(self.core_rows, self.rows, h.shape[-2])
        left, right = _rescaled_span(self.core_cols, self.cols, h.shape[-1])
        return h[..., top:bottom, left:right]


def _rescaled_span(core: Span, seen: Span, size_now: int) -> Span:
    """``core``'s position inside ``seen``, at a resolution where ``seen`` is ``size_now`` long."""
    size_in = seen[1] - seen[0]
    start = (core[0] - seen[0]) * size_now
    stop = (core[1] - seen[0]) * size_now
    if start % size_in or stop % size_in:
        raise RuntimeError(f"tile core {core} in {seen} does not map onto {size_now} pixels")
    return start // size_in, stop // size_in


def _run_tiled(
    steps: list[_Step],
    x: torch.Tensor,
    tile: int,
    pad: int,
    align: int,
    *,
    offload: bool,
    progress: bool,
    desc: str,
) -> torch.Tensor:
    """Run ``steps`` over the tiles of ``x`` one GroupNorm at a time; return the stitched output.

    Each pass takes every tile from one GroupNorm to the next: it normalises
    the tile with the statistics of the previous pass, runs the tile-local
    steps, and folds the tile's core into the statistics for the next norm.
    Only the tiles' activations and residuals persist between passes (in RAM
    when ``offload``), plus (B, groups) statistics. The result is NCHW.
    """
    height, width = x.shape[-2:]
    rows = _core_spans(height, tile, pad, align)
    cols = _core_spans(width, tile, pad, align)
    # On the fp32 CPU path the tiles go channels-last (NHWC), which oneDNN convolves
    # directly, instead of converting NCHW to its layout and back around each conv.
    nhwc = onednn_eligible(x) and x.dim() == 4
    tiles = []
    for r in rows:
        for c in cols:
            seen_r, seen_c = _with_margin(r, pad, height), _with_margin(c, pad, width)
            view = x[..., seen_r[0] : seen_r[1], seen_c[0] : seen_c[1]]
            if nhwc:
                view = view.contiguous(memory_format=torch.channels_last)
            tiles.append(_Tile(seen_r, seen_c, r, c, view))

    device = x.device
    park = torch.device("cpu") if offload else device
    segments = _segments(steps)
    bar = None
    if progress:
        bar = tqdm(total=len(segments) * len(tiles), desc=desc, leave=False)

    result: torch.Tensor | None = None
    pending: tuple[nn.GroupNorm, torch.Tensor, torch.Tensor] | None = None
    for index, (run, norm) in enumerate(segments):
        stats = _GroupStats(norm.num_groups) if norm is not None else None
        # Alternate the direction so the tile kept on the device at the end of a
        # pass is the first one of the next (saves a round trip when offloading).
        order = tiles if index % 2 == 0 else tiles[::-1]
        for position, t in enumerate(order):
            h = t.h.to(device)
            skips = [s.to(device) for s in t.skips]
            t.h, t.skips = None, []
            if pending is not None:
                h = _normalize(h, *pending)
            for step in run:
                if isinstance(step, _Apply):
                    h = step.fn(h)
                elif isinstance(step, _SaveSkip):
                    skips.append(step.fn(h))
                else:
                    h = skips.pop() + h
                    if step.divisor != 1.0:
                        h = h / step.divisor
            if stats is not None:
                stats.add(t.core_of(h))
                keep = position == len(order) - 1
                t.h = h if keep else h.to(park)
                t.skips = skips if keep else [s.to(park) for s in skips]
            else:
                scale_h = h.shape[-2] / (t.rows[1] - t.rows[0])
                scale_w = h.shape[-1] / (t.cols[1] - t.cols[0])
                if result is None:
                    size = (round(height * scale_h), round(width * scale_w))
                    result = h.new_empty((*h.shape[:2], *size))
                top, bottom = (round(v * scale_h) for v in t.core_rows)
                left, right = (round(v * scale_w) for v in t.core_cols)
                result[..., top:bottom, left:right] = t.core_of(h)
            del h, skips
            if bar is not None:
                bar.update(1)
        pending = (norm, *stats.result()) if stats is not None else None
    if bar is not None:
        bar.close()
    assert result is not None
    return result


# --- public API -------------------------------------------------------------------


def _check_size(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def tiled_encode(
    vae,
    x01: torch.Tensor,
    tile: int,
    *,
    pad: int = 32,
    offload: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Encode an NCHW RGB image in [0,1] to the scaled latent, tile by tile.

    Same result contract as :func:`diffbir.models.vae.encode_to_latent`
    (posterior mean x 0.18215, in the VAE's dtype and on its device), with
    GroupNorm statistics taken over the whole image. ``tile`` is the core tile
    size in image pixels and ``pad`` the margin around each core, both
    multiples of the encoder's downsampling factor (8 for SD), as must be H and
    W. The mid-block attention runs within each padded tile, as in the
    DiffBIR release. ``offload`` parks tiles in CPU memory between GroupNorms
    (as the release does), so the device holds one tile at a time.
    """
    factor = 2 ** sum(1 for block in vae.encoder.down_blocks if block.downsamplers)
    if x01.ndim != 4 or x01.shape[1] != vae.encoder.conv_in.in_channels:
        raise ConfigError(
            f"tiled_encode expects an image of shape (B, {vae.encoder.conv_in.in_channels}, H, W),"
            f" got {tuple(x01.shape)}"
        )
    _check_size("tiled_encode: tile", tile, minimum=1)
    _check_size("tiled_encode: pad", pad, minimum=0)
    if tile % factor or pad % factor:
        raise ConfigError(
            f"tiled_encode: tile ({tile}) and pad ({pad}) must be multiples of {factor} "
            "(the encoder's downsampling factor)"
        )
    height, width = x01.shape[-2:]
    if height % factor or width % factor:
        raise ConfigError(
            f"tiled_encode: image size {height}x{width} must be a multiple of {factor} "
            "in both dimensions"
        )
    ref = first_parameter(vae)
    with torch.no_grad():
        x = x01.to(device=ref.device, dtype=ref.dtype) * 2.0 - 1.0
        mean = _run_tiled(
            _encoder_steps(vae),
            x,
            tile,
            pad,
            factor,
            offload=offload,
            progress=progress,
            desc="tiled VAE encode",
        )
        return mean * VAE_SCALE


def tiled_decode(
    vae,
    z: torch.Tensor,
    tile: int,
    *,
    pad: int = 11,
    clamp: bool = True,
    offload: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Decode a scaled latent to an NCHW RGB image in [0,1], tile by tile.

    Same contract as :func:`diffbir.models.vae.decode_from_latent` (output in
    the VAE's dtype, on its device), with GroupNorm statistics taken over the
    whole image; ``clamp=False`` returns ``(x + 1) / 2`` unclamped. ``tile`` is
    the core tile size and ``pad`` the margin around each core, both in latent
    pixels. The mid-block attention runs within each padded tile, as in the
    DiffBIR release. ``offload`` parks tiles in CPU memory between GroupNorms.
    """
    channels = (
        vae.post_quant_conv.in_channels
        if getattr(vae, "post_quant_conv", None) is not None
        else vae.decoder.conv_in.in_channels
    )
    if z.ndim != 4 or z.shape[1] != channels:
        raise ConfigError(
            f"tiled_decode expects a latent of shape (B, {channels}, h, w), got {tuple(z.shape)}"
        )
    _check_size("tiled_decode: tile", tile, minimum=1)
    _check_size("tiled_decode: pad", pad, minimum=0)
    ref = first_parameter(vae)
    with torch.no_grad():
        z = z.to(device=ref.device, dtype=ref.dtype) / VAE_SCALE
        image = _run_tiled(
            _decoder_steps(vae),
            z,
            tile,
            pad,
            1,
            offload=offload,
            progress=progress,
            desc="tiled VAE decode",
        )
        image = (image + 1.0) / 2.0
        return image.clamp(0.0, 1.0) if clamp else image
