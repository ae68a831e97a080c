"""The release's samplers (``edm_*``, ``spaced``, ``ddim``, ``dpm++_m2``) tested alone.

Facts checked against ``../shared/reference/pipeline/README.md`` ("Seeding in
the published code", "Samplers"): the grids, where and how often each sampler
draws, the Brownian-tree entropy. Accuracy is checked on a Gaussian toy
problem whose denoiser and probability-flow ODE solution are known exactly:
data x0 ~ N(MU, S^2) per element, so ``D(x, sigma) = (S^2 x + sigma^2 MU) /
(S^2 + sigma^2)`` and the ODE maps x at sigma_max to ``MU + (x - MU) S /
sqrt(S^2 + sigma_max^2)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate

from diffbir.diffusion import edm, grids
from diffbir.diffusion.denoiser import Denoiser, DenoiserRun, VPDenoiser, ramped_cfg_scale
from diffbir.diffusion.names import canonical, describe_samplers, sampler_names
from diffbir.diffusion.noise import BatchNoise, ImageStream
from diffbir.diffusion.registry import SAMPLERS, SamplerKnobs, grid_timesteps, run_sampler
from diffbir.diffusion.schedule import NoiseSchedule
from diffbir.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pipeline"
MU, S = 0.7, 0.5
CPU = torch.device("cpu")
# the samplers that take a Brownian-tree noise source
BROWNIAN = sorted(name for name, entry in SAMPLERS.items() if "brownian" in entry.knobs)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


@pytest.fixture(scope="module")
def schedules():
    return {name: NoiseSchedule.from_name(name) for name in ("sd", "zsnr")}


# -- helpers -------------------------------------------------------------------------------


def exact_denoiser(x, sigma, inner=False):
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def ode_solution(x, sigma_max):
    return MU + (x - MU) * S / (S**2 + float(sigma_max) ** 2) ** 0.5


def toy_sigmas(n, dtype=torch.float64):
    """A geometric grid of n sigmas from 80 to 0.01, then 0."""
    top = torch.logspace(math.log10(80.0), math.log10(0.01), n, dtype=dtype)
    return torch.cat([top, torch.zeros(1, dtype=dtype)])


def toy_start(shape, dtype=torch.float64, seed=0):
    """z and x at sigma 80 drawn from the exact marginal N(MU, S^2 + 80^2)."""
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return z, MU + (S**2 + 80.0**2) ** 0.5 * z


class CountingNoise:
    """Gaussian draws from a seeded generator, counted."""

    def __init__(self, seed=123):
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0

    def __call__(self, like):
        self.calls += 1
        out = torch.randn(like.shape, generator=self.generator, dtype=torch.float32)
        return out.to(like.dtype)


def brownian_from(seed):
    def make(x, sigmas):
        return edm.BrownianNoise(x, sigmas, [(x.shape[0], torch.Generator().manual_seed(seed))])

    return make


class RecordingModel:
    """A fake network ``model(x, t, context)``: records (t, rows), returns 0.1 x + mean(context)."""

    def __init__(self):
        self.calls = []
        self.contexts = []

    def __call__(self, x, t, context):
        self.calls.append((t.detach().clone(), x.shape[0]))
        self.contexts.append(context)
        shift = context.float().mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return 0.1 * x + shift

    @property
    def times(self):
        return [float(t[0]) for t, _ in self.calls]


def gaussian_network(schedule, steps, prediction):
    """The exact eps/v network of the toy data for the release's EDM grid.

    The Denoiser evaluates every sigma at a grid timestep; the network looks
    that timestep's grid sigma up (sigma_0 = 1e4, not the schedule's own) and
    returns what makes D exact there."""
    sigmas, timesteps = grids.release_sigmas(schedule, steps)
    table = {int(t): float(s) for s, t in zip(sigmas[:-1], timesteps[:-1])}

    def model(x_vp, t, context):
        sigma = table[int(t[0])]
        alpha = (1.0 + sigma**2) ** -0.5
        x_ve = x_vp.double() / alpha
        d = exact_denoiser(x_ve, sigma)
        eps = (x_ve - d) / sigma
        out = eps if prediction == "eps" else alpha * eps - sigma * alpha * d
        return out.float()

    return model


def make_denoiser(model, schedule, prediction="eps", rows=1, **options):
    cond = torch.ones(rows, 3, 8)
    return Denoiser(model, schedule.alphas_cumprod, prediction, cond, **options)


# -- 1. grids ------------------------------------------------------------------------------

RELEASE_GRIDS = {
    "sd": (10000.0, 4.0817, 1.6129, 0.6932, 0.0),
    "zsnr": (10000.0, 5.3987, 1.7681, 0.7271, 0.0),
}


@pytest.mark.parametrize("name", ["sd", "zsnr"])
def test_release_sigmas_match_the_published_grid(schedules, name):
    sigmas, timesteps = grids.release_sigmas(schedules[name], 4)
    assert sigmas.dtype == torch.float32 and timesteps.dtype == torch.long
    assert timesteps.tolist() == [999, 749, 499, 249, 0]
    torch.testing.assert_close(
        sigmas, torch.tensor(RELEASE_GRIDS[name]), rtol=2e-5, atol=1e-4, check_dtype=False
    )
    assert float(sigmas[0]) == 10000.0 and float(sigmas[-1]) == 0.0
    # every other sigma is sqrt((1 - a) / a) at its timestep
    a = schedules[name].alphas_cumprod[timesteps[1:-1]]
    torch.testing.assert_close(sigmas[1:-1].double(), ((1 - a) / a).sqrt(), rtol=1e-6, atol=0)


def test_release_sigmas_timesteps_follow_the_linspace_rule(schedules):
    for steps in (1, 7, 25, 50):
        _, timesteps = grids.release_sigmas(schedules["sd"], steps)
        rule = np.linspace(999, 0, steps, endpoint=False).astype(int).tolist() + [0]
        assert timesteps.tolist() == rule


def test_ddim_timesteps_follow_the_uniform_plus_one_rule(schedules):
    sd = schedules["sd"]
    assert grids.ddim_timesteps(sd, 4) == [751, 501, 251, 1]
    for steps in (6, 7, 50):
        rule = [t + 1 for t in range(0, 1000, 1000 // steps)]
        assert grids.ddim_timesteps(sd, steps) == rule[::-1]
    six = grids.ddim_timesteps(sd, 6)
    assert len(six) == 7 and six[-1] == 1 and six[0] == 997
    with pytest.raises(ConfigError):
        grids.ddim_timesteps(sd, 600)


@pytest.mark.parity
def test_dpm_solver_keeps_the_published_number_of_steps(schedules):
    config = REFERENCE / "config.json"
    if config.exists():
        expected = json.loads(config.read_text())["dpm_solver_total_N_after_lambda_clip"]
        assert expected == {"sd_linear": 1000, "sd_linear_zero_terminal_snr": 986}
    assert grids.DiscreteVPTime(schedules["sd"].betas).total_n == 1000
    assert grids.DiscreteVPTime(schedules["zsnr"].betas).total_n == 986


@pytest.mark.parametrize(
    "name, expected",
    [
        ("sd", [999.0, 749.25, 499.50003, 249.75]),
        ("zsnr", [998.9858, 749.2394, 499.4929, 249.7464]),
    ],
)
def test_dpm_solver_model_times(schedules, name, expected):
    model = RecordingModel()
    den = make_denoiser(model, schedules[name], "v")
    noise = CountingNoise()
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    run_sampler("dpm++_m2", den, x_T, schedules[name], 4, noise=noise)
    assert model.times == pytest.approx(expected, abs=2e-3)
    assert noise.calls == 0


def test_model_timesteps_of_the_vp_and_edm_samplers(schedules):
    sd = schedules["sd"]
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = {
        "spaced": [999, 666, 333, 0],
        "ddim": [751, 501, 251, 1],
        "edm_euler": [999, 749, 499, 249],
        "edm_dpm++_2m": [999, 749, 499, 249],
        # the second evaluation is at the next grid sigma; the last step is Euler
        "edm_heun": [999, 749, 749, 499, 499, 249, 249],
    }
    for name, times in expected.items():
        model = RecordingModel()
        run_sampler(name, make_denoiser(model, sd), x_T, sd, 4, noise=CountingNoise())
        assert model.times == times, name


def test_edm_start_is_x_T_scaled_to_sigma_max(schedules):
    """x = x_T sqrt(1 + 1e8), and c_in = 1/sqrt(sigma^2 + 1) hands the network x_T again."""
    sd = schedules["sd"]
    model = RecordingModel()
    seen = []

    def spy(x, t, context):
        seen.append(x.clone())
        return model(x, t, context)

    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    out = run_sampler("edm_euler", make_denoiser(spy, sd), x_T, sd, 1, noise=CountingNoise())
    torch.testing.assert_close(seen[0], x_T, rtol=1e-5, atol=1e-6)
    # one Euler step from sigma_0 to 0 returns D(x, sigma_0) = x - sigma_0 F (eps)
    x = x_T * math.sqrt(1.0 + 1e8)
    expected = x - 1e4 * (0.1 * x_T + 1.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-2)


# -- 2. LMS coefficients -------------------------------------------------------------------


def lagrange_integral(sigmas, i, order, j):
    def basis(tau):
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        return prod

    return integrate.quad(basis, sigmas[i], sigmas[i + 1], epsabs=1e-13, epsrel=1e-13)[0]


def test_lms_coefficients_are_the_lagrange_integrals():
    rng = np.random.default_rng(0)
    sigmas = np.append(np.sort(rng.uniform(0.05, 15.0, 9))[::-1], 0.0)
    for order in (1, 2, 3, 4):
        for i in range(order - 1, len(sigmas) - 1):
            coeffs = edm.lms_coefficients(sigmas, i, order)
            assert len(coeffs) == order
            expected = [lagrange_integral(sigmas, i, order, j) for j in range(order)]
            np.testing.assert_allclose(coeffs, expected, rtol=0, atol=1e-9)
            # the basis sums to 1, so the weights add up to the step length
            assert sum(coeffs) == pytest.approx(sigmas[i + 1] - sigmas[i], abs=1e-12)
    for i in range(len(sigmas) - 1):
        assert edm.lms_coefficients(sigmas, i, 1) == [sigmas[i + 1] - sigmas[i]]


def test_lms_order_one_is_bitwise_euler(schedules):
    """The reference: edm_lms with order 1 gives bitwise the z of edm_euler."""
    zsnr = schedules["zsnr"]
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    den = make_denoiser(gaussian_network(zsnr, 6, "v"), zsnr, "v")
    lms = run_sampler("edm_lms", den, x_T, zsnr, 6, noise=CountingNoise())
    euler = run_sampler("edm_euler", den, x_T, zsnr, 6, noise=CountingNoise())
    assert torch.equal(lms, euler)
    order3 = run_sampler(
        "edm_lms", den, x_T, zsnr, 6, noise=CountingNoise(), knobs=SamplerKnobs(order=3)
    )
    assert not torch.allclose(order3, euler, atol=1e-3)


# -- 3. the Gaussian toy problem -----------------------------------------------------------

DETERMINISTIC = {
    "euler": (edm.sample_euler, {}),
    "heun": (edm.sample_heun, {}),
    "dpm_2": (edm.sample_dpm_2, {}),
    "lms1": (edm.sample_lms, {"order": 1}),
    "lms2": (edm.sample_lms, {"order": 2}),
    "lms3": (edm.sample_lms, {"order": 3}),
    "lms4": (edm.sample_lms, {"order": 4}),
    "dpmpp_2m": (edm.sample_dpmpp_2m, {}),
    "dpmpp_3m_ode": (edm.sample_dpmpp_3m_sde, {"eta": 0.0, "brownian": brownian_from(0)}),
}
# error(40 steps) / error(20 steps): ~1/2 for first order, <= ~1/4 for second order
FIRST_ORDER = {"euler", "lms1"}


def toy_ode_error(name, steps):
    fn, kwargs = DETERMINISTIC[name]
    z, x = toy_start((1, 4, 16, 16))
    out = fn(exact_denoiser, x, toy_sigmas(steps), noise=CountingNoise(), **kwargs)
    return out, float((out - ode_solution(x, 80.0)).abs().max()), z


@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_samplers_converge_to_the_exact_ode(name):
    _, err_20, _ = toy_ode_error(name, 20)
    out, err_40, z = toy_ode_error(name, 40)
    ratio = err_40 / err_20
    if name in FIRST_ORDER:
        assert 0.4 < ratio < 0.6, ratio
    else:
        assert ratio < 0.35, ratio
    # with many steps: the exact solution of this start, MU + S z
    out, err, _ = toy_ode_error(name, 300 if name in FIRST_ORDER else 100)
    assert err < (0.02 if name in FIRST_ORDER else 5e-3)
    torch.testing.assert_close(out, MU + S * z, atol=0.05, rtol=0)
    assert float(out.mean()) == pytest.approx(float((MU + S * z).mean()), abs=0.01)
    assert float(out.std()) == pytest.approx(S * float(z.std()), rel=0.02)


def test_higher_order_samplers_beat_euler():
    euler = toy_ode_error("euler", 20)[1]
    for name in ("heun", "dpm_2", "dpmpp_2m", "lms3", "lms4", "dpmpp_3m_ode"):
        assert toy_ode_error(name, 20)[1] < 0.35 * euler, name


def test_dpmpp_3m_is_third_order():
    """The 3M extrapolation (eta 0) converges faster than 2M; a wrong d2 term makes it 2nd order."""
    err_40, err_80 = (toy_ode_error("dpmpp_3m_ode", n)[1] for n in (40, 80))
    assert err_80 / err_40 < 0.13
    assert err_80 < 0.3 * toy_ode_error("dpmpp_2m", 80)[1]


@pytest.mark.parametrize("name, prediction", [("sd", "eps"), ("zsnr", "v")])
def test_vp_samplers_on_point_mass_data(schedules, name, prediction):
    """Data x0 = MU exactly: the exact network output keeps eps constant along DDIM's path,
    which ends at a_prev = alphas_cumprod[0] (not 1); spaced DDPM's last step lands on MU."""
    schedule = schedules[name]
    a_all = schedule.alphas_cumprod

    def model(x, t, context):
        a = float(a_all[int(t[0])])
        eps = (x.double() - math.sqrt(a) * MU) / math.sqrt(1.0 - a)
        out = eps if prediction == "eps" else math.sqrt(a) * eps - math.sqrt(1.0 - a) * MU
        return out.float()

    den = make_denoiser(model, schedule, prediction)
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    a_top, a_0 = float(a_all[751]), float(a_all[0])
    eps_T = (x_T.double() - math.sqrt(a_top) * MU) / math.sqrt(1.0 - a_top)
    expected = math.sqrt(a_0) * MU + math.sqrt(1.0 - a_0) * eps_T
    out = run_sampler("ddim", den, x_T, schedule, 4, noise=CountingNoise())
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=0)
    out = run_sampler("spaced", den, x_T, schedule, 4, noise=CountingNoise())
    torch.testing.assert_close(out, torch.full_like(out, MU), atol=1e-4, rtol=0)


