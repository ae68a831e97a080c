"""A faster CPU float32 path through the diffusers ``AutoencoderKL`` (inference only).

The VAE works at full image resolution, where on CPU two things cost most
besides the arithmetic: oneDNN converting every NCHW activation to its own
layout and back around each convolution, and fresh 100+ MB buffers for every
intermediate (each one page-faulted in by the kernel). Here the activations
stay channels-last (NHWC) from the first convolution to the last, which
oneDNN convolves directly, and GroupNorm, SiLU and the residual additions
work in place.

GroupNorm is computed here rather than by ``F.group_norm``: PyTorch's CPU
kernel on a channels-last tensor accumulates naively in float32 and is off by
up to ~1e-4 relative at 512x512 (the NCHW kernel is exact to rounding). Ours
takes per-channel sums (cascade summation) and then centred squares, so it
matches the NCHW kernel to float32 rounding.

The modules' parameters are read as they are; nothing is copied or
converted. :func:`encode_moments` / :func:`decode` return None when the
model has a part this path does not know (then the caller runs the stock
forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.models.cpu_fast import attention, linear, onednn_eligible

# Rows (pixels) per block when summing centred squares: a few MB, cache-sized.
_STATS_ROWS = 4096


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last ``(N, C, H, W)`` tensor as its ``(N, H*W, C)`` memory (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(n, h * w, c)


def group_norm(
    x: torch.Tensor, norm: nn.GroupNorm, *, silu: bool, inplace: bool = False
) -> torch.Tensor:
    """GroupNorm (then SiLU when ``silu``) of a channels-last tensor, channels-last out;
    in place when ``inplace``."""
    n, c, h, w = x.shape
    groups = norm.num_groups
    rows = _rows(x)
    count = h * w * (c // groups)
    blocks = range(0, h * w, _STATS_ROWS)
    # Block sums added in float64: a long float32 running sum would lose digits.
    total = torch.zeros(n, c, dtype=torch.float64, device=x.device)
    for start in blocks:
        total += rows[:, start : start + _STATS_ROWS].sum(1)
    mean = (total.view(n, groups, -1).sum(-1, keepdim=True) / count).to(x.dtype)  # n, G, 1
    mean_c = mean.expand(n, groups, c // groups).reshape(n, 1, c)
    total.zero_()
    for start in blocks:
        total += (rows[:, start : start + _STATS_ROWS] - mean_c).square_().sum(1)
    var = (total.view(n, groups, -1).sum(-1, keepdim=True) / count).to(x.dtype)
    rstd = torch.rsqrt(var + norm.eps)  # n, G, 1
    scale = rstd.expand(n, groups, c // groups).reshape(n, 1, c)
    if norm.affine:
        scale = scale * norm.weight.view(1, 1, c)
        shift = norm.bias.view(1, 1, c) - mean_c * scale
    else:
        shift = -mean_c * scale
    out = (
        torch.addcmul(shift, rows, scale, out=rows)
        if inplace
        else torch.addcmul(shift, rows, scale)
    )
    if silu:
        F.silu(out, inplace=True)
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
    if pointwise and conv.groups == 1 and x.is_contiguous(memory_format=torch.channels_last):
        # A 1x1 convolution of NHWC rows is a matmul, NHWC out.
        n, _, h, w = x.shape
        out = linear(_rows(x), conv.weight.view(conv.out_channels, -1), conv.bias)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)
    return _nhwc(conv(x))


def _conv_add_(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out += conv(x)`` for channels-last tensors, in place: oneDNN adds the residual
    as the convolution writes (no output buffer, no separate pass; the same sums)."""
    fused = (
        conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and out.shape == (x.shape[0], conv.out_channels, *x.shape[2:])
        and conv.stride == (1, 1)
        and all(2 * p == k - 1 for p, k in zip(conv.padding, conv.kernel_size))
        and x.is_contiguous(memory_format=torch.channels_last)
        and out.is_contiguous(memory_format=torch.channels_last)
        and out.dtype == x.dtype == conv.weight.dtype
    )
    if not fused:
        out += _conv(conv, x)
        return out
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x, conv.weight, conv.bias, list(conv.padding), [1, 1], list(conv.dilation),
        1, "add", 1.0, None, [], None,
    )  # fmt: skip
    return out


def _resnet(block, x: torch.Tensor) -> torch.Tensor:
    """The block's output; ``x`` (this path's own activation) is consumed: without a
    shortcut convolution the output is written into it."""
    h = group_norm(x, block.norm1, silu=True)
    h = group_norm(_conv(block.conv1, h), block.norm2, silu=True, inplace=True)
    shortcut = x if block.conv_shortcut is None else _conv(block.conv_shortcut, x)
    out = _conv_add_(block.conv2, h, shortcut)
    if block.output_scale_factor != 1.0:
        out /= block.output_scale_factor
    return out


