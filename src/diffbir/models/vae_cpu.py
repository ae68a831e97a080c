"""A faster CPU float32 path through the diffusers ``AutoencoderKL`` (inference only).

The VAE works at full image resolution, where on CPU three things cost most
besides the arithmetic: oneDNN converting every NCHW activation to its own
layout and back around each convolution, fresh 100+ MB buffers for every
intermediate (each a new mapping the kernel faults in page by page, about
0.8 s of a 6 s 512x512 decode), and the decoder's upsampling convolutions,
which run at the doubled resolution over an image of repeated pixels. Here

- the activations stay channels-last (NHWC) from the first convolution to
  the last, which oneDNN convolves directly;
- each run keeps a few buffers (:class:`_Buffers`) that every block writes
  into: GroupNorm, SiLU and the residual additions work in place and the
  convolutions write into a buffer (oneDNN's fused sum), so a page is
  faulted in once per run rather than once per block;
- "nearest x2, then 3x3 convolution" is computed as four 2x2 convolutions
  of the small image, one per output pixel phase (the 3x3 taps that fall on
  the same source pixel summed, in float64, into one): the same function
  with 4/9 of the products (:func:`_upsample`; :func:`upsample` for the
  tiled VAE, which runs the decoder block by block).

GroupNorm is computed here rather than by ``F.group_norm``: PyTorch's CPU
kernel on a channels-last tensor accumulates naively in float32 and is off by
up to ~1e-4 relative at 512x512 (the NCHW kernel is exact to rounding). Ours
takes per-channel sums (cascade summation) and then centred squares, so it
matches the NCHW kernel to float32 rounding.

bfloat16 models take the same path where oneDNN computes bf16 natively
(:func:`diffbir.models.cpu_fast.bf16_supported`): bf16 activations and
convolutions, GroupNorm statistics, scale and shift in float32 (each value
normalised in float32 and rounded once to bf16).

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


def _dense_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``x`` channels-last with the canonical strides PyTorch's kernels check for: a
    channels-last tensor may carry any stride on a dimension of size 1 (oneDNN gives
    a batch of one the stride C), which those checks refuse. The same memory."""
    n, c, h, w = x.shape
    strides = (c * h * w, 1, w * c, c)
    if x.stride() == strides:
        return x
    if x.is_contiguous(memory_format=torch.channels_last):
        return x.as_strided(x.shape, strides)
    return x.clone(memory_format=torch.channels_last)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A channels-last ``(N, C, H, W)`` tensor as its ``(N, H*W, C)`` memory (a view)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(n, h * w, c)


