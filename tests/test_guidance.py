"""Latent image guidance: exactness at scale 0, monotone fidelity, range, repeat, pixel space."""

from __future__ import annotations

import pytest
import torch

from diffbir.diffusion.guidance import LatentGuidance, edge_weight_map
from diffbir.diffusion.samplers import SAMPLERS, sample, sample_ddpm
from diffbir.diffusion.schedule import NoiseSchedule
from diffbir.errors import ConfigError

SD = NoiseSchedule.from_name("sd")
MU, S = 0.0, 1.0


def gaussian_eps_model(x, t):
    """Exact eps denoiser for N(MU, S^2) data on the SD schedule."""
    a = SD.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
    x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
    return (x - a.sqrt() * x0) / (1 - a).sqrt()


def _target():
    g = torch.Generator().manual_seed(11)
    return torch.randn(1, 4, 8, 8, generator=g) * 0.5 + 1.0


def _start():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


class CountingGuidance(LatentGuidance):
    """Records the timestep of every loss evaluation (one per gradient step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []
        self._t = None

    def __call__(self, x0, t, step_scale=1.0):
        self._t = int(t)
        self.step_scales = [*getattr(self, "step_scales", []), step_scale]
        return super().__call__(x0, t, step_scale)

    def distance(self, x0, target=None):
        self.seen.append(self._t)
        return super().distance(x0, target)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_scale_zero_is_exactly_no_guidance(name):
    target = _target()
    kwargs = {"generator": torch.Generator().manual_seed(1)}
    plain = sample(name, gaussian_eps_model, _start(), SD, 8, **kwargs)
    kwargs = {"generator": torch.Generator().manual_seed(1)}
    guided = sample(
        name, gaussian_eps_model, _start(), SD, 8, guidance=LatentGuidance(target, 0.0), **kwargs
    )
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_distance_to_target_falls_as_scale_rises(name):
    target = _target()
    distances = []
    for scale in (0.0, 5.0, 20.0, 50.0, 100.0):
        out = sample(
            name,
            gaussian_eps_model,
            _start(),
            SD,
            10,
            guidance=LatentGuidance(target, scale),
            generator=torch.Generator().manual_seed(2),
        )
        distances.append((out - target).pow(2).mean().item())
    assert all(a > b for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.5 * distances[0]


def test_timestep_range_is_respected():
    # ddpm 10 steps visits 999, 888, ..., 111, 0; the release's rule: stop < t + 1 < start
    guidance = CountingGuidance(_target(), 10.0, start=500, stop=200, repeat=1)
    sample_ddpm(gaussian_eps_model, _start(), SD, 10, guidance=guidance)
    assert guidance.seen == [444, 333, 222]
    assert guidance.active(499) is False and guidance.active(498) is True
    assert guidance.active(199) is False and guidance.active(200) is True
    full = CountingGuidance(_target(), 10.0)
    sample_ddpm(gaussian_eps_model, _start(), SD, 10, guidance=full)
    assert full.seen == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_repeat_count_is_respected():
    guidance = CountingGuidance(_target(), 10.0, start=500, stop=200, repeat=3)
    sample_ddpm(gaussian_eps_model, _start(), SD, 10, guidance=guidance)
    assert guidance.seen == [444] * 3 + [333] * 3 + [222] * 3


@pytest.mark.parametrize("repeat", [1, 2, 5])
def test_latent_step_is_the_papers_gradient_step(repeat):
    # D = ||z - y||^2 / n  =>  z - s grad D = y + (1 - 2 s / n)(z - y), k times
    target = _target()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    n = 4 * 8 * 8
    scale = 20.0
    out = LatentGuidance(target, scale, repeat=repeat)(z, 500)
    expected = target + (1 - 2 * scale / n) ** repeat * (z - target)
    assert torch.allclose(out, expected, atol=1e-5)
    # per-sample loss: one sample's step does not depend on the other
    alone = LatentGuidance(target, scale, repeat=repeat)(z[:1], 500)
    assert torch.allclose(out[:1], alone, atol=1e-6)


def test_release_v2_posterior_rescale_in_spaced_ddpm():
    target = _target()
    guidance = CountingGuidance(target, 10.0, rescale_by_posterior=True)
    sample_ddpm(gaussian_eps_model, _start(), SD, 10, guidance=guidance)
    coef1 = SD.respace(10).posterior_mean_coef1.flip(0)
    assert guidance.step_scales == pytest.approx((1.0 / coef1).tolist())
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = LatentGuidance(target, 10.0)
    assert torch.allclose(plain(z, 5, step_scale=2.0), LatentGuidance(target, 20.0)(z, 5))


def test_guidance_works_under_no_grad_and_refuses_inference_mode():
    target = _target()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = LatentGuidance(target, 5.0)(z, 10)
    assert not out.requires_grad and not torch.equal(out, z)
    with torch.inference_mode():
        zi = torch.randn(1, 4, 8, 8)
        with pytest.raises(RuntimeError, match="inference_mode"):
            LatentGuidance(target, 5.0)(zi, 10)


class TinyDecoder(torch.nn.Module):
    """latent [B,4,h,w] -> image [B,3,2h,2w] in [0, 1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, z):
        return torch.sigmoid(self.conv(torch.nn.functional.interpolate(z, scale_factor=2)))