def _attention(attn, x: torch.Tensor) -> torch.Tensor:
    n, c, hh, ww = x.shape
    h = group_norm(x, attn.group_norm, silu=False)
    tokens = _rows(h)
    q = linear(tokens, attn.to_q.weight, attn.to_q.bias)
    k = linear(tokens, attn.to_k.weight, attn.to_k.bias)
    v = linear(tokens, attn.to_v.weight, attn.to_v.bias)
    out = linear(attention(q, k, v, attn.heads), attn.to_out[0].weight, attn.to_out[0].bias)
    out = out.view(n, hh, ww, -1).permute(0, 3, 1, 2)
    if attn.residual_connection:
        out += x
    if attn.rescale_output_factor != 1.0:
        out /= attn.rescale_output_factor
    return out


def _mid(mid, x: torch.Tensor) -> torch.Tensor:
    x = _resnet(mid.resnets[0], x)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            x = _attention(attn, x)
        x = _resnet(resnet, x)
    return x


def _downsample(down, x: torch.Tensor) -> torch.Tensor:
    if down.padding == 0:
        n, c, h, w = x.shape
        padded = torch.zeros(n, c, h + 1, w + 1, dtype=x.dtype, device=x.device)
        padded = _nhwc(padded)
        padded[:, :, :h, :w] = x
        x = padded
    return _conv(down.conv, x)


def _upsample(up, x: torch.Tensor) -> torch.Tensor:
    x = _nhwc(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return _conv(up.conv, x)


def _supported(vae) -> bool:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    if getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False):
        return False
    for part in (vae.encoder, vae.decoder):
        if type(part.conv_norm_out) is not nn.GroupNorm or type(part.conv_act) is not nn.SiLU:
            return False
        for module in part.modules():
            if isinstance(module, ResnetBlock2D):
                if (
                    module.time_emb_proj is not None
                    or module.upsample is not None
                    or module.downsample is not None
                    or type(module.norm1) is not nn.GroupNorm
                    or type(module.norm2) is not nn.GroupNorm
                    or type(module.nonlinearity) is not nn.SiLU
                    or (module.dropout.p and module.training)
                ):
                    return False
            elif isinstance(module, Attention):
                if (
                    module.group_norm is None
                    or module.spatial_norm is not None
                    or getattr(module, "norm_q", None) is not None
                    or module.heads < 1
                ):
                    return False
            elif isinstance(module, Upsample2D):
                if module.norm is not None or module.use_conv_transpose or not module.use_conv:
                    return False
                if not module.interpolate or module.name != "conv":
                    return False
            elif isinstance(module, Downsample2D):
                if module.norm is not None or not module.use_conv:
                    return False
    return True


def _eligible(vae, x: torch.Tensor) -> bool:
    # A caller's channels-last input keeps the stock path and its results (PyTorch's
    # inexact channels-last GroupNorm included), so no input's output changes.
    if x.dim() != 4 or not x.is_contiguous():
        return False
    return onednn_eligible(x, vae.decoder.conv_in.weight) and _supported(vae)


def encode_moments(vae, x: torch.Tensor) -> torch.Tensor | None:
    """The encoder's output after ``quant_conv`` (mean and log-variance channels), NCHW,
    for ``x`` in [-1, 1]; None where this path does not apply."""
    if not _eligible(vae, x):
        return None
    enc = vae.encoder
    h = _conv(enc.conv_in, _nhwc(x))
    for block in enc.down_blocks:
        for resnet in block.resnets:
            h = _resnet(resnet, h)
        for down in block.downsamplers or ():
            h = _downsample(down, h)
    h = _mid(enc.mid_block, h)
    h = _conv(enc.conv_out, group_norm(h, enc.conv_norm_out, silu=True, inplace=True))
    if vae.quant_conv is not None:
        h = vae.quant_conv(h)
    return h.contiguous()


def decode(vae, z: torch.Tensor) -> torch.Tensor | None:
    """The decoder's output (in [-1, 1]) for an unscaled latent ``z``, NCHW; None where
    this path does not apply."""
    if not _eligible(vae, z):
        return None
    dec = vae.decoder
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    h = _conv(dec.conv_in, _nhwc(z))
    h = _mid(dec.mid_block, h)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            h = _resnet(resnet, h)
        for up in block.upsamplers or ():
            h = _upsample(up, h)
    h = _conv(dec.conv_out, group_norm(h, dec.conv_norm_out, silu=True, inplace=True))
    return h.contiguous()
