"""The EDM-family samplers of the DiffBIR release (its ``edm_*`` names), sigma view.

Each sampler is a short function ``sample_x(denoiser, x, sigmas, *, noise,
callback=None, **knobs)`` in the manner of k-diffusion's ``sampling.py``:
``denoiser(x, sigma)`` is the denoised estimate
(:class:`~diffbir.diffusion.denoiser.DenoiserRun`), ``x`` the
variance-exploding start ``x_T * sqrt(1 + sigmas[0]^2)``
(``denoiser(x, sigma, inner=True)`` marks a step's second evaluation: a midpoint
or corrector, which reuses the step's guidance correction), ``sigmas`` a
descending float32 grid ending in 0 (:func:`~diffbir.diffusion.grids.release_sigmas`
gives the release's), ``noise(like)`` a standard Gaussian draw and, for the
SDE solvers, ``brownian(x, sigmas)`` a Brownian-tree noise sampler.
``callback(info)`` follows every step with ``info`` = {i, x (after the step),
sigma, denoised}. Scalars are kept as float32 tensors, as the release computes
them, so results agree to float rounding. Every sampler draws exactly where
the release draws (also draws it then discards), so a seed gives the
release's image.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

INF = float("inf")


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step (Song et al. 2021's DDPM-like noise split)."""
    if not eta:
        return sigma_next, 0.0
    up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    up = torch.minimum(sigma_next, up)
    return (sigma_next**2 - up**2) ** 0.5, up


