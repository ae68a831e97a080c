"""Samplers: recorded trajectories, an analytic Gaussian problem, noise sources, start points.

The analytic problem: data x0 ~ N(MU, S^2) per dimension. Then
x_t ~ N(sqrt(a) MU, a S^2 + 1 - a) and the exact denoiser is
E[x0 | x_t] = MU + sqrt(a) S^2 / (a S^2 + 1 - a) (x_t - sqrt(a) MU), from which the
exact eps and v follow. The probability-flow ODE preserves z-scores, so a
deterministic sampler started at x_T = m_T + sd_T z must end near MU + S z.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir.diffusion import grids, own
from diffbir.diffusion.denoiser import VPDenoiser
from diffbir.diffusion.samplers import (
    SAMPLERS,
    GeneratorNoise,
    RecordedNoise,
    default_spacing,
    prepare_start,
    sample,
    sample_ddpm,
)
from diffbir.diffusion.schedule import NoiseSchedule
from diffbir.errors import ConfigError

MU, S = 1.5, 0.5
SD = NoiseSchedule.from_name("sd")
ZSNR = NoiseSchedule.from_name("zsnr")
FIXTURE = Path(__file__).parent / "fixtures" / "diffusion" / "io.safetensors"


def gaussian_model(schedule: NoiseSchedule, prediction: str):
    """The exact eps/v denoiser of N(MU, S^2) data on ``schedule``."""
    a_all = schedule.alphas_cumprod

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        a = a_all[t].to(torch.float64).view(-1, 1, 1, 1)
        xd = x.to(torch.float64)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (xd - a.sqrt() * MU)
        eps = (xd - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.to(x.dtype)

    return model_fn


def exact_start(schedule: NoiseSchedule, n: int, seed: int = 0):
    """x at t = T-1 drawn from the exact marginal, and its z-scores."""
    a = float(schedule.alphas_cumprod[-1])
    z = torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return math.sqrt(a) * MU + math.sqrt(a * S * S + 1 - a) * z, z


def ode_error(name, schedule, prediction, steps, n=64):
    x, z = exact_start(schedule, n)
    out = sample(
        name, gaussian_model(schedule, prediction), x, schedule, steps, prediction=prediction
    )
    return (out - (MU + S * z)).pow(2).mean().sqrt().item()


# -- golden trajectories ------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "schedule", "prediction"), [("eps", SD, "eps"), ("v", ZSNR, "v")])
def test_spaced_ddpm_reproduces_recorded_trajectory(kind, schedule, prediction):
    io = load_file(FIXTURE)
    c_img = io[f"traj_{kind}_c_img"]

    def toy(x, t):  # the recording's model: tanh(0.5 x + 0.1 c) * t / 1000, t original
        return torch.tanh(0.5 * x + 0.1 * c_img) * (t.float() / 1000).view(-1, 1, 1, 1)

    recorded = RecordedNoise(io[f"traj_{kind}_noise"])
    out = sample_ddpm(
        toy, io[f"traj_{kind}_xT"], schedule, 10, prediction=prediction, noise=recorded
    )
    ref = io[f"traj_{kind}_x0"]
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    assert recorded.used == 10  # one draw per step, the last one unused


def test_trajectory_depends_on_the_noise():
    io = load_file(FIXTURE)
    c_img = io["traj_eps_c_img"]

    def toy(x, t):
        return torch.tanh(0.5 * x + 0.1 * c_img) * (t.float() / 1000).view(-1, 1, 1, 1)

    draws = io["traj_eps_noise"].clone()
    draws[3] = -draws[3]
    out = sample_ddpm(toy, io["traj_eps_xT"], SD, 10, noise=RecordedNoise(draws))
    ref = io["traj_eps_x0"]
    assert ((out - ref).norm() / ref.norm()).item() > 1e-3


# -- analytic Gaussian problem ------------------------------------------------------------

ODE_CASES = [  # sampler, steps it is meant for, RMS tolerance against the exact ODE map
    ("ddim", 50, 0.04),
    ("euler", 30, 0.05),
    ("heun", 15, 0.02),
    ("dpmpp_2m", 15, 0.02),
]


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
@pytest.mark.parametrize(("name", "steps", "tol"), ODE_CASES)
def test_deterministic_samplers_follow_the_exact_ode(schedule, prediction, name, steps, tol):
    x, z = exact_start(schedule, 256)
    out = sample(
        name, gaussian_model(schedule, prediction), x, schedule, steps, prediction=prediction
    )
    target = MU + S * z
    assert (out - target).pow(2).mean().sqrt().item() < tol
    assert abs(out.mean().item() - MU) < 0.03
    assert abs(out.std().item() / S - 1) < 0.08


def test_second_order_solvers_need_fewer_steps():
    for schedule, prediction in [(SD, "eps"), (ZSNR, "v")]:
        euler10 = ode_error("euler", schedule, prediction, 10)
        euler50 = ode_error("euler", schedule, prediction, 50)
        dpm10 = ode_error("dpmpp_2m", schedule, prediction, 10)
        dpm20 = ode_error("dpmpp_2m", schedule, prediction, 20)
        heun20 = ode_error("heun", schedule, prediction, 20)
        assert dpm10 < euler10 / 2
        assert dpm20 < euler50 and heun20 < euler50
        # and the first-order ones converge: 5x the steps, several times less error
        assert euler50 < euler10 / 3


def _ddpm_exact_moments(schedule: NoiseSchedule, steps: int) -> tuple[float, float]:
    """Mean and std of spaced DDPM's output with the exact denoiser (the chain is linear-Gaussian)."""
    chain = schedule.spaced(schedule.timesteps_for(steps, "iddpm"))
    a_all = schedule.alphas_cumprod
    a_T = float(a_all[-1])
    mean, var = math.sqrt(a_T) * MU, a_T * S * S + 1 - a_T
    for index in range(len(chain) - 1, -1, -1):
        a = float(a_all[int(chain.timesteps[index])])
        gain = math.sqrt(a) * S * S / (a * S * S + 1 - a)
        c1, c2 = float(chain.posterior_mean_coef1[index]), float(chain.posterior_mean_coef2[index])
        mean = c1 * (MU + gain * (mean - math.sqrt(a) * MU)) + c2 * mean
        var = (c1 * gain + c2) ** 2 * var + (
            float(chain.posterior_variance[index]) if index else 0.0
        )
    return mean, math.sqrt(var)


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_spaced_ddpm_matches_its_exact_output_distribution(schedule, prediction):
    x, _ = exact_start(schedule, 512)
    out = sample_ddpm(
        gaussian_model(schedule, prediction),
        x,
        schedule,
        50,
        prediction=prediction,
        generator=torch.Generator().manual_seed(1),
    )
    mean, std = _ddpm_exact_moments(schedule, 50)
    assert abs(out.mean().item() - mean) < 0.01
    assert abs(out.std().item() / std - 1) < 0.02
    # 50 "fixed small" steps under-disperse a little; the full 1000-step chain does not
    assert 0.85 * S < std < S
    assert _ddpm_exact_moments(schedule, 1000)[1] == pytest.approx(S, rel=0.02)


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_dpmpp_2m_sde_matches_the_target(schedule, prediction):
    x, z = exact_start(schedule, 512)
    out = sample(
        "dpmpp_2m_sde",
        gaussian_model(schedule, prediction),
        x,
        schedule,
        20,
        prediction=prediction,
        generator=torch.Generator().manual_seed(3),
    )
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / S - 1) < 0.06
    # genuinely stochastic: not the deterministic ODE map of the start
    assert (out - (MU + S * z)).pow(2).mean().sqrt().item() > 0.1


