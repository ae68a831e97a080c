"""The bf16 CPU fast paths (issue #26): taken only where oneDNN computes bf16 natively,
weights kept in bf16, outputs within a stated bound of the float32 path.

The float32 path is untouched (tests/test_cpu_fast.py). Bounds: measured on an AMX
Xeon with these seeds, then doubled (bf16 keeps 8 significant bits: a relative
rounding of 2^-9 = 2e-3 per value, growing through the layers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffbir.models import cpu_fast, vae_cpu
from diffbir.models.controlnet import build_controlnet, controlnet_config_from_unet
from diffbir.models.sd_unet import build_unet, unet_config_from_ldm
from diffbir.models.stage2 import Stage2Model
from diffbir.models.vae import build_vae, vae_config_from_ldm

needs_bf16 = pytest.mark.skipif(
    not cpu_fast.bf16_supported(),
    reason="this CPU has no native bf16 units (AVX512-BF16/AMX): oneDNN refuses bf16 here",
)
BF16 = torch.bfloat16
TINY_VAE = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4}
TINY_UNET = {
    "model_channels": 32,
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_bf16_fast_path_only_with_native_units():
    """Everywhere: bf16 is eligible exactly where oneDNN has bf16; float32 as before;
    mixed dtypes never."""
    x32, w32 = torch.randn(4, 8), torch.randn(8, 8)
    with torch.no_grad():
        assert cpu_fast.onednn_eligible(x32, w32) == cpu_fast._has_onednn_linear()
        assert cpu_fast.onednn_eligible(x32.to(BF16), w32.to(BF16)) == cpu_fast.bf16_supported()
        assert not cpu_fast.onednn_eligible(x32, w32.to(BF16))
        assert not cpu_fast.onednn_eligible(x32.half(), w32.half())
        # Without bf16 units a bf16 layer runs the stock module and still computes.
        layer = cpu_fast.accelerate(nn.Linear(8, 8)).to(BF16)
        exact = nn.functional.linear(x32, layer.weight.float(), layer.bias.float())
        assert rel(layer(x32.to(BF16)), exact) < 2e-2


@needs_bf16
@pytest.mark.parametrize(
    ("cin", "cout", "size", "kernel", "stride", "padding"),
    [(16, 8, 12, 1, 1, 0), (32, 16, 6, 3, 1, 1), (16, 16, 9, 3, 2, 1), (8, 8, 40, 3, 1, 1)],
)
def test_bf16_conv_is_close_to_float32(cin, cout, size, kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding).to(BF16)
    fast = cpu_fast.accelerate(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding))
    fast.to(BF16).load_state_dict(conv.state_dict())
    x = torch.randn(2, cin, size, size).to(BF16)
    with torch.no_grad():
        exact = nn.functional.conv2d(x.float(), conv.weight.float(), conv.bias.float(),
                                     stride, padding)  # fmt: skip
        out = fast(x)
    assert out.dtype == BF16 and out.shape == exact.shape
    assert rel(out, exact) < 8e-3  # measured <= 4e-3


@needs_bf16
def test_bf16_attention_keeps_float32_scores_and_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, n, 32).to(BF16) for n in (50, 70, 70))
    with torch.no_grad():
        out = cpu_fast.attention(q, k, v, heads=2)
        exact = cpu_fast.attention(q.float(), k.float(), v.float(), heads=2)
    assert out.dtype == BF16
    assert rel(out, exact) < 8e-3  # measured 2.3e-3 (PyTorch's fused kernel: 2.1e-3)


@needs_bf16
def test_bf16_vae_takes_the_fast_path_close_to_float32():
    torch.manual_seed(0)
    vae = build_vae(vae_config_from_ldm(TINY_VAE)).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        z, x = torch.randn(1, 4, 10, 12), torch.rand(1, 3, 40, 48) * 2 - 1
        want_image, want_moments = vae_cpu.decode(vae, z), vae_cpu.encode_moments(vae, x)
        vae.to(BF16)
        image, moments = vae_cpu.decode(vae, z.to(BF16)), vae_cpu.encode_moments(vae, x.to(BF16))
    assert {p.dtype for p in vae.parameters()} == {BF16}
    assert image is not None and moments is not None  # the fast path, not the stock forward
    assert image.dtype == moments.dtype == BF16 and image.is_contiguous()
    assert rel(image, want_image) < 0.035  # measured 0.016
    assert rel(moments, want_moments) < 0.025  # measured 0.011


@needs_bf16
def test_bf16_unet_controlnet_run_onednn_bf16_close_to_float32(monkeypatch):
    torch.manual_seed(0)
    config = unet_config_from_ldm(TINY_UNET)
    unet = build_unet(config).eval()
    controlnet = build_controlnet(controlnet_config_from_unet(unet.config)).eval()
    vae = build_vae(vae_config_from_ldm(TINY_VAE)).eval()
    with torch.no_grad():
        for p in controlnet.parameters():
            if p.dim() == 4 and not p.any():  # zero convolutions: let the residuals count
                p.normal_(0, 0.05)
    stage2 = Stage2Model(unet, vae, controlnet).eval()
    gen = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(1, 4, 16, 16, generator=gen)
    text = torch.randn(1, 77, 32, generator=gen)
    t = torch.tensor([500, 20])
    with torch.no_grad():
        want = stage2.denoise(x, t, cond, text)
        stage2.to(BF16)
        seen = []
        matmul = cpu_fast._matmul_t
        monkeypatch.setattr(cpu_fast, "_matmul_t", lambda *a: seen.append(a[0].dtype) or matmul(*a))
        out = stage2.denoise(x, t, cond, text)
    for part in (stage2.unet, stage2.controlnet):
        assert {p.dtype for p in part.parameters()} == {BF16}
    # oneDNN's bf16 GEMMs ran; the only float32 ones are attention's scores (from the
    # bf16 queries and keys), each followed by its bf16 product with V.
    assert BF16 in seen and set(seen) == {BF16, torch.float32}
    assert all(seen[i + 1] == BF16 for i, d in enumerate(seen) if d == torch.float32)
    assert out.dtype == BF16
    assert rel(out, want) < 0.03  # measured 0.012