def test_float32_run_agrees_with_float64():
    z, x = toy_start((1, 4, 8, 8))
    for name in ("heun", "dpmpp_2m", "lms3"):
        fn, kwargs = DETERMINISTIC[name]
        hi = fn(exact_denoiser, x, toy_sigmas(30), noise=CountingNoise(), **kwargs)
        noise = CountingNoise()
        lo = fn(exact_denoiser, x.float(), toy_sigmas(30, torch.float32), noise=noise, **kwargs)
        assert lo.dtype == torch.float32
        torch.testing.assert_close(lo.double(), hi, atol=1e-4, rtol=0)


STOCHASTIC = {
    "euler_a": (edm.sample_euler_ancestral, {}, 200),
    # first order, and with a fixed gamma the churned Euler step keeps a bias: small gamma
    "euler_churn": (edm.sample_euler, {"s_churn": 40.0}, 800),
    "heun_churn": (edm.sample_heun, {"s_churn": 40.0}, 50),
    "dpm_2_a": (edm.sample_dpm_2_ancestral, {}, 50),
    "dpmpp_2s_a": (edm.sample_dpmpp_2s_ancestral, {}, 50),
    "dpmpp_sde": (edm.sample_dpmpp_sde, {"brownian": brownian_from(1)}, 50),
    "dpmpp_2m_sde": (edm.sample_dpmpp_2m_sde, {"brownian": brownian_from(1)}, 50),
    "dpmpp_3m_sde": (edm.sample_dpmpp_3m_sde, {"brownian": brownian_from(1)}, 50),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_samplers_sample_the_target(name):
    fn, kwargs, steps = STOCHASTIC[name]
    z, x = toy_start((1, 4, 64, 64), torch.float32)
    out = fn(exact_denoiser, x, toy_sigmas(steps, torch.float32), noise=CountingNoise(), **kwargs)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(S, rel=0.03)
    # the noise is really injected: the result is not the ODE solution of its start
    assert float((out - (MU + S * z)).std()) > 0.3 * S


def test_eta_zero_removes_the_noise():
    z, x = toy_start((1, 4, 8, 8))
    sigmas = toy_sigmas(12)

    def run(fn, **kwargs):
        return fn(exact_denoiser, x, sigmas, noise=CountingNoise(), **kwargs)

    assert torch.equal(run(edm.sample_euler_ancestral, eta=0.0), run(edm.sample_euler))
    assert torch.equal(run(edm.sample_dpm_2_ancestral, eta=0.0), run(edm.sample_dpm_2))
    b = brownian_from(5)
    torch.testing.assert_close(
        run(edm.sample_dpmpp_2m_sde, brownian=b, eta=0.0), run(edm.sample_dpmpp_2m)
    )
    torch.testing.assert_close(
        run(edm.sample_dpmpp_sde, brownian=b, eta=0.0),
        run(edm.sample_dpmpp_2s_ancestral, eta=0.0),
    )
    # with noise, they differ
    assert not torch.allclose(run(edm.sample_euler_ancestral), run(edm.sample_euler))


@pytest.mark.parametrize("name, prediction", [("sd", "eps"), ("zsnr", "v")])
def test_run_sampler_with_an_exact_network_solves_the_toy_problem(schedules, name, prediction):
    """Denoiser + release grid + x_T scaling together: LMS(3) on 50 release steps
    lands on the exact ODE solution; Euler converges; the 3M SDE samples the target."""
    schedule = schedules[name]
    x_T = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    x = x_T * torch.sqrt(1.0 + torch.tensor(1e4) ** 2)
    exact = ode_solution(x.double(), 1e4)

    def run(sampler, steps, **knobs):
        den = make_denoiser(gaussian_network(schedule, steps, prediction), schedule, prediction)
        stream = BatchNoise([(1, ImageStream.seeded(3, CPU))])
        return run_sampler(
            sampler,
            den,
            x_T,
            schedule,
            steps,
            noise=stream,
            brownian=stream.brownian,
            knobs=SamplerKnobs(**knobs),
        )

    assert float((run("edm_lms", 50, order=3) - exact).abs().max()) < 5e-3
    err_25 = float((run("edm_euler", 25) - exact).abs().max())
    err_50 = float((run("edm_euler", 50) - exact).abs().max())
    assert err_50 < 0.7 * err_25 < 0.2
    out = run("edm_dpm++_3m_sde", 50)
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(S, rel=0.03)


EDM_FUNCTIONS = sorted(
    {entry.sampler for entry in SAMPLERS.values() if entry.grid is grids.release_sigmas},
    key=lambda fn: fn.__name__,
)


@pytest.mark.parametrize("fn", EDM_FUNCTIONS, ids=lambda fn: fn.__name__)
def test_edm_samplers_report_every_step(fn):
    """The one contract: ``callback(info)`` once per step, x after it; it changes nothing."""
    _, x = toy_start((1, 4, 4, 4))
    sigmas = toy_sigmas(6)
    tree = {"brownian": brownian_from(2)} if fn in {SAMPLERS[n].sampler for n in BROWNIAN} else {}
    seen = []
    out = fn(exact_denoiser, x, sigmas, noise=CountingNoise(), callback=seen.append, **tree)
    assert torch.equal(out, fn(exact_denoiser, x, sigmas, noise=CountingNoise(), **tree))
    assert [info["i"] for info in seen] == list(range(6))
    assert [float(info["sigma"]) for info in seen] == sigmas[:-1].tolist()
    assert torch.equal(seen[-1]["x"], out)


@pytest.mark.parametrize("name", ["spaced", "ddim", "dpm++_m2"])
def test_vp_release_samplers_alone_report_every_step(schedules, name):
    sd = schedules["sd"]
    entry = SAMPLERS[name]
    grid = entry.grid(sd, 4)
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    view = VPDenoiser.of(make_denoiser(RecordingModel(), sd), sd, input_dtype=x_T.dtype)
    seen = []
    out = entry.sampler(view, x_T, grid, noise=CountingNoise(), callback=seen.append)
    den = make_denoiser(RecordingModel(), sd)
    assert torch.equal(out, run_sampler(name, den, x_T, sd, 4, noise=CountingNoise()))
    assert [info["i"] for info in seen] == list(range(4))
    assert [int(round(float(info["t"]))) for info in seen] == grid_timesteps(name, sd, 4)
    assert torch.equal(seen[-1]["x"], out)


# -- 4. draw order and count ---------------------------------------------------------------

STEPS = 5
DRAWS = {
    "edm_euler": STEPS,
    "edm_heun": STEPS,
    "edm_dpm_2": STEPS,
    "edm_euler_a": STEPS - 1,
    "edm_dpm_2_a": STEPS - 1,
    "edm_dpm++_2s_a": STEPS - 1,
    "edm_lms": 0,
    "edm_dpm++_2m": 0,
    "edm_dpm++_sde": 0,
    "edm_dpm++_2m_sde": 0,
    "edm_dpm++_3m_sde": 0,
    "spaced": STEPS,
    "ddim": STEPS,
    "dpm++_m2": 0,
}


@pytest.mark.parametrize("name", list(DRAWS))
def test_gaussian_draws_per_sampler(schedules, name):
    sd = schedules["sd"]
    noise = CountingNoise()
    cpu = torch.Generator().manual_seed(9)
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def brownian(x, sigmas):
        return edm.BrownianNoise(x, sigmas, [(1, cpu)])

    den = make_denoiser(RecordingModel(), sd)
    run_sampler(name, den, x_T, sd, STEPS, noise=noise, brownian=brownian)
    assert noise.calls == DRAWS[name]


def test_churn_and_eta_do_not_change_the_draw_count(schedules):
    sd = schedules["sd"]
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    den = make_denoiser(RecordingModel(), sd)
    for name in ("edm_euler", "edm_heun", "edm_dpm_2"):
        noise = CountingNoise()
        knobs = SamplerKnobs(s_churn=2.0, s_tmin=0.0, s_tmax=1e9)
        run_sampler(name, den, x_T, sd, STEPS, noise=noise, knobs=knobs)
        assert noise.calls == STEPS, name
    for eta in (0.0, 0.5):
        noise = CountingNoise()
        run_sampler("edm_euler_a", den, x_T, sd, STEPS, noise=noise, knobs=SamplerKnobs(eta=eta))
        assert noise.calls == STEPS - 1
    # ddim with 6 steps runs (and draws) 7 times
    noise, model = CountingNoise(), RecordingModel()
    run_sampler("ddim", make_denoiser(model, sd), x_T, sd, 6, noise=noise)
    assert noise.calls == 7 and len(model.calls) == 7


def test_dpm_2_ancestral_draws_only_in_its_midpoint_branch():
    z, x = toy_start((1, 4, 4, 4))
    sigmas = toy_sigmas(6)
    noise = CountingNoise()
    edm.sample_dpm_2_ancestral(exact_denoiser, x, sigmas, noise=noise, eta=1.0)
    assert noise.calls == 5
    # eta so large that sigma_up = sigma_next: sigma_down is 0, Euler branch, no draw
    noise = CountingNoise()
    calls = []

    def counted(x, sigma, inner=False):
        calls.append(float(sigma))
        return exact_denoiser(x, sigma)

    edm.sample_dpm_2_ancestral(counted, x, sigmas, noise=noise, eta=100.0)
    assert noise.calls == 0 and len(calls) == 6


def test_draws_are_used_where_the_release_uses_them(schedules):
    """Unused draws (churn 0, DDIM, spaced's last) do not move the result."""
    sd = schedules["sd"]
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    den = make_denoiser(RecordingModel(), sd)
    for name in ("edm_euler", "edm_heun", "ddim"):
        a = run_sampler(name, den, x_T, sd, STEPS, noise=CountingNoise(1))
        b = run_sampler(name, den, x_T, sd, STEPS, noise=CountingNoise(2))
        assert torch.equal(a, b), name
    for name in ("spaced", "edm_euler_a"):
        a = run_sampler(name, den, x_T, sd, STEPS, noise=CountingNoise(1))
        b = run_sampler(name, den, x_T, sd, STEPS, noise=CountingNoise(2))
        assert not torch.allclose(a, b), name


@pytest.mark.parametrize("name", BROWNIAN)
def test_brownian_samplers_draw_one_entropy_per_group(schedules, name):
    zsnr = schedules["zsnr"]
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    den = make_denoiser(RecordingModel(), zsnr, "v", rows=2)
    # on CPU an image's Gaussian stream and its Brownian seeds share one generator
    streams = [ImageStream.seeded(11, CPU), ImageStream.seeded(12, CPU)]
    batch = BatchNoise([(1, streams[0]), (1, streams[1])])
    run_sampler(name, den, x_T, zsnr, 4, noise=batch, brownian=batch.brownian)
    for seed, stream in zip((11, 12), streams):
        assert stream.device_generator is stream.cpu_generator
        reference = torch.Generator().manual_seed(seed)
        torch.randint(0, 2**63 - 1, [], generator=reference)
        assert torch.equal(stream.cpu_generator.get_state(), reference.get_state())
    # a separate Gaussian source is not touched
    noise = CountingNoise()
    cpu = torch.Generator().manual_seed(13)
    state = noise.generator.get_state()
    run_sampler(
        name,
        den,
        x_T,
        zsnr,
        4,
        noise=noise,
        brownian=lambda x, s: edm.BrownianNoise(x, s, [(2, cpu)]),
    )
    assert noise.calls == 0 and torch.equal(noise.generator.get_state(), state)


# -- 5. Brownian noise ---------------------------------------------------------------------


def test_brownian_entropy_is_the_recorded_one():
    """The reference: after a seed-231 [1,4,64,72] randn the entropy is 4228268526040034098."""
    import torchsde

    g = torch.Generator().manual_seed(231)
    torch.randn([1, 4, 64, 72], generator=g)
    x = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([10000.0, 5.3987, 1.7681, 0.7271, 0.0])
    noise = edm.BrownianNoise(x, sigmas, [(1, g)])
    tree = torchsde.BrownianTree(
        sigmas[3], torch.zeros_like(x), sigmas[0], entropy=4228268526040034098
    )
    got = noise(sigmas[1], sigmas[2])
    torch.testing.assert_close(got, -tree(sigmas[2], sigmas[1]) / (sigmas[1] - sigmas[2]).sqrt())


def test_brownian_increments_are_standard_normal_and_consistent():
    x = torch.zeros(1, 4, 64, 64)
    sigmas = torch.tensor([14.0, 5.0, 2.0, 0.5, 0.0])
    noise = edm.BrownianNoise(x, sigmas, [(1, torch.Generator().manual_seed(4))])
    for a, b in ((14.0, 5.0), (5.0, 0.5), (2.0, 0.5)):
        w = noise(torch.tensor(a), torch.tensor(b))
        assert w.shape == x.shape
        assert abs(float(w.mean())) < 0.03 and float(w.std()) == pytest.approx(1.0, abs=0.03)
    # same seed, same values
    again = edm.BrownianNoise(x, sigmas, [(1, torch.Generator().manual_seed(4))])
    one, two = torch.tensor(5.0), torch.tensor(2.0)
    assert torch.equal(noise(one, two), again(one, two))
    # additivity of the underlying path: W[14 -> 0.5] = W[14 -> 5] + W[5 -> 0.5]
    s = [torch.tensor(v) for v in (14.0, 5.0, 0.5)]

    def w(a, b):
        return noise(a, b) * (a - b).abs().sqrt()

    torch.testing.assert_close(w(s[0], s[2]), w(s[0], s[1]) + w(s[1], s[2]), atol=1e-4, rtol=0)
    # the direction flips the sign
    torch.testing.assert_close(noise(s[1], s[0]), -noise(s[0], s[1]))
    # and an increment is independent of a disjoint one
    corr = torch.corrcoef(torch.stack([w(s[0], s[1]).flatten(), w(s[1], s[2]).flatten()]))
    assert abs(float(corr[0, 1])) < 0.05


def test_brownian_trees_per_group():
    x = torch.zeros(2, 4, 16, 16)
    sigmas = torch.tensor([14.0, 3.0, 0.5, 0.0])
    hi, lo = sigmas[0], sigmas[1]
    # two groups sharing a generator: two trees, two entropies, different rows
    shared = torch.Generator().manual_seed(6)
    two = edm.BrownianNoise(x, sigmas, [(1, shared), (1, shared)])
    assert len(two.trees) == 2
    rows = two(hi, lo)
    assert not torch.allclose(rows[0], rows[1])
    # two groups seeded alike: identical rows, each the 1-row tree of that seed
    alike = edm.BrownianNoise(
        x, sigmas, [(1, torch.Generator().manual_seed(6)), (1, torch.Generator().manual_seed(6))]
    )
    single = edm.BrownianNoise(x[:1], sigmas, [(1, torch.Generator().manual_seed(6))])
    got = alike(hi, lo)
    assert torch.equal(got[0], got[1]) and torch.equal(got[:1], single(hi, lo))
    assert torch.equal(got[0], rows[0])
    # one group of two rows: one tree over both rows, the release's batch layout
    import torchsde

    g = torch.Generator().manual_seed(6)
    group = edm.BrownianNoise(x, sigmas, [(2, g)])
    assert len(group.trees) == 1
    entropy = int(torch.randint(0, 2**63 - 1, [], generator=torch.Generator().manual_seed(6)))
    tree = torchsde.BrownianTree(sigmas[2], torch.zeros_like(x), hi, entropy=entropy)
    torch.testing.assert_close(group(hi, lo), -tree(lo, hi) / (hi - lo).sqrt())
    both = group(hi, lo)
    assert not torch.allclose(both[0], both[1])


# -- 6. BatchNoise -------------------------------------------------------------------------


def test_batch_noise_streams():
    like = torch.empty(2, 4, 8, 8)
    a, b = ImageStream.seeded(7, CPU), ImageStream.seeded(7, CPU)
    assert a.device_generator is a.cpu_generator
    batch = BatchNoise([(1, a), (1, b)])
    assert batch.rows == 2
    first = batch(like)
    assert torch.equal(first[0], first[1])
    alone = BatchNoise([(1, ImageStream.seeded(7, CPU))])
    assert torch.equal(first[:1], alone(like[:1]))
    # streams continue: the second draw is each stream's second draw
    second = batch(like)
    assert torch.equal(second[:1], alone(like[:1]))
    assert not torch.equal(first, second)
    # a group of 2 rows is one randn([2, ...])
    pair = BatchNoise([(2, ImageStream.seeded(7, CPU))])
    expected = torch.randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(7))
    assert torch.equal(pair(like), expected)
    # dtype follows ``like``; rows must match
    assert BatchNoise([(1, ImageStream.seeded(7, CPU))])(like[:1].double()).dtype == torch.float64
    with pytest.raises(RuntimeError, match="rows"):
        batch(torch.empty(3, 4, 8, 8))


