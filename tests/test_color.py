"""Colour fixes: the wavelet fix against the published golden, and AdaIN."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import DiffBIRError
from diffbir.imaging.color import adain_color_fix, wavelet_color_fix, wavelet_decompose


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def test_wavelet_color_fix_matches_reference(fixtures):
    io = load_file(fixtures / "wavelet_color_fix" / "io.safetensors")
    out = wavelet_color_fix(io["content"], io["style"], levels=5)
    assert out.shape == io["output"].shape
    assert out.dtype == torch.float32
    assert _rel_err(out, io["output"]) < 1e-4


def test_wavelet_color_fix_depends_on_levels(fixtures):
    # Guards against an implementation that ignores `levels` (the golden uses 5).
    io = load_file(fixtures / "wavelet_color_fix" / "io.safetensors")
    out = wavelet_color_fix(io["content"], io["style"], levels=3)
    assert _rel_err(out, io["output"]) > 1e-3


def test_wavelet_decompose_is_exact_split():
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    high, low = wavelet_decompose(x, levels=4)
    torch.testing.assert_close(high + low, x, atol=1e-6, rtol=0)
    # The low band is smooth: far less variation between neighbours than the input.
    assert low.diff(dim=-1).abs().mean() < 0.2 * x.diff(dim=-1).abs().mean()


def test_wavelet_color_fix_takes_colour_from_style_and_detail_from_content():
    g = torch.Generator().manual_seed(1)
    content = torch.rand(1, 3, 64, 64, generator=g)
    style = torch.full((1, 3, 64, 64), 0.5) + torch.tensor([0.2, -0.1, 0.0]).view(1, 3, 1, 1)
    out = wavelet_color_fix(content, style)
    # Channel means move to the style's colour ...
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=0.02, rtol=0)
    # ... while the fine detail (neighbour differences) stays the content's.
    c_detail = content.diff(dim=-1)
    o_detail = out.diff(dim=-1)
    assert torch.corrcoef(torch.stack([c_detail.flatten(), o_detail.flatten()]))[0, 1] > 0.9


def test_wavelet_color_fix_identity_when_same_image():
    x = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(wavelet_color_fix(x, x), x, atol=1e-6, rtol=0)


def test_wavelet_color_fix_keeps_dtype_float64():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    y = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    assert wavelet_color_fix(x, y).dtype == torch.float64


def test_color_fix_rejects_shape_mismatch():
    a = torch.rand(1, 3, 16, 16)
    b = torch.rand(1, 3, 32, 32)
    with pytest.raises(DiffBIRError, match="same shape"):
        wavelet_color_fix(a, b)
    with pytest.raises(ValueError, match="same shape"):
        adain_color_fix(a, b)
    with pytest.raises(DiffBIRError, match="NCHW"):
        wavelet_color_fix(a[0], b[0])


def test_adain_color_fix_matches_style_statistics():
    g = torch.Generator().manual_seed(3)
    content = torch.rand(2, 3, 24, 24, generator=g)
    style = torch.rand(2, 3, 24, 24, generator=g) * 0.3 + 0.4
    out = adain_color_fix(content, style)
    torch.testing.assert_close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3)), style.std(dim=(2, 3)), atol=1e-3, rtol=0)
    # Spatial pattern is the content's (a per-channel affine map of it).
    corr = torch.corrcoef(torch.stack([out[0, 0].flatten(), content[0, 0].flatten()]))[0, 1]
    assert corr > 0.999
