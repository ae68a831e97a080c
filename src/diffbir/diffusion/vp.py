"""The release's variance-preserving samplers: ``spaced``, ``ddim`` and ``dpm++_m2``.

Each is a short function of (denoiser, x_T, steps, noise) on the training
schedule's ``alphas_cumprod``; the denoiser
(:class:`~diffbir.diffusion.denoiser.Denoiser`) supplies the CFG-combined
network output in the VP view. Grids and arithmetic follow the DiffBIR
release (``../shared/reference/pipeline/README.md`` states them), so a seed
gives its image; draws happen where the release draws.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .samplers import sample_ddpm
from .schedule import NoiseSchedule


def sample_spaced(denoiser, x, schedule: NoiseSchedule, steps: int, noise, guidance=None):
    """Spaced DDPM (IDDPM respacing, Nichol & Dhariwal 2021): the DiffBIR paper's sampler.

    One Gaussian per step from ``noise`` (the last one drawn and unused, as released)."""

    def model_fn(x_t, t_batch):
        return denoiser.model_output(x_t, t_batch[0])

    return sample_ddpm(
        model_fn,
        x,
        schedule,
        steps,
        prediction=denoiser.prediction,
        noise=noise,
        guidance=guidance,
        spacing="iddpm",
    )


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The release's DDIM grid: ``range(0, T, T // steps) + 1`` (ascending); 6 steps give 7."""
    stride = num_timesteps // steps
    if stride < 2:
        raise ConfigError(f"ddim supports at most {num_timesteps // 2} steps, got {steps}")
    return [t + 1 for t in range(0, num_timesteps, stride)]


def sample_ddim(denoiser, x, steps: int, noise):
    """DDIM with eta = 0 (Song et al. 2021, eq. 12) on the release's "uniform + 1" grid.

    The last step goes to a_prev = alphas_cumprod[0], not 1; one Gaussian is
    drawn per step and multiplied by zero, as the release does."""
    a_all = denoiser.alphas_cumprod
    timesteps = ddim_timesteps(len(a_all), steps)
    a = torch.tensor([float(a_all[t]) for t in timesteps], dtype=torch.float32)
    a_prev = torch.tensor([float(a_all[0])] + [float(a_all[t]) for t in timesteps[:-1]])
    a_prev = a_prev.float()
    for index in reversed(range(len(timesteps))):
        a_t, a_p = a[index], a_prev[index]
        out = denoiser.model_output(x, timesteps[index])
        if denoiser.prediction == "eps":
            e_t = out
        else:
            e_t = a_t.sqrt() * out + (1.0 - a_t).sqrt() * x
        x0 = (x - (1.0 - a_t).sqrt() * e_t) / a_t.sqrt()
        if denoiser.guidance is not None:
            x0 = denoiser.guide(x0, timesteps[index])
            e_t = (x - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()
        x = a_p.sqrt() * x0 + (1.0 - a_p).sqrt() * e_t + 0.0 * noise(x)
    return x


class DiscreteVPTime:
    """DPM-Solver's continuous-time view of a discrete schedule (Lu et al. 2022, App. D).

    log(alpha_t) is interpolated piecewise-linearly over t_n = n / N, n = 1..N,
    after dropping the last steps whose half log-SNR is below -5.1 (1000 steps
    remain for SD, 986 for the zero-terminal-SNR schedule). float32 throughout.
    """

    def __init__(self, betas: torch.Tensor, clipped_lambda: float = -5.1) -> None:
        log_alphas = 0.5 * torch.log(1 - betas.float()).cumsum(dim=0)
        lambdas = log_alphas - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
        drop = int(torch.searchsorted(torch.flip(lambdas, [0]), clipped_lambda))
        if drop > 0:
            log_alphas = log_alphas[:-drop]
        self.log_alphas = log_alphas
        self.total_n = len(log_alphas)
        self.t_grid = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear interpolation (linear extrapolation beyond the ends)."""
        grid, values = self.t_grid, self.log_alphas
        k = int(torch.searchsorted(grid, t.reshape(1)).clamp(1, len(grid) - 1))
        x0, x1, y0, y1 = grid[k - 1], grid[k], values[k - 1], values[k]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha_sigma_lambda(self, t: torch.Tensor):
        log_alpha = self.log_alpha(t)
        log_sigma = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
        return (
            torch.exp(log_alpha),
            torch.sqrt(1.0 - torch.exp(2.0 * log_alpha)),
            log_alpha - log_sigma,
        )


def sample_dpmpp_2m_vp(denoiser, x, betas: torch.Tensor, steps: int, noise=None):
    """Multistep DPM-Solver++(2M) in the VP view (Lu et al. 2022, "DPM-Solver++", Alg. 2).

    The release's ``dpm++_m2``: time-uniform steps from t = 1 to 1/N, the first
    step first-order, the last one too when steps < 10, no denoise-to-zero;
    the network sees the float time ``(t - 1/N) * 1000``. Deterministic."""
    del noise
    if steps < 2:
        raise ConfigError("dpm++_m2 needs at least 2 steps")
    vp = DiscreteVPTime(betas)
    ts = torch.linspace(1.0, 1.0 / vp.total_n, steps + 1)

    def data_prediction(x_t, t):
        alpha, sigma, _ = vp.alpha_sigma_lambda(t)
        model_t = (t - 1.0 / vp.total_n) * 1000.0
        out = denoiser.model_output(x_t, model_t)
        eps = out if denoiser.prediction == "eps" else alpha * out + sigma * x_t
        return denoiser.guide((x_t - sigma * eps) / alpha, float(model_t))

    history = [(data_prediction(x, ts[0]), ts[0])]
    for step in range(1, steps + 1):
        t = ts[step]
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
    return x
