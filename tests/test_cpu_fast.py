"""CPU fast paths (oneDNN linear/conv/attention, channels-last VAE) equal the stock ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffbir.models import cpu_fast, vae_cpu
from diffbir.models.vae import build_vae, decode_from_latent, encode_to_latent, vae_config_from_ldm

needs_onednn = pytest.mark.skipif(
    not cpu_fast._has_onednn_linear(), reason="this PyTorch build has no oneDNN"
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@needs_onednn
def test_linear_matches_f_linear_and_falls_back_with_grad():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(2, 7, 24)
    fast = nn.Linear(24, 40)
    fast.load_state_dict(layer.state_dict())
    cpu_fast.accelerate(fast)
    assert type(fast) is cpu_fast.FastLinear
    with torch.no_grad():
        assert cpu_fast.onednn_eligible(x, fast.weight)
        assert rel(fast(x), layer(x)) < 1e-6
    # With autograd on, the stock path runs and gradients flow.
    assert not cpu_fast.onednn_eligible(x, fast.weight)
    fast(x).sum().backward()
    assert fast.weight.grad is not None
    # Other dtypes take the stock path.
    assert not cpu_fast.onednn_eligible(x.double(), fast.weight.double())


@needs_onednn
@pytest.mark.parametrize(
    ("cin", "cout", "size", "kernel", "stride", "padding", "batch"),
    [
        (16, 8, 12, 1, 1, 0, 2),  # 1x1: a matmul
        (32, 16, 6, 3, 1, 1, 1),  # small output: unfold + matmul
        (16, 16, 9, 3, 2, 1, 2),  # strided, small output
        (8, 8, 40, 3, 1, 1, 1),  # large output: the stock oneDNN convolution
    ],
)
def test_fast_conv_matches_conv2d(cin, cout, size, kernel, stride, padding, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    fast = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)
    fast.load_state_dict(conv.state_dict())
    cpu_fast.accelerate(fast)
    x = torch.randn(batch, cin, size, size)
    with torch.no_grad():
        out, ref = fast(x), conv(x)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-6


@needs_onednn
@pytest.mark.parametrize(("n", "m", "heads"), [(50, 50, 2), (33, 7, 3), (300, 4000, 1)])
def test_attention_matches_sdpa(n, m, heads):
    torch.manual_seed(0)
    dim = 8
    q, k, v = (
        torch.randn(2, n, heads * dim),
        torch.randn(2, m, heads * dim),
        torch.randn(2, m, heads * dim),
    )

    def split(t):
        return t.view(2, -1, heads, dim).transpose(1, 2)

    def sdpa(q, k, v):
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(2, n, heads * dim)

    exact = sdpa(q.double(), k.double(), v.double())
    with torch.no_grad():
        out = cpu_fast.attention(q, k, v, heads)
    # As close to the float64 result as PyTorch's own float32 kernel, to rounding.
    assert rel(out.double(), exact) < max(3 * rel(sdpa(q, k, v).double(), exact), 1e-6)


@needs_onednn
def test_attention_hands_onednn_dense_keys_and_values(monkeypatch):
    """oneDNN reorders a strided "weight" operand on every call (a fp32 run once took
    minutes per step so): K and V^T are made dense once per head, in every dtype."""
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_fast.bf16_supported() else [])
    seen = []
    matmul = cpu_fast._matmul_t
    monkeypatch.setattr(cpu_fast, "_matmul_t", lambda x, w, *a: seen.append(w) or matmul(x, w, *a))
    for dtype in dtypes:
        q, k, v = (torch.randn(1, n, 2 * 8).to(dtype) for n in (20, 30, 30))
        with torch.no_grad():
            cpu_fast.attention(q, k, v, heads=2)
    assert len(seen) == 2 * 2 * len(dtypes)  # scores and values, per head
    assert all(w.is_contiguous() for w in seen)


TINY_VAE = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4}


@needs_onednn
def test_channels_last_vae_matches_stock_forward():
    torch.manual_seed(0)
    vae = build_vae(vae_config_from_ldm(TINY_VAE)).eval()
    with torch.no_grad():
        for p in vae.parameters():  # non-trivial norms and biases
            p.add_(torch.randn_like(p) * 0.05)
        x = torch.rand(1, 3, 40, 48) * 2 - 1
        moments = vae_cpu.encode_moments(vae, x)
        assert moments is not None and moments.is_contiguous()
        ref = vae.quant_conv(vae.encoder(x))
        assert rel(moments, ref) < 1e-5
        z = torch.randn(1, 4, 10, 12)
        out = vae_cpu.decode(vae, z)
        assert out is not None and out.is_contiguous()
        assert rel(out, vae.decode(z).sample) < 1e-5
        # The public helpers take the fast path and keep their contract.
        assert rel(encode_to_latent(vae, (x + 1) / 2), ref[:, :4] * 0.18215) < 1e-5
        image = decode_from_latent(vae, z * 0.18215)
        assert image.min() >= 0 and image.max() <= 1
    # With autograd on, the fast path declines (the caller runs the stock forward).
    assert vae_cpu.decode(vae, z) is None


@needs_onednn
@pytest.mark.parametrize("kernel", [3, 1])
def test_conv_add_writes_the_residual_sum_in_place(kernel):
    """3x3 goes through oneDNN's fused sum, 1x1 through the matmul and an add: both give
    ``out + conv(x)`` in ``out`` itself."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, kernel, padding=kernel // 2)
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    out = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = out + conv(x)
        result = vae_cpu._conv_add_(conv, x, out)
    assert result.data_ptr() == out.data_ptr()
    assert rel(result, expected) < 1e-6