def _churn(x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. 2022, Alg. 2 lines 4-6: raise sigma by gamma, adding matching noise.

    The release draws the Gaussian every step, even when gamma is 0."""
    gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
    eps = noise(x) * s_noise
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def _report(callback, i, x, sigma, denoised) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


def sample_euler(
    denoiser, x, sigmas, *, noise, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0
):
    """Euler steps with optional churn (Karras et al. 2022, Algorithm 2)."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        x = x + d * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_heun(
    denoiser, x, sigmas, *, noise, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0
):
    """Heun's second-order steps with optional churn (Karras et al. 2022, Algorithm 2)."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:  # the last step is Euler's
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, sigmas[i + 1], inner=True)) / sigmas[i + 1]
            x = x + (d + d_2) / 2 * dt
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpm_2(
    denoiser, x, sigmas, *, noise, callback=None, s_churn=0.0, s_tmin=0.0, s_tmax=INF, s_noise=1.0
):
    """DPM-Solver-2 midpoint steps in log sigma (Lu et al. 2022 with Karras et al.'s churn)."""
    n = len(sigmas) - 1
    for i in range(n):
        x, sigma_hat = _churn(x, sigmas[i], n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoiser(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        if sigmas[i + 1] == 0:  # the last step is Euler's
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = (x_2 - denoiser(x_2, sigma_mid, inner=True)) / sigma_mid
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_euler_ancestral(denoiser, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral Euler (k-diffusion; Song et al. 2021's noise split): an Euler step down to
    sigma_down, then fresh noise up to sigma_next."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + (x - denoised) / sigmas[i] * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(x) * s_noise * up
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpm_2_ancestral(denoiser, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral DPM-Solver-2 (Lu et al. 2022, as k-diffusion): a midpoint step down to
    sigma_down, then fresh noise; a step down to 0 is Euler's and draws nothing."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = (x - denoised) / sigmas[i]
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = (x_2 - denoiser(x_2, sigma_mid, inner=True)) / sigma_mid
            x = x + d_2 * (down - sigmas[i])
            x = x + noise(x) * s_noise * up
        _report(callback, i, x, sigmas[i], denoised)
    return x


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Adams-Bashforth weights: integrals over [sigma_i, sigma_{i+1}] of the Lagrange
    basis polynomials through the last ``order`` sigmas (exact Gauss-Legendre
    quadrature; the integrand has degree order - 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    lo, hi = float(sigmas[i]), float(sigmas[i + 1])
    taus = (hi - lo) / 2 * nodes + (hi + lo) / 2
    out = []
    for j in range(order):
        basis = np.ones_like(taus)
        for k in range(order):
            if k != j:
                basis *= (taus - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
        out.append(float((hi - lo) / 2 * np.sum(weights * basis)))
    return out


def sample_lms(denoiser, x, sigmas, *, noise, callback=None, order=4):
    """Linear multistep (Adams-Bashforth) on the ODE dx/dsigma = (x - D) / sigma (as k-diffusion)."""
    del noise  # deterministic
    sigmas_np = sigmas.detach().cpu().double().numpy()
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        history.append((x - denoised) / sigmas[i])
        history = history[-order:]
        k = min(i + 1, order)
        coeffs = lms_coefficients(sigmas_np, i, k)
        x = x + sum(c * d for c, d in zip(coeffs, reversed(history), strict=False))
        _report(callback, i, x, sigmas[i], denoised)
    return x


def _t(sigma):  # half log-SNR time of DPM-Solver: t = -log sigma
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, noise, callback=None, eta=1.0, s_noise=1.0):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++"), single-step, midpoint r = 1/2."""
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + (x - denoised) / sigmas[i] * (down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = denoiser(x_2, _sigma(s), inner=True)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(x) * s_noise * up
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpmpp_sde(
    denoiser, x, sigmas, *, noise, brownian, callback=None, eta=1.0, s_noise=1.0, r=0.5
):
    """Stochastic DPM-Solver++ (SDE-DPM-Solver++(2S), Lu et al. 2022) with Brownian-tree noise."""
    del noise  # every draw comes from the tree
    tree = brownian(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            _report(callback, i, x, sigmas[i], denoised)
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        down, up = ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(down)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + tree(_sigma(t), _sigma(s)) * s_noise * up
        denoised_2 = denoiser(x_2, _sigma(s), inner=True)
        down, up = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(down)
        mixed = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * mixed
        x = x + tree(_sigma(t), _sigma(t_next)) * s_noise * up
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, *, noise, callback=None):
    """DPM-Solver++(2M), multistep second order (Lu et al. 2022), deterministic."""
    del noise
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if previous is None or sigmas[i + 1] == 0:
            mixed = denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            mixed = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * mixed
        previous = denoised
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpmpp_2m_sde(
    denoiser, x, sigmas, *, noise, brownian, callback=None, eta=1.0, s_noise=1.0
):
    """DPM-Solver++(2M) SDE, midpoint correction (Lu et al. 2022), Brownian-tree noise."""
    del noise  # every draw comes from the tree
    tree = brownian(x, sigmas)
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            gain = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + gain * denoised
            if previous is not None:
                x = x + 0.5 * gain * (h / h_last) * (denoised - previous)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                x = x + tree(sigmas[i], sigmas[i + 1]) * scale
            h_last = h
        previous = denoised
        _report(callback, i, x, sigmas[i], denoised)
    return x


def sample_dpmpp_3m_sde(
    denoiser, x, sigmas, *, noise, brownian, callback=None, eta=1.0, s_noise=1.0
):
    """DPM-Solver++(3M) SDE: third-order multistep data prediction with SDE noise
    (Lu et al. 2022; the 3-step extrapolation of k-diffusion), Brownian-tree noise."""
    del noise  # every draw comes from the tree
    tree = brownian(x, sigmas)
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - d_1) / (h_1 / h))
            if eta:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + tree(sigmas[i], sigmas[i + 1]) * scale
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
        _report(callback, i, x, sigmas[i], denoised)
    return x


class BrownianNoise:
    """Brownian-tree noise over [sigma_min, sigma_max] (torchsde, as the release).

    One tree per image group of the batch (rows that share a seed), each seeded
    with one ``randint(0, 2**63 - 1)`` from that group's CPU generator, drawn
    when the sampler starts. ``tree(s, s_next)`` is the Brownian increment over
    the interval divided by its standard deviation: a standard Gaussian,
    consistent across step sizes.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, groups) -> None:
        # torchsde only for the SDE samplers' Brownian tree
        import torchsde

        positive = sigmas[sigmas > 0]
        t0, t1 = positive.min(), sigmas.max()
        self.trees = []
        start = 0
        for rows, cpu_generator in groups:
            seed = int(torch.randint(0, 2**63 - 1, [], generator=cpu_generator).item())
            w0 = torch.zeros_like(x[start : start + rows])
            self.trees.append(torchsde.BrownianTree(t0, w0, t1, entropy=seed))
            start += rows

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        lo, hi, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        with warnings.catch_warnings():
            # exp(-log(sigma)) lands a rounding error outside [sigma_min, sigma_max]; the
            # tree extrapolates by that error, as in the release, and says so every step.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.cat([tree(lo, hi) for tree in self.trees]) * sign
        return w / (sigma_next - sigma).abs().sqrt()
