"""Our samplers (``names.OWN``), and the spaced DDPM and DDIM written the same way.

Each is a short function ``sample_x(denoiser, x, timesteps, *, noise,
callback=None, **knobs)``, the contract of every sampler here (see
:mod:`~diffbir.diffusion.registry`), with no state outside the call:

* ``denoiser(x_t, t) -> (x0_hat, eps_hat)`` at ORIGINAL timestep ``t`` is the
  timestep view (:class:`~diffbir.diffusion.denoiser.VPDenoiser`): latent
  image guidance is already applied to x0_hat and eps recomputed from it,
  ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``, so every solver's update is
  consistent with the corrected x0 (for spaced DDPM this is the paper's
  Algorithm 1: the posterior mean is built from the corrected z0_hat);
  ``denoiser(x, t, inner=True)`` is a step's second evaluation, which reuses
  the step's correction.
* ``x`` is the VP-scaled start point at ``timesteps[0]`` (pure noise is
  N(0, I); a later start is ``prepare_start``'s). The result is the sample x_0
  in ``x``'s dtype and device; the sampler state is float32 (float64 if ``x``
  is float64).
* ``timesteps``: the original timesteps visited, descending
  (:mod:`~diffbir.diffusion.grids`); the step after the last lands on the
  clean end (a = 1, sigma = 0).
* Every Gaussian draw comes from ``noise(like)``. ``callback(info)`` follows
  every step with ``info`` = {i, x (after the step), t, denoised (x0_hat)}.
* Zero-terminal-SNR schedules: at t = T-1 a_t = 0, sigma = inf. All updates are
  written in the VP view with exp(-h) computed as a ratio of finite numbers, so
  the first step from pure noise is exact (it equals the DDIM step); Heun skips
  its second-order correction on a step that starts at infinite sigma.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _begin(denoiser, x: torch.Tensor, timesteps) -> torch.Tensor:
    """``x`` in the working dtype; an eps model cannot start where x0 is undefined."""
    if denoiser.prediction == "eps" and denoiser.a(timesteps[0]) == 0.0:
        raise ConfigError(
            "an eps-prediction model cannot start at zero SNR (x0 is undefined there); "
            "zero-terminal-SNR schedules need prediction='v'"
        )
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _next(timesteps, i: int) -> int:
    """The timestep after step i; -1 is the clean end."""
    return timesteps[i + 1] if i + 1 < len(timesteps) else -1


def _report(callback, i, x, t, x0) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "t": t, "denoised": x0})


def _ratio_exp_neg_h(alpha: float, sigma: float, alpha_next: float, sigma_next: float) -> float:
    """exp(-h) with h = lambda_next - lambda, lambda = log(alpha / sigma), without infinities."""
    den = alpha_next * sigma
    return 0.0 if den == 0.0 else (sigma_next * alpha) / den


@torch.no_grad()
def sample_ddpm(denoiser, x, timesteps, *, noise, callback=None):
    """Spaced DDPM, the DiffBIR paper's sampler (IDDPM respacing, Nichol & Dhariwal 2021).

    Ancestral sampling of the respaced chain: x0_hat from the model, the posterior
    q(x_{i-1} | x_i, x0_hat) with ``posterior_mean_coef1/2`` and the "fixed small"
    variance ``beta'_i (1 - a'_{i-1}) / (1 - a'_i)`` (its clipped log variance equals
    log of it wherever the variance is nonzero). One Gaussian is drawn at EVERY step,
    the last one unused (the published code does the same, so recorded draws line up).
    The chain is that of ``timesteps``: a later start keeps the coefficients of the
    steps it visits.
    """
    xt = _begin(denoiser, x, timesteps)
    chain = denoiser.schedule.spaced(timesteps)
    std = chain.posterior_log_variance_clipped.mul(0.5).exp()
    # the v2 release divides the guidance step by coef1 (see LatentGuidance)
    rescale = getattr(denoiser.guidance, "rescale_by_posterior", False)
    for i, t in enumerate(timesteps):
        index = len(chain) - 1 - i
        step_scale = 1.0 / float(chain.posterior_mean_coef1[index]) if rescale else 1.0
        x0, _ = denoiser(xt, t, step_scale)
        mean = chain.posterior_mean(x0, xt, index)
        z = noise(xt)
        xt = mean + float(std[index]) * z if index > 0 else mean
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_ddim(denoiser, x, timesteps, *, noise, callback=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): x' = sqrt(a') x0 + sqrt(1 - a' - s^2) eps + s z.

    ``s = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; eta = 0 is deterministic,
    eta = 1 matches DDPM's posterior variance. The last step lands on x0_hat (a' = 1).
    """
    xt = _begin(denoiser, x, timesteps)
    for i, t in enumerate(timesteps):
        x0, eps = denoiser(xt, t)
        a, a_next = denoiser.a(t), denoiser.a(_next(timesteps, i))
        s = 0.0
        if eta > 0 and a_next < 1.0:
            s = eta * math.sqrt((1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next))
        xt = math.sqrt(a_next) * x0 + math.sqrt(max(1.0 - a_next - s * s, 0.0)) * eps
        if s > 0:
            xt = xt + s * noise(xt)
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_euler(denoiser, x, timesteps, *, noise, callback=None):
    """Euler on the probability-flow ODE in the Karras/EDM sigma view (Karras et al. 2022, Alg. 2, no churn).

    In sigma space x/alpha = x0 + sigma eps, dx/dsigma = eps_hat, so one step is
    ``x'/alpha' = x0_hat + sigma' eps_hat`` (written so an infinite sigma is fine).
    Deterministic: ``noise`` is never drawn.
    """
    del noise
    xt = _begin(denoiser, x, timesteps)
    for i, t in enumerate(timesteps):
        x0, eps = denoiser(xt, t)
        alpha_n, sigma_n = denoiser.alpha_sigma(_next(timesteps, i))
        xt = alpha_n * x0 + sigma_n * eps
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_heun(denoiser, x, timesteps, *, noise, callback=None):
    """Heun's 2nd-order method in the EDM sigma view (Karras et al. 2022, Alg. 1, no churn).

    Euler predictor to sigma', model at sigma' (a discrete timestep, so no
    fractional t), trapezoidal corrector on eps. The last step (to sigma = 0) and
    a step from an infinite sigma (zero-SNR start) are plain Euler steps.
    Costs 2 model calls per step except those. Deterministic.
    """
    del noise
    xt = _begin(denoiser, x, timesteps)
    for i, t in enumerate(timesteps):
        t_next = _next(timesteps, i)
        x0, eps = denoiser(xt, t)
        alpha, sigma = denoiser.alpha_sigma(t)
        alpha_n, sigma_n = denoiser.alpha_sigma(t_next)
        x_euler = alpha_n * x0 + sigma_n * eps
        if t_next < 0 or alpha == 0.0:
            xt = x_euler
        else:
            _, eps2 = denoiser(x_euler, t_next, inner=True)
            # trapezoid on d(x/alpha)/dsigma = eps between the two VE sigmas
            s_ve, s_ve_n = sigma / alpha, sigma_n / alpha_n
            xt = alpha_n * (xt / alpha + 0.5 * (eps + eps2) * (s_ve_n - s_ve))
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, timesteps, *, noise, callback=None):
    """DPM-Solver++(2M), multistep 2nd order in data prediction (Lu et al. 2022, Alg. 2).

    With lambda = log(alpha / sigma), h = lambda' - lambda, r = h_prev / h:
    ``x' = (sigma'/sigma) x - alpha' (exp(-h) - 1) D``, D = x0_hat on the first step
    and ``(1 + 1/(2r)) x0_hat - 1/(2r) x0_prev`` after; the step to sigma = 0 returns
    x0_hat (as k-diffusion). Deterministic.
    """
    del noise
    xt = _begin(denoiser, x, timesteps)
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        t_next = _next(timesteps, i)
        x0, _ = denoiser(xt, t)
        alpha, sigma = denoiser.alpha_sigma(t)
        alpha_n, sigma_n = denoiser.alpha_sigma(t_next)
        if t_next < 0:
            xt = x0
        else:
            e = _ratio_exp_neg_h(alpha, sigma, alpha_n, sigma_n)
            h = -math.log(e) if e > 0 else math.inf
            d = x0
            if x0_prev is not None and math.isfinite(h_prev):
                half_inv_r = h / (2.0 * h_prev)
                d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev
            xt = (sigma_n / sigma) * xt + alpha_n * (1.0 - e) * d
            x0_prev, h_prev = x0, h
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser, x, timesteps, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2M) SDE, midpoint variant (Lu et al. 2022, SDE-DPM-Solver++; as k-diffusion).

    With h = lambda' - lambda and eta_h = eta h, in the VP view:
    ``x' = (sigma'/sigma) e^{-eta_h} x + alpha' (1 - e^{-h-eta_h}) x0_hat
    + 0.5 alpha' (1 - e^{-h-eta_h}) / r (x0_hat - x0_prev) + sigma' sqrt(1 - e^{-2 eta_h}) s_noise z``.
    Independent Gaussian draws per step from the noise source (k-diffusion uses a
    Brownian tree; with a fixed step list this is the same in distribution).
    The step to sigma = 0 returns x0_hat.
    """
    return _dpmpp_sde(
        denoiser, x, timesteps, noise, callback, eta, s_noise, _2m_correction, depth=1
    )


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser, x, timesteps, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: third-order multistep in data prediction (the v2.1 release default).

    DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models") with the SDE noise of its SDE-DPM-Solver++ and the
    3-step multistep extrapolation of k-diffusion's ``sample_dpmpp_3m_sde`` (the solver the
    DiffBIR v2.1 release runs as ``edm_dpm++_3m_sde``, eta = s_noise = 1). In the VP view,
    with h = lambda' - lambda, g = (1 + eta) h and D0, D1, D2 the current and two previous
    x0_hat (step lengths h, h1, h2):

    ``x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-g}) D0 + alpha' (p2 d1 - p3 d2)
    + sigma' sqrt(1 - e^{-2 eta h}) s_noise z``,

    ``p2 = 1 - (1 - e^{-g}) / g``, ``p3 = p2 / g - 1/2``, and the divided differences
    ``d1_0 = (D0 - D1) h / h1``, ``d1_1 = (D1 - D2) h / h2``,
    ``d1 = d1_0 + (d1_0 - d1_1) h1 / (h1 + h2)``, ``d2 = (d1_0 - d1_1) h / (h1 + h2)``.
    With one previous x0_hat only, the correction is ``p2 d1_0`` (second order); on the
    first step, and right after a step from infinite sigma (zero-SNR start, where
    differences in lambda are undefined), none. eta = 0 is the deterministic 3M ODE
    solver. The step to sigma = 0 returns x0_hat. Independent Gaussian draws per step from
    the noise source (k-diffusion uses a Brownian tree; same law for a fixed step list).
    """
    return _dpmpp_sde(
        denoiser, x, timesteps, noise, callback, eta, s_noise, _3m_correction, depth=2
    )


