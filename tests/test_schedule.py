"""Noise schedules and IDDPM respacing against the published goldens (float64, exact)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from diffbir.diffusion.schedule import (
    NoiseSchedule,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    space_timesteps,
)
from diffbir.errors import ConfigError

POSTERIOR_KEYS = (
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@pytest.fixture(scope="module")
def ref():
    from pathlib import Path

    return load_file(Path(__file__).parent / "fixtures" / "diffusion" / "io.safetensors")


def _same_to_the_ulp(ours: torch.Tensor, golden: torch.Tensor) -> None:
    """Equal but for float64 rounding: the zero-terminal-SNR rescale (square roots, a
    shift, squares, ratios) lands one ulp apart at a few timesteps depending on the
    CPU's vector kernels (seen on an AVX-512/AMX Xeon against the values recorded on
    AVX2); relative 1e-12 is a thousand times finer than float32, the models' precision."""
    assert ours.dtype == golden.dtype == torch.float64
    torch.testing.assert_close(ours, golden, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", ["sd", "zsnr"])
def test_schedules_match_reference(ref, name):
    sched = NoiseSchedule.from_name(name)
    assert sched.betas.dtype == torch.float64
    _same_to_the_ulp(sched.betas, ref[f"{name}_betas"])
    _same_to_the_ulp(sched.alphas_cumprod, ref[f"{name}_alphas_cumprod"])


def test_building_blocks_match_reference(ref):
    betas = scaled_linear_betas(1000, 0.00085, 0.012)
    assert torch.equal(betas, ref["sd_betas"])
    _same_to_the_ulp(rescale_zero_terminal_snr(betas), ref["zsnr_betas"])


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_respacing_matches_reference(ref, steps):
    chain = NoiseSchedule.from_name("sd").respace(steps)
    assert torch.equal(chain.timesteps, ref[f"spaced{steps}_timesteps"])
    for key in POSTERIOR_KEYS:
        ours, golden = getattr(chain, key), ref[f"spaced{steps}_{key}"]
        assert ours.dtype == torch.float64
        # the published sampler stores these as float32 buffers: equal after that rounding
        assert torch.equal(ours.float().double(), golden), key
        assert torch.allclose(ours, golden, rtol=1e-6, atol=1e-7), key


def test_zero_terminal_snr_properties():
    sd, zsnr = NoiseSchedule.from_name("sd"), NoiseSchedule.from_name("zsnr")
    assert float(zsnr.alphas_cumprod[-1]) == 0.0
    assert math.isinf(float(zsnr.sigmas[-1]))
    assert math.isfinite(zsnr.sigma_max) and zsnr.sigma_max > sd.sigma_max
    assert float(zsnr.alphas_cumprod[0]) == pytest.approx(float(sd.alphas_cumprod[0]), rel=1e-12)
    assert math.isfinite(float(sd.sigmas[-1]))
    assert sd.sigma_max == pytest.approx(14.6146, abs=1e-3)


def test_space_timesteps_semantics():
    # the IDDPM docstring example: 300 steps, sections of 10, 15 and 20
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert kept[:2] == [0, 11] and kept[-1] == 299
    assert sum(t < 100 for t in kept) == 10 and sum(100 <= t < 200 for t in kept) == 15
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, 1000) == list(range(1000))
    with pytest.raises(ConfigError, match="cannot take"):
        space_timesteps(10, 11)


@pytest.mark.parametrize("name", ["sd", "zsnr"])
@pytest.mark.parametrize("spacing", ["iddpm", "karras", "trailing", "leading"])
@pytest.mark.parametrize("steps", [1, 10, 50, 400])
def test_timesteps_for_is_strictly_decreasing(name, spacing, steps):
    ts = NoiseSchedule.from_name(name).timesteps_for(steps, spacing)
    assert len(ts) == steps
    assert all(0 <= t <= 999 for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_timesteps_for_spacings():
    sd, zsnr = NoiseSchedule.from_name("sd"), NoiseSchedule.from_name("zsnr")
    assert sd.timesteps_for(10, "iddpm") == sorted(sd.respace(10).timesteps.tolist(), reverse=True)
    assert sd.timesteps_for(10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sd.timesteps_for(4, "leading") == [999, 749, 499, 249]
    k = sd.timesteps_for(10, "karras")
    assert k[0] == 999 and k[-1] == 0
    kz = zsnr.timesteps_for(10, "karras")
    assert kz[0] == 999 and kz[-1] == 0
    # below T-1 the zero-SNR Karras steps stay under SD's sigma_max
    assert float(zsnr.sigmas[kz[1]]) < 16.0
    with pytest.raises(ConfigError, match="spacing"):
        sd.timesteps_for(10, "nope")
    with pytest.raises(ConfigError, match="steps"):
        sd.timesteps_for(0)


@pytest.mark.parametrize("name", ["sd", "zsnr"])
def test_conversions_round_trip(name):
    sched = NoiseSchedule.from_name(name)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 500, 998])
    xt = sched.add_noise(x0, noise, t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    assert torch.allclose(sched.to_x0(xt, noise, t, "eps"), x0, atol=1e-9)
    v = sched.velocity(x0, noise, t)
    assert torch.allclose(sched.to_x0(xt, v, t, "v"), x0, atol=1e-9)
    assert torch.allclose(sched.to_eps(xt, v, t, "v"), noise, atol=1e-9)
    assert torch.allclose(sched.eps_from_x0(xt, x0, t), noise, atol=1e-9)
    # an int timestep broadcasts over the batch, and the dtype follows the tensor
    xf = xt.float()
    assert sched.to_x0(xf, noise.float(), 500, "eps").dtype == torch.float32
    with pytest.raises(ConfigError, match="prediction"):
        sched.to_x0(xt, noise, t, "x0")


def test_schedule_errors():
    with pytest.raises(ConfigError, match="unknown noise schedule"):
        NoiseSchedule.from_name("cosine")
    with pytest.raises(ConfigError):
        NoiseSchedule(torch.tensor([0.5, 1.5]))
    with pytest.raises(ConfigError):
        NoiseSchedule.from_name("sd").spaced([1000])
