"""Overlapping tiles: coverage, smooth positive weights, agreement with untiled runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from diffbir.imaging.tiling import blend_weights, tile_spans, tiled_apply
from diffbir.models.swinir import SwinIR, strip_derived_buffers
from diffbir.weights.checkpoint import load_into


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    peak = ref.abs().max().square()
    return (10 * torch.log10(peak / (a - ref).square().mean())).item()


@pytest.mark.parametrize(
    "length,tile,overlap,align",
    [(100, 32, 8, 1), (64, 64, 16, 1), (65, 64, 16, 1), (1000, 256, 64, 1), (96, 32, 12, 8)],
)
def test_spans_cover_the_range_with_the_overlap(length, tile, overlap, align):
    spans = tile_spans(length, tile, overlap, align=align)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        assert a0 < b0 and a1 - b0 >= overlap  # neighbours overlap by at least `overlap`
    assert all(s1 - s0 == tile for s0, s1 in spans)
    assert all(s0 % align == 0 for s0, _ in spans)


def test_short_range_is_one_span_and_bad_arguments_fail():
    assert tile_spans(20, 64, 16) == [(0, 20)]
    with pytest.raises(ValueError, match="smaller than the tile"):
        tile_spans(100, 16, 16)
    with pytest.raises(ValueError, match="multiples of align"):
        tile_spans(100, 32, 8, align=8)


def test_blend_weights_are_smooth_positive_and_flat_on_borders():
    w = blend_weights(32, 48, 8, top=True, bottom=True, left=False, right=True)
    assert w.shape == (32, 48) and w.dtype == torch.float32
    assert (w > 0).all() and (w <= 1).all()
    assert torch.equal(w[8:-8, :-8], torch.ones(16, 40))  # flat inside, and on the left border
    assert w[0, 20] < w[3, 20] < w[7, 20] < 1  # rising ramp
    assert (w[:8, 20].diff() > 0).all() and (w[-8:, 20].diff() < 0).all()


def test_summed_weights_are_positive_everywhere():
    calls = []

    def fn(x):
        calls.append(x.shape)
        return torch.ones_like(x)

    out = tiled_apply(fn, torch.zeros(1, 1, 100, 70), tile=32, overlap=12)
    assert len(calls) == len(tile_spans(100, 32, 12)) * len(tile_spans(70, 32, 12))
    # A constant output blends to the same constant only if no pixel has zero total weight.
    torch.testing.assert_close(out, torch.ones(1, 1, 100, 70))


def test_single_tile_is_exactly_fn():
    conv = torch.nn.Conv2d(3, 3, 5, padding=2)
    x = torch.rand(2, 3, 40, 50)
    with torch.no_grad():
        assert torch.equal(tiled_apply(conv, x, tile=64, overlap=16), conv(x))


def test_conv_model_tiles_close_to_untiled():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GELU(),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    )
    x = torch.rand(1, 3, 90, 130)
    with torch.no_grad():
        ref = net(x)
        out = tiled_apply(net, x, tile=48, overlap=16)
    assert out.shape == ref.shape
    # Receptive field (5 px) is within the overlap: agreement is near float precision.
    assert psnr(out, ref) > 60


def test_multiple_inputs_and_scales():
    a, b = torch.rand(1, 2, 64, 96), torch.rand(1, 2, 64, 96)

    def up(x, y):
        return F.interpolate(x * y, scale_factor=4, mode="nearest")

    out = tiled_apply(up, a, b, tile=32, overlap=8, scale=4)
    torch.testing.assert_close(out, up(a, b))

    def encode(x):
        return F.avg_pool2d(x, 8)

    out = tiled_apply(encode, a, tile=32, overlap=12, scale=1 / 8)
    torch.testing.assert_close(out, encode(a))


def test_wrong_output_size_is_reported():
    with pytest.raises(ValueError, match="expected"):
        tiled_apply(lambda x: x[..., :-1, :], torch.zeros(1, 1, 64, 64), tile=32, overlap=8)


def test_golden_swinir_tiled_close_to_untiled(fixtures):
    folder = fixtures / "swinir"
    config = json.loads((folder / "config.json").read_text())["config"]
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(folder / "state_dict.safetensors")).items()
    }
    model = load_into(SwinIR(**config).eval(), strip_derived_buffers(state))
    x = load_file(str(folder / "io.safetensors"))["input_128x192"]
    with torch.no_grad():
        ref = model(x)
        single = tiled_apply(model, x, tile=192, overlap=64)
        tiled = tiled_apply(model, x, tile=128, overlap=64)
    assert torch.equal(single, ref)
    value = psnr(tiled, ref)
    assert value > 40, f"tiled SwinIR PSNR {value:.1f} dB"
