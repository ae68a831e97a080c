"""The release's variance-preserving samplers ``ddim`` and ``dpm++_m2`` (``spaced`` is
:func:`~diffbir.diffusion.own.sample_ddpm` on the IDDPM grid).

Each is a short function ``sample_x(denoiser, x_T, grid, *, noise, callback=None)``
on the timestep view (:class:`~diffbir.diffusion.denoiser.VPDenoiser`): the
CFG-combined network output ``model_output(x, t)`` and ``guide(x0, t)``, with
the release's own float32 arithmetic. Grids and arithmetic follow the DiffBIR
release (``../shared/reference/pipeline/README.md`` states them), so a seed
gives its image; draws happen where the release draws. ``callback(info)``
follows every step with ``info`` = {i, x (after the step), t (model time),
denoised}.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .grids import DiscreteVPTime


def sample_ddim(denoiser, x, timesteps, *, noise, callback=None):
    """DDIM with eta = 0 (Song et al. 2021, eq. 12) on the release's "uniform + 1" grid
    (:func:`~diffbir.diffusion.grids.ddim_timesteps`, descending).

    The last step goes to a_prev = alphas_cumprod[0], not 1; one Gaussian is
    drawn per step and multiplied by zero, as the release does."""
    a_all = denoiser.alphas_cumprod
    a = torch.tensor([float(a_all[t]) for t in timesteps], dtype=torch.float32)
    a_prev = torch.tensor([float(a_all[t]) for t in timesteps[1:]] + [float(a_all[0])])
    a_prev = a_prev.float()
    for i, t in enumerate(timesteps):
        a_t, a_p = a[i], a_prev[i]
        out = denoiser.model_output(x, t)
        if denoiser.prediction == "eps":
            e_t = out
        else:
            e_t = a_t.sqrt() * out + (1.0 - a_t).sqrt() * x
        x0 = (x - (1.0 - a_t).sqrt() * e_t) / a_t.sqrt()
        if denoiser.guidance is not None:
            x0 = denoiser.guide(x0, t)
            e_t = (x - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()
        x = a_p.sqrt() * x0 + (1.0 - a_p).sqrt() * e_t + 0.0 * noise(x)
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "denoised": x0})
    return x


def sample_dpmpp_2m_vp(denoiser, x, times, *, noise, callback=None):
    """Multistep DPM-Solver++(2M) in the VP view (Lu et al. 2022, "DPM-Solver++", Alg. 2).

    The release's ``dpm++_m2`` on :func:`~diffbir.diffusion.grids.dpm_solver_times`:
    time-uniform steps from t = 1 to 1/N, the first step first-order, the last
    one too when steps < 10, no denoise-to-zero; the network sees the float
    time ``(t - 1/N) * 1000``. Deterministic."""
    del noise
    steps = len(times) - 1
    if steps < 2:
        raise ConfigError("dpm++_m2 needs at least 2 steps")
    vp = DiscreteVPTime(denoiser.schedule.betas)

    def data_prediction(x_t, t):
        alpha, sigma, _ = vp.alpha_sigma_lambda(t)
        model_t = vp.model_time(t)
        out = denoiser.model_output(x_t, model_t)
        eps = out if denoiser.prediction == "eps" else alpha * out + sigma * x_t
        return denoiser.guide((x_t - sigma * eps) / alpha, float(model_t))

    history = [(data_prediction(x, times[0]), times[0])]
    for step in range(1, steps + 1):
        t = times[step]
        order = 1 if step == 1 or (steps < 10 and step == steps) else 2
        (m0, t0) = history[-1]
        alpha_t, sigma_t, lambda_t = vp.alpha_sigma_lambda(t)
        _, sigma_0, lambda_0 = vp.alpha_sigma_lambda(t0)
        h = lambda_t - lambda_0
        phi_1 = torch.expm1(-h)
        x = (sigma_t / sigma_0) * x - (alpha_t * phi_1) * m0
        if order == 2:
            m1, t1 = history[-2]
            _, _, lambda_1 = vp.alpha_sigma_lambda(t1)
            d1 = (1.0 / ((lambda_0 - lambda_1) / h)) * (m0 - m1)
            x = x - 0.5 * (alpha_t * phi_1) * d1
        if step < steps:
            history = [*history[-1:], (data_prediction(x, t), t)]
        if callback is not None:
            callback({"i": step - 1, "x": x, "t": vp.model_time(t0), "denoised": m0})
    return x