def test_batch_noise_brownian_uses_each_groups_cpu_generator():
    x = torch.zeros(2, 4, 8, 8)
    sigmas = torch.tensor([14.0, 3.0, 0.5, 0.0])
    batch = BatchNoise([(1, ImageStream.seeded(8, CPU)), (1, ImageStream.seeded(8, CPU))])
    noise = batch.brownian(x, sigmas)
    single = edm.BrownianNoise(x[:1], sigmas, [(1, torch.Generator().manual_seed(8))])
    got = noise(sigmas[0], sigmas[1])
    assert torch.equal(got[0], got[1])
    assert torch.equal(got[:1], single(sigmas[0], sigmas[1]))


# -- 7. Denoiser ---------------------------------------------------------------------------


def cfg_denoiser(schedule, cfg_scale, uncond=True, **options):
    model = RecordingModel()
    cond = torch.full((2, 3, 8), 2.0)
    un = torch.full((2, 3, 8), 0.5) if uncond else None
    den = Denoiser(model, schedule.alphas_cumprod, "eps", cond, un, cfg_scale, **options)
    return den, model


def test_cfg_calls_and_combination(schedules):
    sd = schedules["sd"]
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for scale, uncond in ((1.0, True), (3.0, False)):
        den, model = cfg_denoiser(sd, scale, uncond)
        out = DenoiserRun(den).model_output(x, 500)
        assert [rows for _, rows in model.calls] == [2]
        assert model.contexts[0] is den.cond  # the conditional branch alone, as given
        torch.testing.assert_close(out, 0.1 * x + 2.0)
    den, model = cfg_denoiser(sd, 3.0)
    run = DenoiserRun(den)
    out = run.model_output(x, 500)
    assert [rows for _, rows in model.calls] == [4]
    assert model.calls[0][0].tolist() == [500] * 4
    assert torch.equal(model.contexts[0], torch.cat([den.cond, den.uncond]))
    # uncond + s (cond - uncond), cond rows first
    torch.testing.assert_close(out, 0.1 * x + 0.5 + 3.0 * (2.0 - 0.5))
    run.model_output(x, 400)
    assert [rows for _, rows in model.calls] == [4, 4]
    assert model.contexts[1] is model.contexts[0]  # the pair is built once per run