@needs_onednn
def test_group_norm_is_exact_on_channels_last_input():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
        # A large mean next to a small spread: naive float32 moments lose digits here.
        x = (torch.randn(2, 16, 64, 64) + 20.0).contiguous(memory_format=torch.channels_last)
        ref = F.group_norm(
            x.double().contiguous(), 4, norm.weight.double(), norm.bias.double(), 1e-6
        )
        out = vae_cpu.group_norm(x, norm, silu=False)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert rel(out.double(), ref) < 1e-6
        copy = x.clone(memory_format=torch.channels_last)
        silu = vae_cpu.group_norm(copy, norm, silu=True, out=copy)
        assert silu.data_ptr() == copy.data_ptr()
        assert rel(silu.double(), F.silu(ref)) < 1e-6


@needs_onednn
@pytest.mark.parametrize(("size", "bias"), [((9, 14), True), ((1, 1), True), ((6, 5), False)])
def test_upsample_by_pixel_phases_equals_nearest_then_conv(size, bias):
    """Four 2x2 kernels over the small image give "nearest x2, then 3x3 conv": against
    float64, at least as close as the convolution at the doubled size."""
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    up = Upsample2D(16, use_conv=True, out_channels=24).eval()
    if not bias:
        up.conv.bias = None
    x = torch.randn(2, 16, *size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = vae_cpu._upsample(up, x, vae_cpu._Buffers())
        stock = up(x.contiguous())
        exact = up.double()(x.double().contiguous())
    assert out.shape == (2, 24, 2 * size[0], 2 * size[1])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel(out.double(), exact) <= max(rel(stock.double(), exact), 1e-7) * 1.5


@needs_onednn
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (1, 1, 0), (3, 2, 0)])
def test_conv_into_writes_the_convolution_into_the_buffer(kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, kernel, stride=stride, padding=padding)
    x = torch.randn(1, 8, 13, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        out = torch.full_like(expected, float("nan")).contiguous(memory_format=torch.channels_last)
        result = vae_cpu._conv_into(conv, x, out)
    assert result.data_ptr() == out.data_ptr()
    assert rel(result, expected) < 1e-6


def test_buffers_reuse_memory_and_keep_the_running_activation():
    buffers = vae_cpu._Buffers()
    like = torch.empty(2, 1, 1, 1)
    a = buffers.get("act0", like, 4, 8, 8)
    assert a.shape == (2, 4, 8, 8) and a.is_contiguous(memory_format=torch.channels_last)
    # A smaller request is a view of the same memory; a larger one gets a larger buffer.
    assert buffers.get("act0", like, 2, 4, 8).data_ptr() == a.data_ptr()
    assert buffers.get("act0", like, 8, 8, 8).numel() == 2 * 8 * 8 * 8
    # The spare buffer is never the one holding the activation.
    held = buffers.get("act0", like, 4, 8, 8)
    spare = buffers.spare(held, 4, 8, 8)
    assert spare.untyped_storage().data_ptr() != held.untyped_storage().data_ptr()
    assert buffers.spare(spare, 4, 8, 8).untyped_storage().data_ptr() == held.data_ptr()
    # An activation outside the buffers (a fresh tensor) gets the first one.
    fresh = torch.empty(2, 4, 8, 8)
    assert buffers.spare(fresh, 4, 8, 8).data_ptr() == held.data_ptr()


def test_reserved_buffers_are_allocated_once_at_the_reserved_size():
    """A decoder's blocks grow their activations; with a reserve every role's first
    buffer already holds the largest, so growing blocks reuse its memory."""
    buffers = vae_cpu._Buffers(reserve=4 * 16 * 16)
    like = torch.empty(1, 1, 1, 1)
    small = buffers.get("hidden", like, 2, 4, 4)
    large = buffers.get("hidden", like, 4, 16, 16)
    assert small.data_ptr() == large.data_ptr()
    assert buffers.get("hidden", like, 8, 16, 16).numel() == 8 * 16 * 16  # beyond: grows


@needs_onednn
@pytest.mark.parametrize(("latent", "image"), [((5, 7), (26, 18)), ((1, 1), (8, 8))])
def test_channels_last_vae_on_odd_sizes(latent, image):
    """Odd sizes go through the padded downsampling and the pixel-phase upsampling: as
    close to a float64 run as the stock forward (a 1x1 latent makes GroupNorm divide
    rounding noise by sqrt(eps), so the bar is relative to the stock path's error)."""
    import copy

    torch.manual_seed(0)
    vae = build_vae(vae_config_from_ldm(TINY_VAE)).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        exact = copy.deepcopy(vae).double()
        z = torch.randn(1, 4, *latent)
        want = exact.decode(z.double()).sample
        stock = rel(vae.decode(z).sample.double(), want)
        assert rel(vae_cpu.decode(vae, z).double(), want) <= 2 * stock + 1e-6
        x = torch.rand(2, 3, *image) * 2 - 1
        want = exact.quant_conv(exact.encoder(x.double()))
        stock = rel(vae.quant_conv(vae.encoder(x)).double(), want)
        assert rel(vae_cpu.encode_moments(vae, x).double(), want) <= 2 * stock + 1e-6


@needs_onednn
def test_public_upsample_by_phases_for_block_by_block_callers():
    """``vae_cpu.upsample`` (the tiled VAE's step) is ``up(x)`` in NCHW, as close to
    float64 as the stock module, and is the stock module itself with autograd on."""
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(0)
    up = Upsample2D(8, use_conv=True, out_channels=12).eval()
    x = torch.randn(2, 8, 7, 10)
    with torch.no_grad():
        exact = up.double()(x.double())
        up.float()
        out = vae_cpu.upsample(up, x)
        stock = up(x)
    assert out.shape == (2, 12, 14, 20) and out.is_contiguous()
    assert rel(out.double(), exact) <= max(rel(stock.double(), exact), 1e-7) * 1.5
    with_grad = vae_cpu.upsample(up, x)
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), stock)
