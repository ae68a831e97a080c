"""The grids the samplers step over, one function ``grid(schedule, steps)`` each.

A grid is a sampler's third argument (see :mod:`~diffbir.diffusion.registry`):
the EDM samplers step over sigmas, DPM-Solver over continuous VP times, the
others over the schedule's discrete timesteps (descending; the step after the
last one lands on the clean end). The release's grids follow the DiffBIR
release (``../shared/reference/pipeline/README.md`` states them), so a seed
gives its image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config.limits import ddim_steps_fit, ddim_steps_near
from ..errors import ConfigError
from .schedule import NoiseSchedule


def release_sigmas(schedule: NoiseSchedule, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's EDM grid: (sigmas float32 [steps+1], timesteps long [steps+1]).

    Timesteps ``linspace(T-1, 0, steps, endpoint=False)`` truncated to int;
    sigmas ``sqrt((1 - a) / a)`` there, with the first ``a`` pinned to 1e-8 (so
    sigma_0 = 1e4 for every schedule, zero-terminal-SNR included), then 0. The
    timesteps are where the sigma view evaluates the network.
    """
    a_all = schedule.alphas_cumprod.detach().cpu().double().numpy()
    timesteps = np.linspace(len(a_all) - 1, 0, steps, endpoint=False).astype(int)
    a = a_all[timesteps].copy()
    a[0] = 1e-8
    sigmas = np.append(((1.0 - a) / a) ** 0.5, 0.0)
    timesteps = np.append(timesteps, 0)
    return torch.tensor(sigmas, dtype=torch.float32), torch.tensor(timesteps, dtype=torch.long)


def spaced_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """IDDPM respacing (Nichol & Dhariwal 2021), the paper's grid: T-1 down to 0."""
    return schedule.timesteps_for(steps, "iddpm")


def ddim_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """The release's DDIM grid ``range(0, T, T // steps) + 1``, descending; 6 steps give 7."""
    stride = schedule.num_timesteps // steps
    if stride < 2:
        raise ConfigError(f"ddim supports at most {schedule.num_timesteps // 2} steps, got {steps}")
    grid = [t + 1 for t in reversed(range(0, schedule.num_timesteps, stride))]
    if not ddim_steps_fit(schedule.num_timesteps, steps):
        # The release's grid reaches t = T here, one past the schedule (it fails there too).
        near = " or ".join(map(str, ddim_steps_near(schedule.num_timesteps, steps)))
        raise ConfigError(
            f"steps (--steps): ddim's grid with {steps} steps reaches timestep "
            f"{schedule.num_timesteps}, past the schedule's end; try {near}"
        )
    return grid


def karras_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """Our samplers' grid: Karras et al. 2022's rho = 7 spacing snapped to timesteps (on a
    zero-SNR schedule T-1 first; see :meth:`NoiseSchedule.timesteps_for`)."""
    return schedule.timesteps_for(steps, "karras")


def from_step(timesteps: list[int], start_step: int) -> list[int]:
    """The grid from ``start_step`` on: our samplers start part-way (see ``prepare_start``)."""
    if not 0 <= int(start_step) < len(timesteps):
        raise ConfigError(f"start_step must be in [0, {len(timesteps) - 1}], got {start_step}")
    return timesteps[int(start_step) :]


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

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The float timestep the network sees at time t, as released: ``(t - 1/N) * 1000``."""
        return (t - 1.0 / self.total_n) * 1000.0


def dpm_solver_times(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """The release's ``dpm++_m2`` grid: ``steps + 1`` times uniform from 1 to 1/N (float32)."""
    total_n = DiscreteVPTime(schedule.betas).total_n
    return torch.linspace(1.0, 1.0 / total_n, steps + 1)