def test_a_run_leaves_the_denoiser_as_it_was(schedules):
    """Per-run state (the CFG pair, the step's guidance correction) lives in the run."""
    sd = schedules["sd"]
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    den, _ = cfg_denoiser(sd, 3.0, guidance=lambda x0, t: x0 + 0.01)
    before = dict(vars(den))
    for name in ("edm_heun", "heun", "spaced"):
        run_sampler(name, den, x_T, sd, 3, noise=CountingNoise())
        assert vars(den).keys() == before.keys()
        assert all(vars(den)[k] is v for k, v in before.items()), name


def test_rescaled_cfg(schedules):
    sd = schedules["sd"]
    assert ramped_cfg_scale(3.0, 999) == pytest.approx(1.0, abs=1e-9)
    assert ramped_cfg_scale(3.0, 0) == pytest.approx(4.0)
    mid = 1.0 + 3.0 * (1.0 - math.cos(math.pi * 0.5**5)) / 2.0
    assert ramped_cfg_scale(3.0, 500) == pytest.approx(mid)
    den, _ = cfg_denoiser(sd, 3.0, rescale_cfg=True)
    assert den.cfg_scale_at(0) == pytest.approx(4.0)
    assert den.cfg_scale_at(999) == pytest.approx(1.0, abs=1e-9)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    run = DenoiserRun(den)
    torch.testing.assert_close(run.model_output(x, 0), 0.1 * x + 0.5 + 4.0 * 1.5)
    torch.testing.assert_close(run.model_output(x, 500), 0.1 * x + 0.5 + mid * 1.5)
    # the ramp rises from about 1 at t = 999 to 1 + scale at t = 0
    ramp = [ramped_cfg_scale(4.0, t) for t in range(999, -1, -111)]
    assert ramp == sorted(ramp)
    # not above 1: no ramp, unless the DPM-Solver variant asks for it
    for scale in (1.0, 0.5):
        den, _ = cfg_denoiser(sd, scale, rescale_cfg=True)
        assert den.cfg_scale_at(0) == scale
        den, _ = cfg_denoiser(sd, scale, rescale_cfg=True, rescale_needs_cfg_above_one=False)
        assert den.cfg_scale_at(0) == pytest.approx(1.0 + scale)
    den, _ = cfg_denoiser(sd, 3.0)
    assert den.cfg_scale_at(0) == 3.0


