"""Tiled VAE with shared GroupNorm statistics: exact on one tile, no tile-to-tile tone shift.

All on a tiny KL-f8 autoencoder whose weights are redrawn from a seeded
generator (GroupNorm scales and every bias away from their 1/0 defaults), so
each part of every layer matters.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from diffbir.errors import ConfigError
from diffbir.imaging.tiled_vae import (
    _core_spans,
    _GroupStats,
    _normalize,
    _with_margin,
    tiled_decode,
    tiled_encode,
)
from diffbir.models.vae import (
    VAE_SCALE,
    build_vae,
    decode_from_latent,
    encode_to_latent,
    vae_config_from_ldm,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "z_channels": 4,
    "double_z": True,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "dropout": 0.0,
}


def _seeded_vae(ch_mult: list[int], *, attention: bool = True):
    """A tiny VAE with every parameter drawn from a seeded generator.

    Weights at PyTorch's default scale (std 1/sqrt(3 fan_in)), GroupNorm scales
    around 1 and biases around 0 but not at them. ``attention=False`` zeroes the
    mid-block attention's output projection, leaving only a constant bias.
    """
    model = build_vae(vae_config_from_ldm({**TINY, "ch_mult": ch_mult}, 4)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:  # conv / linear weights
                p.copy_(noise / math.sqrt(3 * p[0].numel()))
            elif name.endswith("weight"):  # GroupNorm scales
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)
        if not attention:
            for side in (model.encoder, model.decoder):
                side.mid_block.attentions[0].to_out[0].weight.zero_()
    return model


@pytest.fixture(scope="module")
def vae():
    return _seeded_vae([1, 1, 1, 1])


def _image(height: int, width: int) -> torch.Tensor:
    """Two different images whose regions differ in brightness and texture."""
    gen = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij"
    )
    smooth = torch.stack([yy, xx, 1 - xx * yy])
    bright = ((yy > 0.5) & (xx < 0.4)).float()
    texture = torch.rand(3, height, width, generator=gen)
    a = 0.5 * smooth + 0.2 * texture + 0.3 * bright
    b = 0.3 * smooth.flip(-1) + 0.6 * texture * bright
    return torch.stack([a, b]).clamp(0, 1)


def _latent(height: int, width: int) -> torch.Tensor:
    """Latents whose mean drifts across the map, so tiles have different statistics."""
    gen = torch.Generator().manual_seed(2)
    ramp = torch.linspace(-1.5, 1.5, width)
    block = torch.zeros(height, width)
    block[: height // 2, width // 2 :] = 1.0
    z = 0.7 * torch.randn(2, 4, height, width, generator=gen) + ramp + block
    return z * VAE_SCALE * 5  # about unit variance once unscaled


def _psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(peak**2 / mse)


def _naive(fn, x, tile, pad, align, scale):
    """Run ``fn`` on each padded tile alone (its own GroupNorm statistics) and stitch the cores."""
    height, width = x.shape[-2:]
    out = None
    for r in _core_spans(height, tile, pad, align):
        for c in _core_spans(width, tile, pad, align):
            sr, sc = _with_margin(r, pad, height), _with_margin(c, pad, width)
            y = fn(x[..., sr[0] : sr[1], sc[0] : sc[1]])
            if out is None:
                size = (int(height * scale), int(width * scale))
                out = y.new_empty((*y.shape[:2], *size))
            core = y[
                ...,
                int((r[0] - sr[0]) * scale) : int((r[1] - sr[0]) * scale),
                int((c[0] - sc[0]) * scale) : int((c[1] - sc[0]) * scale),
            ]
            out[
                ..., int(r[0] * scale) : int(r[1] * scale), int(c[0] * scale) : int(c[1] * scale)
            ] = core
    return out


def _decode_unclamped(vae, z):
    with torch.no_grad():
        return (vae.decode(z / VAE_SCALE).sample + 1) / 2


# --- one tile: the layer-by-layer run is the model itself ---------------------------


def test_single_tile_encode_matches_untiled(vae):
    x = _image(64, 96)
    with torch.no_grad():
        ref = encode_to_latent(vae, x)
    out = tiled_encode(vae, x, 96)
    assert out.shape == (2, 4, 8, 12)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_single_tile_decode_matches_untiled(vae):
    z = _latent(8, 12)
    with torch.no_grad():
        ref = decode_from_latent(vae, z)
    out = tiled_decode(vae, z, 16)
    assert out.shape == (2, 3, 64, 96)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tiled_decode(vae, z, 16, clamp=False), _decode_unclamped(vae, z), atol=1e-5, rtol=0
    )


# --- shared statistics are the whole image's ---------------------------------------


def test_core_statistics_equal_whole_image_group_norm():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 40, 56, generator=gen) * 3 + torch.linspace(-5, 5, 56)
    norm = torch.nn.GroupNorm(32, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64, generator=gen))
        norm.bias.copy_(torch.randn(64, generator=gen))
    rows, cols = _core_spans(40, 8, 4, 1), _core_spans(56, 16, 4, 1)
    assert len(rows) * len(cols) >= 6
    stats = _GroupStats(32)
    for r in rows:
        for c in cols:
            stats.add(x[..., r[0] : r[1], c[0] : c[1]])
    mean, var = stats.result()
    groups = x.reshape(2, 32, -1)
    torch.testing.assert_close(mean, groups.mean(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, groups.var(-1, correction=0), atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(_normalize(x, norm, mean, var), norm(x), atol=1e-5, rtol=1e-5)


def test_core_spans_partition_and_bound_the_tiles():
    for length, tile, pad, align in [(256, 64, 32, 8), (200, 48, 16, 8), (37, 8, 11, 1)]:
        spans = _core_spans(length, tile, pad, align)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        for span in spans:
            assert span[0] % align == 0
            seen = _with_margin(span, pad, length)
            assert seen[1] - seen[0] <= tile + 2 * pad


def test_without_attention_many_tiles_reproduce_the_untiled_model():
    """Attention aside, the only tile-local effect is the zero padding at a tile's edge.

    With a margin wider than the receptive field, many tiles give the untiled
    result to float precision: the shared statistics are the whole image's, in
    every GroupNorm of the network. (ch_mult [1, 2]: a factor-2 autoencoder
    with a small receptive field.)
    """
    plain = _seeded_vae([1, 2], attention=False)
    x = _image(96, 128)
    z = _latent(36, 44)
    with torch.no_grad():
        ref_z = encode_to_latent(plain, x)
        ref_x = decode_from_latent(plain, z)
    assert len(_core_spans(96, 16, 24, 2)) * len(_core_spans(128, 16, 24, 2)) == 15
    torch.testing.assert_close(tiled_encode(plain, x, 16, pad=24), ref_z, atol=1e-5, rtol=0)
    assert len(_core_spans(36, 6, 12, 1)) * len(_core_spans(44, 6, 12, 1)) == 8
    torch.testing.assert_close(tiled_decode(plain, z, 6, pad=12), ref_x, atol=2e-5, rtol=0)


# --- many tiles: close to the untiled result, unlike independent tiles ---------------


def test_many_tiles_encode_is_close_to_untiled(vae):
    """Shared statistics keep tiles in one tone; what is left is per-tile attention and margins."""
    x = _image(192, 256)
    with torch.no_grad():
        ref = encode_to_latent(vae, x)
        naive = _naive(lambda t: encode_to_latent(vae, t), x, 64, 32, 8, 1 / 8)
    out = tiled_encode(vae, x, 64)
    assert out.shape == ref.shape
    assert len(_core_spans(192, 64, 32, 8)) * len(_core_spans(256, 64, 32, 8)) == 6
    peak = (ref.max() - ref.min()).item()
    shared, independent = _psnr(out, ref, peak), _psnr(naive, ref, peak)
    print(f"encode latent PSNR vs untiled: shared {shared:.1f} dB, per-tile {independent:.1f} dB")
    # Measured: 38.7 dB shared, 23.5 dB per-tile.
    assert shared > 35
    assert shared > independent + 10


@pytest.mark.parametrize(
    ("pad", "tiles", "at_least", "gain"),
    # Measured: pad 4: 30.5 vs 20.2 dB per-tile; pad 11 (default): 40.7 vs 31.3 dB.
    [(4, 6, 27.0, 7.0), (11, 2, 37.0, 6.0)],
)
def test_many_tiles_decode_is_close_to_untiled(vae, pad, tiles, at_least, gain):
    z = _latent(24, 32)
    with torch.no_grad():
        ref = decode_from_latent(vae, z)
        naive = _naive(lambda t: decode_from_latent(vae, t), z, 8, pad, 1, 8)
    out = tiled_decode(vae, z, 8, pad=pad)
    assert out.shape == ref.shape
    assert len(_core_spans(24, 8, pad, 1)) * len(_core_spans(32, 8, pad, 1)) == tiles
    shared, independent = _psnr(out, ref, 1.0), _psnr(naive, ref, 1.0)
    print(
        f"decode (pad {pad}) PSNR vs untiled: shared {shared:.1f} dB, per-tile {independent:.1f} dB"
    )
    assert shared > at_least
    assert shared > independent + gain


def test_offload_gives_the_same_result(vae):
    z = _latent(16, 24)
    assert torch.equal(
        tiled_decode(vae, z, 8, pad=4, offload=True, progress=True), tiled_decode(vae, z, 8, pad=4)
    )
    x = _image(128, 128)
    assert torch.equal(tiled_encode(vae, x, 32, offload=True), tiled_encode(vae, x, 32))


# --- contract: shapes, dtype, clamping -------------------------------------------------


def test_dtype_follows_the_vae(vae):
    half = copy.deepcopy(vae).to(torch.bfloat16)
    x = _image(64, 64)
    z = _latent(16, 16)
    with torch.no_grad():
        ref_z = encode_to_latent(half, x)
        ref_x = decode_from_latent(half, z)
    one_z = tiled_encode(half, x, 64)
    one_x = tiled_decode(half, z, 16)
    many_x = tiled_decode(half, z, 4, pad=4)  # 2x2 tiles
    assert one_z.dtype == ref_z.dtype == torch.bfloat16
    assert one_x.dtype == many_x.dtype == ref_x.dtype == torch.bfloat16
    assert one_z.shape == (2, 4, 8, 8) and many_x.shape == (2, 3, 128, 128)
    # Only bfloat16 rounding apart on one tile (measured 47-48 dB); 35.5 dB on 2x2 tiles.
    assert _psnr(one_z, ref_z, (ref_z.max() - ref_z.min()).item()) > 42
    assert _psnr(one_x, ref_x, 1.0) > 42
    assert _psnr(many_x, ref_x, 1.0) > 31


def test_clamp_false_keeps_values_outside_unit_range(vae):
    z = _latent(16, 24)
    ref = _decode_unclamped(vae, z)
    assert ref.min() < 0 or ref.max() > 1  # the premise: this decoder overshoots
    raw = tiled_decode(vae, z, 8, clamp=False)
    assert raw.min() < 0 or raw.max() > 1
    assert _psnr(raw, ref, 1.0) > 35
    clamped = tiled_decode(vae, z, 8)
    assert clamped.min() >= 0 and clamped.max() <= 1
    torch.testing.assert_close(clamped, raw.clamp(0, 1))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "tile", "kwargs", "message"),
    [
        ((1, 3, 64, 64), 60, {}, "multiples of 8"),
        ((1, 3, 64, 64), 64, {"pad": 12}, "multiples of 8"),
        ((1, 3, 100, 64), 64, {}, "image size 100x64 must be a multiple of 8"),
        ((1, 3, 64, 60), 64, {}, "must be a multiple of 8"),
        ((1, 4, 64, 64), 64, {}, r"shape \(B, 3, H, W\)"),
        ((3, 64, 64), 64, {}, r"shape \(B, 3, H, W\)"),
        ((1, 3, 64, 64), 0, {}, "tile must be an integer >= 1"),
        ((1, 3, 64, 64), 64.0, {}, "tile must be an integer"),
        ((1, 3, 64, 64), 64, {"pad": -8}, "pad must be an integer >= 0"),
    ],
)
def test_encode_rejects_bad_input(vae, shape, tile, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiled_encode(vae, torch.zeros(shape), tile, **kwargs)


@pytest.mark.parametrize(
    ("shape", "tile", "kwargs", "message"),
    [
        ((1, 3, 8, 8), 8, {}, r"shape \(B, 4, h, w\)"),
        ((4, 8, 8), 8, {}, r"shape \(B, 4, h, w\)"),
        ((1, 4, 8, 8), 0, {}, "tile must be an integer >= 1"),
        ((1, 4, 8, 8), True, {}, "tile must be an integer"),
        ((1, 4, 8, 8), 8, {"pad": -1}, "pad must be an integer >= 0"),
    ],
)
def test_decode_rejects_bad_input(vae, shape, tile, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiled_decode(vae, torch.zeros(shape), tile, **kwargs)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_cpu_float32_tiles_run_channels_last_with_the_same_result(vae):
    """On the fp32 CPU path the tiles are channels-last (oneDNN's own layout) and the
    output is NCHW; without oneDNN the tiles stay NCHW; both give the same image."""
    seen = []
    hook = vae.decoder.conv_in.register_forward_hook(
        lambda module, args, out: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last)
        )
    )
    z = torch.randn(1, 4, 24, 16, generator=torch.Generator().manual_seed(3))
    try:
        fast = tiled_decode(vae, z, 8, pad=2)
        assert seen and all(seen) and fast.is_contiguous()
        seen.clear()
        with torch.backends.mkldnn.flags(enabled=False):
            plain = tiled_decode(vae, z, 8, pad=2)
        assert seen and not any(seen)
    finally:
        hook.remove()
    assert ((fast - plain).norm() / plain.norm()).item() < 1e-5
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(4))
    with torch.backends.mkldnn.flags(enabled=False):
        plain = tiled_encode(vae, x, 32, pad=8)
    assert ((tiled_encode(vae, x, 32, pad=8) - plain).norm() / plain.norm()).item() < 1e-5