def test_pixel_space_backpropagates_through_the_decoder():
    decoder = TinyDecoder()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    guidance = LatentGuidance(None, 2.0, space="pixel", decode=decoder, pixel_target=image)
    with torch.no_grad():
        out = guidance(z, 300)
    # the same step by hand: the loss on the [-1, 1] scale, gradient w.r.t. the latent
    zz = z.clone().requires_grad_(True)
    loss = ((decoder(zz) * 2 - 1) - (image * 2 - 1)).pow(2).mean()
    (grad,) = torch.autograd.grad(loss, zz)
    assert grad.abs().sum() > 0
    assert torch.allclose(out, z - 2.0 * grad, atol=1e-6)
    assert all(p.grad is None for p in decoder.parameters())  # the decoder is left untouched
    before = guidance.distance(z).item()
    assert guidance.distance(out).item() < before


def test_pixel_guidance_in_a_sampler_moves_toward_the_image():
    decoder = TinyDecoder()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))

    def pixel_error(latent):
        with torch.no_grad():
            return (decoder(latent) - image).pow(2).mean().item()

    errors = []
    for loss in ("mse", "weighted_mse"):
        plain = sample("dpmpp_2m", gaussian_eps_model, _start(), SD, 10)
        guided = sample(
            "dpmpp_2m",
            gaussian_eps_model,
            _start(),
            SD,
            10,
            guidance=LatentGuidance(
                None, 50.0, space="pixel", loss=loss, decode=decoder, pixel_target=image
            ),
        )
        errors.append((pixel_error(plain), pixel_error(guided)))
    assert all(g < p for p, g in errors), errors


def test_edge_weights():
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert torch.allclose(edge_weight_map(flat), torch.ones(1, 1, 8, 8))
    edge = torch.zeros(1, 3, 8, 9)  # odd width: padded then cropped back
    edge[..., 5:] = 1.0
    w = edge_weight_map(edge)
    assert w.shape == (1, 1, 8, 9)
    assert w[..., 0].min() == 1.0  # far from the edge: follow I_reg fully
    assert w[..., 4:6].max() < 0.01  # on the edge: left free (1 - tanh(large))
    assert (w >= 0).all() and (w <= 1).all()
    # constant over 2x2 blocks, as the release computes it
    assert torch.equal(w[..., 0::2, 0:8:2], w[..., 1::2, 1:8:2])
    with pytest.raises(ConfigError, match="RGB"):
        edge_weight_map(torch.zeros(1, 4, 8, 8))


def test_weighted_loss_ignores_errors_on_edges():
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    ident = torch.nn.Identity()
    g = LatentGuidance(
        None, 1.0, space="pixel", loss="weighted_mse", decode=ident, pixel_target=edge
    )
    off_edge = edge.clone()
    off_edge[..., 3:5] += 0.3  # errors only on the edge columns
    off_flat = edge.clone()
    off_flat[..., 0:2] += 0.3  # the same error in a flat region
    assert g.distance(off_edge).item() < 0.05 * g.distance(off_flat).item()


def test_configuration_errors():
    t = _target()
    with pytest.raises(ConfigError, match="pixel_target to find the edges"):
        LatentGuidance(t, 1.0, loss="weighted_mse")
    with pytest.raises(ConfigError, match="mask"):
        LatentGuidance(t, 1.0, mask=torch.ones(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="decode"):
        LatentGuidance(None, 1.0, space="pixel", pixel_target=torch.rand(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="pixel_target"):
        LatentGuidance(None, 1.0, space="pixel", decode=torch.nn.Identity())
    with pytest.raises(ConfigError, match="target latent"):
        LatentGuidance(None, 1.0)
    with pytest.raises(ConfigError, match="space"):
        LatentGuidance(t, 1.0, space="rgb")
    with pytest.raises(ConfigError, match="scale"):
        LatentGuidance(t, -1.0)
    with pytest.raises(ConfigError, match="repeat"):
        LatentGuidance(t, 1.0, repeat=0)


def test_release_units_fraction_of_the_gap_and_overshoot_warning():
    from diffbir.diffusion.guidance import release_step_rescale

    grid = SD.timesteps_for(50, "iddpm")
    rescale = release_step_rescale(SD.alphas_cumprod, grid)
    # the spaced chain's 1/coef1: 1 at the last step (to the clean end)
    assert rescale(0) == pytest.approx(1.0 / SD.respace(50).posterior_mean_coef1[0].item())
    target = torch.zeros(1, 4, 64, 64)  # a 512x512 image's latent
    # v2's --g_scale 0.01 at 512x512 with 50 spaced steps: the first step moves the
    # estimate 22% of the way to the target, the last 0.4%
    g = LatentGuidance(target, 3000 * 0.01, step_rescale=rescale)
    assert g.max_fraction() == pytest.approx(0.2237, rel=1e-3)
    with pytest.warns(UserWarning, match="overshoots"):
        LatentGuidance(target, 3000 * 0.1, step_rescale=rescale)
    # skipping the noisiest steps removes the overshoot
    late = LatentGuidance(target, 3000 * 0.1, step_rescale=rescale, start=300)
    assert late.max_fraction() < 1.0