def test_dpm_solver_rescale_with_cfg_one_runs_the_cond_model_only(schedules):
    """The reference: DPM-Solver ramps any scale but 1, and "cfg 1 skips guidance there"."""
    den, model = cfg_denoiser(
        schedules["zsnr"], 1.0, rescale_cfg=True, rescale_needs_cfg_above_one=False
    )
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = DenoiserRun(den).model_output(x, 249.7464)
    assert [rows for _, rows in model.calls] == [2]
    torch.testing.assert_close(out, 0.1 * x + 2.0)


def test_timestep_for_picks_the_nearest_grid_sigma(schedules):
    sigmas, timesteps = grids.release_sigmas(schedules["sd"], 4)
    den = DenoiserRun(make_denoiser(RecordingModel(), schedules["sd"]), sigmas, timesteps)
    midpoint = (sigmas[1] * sigmas[2]).sqrt()  # DPM-2's log midpoint of 4.08 and 1.61: 2.57
    assert int(den.timestep_for(midpoint)) == 499
    assert int(den.timestep_for(sigmas[1] * 1.2)) == 749  # a churned sigma
    assert int(den.timestep_for(torch.tensor(3.0))) == 749
    for s, t in zip(sigmas[:-1], timesteps[:-1]):
        assert int(den.timestep_for(s)) == int(t)
    assert int(den.timestep_for(torch.tensor(0.2))) == 0
    with pytest.raises(ConfigError):
        DenoiserRun(make_denoiser(RecordingModel(), schedules["sd"]))(
            torch.zeros(1, 4, 2, 2), sigmas[1]
        )


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("index", [1, 2, 3])
def test_edm_view_recovers_x0_from_the_exact_output(schedules, prediction, index):
    schedule = schedules["zsnr" if prediction == "v" else "sd"]
    sigmas, timesteps = grids.release_sigmas(schedule, 4)
    gen = torch.Generator().manual_seed(index)
    x0 = torch.randn(1, 4, 8, 8, generator=gen)
    eps = torch.randn(1, 4, 8, 8, generator=gen)
    seen = []

    def model(x_vp, t, context):
        seen.append(int(t[0]))
        a = float(schedule.alphas_cumprod[int(t[0])])
        alpha, sigma_vp = math.sqrt(a), math.sqrt(1.0 - a)
        torch.testing.assert_close(x_vp, alpha * x0 + sigma_vp * eps, rtol=1e-5, atol=1e-5)
        return eps if prediction == "eps" else alpha * eps - sigma_vp * x0

    den = DenoiserRun(make_denoiser(model, schedule, prediction), sigmas, timesteps)
    sigma = sigmas[index]
    got = den(x0 + sigma * eps, sigma)
    assert seen == [int(timesteps[index])]
    torch.testing.assert_close(got, x0, rtol=1e-5, atol=1e-5)


