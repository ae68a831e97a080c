"""Faster CPU float32 inference for the diffusers UNet, ControlNet and VAE.

On CPU, PyTorch runs ``nn.Linear``, batched matmuls, small-spatial convolutions
and the flash attention kernel through BLAS; oneDNN (already used for most
convolutions) is often about twice as fast for the same float32 products,
notably where the BLAS library does not use the CPU's widest vector units.
This module routes those products through oneDNN when it is safe to:

- :class:`FastLinear` / :class:`FastConv2d`: drop-in subclasses of
  ``nn.Linear`` / ``nn.Conv2d`` (same parameters, same state-dict keys);
- :class:`CPUAttnProcessor`: a diffusers attention processor computing
  softmax attention head by head and in blocks of queries with oneDNN
  matmuls (exact softmax, no approximation; the score block stays small);
- :func:`accelerate`: gives a built model those modules and the processor.

Every fast path is taken only for float32 CPU tensors with autograd off
(``torch.no_grad``/``torch.inference_mode``) and falls back to the stock
PyTorch/diffusers computation otherwise, so training and other devices and
dtypes are untouched. Results equal the stock path up to float32 rounding
(relative differences around 1e-7..1e-6, from a different summation order).

bfloat16 takes the same paths where oneDNN computes bf16 natively
(:func:`bf16_supported`: AVX512-BF16 or AMX), all tensors bf16: oneDNN's
bf16 GEMMs and convolutions accumulate in float32 and round once; the larger
convolutions run channels-last (oneDNN's bf16 kernels want it, and the
activations then stay channels-last from block to block); attention takes
its scores in float32 from the bf16 queries and keys (exact products), the
softmax in float32, and the product with V in bf16 (:func:`attention`). The
float32 path is the same code as before, bit for bit.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# Scores computed at once per head: queries x keys <= this many floats (4 MiB),
# so the block stays in cache and memory does not grow with the image.
_SCORE_BLOCK = 1 << 20
# Convolutions whose output has at most this many pixels (batch x H x W) run as
# unfold + one oneDNN matmul: oneDNN's direct kernels are weight-bound there
# (twice that many for wide layers, where the weights dominate even more).
_SMALL_CONV_PIXELS = 256
_WIDE_CONV_CHANNELS = 1024


@functools.cache
def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def bf16_supported() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX512-BF16 or AMX)."""
    return _has_onednn_linear() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onednn_eligible(*tensors: torch.Tensor) -> bool:
    """True when the oneDNN fast path applies: autograd off, all tensors on CPU and
    float32 (or all bfloat16 where :func:`bf16_supported`), and not while
    ``torch.compile`` traces (the compiler picks its own kernels)."""
    if torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() or not torch.backends.mkldnn.enabled:
        return False
    if not _has_onednn_linear():
        return False
    dtype = tensors[0].dtype if tensors else torch.float32
    if dtype != torch.float32 and not (dtype == torch.bfloat16 and bf16_supported()):
        return False
    return all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def _matmul_t(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + b`` with oneDNN (x: ``(..., in)``, w: ``(out, in)``; any strides)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN when :func:`onednn_eligible`, else ``F.linear``."""
    if x.dim() >= 2 and x.numel() and onednn_eligible(x, weight):
        return _matmul_t(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """``nn.Linear`` whose no-grad float32 CPU forward uses oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def _small_conv_as_matmul(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """A 2-D convolution as unfold + one oneDNN matmul, or None where it would not pay."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    if x.dim() != 4:
        return None
    b, _, h, w = x.shape
    kh, kw = conv.kernel_size
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return None
    out_ch = conv.out_channels
    weight = conv.weight.reshape(out_ch, -1)
    pointwise = (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and (ph, pw) == (0, 0)
    if x.dtype == torch.bfloat16:
        return _small_conv_bf16(conv, x, weight, pointwise, b * oh * ow)
    if pointwise:
        # out[b] = W @ x[b]: give oneDNN x[b] transposed (a view) as the "weight".
        if not x.is_contiguous():
            return None
        out = torch.stack([_matmul_t(weight, x[i].reshape(-1, h * w).t()) for i in range(b)])
        if conv.bias is not None:
            out.add_(conv.bias.view(1, -1, 1))
        return out.view(b, out_ch, h, w)
    limit = _SMALL_CONV_PIXELS * (2 if conv.in_channels >= _WIDE_CONV_CHANNELS else 1)
    if b * oh * ow > limit:
        return None
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    out = _matmul_t(cols.transpose(1, 2), weight, conv.bias)  # b, L, out
    return out.transpose(1, 2).reshape(b, out_ch, oh, ow)


def _small_conv_bf16(
    conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, pointwise: bool, pixels: int
) -> torch.Tensor | None:
    """The bf16 side of :func:`_small_conv_as_matmul`: a 1x1 convolution as one matmul
    of the channels-last rows (channels-last out), a small output as unfold + matmul."""
    b, _, h, w = x.shape
    if pointwise:
        rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        out = _matmul_t(rows.reshape(b, h * w, -1), weight, conv.bias)
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)
    if pixels > _SMALL_CONV_PIXELS * (2 if conv.in_channels >= _WIDE_CONV_CHANNELS else 1):
        return None
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    out = _matmul_t(cols.transpose(1, 2), weight, conv.bias)  # b, L, out
    oh = h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1
    oh = oh // conv.stride[0] + 1
    return out.transpose(1, 2).reshape(b, conv.out_channels, oh, -1)


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, in no-grad float32 CPU inference, runs 1x1 convolutions
    and convolutions with a small output as oneDNN matmuls (the other cases are
    oneDNN's own convolution already)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_eligible(x, self.weight):
            out = _small_conv_as_matmul(self, x)
            if out is not None:
                return out
            if x.dtype == torch.bfloat16 and x.dim() == 4:
                return super().forward(x.contiguous(memory_format=torch.channels_last))
        return super().forward(x)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float | None = None
) -> torch.Tensor:
    """Softmax attention ``(B, N, H*D), (B, M, H*D), (B, M, H*D) -> (B, N, H*D)``.

    Head by head, in blocks of queries, with oneDNN matmuls: the same
    arithmetic as ``scaled_dot_product_attention`` without a mask (exact
    softmax per row), never holding more than ``_SCORE_BLOCK`` scores.
    Requires :func:`onednn_eligible`.
    """
    batch, n, inner = q.shape
    m = k.shape[1]
    dim = inner // heads
    scale = dim**-0.5 if scale is None else scale
    # bf16: the scores from the bf16 values in float32 (exact products, float32 sums),
    # the softmax in float32, the probabilities rounded to bf16 for the bf16 product
    # with V. Twice as fast here as PyTorch's fused bf16 kernel, with exact scores.
    wide = torch.float32
    out = torch.empty(batch, n, v.shape[-1], dtype=q.dtype, device=q.device)
    vdim = v.shape[-1] // heads
    block = max(1, min(n, _SCORE_BLOCK // max(m, 1)))
    for b in range(batch):
        # oneDNN wants its "weight" operand dense: one copy of K and V^T per head.
        keys = k[b].view(m, heads, dim).transpose(0, 1).contiguous().to(wide)  # heads, M, D
        values_t = v[b].view(m, heads, vdim).permute(1, 2, 0).contiguous()  # heads, Dv, M
        for h in range(heads):
            for start in range(0, n, block):
                stop = min(n, start + block)
                query = q[b, start:stop, h * dim : (h + 1) * dim].to(wide) * scale
                probs = torch.softmax(_matmul_t(query, keys[h]), dim=-1).to(q.dtype)
                out[b, start:stop, h * vdim : (h + 1) * vdim] = _matmul_t(probs, values_t[h])
    return out


class CPUAttnProcessor:
    """diffusers attention processor: :func:`attention` on no-grad float32 CPU
    inputs, diffusers' ``AttnProcessor2_0`` for everything else (masks,
    spatial/QK norms, other devices or dtypes, training)."""

    def __init__(self) -> None:
        # diffusers loads with the first model built (seconds a bare import need not pay)
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        unsupported = (
            args
            or kwargs
            or attention_mask is not None
            or attn.spatial_norm is not None
            or getattr(attn, "norm_q", None) is not None
            or getattr(attn, "norm_k", None) is not None
            or hidden_states.ndim not in (3, 4)
            or not onednn_eligible(hidden_states, attn.to_q.weight)
        )
        if unsupported:
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        # diffusers leaves SDPA's default scale, 1/sqrt(head_dim).
        hidden_states = attention(query, key, value, attn.heads)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if four_d:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


def accelerate(model: nn.Module) -> nn.Module:
    """Give ``model`` the CPU fast paths, in place; parameters and keys are unchanged.

    Plain ``nn.Linear``/``nn.Conv2d`` submodules become :class:`FastLinear` /
    :class:`FastConv2d` (the same objects, their class narrowed to the subclass,
    so no parameter is copied and meta-device models work), and diffusers
    ``Attention`` modules get a :class:`CPUAttnProcessor`. Returns ``model``.
    """
    # diffusers loads with the first model built (seconds a bare import need not pay)
    from diffusers.models.attention_processor import Attention

    processor = None
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
        elif type(module) is nn.Conv2d:
            module.__class__ = FastConv2d
        elif isinstance(module, Attention):
            processor = processor or CPUAttnProcessor()
            module.set_processor(processor)
    return model
