"""The metrics of diffbir.metrics: constructed cases (identical images, known noise,
known blur) and the values recorded from pyiqa on the fixture images
(tests/fixtures/metrics/README.md says how)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffbir.errors import DiffBIRError
from diffbir.imaging.io import read_image
from diffbir.metrics import niqe as niqe_mod
from diffbir.metrics import pixel

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
RECORDED = json.loads((FIXTURES / "pyiqa_values.json").read_text())


def _image(name: str) -> torch.Tensor:
    return read_image(FIXTURES / f"{name}.png", keep_alpha=False).rgb[None]


def _pairs(key: str):
    return [tuple(item.split("|")) for item in RECORDED[key]]


def _levels(seed: int, h: int = 48, w: int = 56) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (1, 3, h, w)).astype(np.float32) / 255)


# ------------------------------------------------------------------ PSNR / SSIM


@pytest.mark.parametrize("fn", ["psnr", "ssim"])
@pytest.mark.parametrize("y", [False, True])
@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_ssim_match_pyiqa(fn, y, crop):
    key = f"{fn}_{'y' if y else 'rgb'}_crop{crop}"
    for x, ref in _pairs(key):
        got = float(getattr(pixel, fn)(_image(x), _image(ref), crop=crop, y_channel=y)[0])
        # pyiqa computes PSNR in float32 (we in float64); SSIM in float64 as we do.
        tol = 1e-6 if fn == "psnr" else 1e-10
        assert got == pytest.approx(RECORDED[key][f"{x}|{ref}"], rel=tol), (x, ref)


def test_psnr_of_known_noise_and_identity():
    x = _levels(0)
    assert float(pixel.psnr(x, x)[0]) == pytest.approx(80.0)  # 10 log10(1 / 1e-8)
    noisy = x + 0.01 * torch.tensor([1.0, -1.0]).repeat(x.numel() // 2).view_as(x)
    assert float(pixel.psnr(noisy, x)[0]) == pytest.approx(40.0, abs=1e-3)  # MSE 1e-4
    batch = torch.cat([x, noisy])
    assert pixel.psnr(batch, torch.cat([x, x])).shape == (2,)


def test_ssim_identity_blur_and_window():
    x = _levels(1)
    assert float(pixel.ssim(x, x)[0]) == pytest.approx(1.0)
    kernel = torch.ones(3, 1, 3, 3) / 9
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3) * 255
    blurred = blurred.round() / 255
    assert 0.0 < float(pixel.ssim(blurred, x)[0]) < 0.9
    w = pixel.gaussian_window(11, 1.5)
    assert w.sum().item() == pytest.approx(1.0) and w.shape == (11, 11)
    assert w[5, 5] == w.max() and torch.equal(w, w.T)
    with pytest.raises(DiffBIRError, match="at least 11x11"):
        pixel.ssim(x[..., :10, :], x[..., :10, :])
    with pytest.raises(DiffBIRError, match="differ in shape"):
        pixel.ssim(x, x[..., :40])


def test_y_channel_is_bt601():
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert pixel.ycbcr_y(white).mul(255).round().unique().tolist() == [235.0]
    assert pixel.ycbcr_y(black).mul(255).unique().tolist() == [16.0]
    assert pixel.yiq_y(white).unique().item() == pytest.approx(1.0)


def test_basicsr_agrees_on_psnr_and_differs_slightly_on_ssim():
    """BasicSR's PSNR is pyiqa's; its SSIM neither rounds the Y nor clips the contrast
    term, a difference of about 1e-3 here (documented in the README)."""
    for key in ("psnr_y_crop4", "psnr_rgb_crop0"):
        for item, value in RECORDED[key].items():
            assert RECORDED[f"basicsr_{key}"][item] == pytest.approx(value, rel=1e-5)
    for item, value in RECORDED["ssim_y_crop4"].items():
        assert RECORDED["basicsr_ssim_y_crop4"][item] == pytest.approx(value, rel=3e-3)


# ------------------------------------------------------------------ NIQE


@pytest.mark.parametrize("name", ["niqe", "niqe-y"])
@pytest.mark.parametrize("crop", [0, 4])
def test_niqe_matches_pyiqa(name, crop):
    key = f"{name}_crop{crop}"
    luma = "ycbcr" if name == "niqe-y" else "yiq"
    for image, want in RECORDED[key].items():
        got = float(niqe_mod.niqe(_image(image), crop=crop, luma=luma)[0])
        assert got == pytest.approx(want, rel=1e-6), image


def test_niqe_pristine_parameters_and_limits():
    mu, cov = niqe_mod.pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36) and mu.dtype == torch.float64
    assert torch.allclose(cov, cov.T)
    with pytest.raises(DiffBIRError, match="at least 96x96"):
        niqe_mod.niqe(torch.rand(1, 3, 95, 200))


def test_matlab_half_resize():
    # A constant stays constant, a linear ramp stays linear away from the edges.
    flat = torch.full((1, 1, 20, 24), 7.0, dtype=torch.float64)
    assert torch.allclose(niqe_mod.matlab_half(flat), flat[..., ::2, ::2], atol=1e-5)
    ramp = torch.arange(24, dtype=torch.float64).repeat(20, 1)
    half = niqe_mod.matlab_half(ramp)
    assert half.shape == (10, 12)
    assert torch.allclose(half[:, 3:-3], (ramp[::2, ::2] + 0.5)[:, 3:-3], atol=1e-4)


def test_aggd_fit_of_a_gaussian_has_shape_two():
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (1, 200_000)))
    alpha, left, right = niqe_mod.aggd_fit(x)
    assert float(alpha[0]) == pytest.approx(2.0, abs=0.05)
    # The scale of a generalised Gaussian of shape 2 is sigma * sqrt(2).
    assert float(left[0]) == pytest.approx(3.0 * math.sqrt(2), rel=0.02)
    assert float(right[0]) == pytest.approx(3.0 * math.sqrt(2), rel=0.02)


def test_niqe_through_the_command_line_builder():
    from diffbir.metrics.evaluate import EvalOptions

    metric = niqe_mod.build("niqe-y", EvalOptions(crop_border=4), torch.device("cpu"))
    value = float(metric(_image("out_b_jpeg"), None)[0])
    assert value == pytest.approx(RECORDED["niqe-y_crop4"]["out_b_jpeg"], rel=1e-6)


# ------------------------------------------------------------------ LPIPS / DISTS
#
# No ImageNet backbone can be downloaded here: the backbones are stand-ins made by the
# function below (counter-based splitmix64, no RNG library, so the same tensors on every
# machine and version), saved in torchvision's key layout; the LPIPS linear layers and
# the DISTS alpha/beta are the published files (fixtures/metrics/weights). pyiqa was
# given the same tensors when the values were recorded.

WEIGHTS = FIXTURES / "weights"
_ALEX = [(0, 64, 3, 11), (3, 192, 64, 5), (6, 384, 192, 3), (8, 256, 384, 3), (10, 256, 256, 3)]
_VGG = [
    (0, 64, 3), (2, 64, 64), (5, 128, 64), (7, 128, 128), (10, 256, 128), (12, 256, 256),
    (14, 256, 256), (17, 512, 256), (19, 512, 512), (21, 512, 512), (24, 512, 512),
    (26, 512, 512), (28, 512, 512),
]  # fmt: skip


def _uniform(n: int, seed: int) -> np.ndarray:
    golden = 0x9E3779B97F4A7C15
    z = np.arange(n, dtype=np.uint64) + np.uint64((seed * golden + golden) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _tensor(key: str, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    import zlib

    u = _uniform(int(np.prod(shape)), zlib.crc32(key.encode()))
    return torch.from_numpy(((2 * u - 1) * scale).reshape(shape).astype(np.float32))


def stand_in_backbone(kind: str) -> dict[str, torch.Tensor]:
    """A torchvision-layout ``features.*`` state dict for ``alex`` or ``vgg``."""
    layers = _ALEX if kind == "alex" else [(i, o, c, 3) for i, o, c in _VGG]
    state = {}
    for index, out, cin, k in layers:
        scale = (6 / (cin * k * k)) ** 0.5
        state[f"features.{index}.weight"] = _tensor(f"{kind}.{index}.w", (out, cin, k, k), scale)
        state[f"features.{index}.bias"] = _tensor(f"{kind}.{index}.b", (out,), 0.05)
    return state


@pytest.fixture(scope="module")
def backbones():
    return {"alex": stand_in_backbone("alex"), "vgg": stand_in_backbone("vgg")}


def _perceptual(name, backbones):
    from diffbir.metrics import perceptual
    from diffbir.metrics.evaluate import EvalOptions
    from diffbir.metrics.names import METRICS

    kind = "alex" if name == "lpips" else "vgg"
    files = [backbones[kind], WEIGHTS / METRICS[name].weights[1]]
    return perceptual.build(name, EvalOptions(), torch.device("cpu"), *files)


@pytest.mark.parametrize("name", ["lpips", "lpips-vgg", "dists"])
def test_lpips_and_dists_match_pyiqa(name, backbones):
    torch.manual_seed(0)
    metric = _perceptual(name, backbones)
    pairs = _pairs(name) if name == "lpips" else _pairs(name)[1:3]  # VGG is slow on CPU
    for x, ref in pairs:
        got = float(metric(_image(x), _image(ref))[0])
        assert got == pytest.approx(RECORDED[name][f"{x}|{ref}"], rel=1e-4), (x, ref)


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_lpips_and_dists_of_identical_images_are_zero(name, backbones):
    metric = _perceptual(name, backbones)
    x = _levels(4, 64, 64)
    assert abs(float(metric(x, x)[0])) < 1e-6
    assert float(metric(_levels(5, 64, 64), x)[0]) > 0


def test_published_layouts_load_strictly(backbones):
    from diffbir.errors import CheckpointError
    from diffbir.metrics import perceptual

    model = perceptual.load_lpips(
        "alex", backbones["alex"], WEIGHTS / "LPIPS_v0.1_alex-df73285e.pth"
    )
    assert model.lin0.model[1].weight.shape == (1, 64, 1, 1)
    # torchvision's file also holds the classifier: it is ignored, not an error.
    with_head = {**backbones["alex"], "classifier.1.weight": torch.zeros(2, 2)}
    perceptual.load_lpips("alex", with_head, WEIGHTS / "LPIPS_v0.1_alex-df73285e.pth")
    broken = dict(backbones["alex"])
    del broken["features.3.bias"]
    with pytest.raises(CheckpointError, match="missing: features.3.bias"):
        perceptual.load_lpips("alex", broken, WEIGHTS / "LPIPS_v0.1_alex-df73285e.pth")
    dists = perceptual.load_dists(backbones["vgg"], WEIGHTS / "DISTS_weights-f5e65c96.pth")
    assert dists.alpha.shape == (1, 1475, 1, 1)