def test_guidance_hook_sees_x0_and_the_grid_timestep(schedules):
    sd = schedules["sd"]
    sigmas, timesteps = grids.release_sigmas(sd, 4)
    hooked = []

    def guidance(x0, t):
        hooked.append(t)
        return x0 + 1.0

    den = make_denoiser(RecordingModel(), sd)
    plain = DenoiserRun(den, sigmas, timesteps)
    guided = DenoiserRun(den.with_options(guidance=guidance), sigmas, timesteps)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(guided(x, sigmas[2] * 1.1), plain(x, sigmas[2] * 1.1) + 1.0)
    assert hooked == [499] and isinstance(hooked[0], int)
    with pytest.raises(ConfigError):
        make_denoiser(RecordingModel(), sd, "x0")


# -- 8. the registry -----------------------------------------------------------------------


def test_registry_names_and_errors(schedules):
    sd, zsnr = schedules["sd"], schedules["zsnr"]
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    den = make_denoiser(RecordingModel(), sd)
    with pytest.raises(ConfigError) as info:
        run_sampler("edm_nonsense", den, x_T, sd, 4, noise=CountingNoise())
    for choice in ("spaced", "ddim", "dpm++_m2", "edm_euler", "edm_dpm++_3m_sde"):
        assert choice in str(info.value)
    assert canonical("ddpm") == "spaced"
    assert set(SAMPLERS) == set(sampler_names())
    assert {"spaced", "ddim", "dpm++_m2"} <= set(sampler_names())
    assert len(describe_samplers().splitlines()) == len(sampler_names())
    alias = run_sampler("ddpm", den, x_T, sd, 4, noise=CountingNoise(5))
    spaced = run_sampler("spaced", den, x_T, sd, 4, noise=CountingNoise(5))
    assert torch.equal(alias, spaced)
    vden = make_denoiser(RecordingModel(), zsnr, "v")
    for name in BROWNIAN:
        with pytest.raises(ConfigError, match="Brownian"):
            run_sampler(name, vden, x_T, zsnr, 4, noise=CountingNoise())
    for name in ("spaced", "ddpm", "ddim", "dpm++_m2", "edm_euler", "edm_dpm++_3m_sde"):
        with pytest.raises(ConfigError):
            run_sampler(name, den, x_T, sd, 4, noise=CountingNoise(), start_step=1)