def _std_error(name, schedule, prediction, steps, n=512, seed=3):
    x, _ = exact_start(schedule, n)
    out = sample(
        name,
        gaussian_model(schedule, prediction),
        x,
        schedule,
        steps,
        prediction=prediction,
        generator=torch.Generator().manual_seed(seed),
    )
    return out, abs(out.std().item() / S - 1)


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_dpmpp_3m_sde_matches_the_target(schedule, prediction):
    x, z = exact_start(schedule, 512)
    out, std_err = _std_error("dpmpp_3m_sde", schedule, prediction, 20)
    assert abs(out.mean().item() - MU) < 0.02
    assert std_err < 0.04
    # genuinely stochastic: not the deterministic ODE map of the start
    assert (out - (MU + S * z)).pow(2).mean().sqrt().item() > 0.1
    # at 20 steps the third-order SDE solver is closer to the target spread than 2M SDE
    assert std_err < _std_error("dpmpp_2m_sde", schedule, prediction, 20)[1]


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_dpmpp_3m_sde_spread_converges_with_steps(schedule, prediction):
    # measured std/S with Karras steps: 10 -> 1.35 (sd) / 1.47 (zsnr), 15 -> 1.06 / 1.09,
    # 20 -> 1.02 / 1.02: the 3M extrapolation over-disperses when the steps are few
    errors = [_std_error("dpmpp_3m_sde", schedule, prediction, n)[1] for n in (10, 15, 20, 30)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.2 and errors[-1] < 0.02, errors


def _sigma_view_3m_sde(model_fn, x_vp, schedule, steps, draws, eta, spacing):
    """The 3M SDE recurrence written in the EDM sigma view (x / alpha, sigma = sqrt((1-a)/a)),
    term by term as k-diffusion states it, for a finite-sigma schedule."""
    ts = schedule.timesteps_for(steps, spacing)
    a = [float(schedule.alphas_cumprod[t]) for t in ts]
    sig = [math.sqrt((1 - v) / v) for v in a] + [0.0]
    x = x_vp / math.sqrt(a[0])
    prev = []  # (denoised, h), newest first
    used = 0
    for i, t in enumerate(ts):
        x_vp_i = x * math.sqrt(a[i])
        t_b = torch.full((x.shape[0],), t, dtype=torch.long)
        den = schedule.to_x0(x_vp_i, model_fn(x_vp_i, t_b), t, "eps")
        if sig[i + 1] == 0.0:
            return den, used
        h = math.log(sig[i] / sig[i + 1])
        g = h * (1 + eta)
        x = math.exp(-g) * x + (1 - math.exp(-g)) * den
        phi2 = (math.exp(-g) - 1) / g + 1
        if len(prev) == 2:
            r0, r1 = prev[0][1] / h, prev[1][1] / h
            q0 = (den - prev[0][0]) / r0
            q1 = (prev[0][0] - prev[1][0]) / r1
            x = x + phi2 * (q0 + (q0 - q1) * r0 / (r0 + r1))
            x = x - (phi2 / g - 0.5) * (q0 - q1) / (r0 + r1)
        elif len(prev) == 1:
            x = x + phi2 * (den - prev[0][0]) / (prev[0][1] / h)
        if eta:
            x = x + draws[used] * sig[i + 1] * math.sqrt(1 - math.exp(-2 * eta * h))
            used += 1
        prev = [(den, h), *prev[:1]]
    raise AssertionError("the step list must end at sigma = 0")


@pytest.mark.parametrize(
    ("eta", "steps", "spacing"), [(1.0, 10, "karras"), (0.0, 10, "karras"), (0.5, 15, "leading")]
)
def test_dpmpp_3m_sde_is_the_sigma_view_recurrence(eta, steps, spacing):
    x, _ = exact_start(SD, 4)
    draws = torch.randn(steps, *x.shape, generator=torch.Generator().manual_seed(0)).double()
    model = gaussian_model(SD, "eps")
    ref, used = _sigma_view_3m_sde(model, x, SD, steps, draws, eta, spacing)
    recorded = RecordedNoise(draws)
    out = sample("dpmpp_3m_sde", model, x, SD, steps, eta=eta, spacing=spacing, noise=recorded)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-12
    # one draw per step except the last (to sigma = 0); none at all when eta = 0
    assert recorded.used == used == (steps - 1 if eta else 0)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_dpmpp_3m_sde_first_step_from_zero_snr_is_exact(eta):
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    seen = []
    sample(
        "dpmpp_3m_sde",
        gaussian_model(ZSNR, "v"),
        x,
        ZSNR,
        10,
        prediction="v",
        eta=eta,
        noise=RecordedNoise([z] * 9),
        callback=lambda i, total, xt, x0: seen.append((xt, x0)),
    )
    t1 = ZSNR.timesteps_for(10, "karras")[1]
    a1 = float(ZSNR.alphas_cumprod[t1])
    x1, x0 = seen[0]
    assert torch.allclose(x0, torch.full_like(x0, MU))  # E[x0 | pure noise]
    # eta = 1: alpha' x0_hat + sigma' z (the posterior at a = 0); eta = 0: the DDIM step
    expected = math.sqrt(a1) * x0 + math.sqrt(1 - a1) * (z if eta else x)
    assert torch.allclose(x1, expected, atol=1e-12)


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_dpmpp_3m_ode_error_against_dpmpp_2m(schedule, prediction):
    def err(name, steps, spacing=None, **kw):
        x, z = exact_start(schedule, 64)
        out = sample(
            name,
            gaussian_model(schedule, prediction),
            x,
            schedule,
            steps,
            prediction=prediction,
            spacing=spacing,
            **kw,
        )
        return (out - (MU + S * z)).pow(2).mean().sqrt().item()

    # measured RMS (sd / zsnr), 2M vs 3M ODE: Karras 15 steps 0.012 vs 0.0017 / 0.014 vs 0.0022,
    # 20 steps 0.0063 vs 0.0004 / 0.0068 vs 0.0002; the release's "leading" 10 steps
    # 0.090 vs 0.085 / 0.096 vs 0.091; Karras 10 steps 0.0254 vs 0.0254 / 0.029 vs 0.045
    for steps in (15, 20):
        assert err("dpmpp_3m_sde", steps, eta=0.0) < 0.3 * err("dpmpp_2m", steps)
    assert err("dpmpp_3m_sde", 10, "leading", eta=0.0) < 0.97 * err("dpmpp_2m", 10, "leading")
    assert err("dpmpp_3m_sde", 15, eta=0.0) < 0.005


def test_dpmpp_3m_sde_eta_zero_draws_nothing_and_s_noise_scales_the_draws():
    model = gaussian_model(SD, "eps")
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def refuse(like):
        raise AssertionError("eta = 0 must not draw")

    ode = sample("dpmpp_3m_sde", model, x, SD, 8, eta=0.0, noise=refuse)
    assert torch.isfinite(ode).all()
    silent = sample(
        "dpmpp_3m_sde", model, x, SD, 8, s_noise=0.0, generator=torch.Generator().manual_seed(5)
    )
    zeros = sample("dpmpp_3m_sde", model, x, SD, 8, noise=torch.zeros_like)
    assert torch.allclose(silent, zeros, atol=1e-6)
    assert not torch.allclose(silent, sample("dpmpp_3m_sde", model, x, SD, 8), atol=1e-3)


@pytest.mark.parametrize(("schedule", "prediction"), [(SD, "eps"), (ZSNR, "v")])
def test_ddim_eta_one_is_ancestral_ddpm(schedule, prediction):
    # Song et al.: eta = 1 gives DDPM's posterior; the draws line up (DDPM's last is unused)
    x, _ = exact_start(schedule, 8)
    model = gaussian_model(schedule, prediction)
    ddpm = sample_ddpm(
        model, x, schedule, 20, prediction=prediction, generator=torch.Generator().manual_seed(4)
    )
    ddim = sample(
        "ddim",
        model,
        x,
        schedule,
        20,
        prediction=prediction,
        eta=1.0,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.allclose(ddim, ddpm, atol=1e-6)
    ddim0 = sample("ddim", model, x, schedule, 20, prediction=prediction)
    assert not torch.allclose(ddim0, ddpm, atol=1e-2)


# -- noise sources, determinism, dtypes, callbacks ----------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_seeded_runs_are_reproducible_and_inputs_untouched(name):
    model = gaussian_model(SD, "eps")
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x_copy = x.clone()
    a = sample(name, model, x, SD, 6, generator=torch.Generator().manual_seed(7))
    b = sample(name, model, x, SD, 6, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(x, x_copy)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()


def test_different_seeds_differ_for_stochastic_samplers():
    model = gaussian_model(SD, "eps")
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in ("ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        a = sample(name, model, x, SD, 6, generator=torch.Generator().manual_seed(1))
        b = sample(name, model, x, SD, 6, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(a, b)


def test_default_noise_is_seeded():
    model = gaussian_model(SD, "eps")
    x = torch.zeros(1, 4, 4, 4)
    assert torch.equal(sample_ddpm(model, x, SD, 5), sample_ddpm(model, x, SD, 5))


def test_noise_sources():
    like = torch.empty(2, 3, dtype=torch.bfloat16)
    g1 = GeneratorNoise(torch.Generator().manual_seed(5))
    g2 = GeneratorNoise(torch.Generator().manual_seed(5))
    a, b = g1(like), g2(like.float())
    assert a.dtype == torch.bfloat16 and b.dtype == torch.float32
    assert torch.equal(a, b.to(torch.bfloat16))  # same draws whatever the dtype
    rec = RecordedNoise([torch.ones(2, 3)])
    assert torch.equal(rec(like.float()), torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="exhausted"):
        rec(like)
    with pytest.raises(RuntimeError, match="shape"):
        RecordedNoise([torch.ones(3)])(like)


def test_a_plain_callable_is_a_noise_source():
    calls = []

    def zeros(like):
        calls.append(like.shape)
        return torch.zeros_like(like)

    model = gaussian_model(SD, "eps")
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = sample_ddpm(model, x, SD, 5, noise=zeros)
    assert len(calls) == 5
    # zero draws make DDPM the posterior-mean chain: deterministic and finite
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_low_precision_inputs(name):
    seen = []
    base = gaussian_model(SD, "eps")

    def model(x, t):
        seen.append(x.dtype)
        return base(x, t)

    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = sample(name, model, x, SD, 8)
    ref = sample(name, base, x.float(), SD, 8)
    assert out.dtype == torch.bfloat16 and set(seen) == {torch.bfloat16}
    assert (out.float() - ref).abs().max().item() < 0.1


def test_float64_stays_float64():
    x, _ = exact_start(SD, 1)
    out = sample("dpmpp_2m", gaussian_model(SD, "eps"), x, SD, 10)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step(name):
    events = []
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sample(
        name,
        gaussian_model(SD, "eps"),
        x,
        SD,
        7,
        callback=lambda i, total, xt, x0: events.append((i, total, xt.shape, x0.shape)),
    )
    assert [e[0] for e in events] == list(range(7))
    assert all(e[1] == 7 and e[2] == x.shape and e[3] == x.shape for e in events)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_alone_follows_the_one_contract(name):
    """``sampler(denoiser, x, timesteps, *, noise, callback)``: one info dict per step."""
    model = gaussian_model(SD, "eps")
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    view = VPDenoiser.from_model_fn(model, SD, "eps", input_dtype=x.dtype)
    timesteps = SD.timesteps_for(6, default_spacing(name, SD))
    seen = []
    out = SAMPLERS[name](view, x, timesteps, noise=GeneratorNoise(seed=3), callback=seen.append)
    assert [info["i"] for info in seen] == list(range(6))
    assert [info["t"] for info in seen] == timesteps
    assert torch.equal(seen[-1]["x"], out)  # x after the step
    assert all(info["denoised"].shape == x.shape for info in seen)
    assert torch.equal(out, sample(name, model, x, SD, 6, noise=GeneratorNoise(seed=3)))


def test_model_call_counts():
    cases = [("ddpm", 10, 10), ("euler", 10, 10), ("heun", 10, 19), ("dpmpp_3m_sde", 10, 10)]
    for name, steps, expected in cases:
        calls = []
        base = gaussian_model(SD, "eps")

        def model(x, t, base=base, calls=calls):
            calls.append(int(t[0]))
            return base(x, t)

        sample(name, model, torch.zeros(1, 4, 2, 2), SD, steps)
        assert len(calls) == expected, name
        assert calls[0] == 999


def test_zero_snr_start_is_finite_for_every_sampler():
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for name in SAMPLERS:
        out = sample(name, gaussian_model(ZSNR, "v"), x, ZSNR, 10, prediction="v")
        assert torch.isfinite(out).all(), name


def test_eps_prediction_is_refused_at_zero_snr():
    with pytest.raises(ConfigError, match="prediction='v'"):
        sample("euler", gaussian_model(ZSNR, "eps"), torch.zeros(1, 4, 2, 2), ZSNR, 5)


def test_progress_bar_does_not_change_the_result():
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    model = gaussian_model(SD, "eps")
    assert torch.equal(
        sample("euler", model, x, SD, 3, progress=True), sample("euler", model, x, SD, 3)
    )


def test_sampler_leaves_a_module_untouched():
    net = torch.nn.Conv2d(4, 4, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()

    def model(x, t):
        return net(x) * 0.1

    sample("euler", model, torch.randn(1, 4, 4, 4), SD, 4)
    assert not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


# -- start point and dispatcher -----------------------------------------------------------


def test_prepare_start_pure_noise():
    x, start = prepare_start(None, (2, 4, 8, 8), SD, 10, generator=torch.Generator().manual_seed(0))
    assert start == 0 and x.shape == (2, 4, 8, 8) and x.dtype == torch.float32
    ref = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, ref)
    with pytest.raises(ConfigError, match="strength"):
        prepare_start(None, (1, 4, 8, 8), SD, 10, strength=0.5)
    with pytest.raises(ConfigError, match="strength"):
        prepare_start(torch.zeros(1, 4, 8, 8), None, SD, 10, strength=0.0)


@pytest.mark.parametrize(("strength", "expected_start"), [(1.0, 0), (0.5, 5), (0.3, 7), (0.01, 9)])
def test_prepare_start_from_the_condition(strength, expected_start):
    cond = torch.full((1, 4, 8, 8), 0.7)
    x, start = prepare_start(
        cond, None, SD, 10, strength=strength, generator=torch.Generator().manual_seed(0)
    )
    assert start == expected_start
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = SD.timesteps_for(10, "iddpm")[start]
    assert torch.allclose(x, SD.add_noise(cond, z, t))


def test_start_step_skips_the_first_steps():
    calls = []
    base = gaussian_model(SD, "eps")

    def model(x, t):
        calls.append(int(t[0]))
        return base(x, t)

    spacing = default_spacing("dpmpp_2m", SD)
    assert spacing == "karras" and default_spacing("ddpm", SD) == "iddpm"
    cond = torch.full((1, 4, 4, 4), MU)
    x, start = prepare_start(cond, None, SD, 10, strength=0.4, spacing=spacing)
    out = sample("dpmpp_2m", model, x, SD, 10, start_step=start)
    assert calls == SD.timesteps_for(10, spacing)[start:]
    assert len(calls) == 4
    assert abs(out.mean().item() - MU) < 0.2
    with pytest.raises(ConfigError, match="start_step"):
        sample_ddpm(model, x, SD, 10, start_step=10)


def test_dispatcher():
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    model = gaussian_model(SD, "eps")
    view = VPDenoiser.from_model_fn(model, SD, "eps", input_dtype=x.dtype)
    alone = own.sample_euler(view, x, grids.karras_timesteps(SD, 5), noise=GeneratorNoise())
    assert torch.equal(sample("euler", model, x, SD, 5), alone)
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample("plms", model, x, SD, 5)
    with pytest.raises(ConfigError, match="prediction"):
        sample("ddim", model, x, SD, 5, prediction="x0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_and_tensors():
    model = gaussian_model(SD, "eps")
    x = torch.randn(1, 4, 8, 8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = sample_ddpm(model, x, SD, 5, generator=gen)
    assert out.device.type == "cuda" and torch.isfinite(out).all()


@pytest.mark.parametrize("steps", [3, 9, 27, 37, 111, 332, 333])
def test_ddim_step_counts_whose_grid_leaves_the_schedule_are_one_line(steps):
    """The release's DDIM grid range(0, 1000, 1000 // steps) + 1 reaches t = 1000 for these
    counts (the release fails with an IndexError); we say so before sampling."""
    from diffbir.config.limits import ddim_steps_fit, ddim_steps_near
    from diffbir.config.settings import RestoreOptions
    from diffbir.errors import ConfigError
    from diffbir.restore.factory import resolve_run

    assert not ddim_steps_fit(1000, steps)
    near = ddim_steps_near(1000, steps)
    assert near and all(ddim_steps_fit(1000, n) for n in near)
    with pytest.raises(ConfigError, match=f"with {steps} steps reaches timestep 1000.*try"):
        resolve_run("v1", "sr", RestoreOptions(sampler="ddim", steps=steps))
    assert resolve_run("v1", "sr", RestoreOptions(sampler="ddim", steps=near[-1])).steps == near[-1]