def _dpmpp_sde(denoiser, x, timesteps, noise, callback, eta, s_noise, correction, *, depth):
    """The loop of the multistep DPM-Solver++ SDE samplers, ``depth`` earlier x0_hat kept.

    The history holds ``(x0_hat, h)`` of the last ``depth`` steps, newest first; a step
    from infinite sigma leaves no usable difference behind it, so it empties the history.
    """
    xt = _begin(denoiser, x, timesteps)
    history: list[tuple[torch.Tensor, float]] = []
    for i, t in enumerate(timesteps):
        t_next = _next(timesteps, i)
        x0, _ = denoiser(xt, t)
        if t_next < 0:
            xt = x0
        else:
            step = (denoiser.alpha_sigma(t), denoiser.alpha_sigma(t_next))
            xt, h = _sde_step(xt, x0, step, history, noise, eta, s_noise, correction)
            history = [(x0, h), *history[: depth - 1]] if math.isfinite(h) else []
        _report(callback, i, xt, t, x0)
    return xt.to(dtype=x.dtype, device=x.device)


def _sde_step(xt, x0, step, history, noise, eta, s_noise, correction):
    """One DPM-Solver++ SDE step (Lu et al. 2022) to sigma' > 0: ``(x', h)``.

    ``x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-h-eta h}) x0_hat``, plus the
    multistep ``correction`` when there is history, plus ``sigma' sqrt(1 - e^{-2 eta h})
    s_noise z``; ``step`` is ``((alpha, sigma), (alpha', sigma'))``.
    """
    (alpha, sigma), (alpha_n, sigma_n) = step
    e = _ratio_exp_neg_h(alpha, sigma, alpha_n, sigma_n)  # exp(-h)
    h = -math.log(e) if e > 0 else math.inf
    e_eta = e**eta if eta > 0 else 1.0  # exp(-eta h)
    gain = 1.0 - e * e_eta  # 1 - exp(-h - eta h)
    new = (sigma_n / sigma) * e_eta * xt + alpha_n * gain * x0
    if history:  # h is finite here: only the first visited step can start at sigma = inf
        new = new + correction(alpha_n, x0, h, gain, eta, history)
    if eta > 0:
        new = new + sigma_n * math.sqrt(max(1.0 - e_eta * e_eta, 0.0)) * s_noise * noise(xt)
    return new, h