class _Buffers:
    """Channels-last activation buffers that one encode or decode reuses block after block.

    Each role keeps one flat buffer, grown when a later block needs more; a tensor
    asked for is a view of the first elements of its role's buffer. ``"act0"`` and
    ``"act1"`` take turns holding the running activation (:meth:`spare` gives the
    one not holding it); the other roles hold one block's intermediates.
    """

    def __init__(self, reserve: int = 0) -> None:
        self._flat: dict[str, torch.Tensor] = {}
        # A role's first buffer holds at least this many elements. A block that needs
        # more than the last one then reuses pages already in memory instead of new
        # ones (the kernel zero-fills each new 4 KiB page on first touch, about 15 ms
        # per 64 MB here); the part never written is never made resident.
        self._reserve = reserve

    def get(self, role: str, like: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
        """An ``(N, c, h, w)`` channels-last tensor (N, dtype and device of ``like``) in
        ``role``'s buffer; its contents are whatever the buffer held."""
        n = like.shape[0]
        numel = n * c * h * w
        flat = self._flat.get(role)
        if flat is None or flat.numel() < numel:
            self._flat.pop(role, None)  # freed before the larger one is allocated
            flat = torch.empty(max(numel, self._reserve), dtype=like.dtype, device=like.device)
            self._flat[role] = flat
        return flat[:numel].view(n, h, w, c).permute(0, 3, 1, 2)

    def spare(self, x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
        """Like :meth:`get`, in whichever activation buffer does not hold ``x``."""
        held = self._flat.get("act0")
        in_act0 = held is not None and x.untyped_storage().data_ptr() == held.data_ptr()
        return self.get("act1" if in_act0 else "act0", x, c, h, w)


def group_norm(
    x: torch.Tensor, norm: nn.GroupNorm, *, silu: bool, out: torch.Tensor | None = None
) -> torch.Tensor:
    """GroupNorm (then SiLU when ``silu``) of a channels-last tensor, channels-last out;
    written into ``out`` (channels-last, ``x``'s shape; may be ``x`` itself) when given."""
    if x.dtype == torch.bfloat16:
        return _group_norm_bf16(x, norm, silu=silu, out=out)
    n, c, h, w = x.shape
    groups = norm.num_groups
    rows = _rows(x)
    count = h * w * (c // groups)
    blocks = range(0, h * w, _STATS_ROWS)
    # Block sums added in float64: a long float32 running sum would lose digits.
    total = torch.zeros(n, c, dtype=torch.float64, device=x.device)
    # The statistics, scale and shift in float32 also for bf16 activations.
    stats = torch.float32 if x.dtype == torch.bfloat16 else x.dtype
    wide = {"dtype": stats} if stats != x.dtype else {}
    for start in blocks:
        total += rows[:, start : start + _STATS_ROWS].sum(1, **wide)
    mean = (total.view(n, groups, -1).sum(-1, keepdim=True) / count).to(stats)  # n, G, 1
    mean_c = mean.expand(n, groups, c // groups).reshape(n, 1, c)
    total.zero_()
    for start in blocks:
        total += (rows[:, start : start + _STATS_ROWS] - mean_c).square_().sum(1)
    var = (total.view(n, groups, -1).sum(-1, keepdim=True) / count).to(stats)
    rstd = torch.rsqrt(var + norm.eps)  # n, G, 1
    scale = rstd.expand(n, groups, c // groups).reshape(n, 1, c)
    if norm.affine:
        scale = scale * norm.weight.view(1, 1, c).to(stats)
        shift = norm.bias.view(1, 1, c).to(stats) - mean_c * scale
    else:
        shift = -mean_c * scale
    if out is None and stats != x.dtype:
        out = torch.empty_like(x, memory_format=torch.channels_last)
    if out is None:
        result = torch.addcmul(shift, rows, scale)
    else:
        result = torch.addcmul(shift, rows, scale, out=_rows(out))
    if silu:
        F.silu(result, inplace=True)
    return result.view(n, h, w, c).permute(0, 3, 1, 2)


def _group_norm_bf16(
    x: torch.Tensor, norm: nn.GroupNorm, *, silu: bool, out: torch.Tensor | None
) -> torch.Tensor:
    """:func:`group_norm` of bf16 activations by PyTorch's channels-last kernel, which
    takes the statistics and applies scale and shift in float32 and rounds each value
    once to bf16. Its float32 sums are off by ~1e-4 relative at 512x512 (see the module
    docstring), far below bf16's own rounding (4e-3), and it runs 2 to 4 times faster
    than the exact sums above. The kernel finishes the statistics before it writes, so
    ``out`` may be ``x``."""
    n, c, h, w = x.shape
    x = _dense_nhwc(x)
    out = torch.empty_like(x) if out is None else _dense_nhwc(out)
    stats = torch.empty(n, norm.num_groups, dtype=x.dtype, device=x.device)
    torch.ops.aten.native_group_norm.out(
        x, norm.weight, norm.bias, n, c, h * w, norm.num_groups, norm.eps,
        out0=out, out1=stats, out2=torch.empty_like(stats),
    )  # fmt: skip
    if silu:
        F.silu(out, inplace=True)
    return out


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
    if pointwise and conv.groups == 1 and x.is_contiguous(memory_format=torch.channels_last):
        # A 1x1 convolution of NHWC rows is a matmul, NHWC out.
        n, _, h, w = x.shape
        out = linear(_rows(x), conv.weight.view(conv.out_channels, -1), conv.bias)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)
    return _nhwc(conv(x))


def _fusable(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether oneDNN can write ``conv(x)`` (padding and stride as the module says) into
    ``out``: channels-last tensors of one dtype, ``out`` of the convolution's shape."""
    if not (
        conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and x.is_contiguous(memory_format=torch.channels_last)
        and out.is_contiguous(memory_format=torch.channels_last)
        and out.dtype == x.dtype == conv.weight.dtype
    ):
        return False
    size = [
        (length + 2 * p - d * (k - 1) - 1) // s + 1
        for length, p, d, k, s in zip(
            x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride
        )
    ]
    return out.shape == (x.shape[0], conv.out_channels, *size)


def _onednn_add_(
    out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: list[int],
    stride: list[int],
    dilation: list[int],
) -> torch.Tensor:
    """``out += conv2d(x, weight, bias)``, oneDNN adding into ``out`` as it writes."""
    torch.ops.mkldnn._convolution_pointwise_.binary(
        out, x, weight, bias, padding, stride, dilation, 1, "add", 1.0, None, [], None
    )
    return out


def _conv_add_(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out += conv(x)`` for channels-last tensors, in place: oneDNN adds the residual
    as the convolution writes (no output buffer, no separate pass; the same sums)."""
    if not _fusable(conv, x, out):
        out += _conv(conv, x)
        return out
    args = list(conv.padding), list(conv.stride), list(conv.dilation)
    return _onednn_add_(out, x, conv.weight, conv.bias, *args)


def _conv_into(conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` written into ``out`` (channels-last, the output's shape): a zeroed
    buffer plus the fused sum, which is the convolution exactly."""
    if not _fusable(conv, x, out):
        return out.copy_(_conv(conv, x))
    args = list(conv.padding), list(conv.stride), list(conv.dilation)
    return _onednn_add_(out.zero_(), x, conv.weight, conv.bias, *args)


def _resnet(block, x: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """The block's output; ``x`` (this path's own activation) is consumed: without a
    shortcut convolution the output is written into it, with one into the spare
    activation buffer."""
    _, c, hh, ww = x.shape
    h = group_norm(x, block.norm1, silu=True, out=buffers.get("norm", x, c, hh, ww))
    h = _conv_into(block.conv1, h, buffers.get("hidden", x, block.conv1.out_channels, hh, ww))
    h = group_norm(h, block.norm2, silu=True, out=h)
    shortcut = x
    if block.conv_shortcut is not None:
        spare = buffers.spare(x, block.conv_shortcut.out_channels, hh, ww)
        shortcut = _conv_into(block.conv_shortcut, x, spare)
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


def _mid(mid, x: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    x = _resnet(mid.resnets[0], x, buffers)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            x = _attention(attn, x)
        x = _resnet(resnet, x, buffers)
    return x


def _downsample(down, x: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    _, c, h, w = x.shape
    source = x
    if down.padding == 0:  # one row and one column of zeros after the image
        source = buffers.get("norm", x, c, h + 1, w + 1)
        source[:, :, h].zero_()
        source[:, :, :, w].zero_()
        source[:, :, :h, :w] = x
    conv = down.conv
    size = [(length + 2 * p - k) // s + 1 for length, p, k, s in
            zip(source.shape[2:], conv.padding, conv.kernel_size, conv.stride)]  # fmt: skip
    return _conv_into(conv, source, buffers.spare(x, conv.out_channels, *size))


def _phase_kernels(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The 3x3 kernel of a convolution after "nearest x2" as the four 2x2 kernels over
    the small image, one per output phase, stacked on the output channels (phases
    (0, 0), (0, 1), (1, 0), (1, 1)), and the bias repeated to match.

    Output row ``2i`` reads upsampled rows ``2i-1, 2i, 2i+1``, i.e. source rows
    ``i-1, i, i``: taps (w0, w1 + w2) over rows ``i-1, i``; row ``2i+1`` reads source
    rows ``i, i, i+1``: taps (w0 + w1, w2) over rows ``i, i+1``. The same for columns.
    Sums are taken in float64 and rounded once."""

    def phase(w: torch.Tensor, odd: int, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack((w0 + w1, w2) if odd else (w0, w1 + w2), dim)

    w = conv.weight.double()
    kernels = [phase(phase(w, a, 2), b, 3) for a in (0, 1) for b in (0, 1)]
    weight = torch.cat(kernels).to(conv.weight.dtype)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    return weight.contiguous(memory_format=torch.channels_last), bias


# Output pixel phases (row parity, column parity), in the order _phase_kernels stacks them.
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def _by_phases(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` after "nearest x2" can run as :func:`_phase_kernels`' 2x2 kernels."""
    return (
        conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _upsample(up, x: torch.Tensor, buffers: _Buffers) -> torch.Tensor:
    """Nearest x2 then the 3x3 convolution, as one 2x2 convolution of the small image
    producing the four output phases (see :func:`_phase_kernels`), interleaved into
    the spare activation buffer."""
    conv = up.conv
    if not _by_phases(conv):
        return _conv(conv, _nhwc(F.interpolate(x, scale_factor=2.0, mode="nearest")))
    x = _nhwc(x)
    n, _, h, w = x.shape
    c = conv.out_channels
    weight, bias = _phase_kernels(conv)
    # Padded by one all round, a 2x2 kernel gives (h+1) x (w+1) outputs; phase (a, b)
    # of output pixel (2i+a, 2j+b) is output (i+a, j+b) of its kernel.
    phases = buffers.get("norm", x, 4 * c, h + 1, w + 1).zero_()
    _onednn_add_(phases, x, weight, bias, [1, 1], [1, 1], [1, 1])
    phases = phases.permute(0, 2, 3, 1)  # n, h+1, w+1, 4c
    out = buffers.spare(x, c, 2 * h, 2 * w)
    interleaved = out.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c)
    for i, (a, b) in enumerate(_PHASES):
        interleaved[:, :, a, :, b] = phases[:, a : a + h, b : b + w, i * c : (i + 1) * c]
    return out


def upsample(up, x: torch.Tensor) -> torch.Tensor:
    """``up(x)`` for a diffusers ``Upsample2D`` (nearest x2, then its 3x3 convolution),
    in ``x``'s memory format: by pixel phases (4/9 of the products, see
    :func:`_phase_kernels`) where the fp32 CPU path applies, else ``up(x)`` itself.
    For callers that run the decoder block by block (the tiled VAE)."""
    if not (x.dim() == 4 and onednn_eligible(x, up.conv.weight) and _upsampler_supported(up)):
        return up(x)
    out = _upsample(up, x, _Buffers())
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


def _upsampler_supported(module) -> bool:
    """A diffusers ``Upsample2D`` that interpolates (nearest x2) and then convolves."""
    return (
        module.norm is None
        and not module.use_conv_transpose
        and module.use_conv
        and module.interpolate
        and module.name == "conv"
    )


def _supported(vae) -> bool:
    # diffusers loads with the first model built (seconds a bare import need not pay)
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
                if not _upsampler_supported(module):
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
    buffers = _Buffers()
    x = _nhwc(x)
    h = _conv_into(enc.conv_in, x, buffers.get("act0", x, enc.conv_in.out_channels, *x.shape[2:]))
    for block in enc.down_blocks:
        for resnet in block.resnets:
            h = _resnet(resnet, h, buffers)
        for down in block.downsamplers or ():
            h = _downsample(down, h, buffers)
    h = _mid(enc.mid_block, h, buffers)
    h = _conv(enc.conv_out, group_norm(h, enc.conv_norm_out, silu=True, out=h))
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
    # The decoder's blocks grow their activations to the output size: every role is
    # given room for the largest at once (the phases of the last upsampling, 4c of
    # (h+1) x (w+1), are the largest).
    scale = 2 ** sum(len(block.upsamplers or ()) for block in dec.up_blocks)
    widest = max(block.resnets[0].conv1.in_channels for block in dec.up_blocks)
    height, width = z.shape[2] * scale, z.shape[3] * scale
    buffers = _Buffers(reserve=z.shape[0] * widest * (height + 2) * (width + 2))
    h = _conv(dec.conv_in, _nhwc(z))
    h = _mid(dec.mid_block, h, buffers)
    for block in dec.up_blocks:
        for resnet in block.resnets:
            h = _resnet(resnet, h, buffers)
        for up in block.upsamplers or ():
            h = _upsample(up, h, buffers)
    h = _conv(dec.conv_out, group_norm(h, dec.conv_norm_out, silu=True, out=h))
    return h.contiguous()