def _2m_correction(alpha_n: float, x0, h: float, gain: float, eta: float, history):
    """``0.5 alpha' (1 - e^{-h-eta h}) / r (x0_hat - x0_prev)`` of the 2M step, r = h_prev / h."""
    del eta
    ((x0_1, h_1),) = history
    return 0.5 * alpha_n * gain * (h / h_1) * (x0 - x0_1)


def _3m_correction(alpha_n: float, x0, h: float, gain: float, eta: float, history):
    """``alpha' (p2 d1 - p3 d2)`` of the 3M step (``alpha' p2 d1_0`` with one previous
    estimate); the products keep this order, which fixes the float rounding."""
    del gain  # p2 is written with expm1(-g), as k-diffusion writes it
    g = h * (1.0 + eta)
    p2 = 1.0 + math.expm1(-g) / g
    (x0_1, h_1), older = history[0], history[1:]
    d1_0 = (x0 - x0_1) * (h / h_1)
    if not older:
        return alpha_n * p2 * d1_0
    x0_2, h_2 = older[0]
    d1_1 = (x0_1 - x0_2) * (h / h_2)
    d1 = d1_0 + (d1_0 - d1_1) * (h_1 / (h_1 + h_2))
    d2 = (d1_0 - d1_1) * (h / (h_1 + h_2))
    p3 = p2 / g - 0.5
    return alpha_n * (p2 * d1 - p3 * d2)
