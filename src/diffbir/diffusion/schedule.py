"""Discrete noise schedules of Stable Diffusion and their respacing.

A schedule is a list of 1000 betas; everything else follows from their
cumulative product ``a_t = prod(1 - beta_s, s <= t)``:

* the VP view used by the UNet: ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``,
* the Karras/EDM sigma view used by the ODE solvers: ``sigma_t = sqrt((1 - a_t) / a_t)``
  (``x_t / sqrt(a_t) = x_0 + sigma_t eps``).

Two named schedules exist: ``"sd"`` (scaled-linear betas 0.00085..0.012, the
SD 2.1-base schedule) and ``"zsnr"`` (the same rescaled to zero terminal SNR,
Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", Algorithm 1; used with v-prediction by the DiffBIR v2.1 base model).
On ``"zsnr"``, ``a_999 == 0`` so ``sigmas[999]`` is ``inf``: the samplers work
in the VP view, where that point is finite (pure noise), and treat an infinite
sigma as the exact limit of a first-order step (see ``samplers.py``).

Respacing follows IDDPM (Nichol & Dhariwal 2021, ``space_timesteps``): keep a
subset of the original timesteps and rebuild a shorter Markov chain with the
same marginals, ``beta'_i = 1 - a_{t_i} / a_{t_{i-1}}``.

Arithmetic is float64 on CPU; values are cast to the tensor's dtype and
device at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..errors import ConfigError

PREDICTIONS = ("eps", "v")
SPACINGS = ("iddpm", "karras", "trailing", "leading")
# Karras spacing on a zero-terminal-SNR schedule stops at SD 2.1's largest sigma
ZSNR_KARRAS_SIGMA_MAX = 14.6146


def scaled_linear_betas(n: int = 1000, start: float = 0.00085, end: float = 0.012) -> torch.Tensor:
    """SD's "scaled linear" betas: linear in sqrt(beta) from ``start`` to ``end`` (float64).

    Computed with numpy's ``linspace`` so the values agree bit for bit with the
    LDM/DiffBIR code (torch's ``linspace`` rounds some points differently).
    """
    if n < 2:
        raise ConfigError(f"a noise schedule needs at least 2 timesteps, got {n}")
    root = np.linspace(start**0.5, end**0.5, n, dtype=np.float64)
    return torch.from_numpy(root**2)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale ``betas`` so the last timestep has zero SNR (Lin et al. 2023, Alg. 1).

    sqrt(a_t) is shifted so its last value is 0 and scaled so its first value
    is unchanged; the betas are rebuilt from the ratios. Float64 in, float64 out.
    """
    betas = betas.to(torch.float64)
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    cumprod = root**2
    alphas = torch.cat([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return 1.0 - alphas


def space_timesteps(num_timesteps: int, section_counts: int | str | list[int]) -> list[int]:
    """IDDPM timestep respacing: which original timesteps to keep (ascending).

    ``section_counts`` is a step count, a comma-separated string of counts (one
    per equal section of the original process, each section strided evenly with
    rounding) or ``"ddimN"`` (the DDIM paper's integer stride giving N steps).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot make exactly {wanted} steps with an integer stride")
        counts = [int(c) for c in section_counts.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    offset = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ConfigError(
                f"cannot take {count} sampling steps from a section of {size} timesteps"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(offset + round(position))
            position += stride
        offset += size
    return sorted(set(kept))


def _coef(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] as a [B,1,1,...] tensor of ``like``'s dtype/device (values float64 on CPU)."""
    if isinstance(t, int):
        return torch.tensor(float(values[t]), dtype=like.dtype, device=like.device)
    picked = values[t.detach().to("cpu", torch.long)]
    picked = picked.to(device=like.device, dtype=like.dtype)
    return picked.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True, eq=False)
class SpacedSchedule:
    """A respaced chain (IDDPM): kept original timesteps and its posterior q(x_{i-1}|x_i, x_0).

    Every array has one entry per kept timestep, index 0 being the cleanest;
    ``timesteps`` are the ORIGINAL timesteps (ascending) fed to the UNet.
    """

    timesteps: torch.Tensor  # int64, ascending
    betas: torch.Tensor  # float64: 1 - a_{t_i} / a_{t_{i-1}}

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([self.betas.new_ones(1), self.alphas_cumprod[:-1]])

    @cached_property
    def posterior_variance(self) -> torch.Tensor:
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.betas * (1.0 - a_prev) / (1.0 - a)

    @cached_property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        # the variance is 0 at index 0: reuse index 1 there so the log is finite
        var = self.posterior_variance
        return torch.log(torch.cat([var[1:2], var[1:]]))

    @cached_property
    def posterior_mean_coef1(self) -> torch.Tensor:
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return self.betas * a_prev.sqrt() / (1.0 - a)

    @cached_property
    def posterior_mean_coef2(self) -> torch.Tensor:
        a, a_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        return (1.0 - a_prev) * (1.0 - self.betas).sqrt() / (1.0 - a)

    def __len__(self) -> int:
        return int(self.timesteps.numel())

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, index: int) -> torch.Tensor:
        """Mean of q(x_{index-1} | x_index, x0) on this chain."""
        c1 = _coef(self.posterior_mean_coef1, index, x_t)
        c2 = _coef(self.posterior_mean_coef2, index, x_t)
        return c1 * x0 + c2 * x_t


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete diffusion schedule given by its betas (float64, CPU).

    Immutable: derived arrays are computed once per instance, never shared.
    """

    betas: torch.Tensor
    name: str = "custom"

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ConfigError("betas must be a 1-D tensor of at least 2 values")
        if bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ConfigError("betas must lie in (0, 1]")
        object.__setattr__(self, "betas", betas)

    @classmethod
    def from_name(cls, name: str) -> NoiseSchedule:
        """``"sd"``: SD 2.1 scaled-linear betas; ``"zsnr"``: the same at zero terminal SNR."""
        if name == "sd":
            return cls(scaled_linear_betas(), name="sd")
        if name == "zsnr":
            return cls(rescale_zero_terminal_snr(scaled_linear_betas()), name="zsnr")
        raise ConfigError(f"unknown noise schedule {name!r}; expected 'sd' or 'zsnr'")

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """a_t (float64); 0 at the last step of a zero-terminal-SNR schedule."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def sigmas(self) -> torch.Tensor:
        """Karras/EDM noise levels sqrt((1 - a_t) / a_t) (float64); ``inf`` where a_t == 0."""
        a = self.alphas_cumprod
        return torch.where(a > 0, ((1.0 - a) / a.clamp_min(1e-300)).sqrt(), torch.inf)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest FINITE sigma (zero-SNR schedules have an infinite last one)."""
        finite = self.sigmas[torch.isfinite(self.sigmas)]
        return float(finite.max())

    # -- respacing -----------------------------------------------------------------

    def spaced(self, timesteps) -> SpacedSchedule:
        """The IDDPM respaced chain through the given original timesteps (any order)."""
        kept = sorted({int(t) for t in timesteps})
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ConfigError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        betas = []
        last = 1.0
        a = self.alphas_cumprod.tolist()
        for t in kept:
            betas.append(1.0 - a[t] / last)
            last = a[t]
        return SpacedSchedule(
            timesteps=torch.tensor(kept, dtype=torch.long),
            betas=torch.tensor(betas, dtype=torch.float64),
        )

    def respace(self, num_steps: int | str) -> SpacedSchedule:
        """IDDPM respacing to ``num_steps`` (or a ``space_timesteps`` section string)."""
        return self.spaced(space_timesteps(self.num_timesteps, num_steps))

    def timesteps_for(self, steps: int, spacing: str = "iddpm") -> list[int]:
        """``steps`` original timesteps to visit, DESCENDING (the sampler then goes to t=-1, clean).

        * ``"iddpm"``: IDDPM ``space_timesteps`` (includes T-1 and 0; the paper's 50 steps).
        * ``"karras"``: Karras et al. 2022 rho=7 spacing of sigma between ``sigma_min`` and
          ``sigma_max``, each snapped to the nearest discrete sigma in log space. On a
          zero-SNR schedule the first step is T-1 (infinite sigma, where pure noise is the
          exact marginal) and the other steps-1 are Karras-spaced below
          ``ZSNR_KARRAS_SIGMA_MAX`` (SD's 14.61; the largest finite zero-SNR sigma, ~2254,
          would put most steps where the sample is still pure noise).
        * ``"trailing"``: ``round(T - k*T/steps) - 1`` (T-1 first; Lin et al. 2023 Table 2).
        * ``"leading"``: ``int(linspace(T-1, 0, steps, endpoint=False))`` (the DiffBIR
          release's EDM samplers).
        Collisions are resolved (shifted by one) so the list stays strictly decreasing.
        """
        steps = int(steps)
        n = self.num_timesteps
        if not 1 <= steps <= n:
            raise ConfigError(f"steps must be between 1 and {n}, got {steps}")
        if spacing == "iddpm":
            ts = sorted(space_timesteps(n, steps), reverse=True)
        elif spacing == "trailing":
            ts = [round(n - k * n / steps) - 1 for k in range(steps)]
        elif spacing == "leading":
            ts = [int(v) for v in np.linspace(n - 1, 0, steps, endpoint=False)]
        elif spacing == "karras":
            ts = self._karras_timesteps(steps)
        else:
            raise ConfigError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
        # keep strictly decreasing and inside [0, n-1]
        ts = [min(max(int(t), 0), n - 1) for t in ts]
        for i in range(1, len(ts)):  # push collisions down...
            ts[i] = min(ts[i], ts[i - 1] - 1)
        for i in range(len(ts) - 1, -1, -1):  # ...and back up where they fell below 0
            ts[i] = max(ts[i], len(ts) - 1 - i)
        return ts

    def _karras_timesteps(self, steps: int, rho: float = 7.0) -> list[int]:
        lo = self.sigma_min
        zero_snr = not math.isfinite(float(self.sigmas[-1]))
        # zero SNR: T-1 first (pure noise is exact there), Karras over the rest, capped at
        # SD's sigma_max (the largest finite sigma, ~2254, would spend most steps near T)
        count = steps - 1 if zero_snr else steps
        hi = min(self.sigma_max, ZSNR_KARRAS_SIGMA_MAX) if zero_snr else self.sigma_max
        ts = [self.num_timesteps - 1] if zero_snr else []
        if count > 0:
            ramp = np.linspace(0.0, 1.0, count)
            inv_lo, inv_hi = lo ** (1.0 / rho), hi ** (1.0 / rho)
            wanted = (inv_hi + ramp * (inv_lo - inv_hi)) ** rho
            log_sig = self.sigmas.clamp_max(1e300).log().numpy()
            ts += [int(np.abs(log_sig - math.log(s)).argmin()) for s in wanted]
        return ts

    # -- conversions (t are ORIGINAL timesteps: an int or a LongTensor [B]) ------------

    def _sqrt_a(self, t, like):
        a = self.alphas_cumprod
        return _coef(a.sqrt(), t, like), _coef((1.0 - a).sqrt(), t, like)

    def to_x0(
        self, x_t: torch.Tensor, out: torch.Tensor, t, prediction: str = "eps"
    ) -> torch.Tensor:
        """x0 predicted from the model output ``out`` (eps or v) at noisy ``x_t``."""
        sa, sb = self._sqrt_a(t, x_t)
        if prediction == "eps":
            return (x_t - sb * out) / sa
        if prediction == "v":
            return sa * x_t - sb * out
        raise ConfigError(f"unknown prediction {prediction!r}; expected 'eps' or 'v'")

    def to_eps(
        self, x_t: torch.Tensor, out: torch.Tensor, t, prediction: str = "eps"
    ) -> torch.Tensor:
        """eps predicted from the model output ``out`` (eps or v) at noisy ``x_t``."""
        if prediction == "eps":
            return out
        if prediction == "v":
            sa, sb = self._sqrt_a(t, x_t)
            return sb * x_t + sa * out
        raise ConfigError(f"unknown prediction {prediction!r}; expected 'eps' or 'v'")

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """The eps consistent with ``x0`` at ``x_t`` (defined for t with a_t < 1, i.e. all)."""
        sa, sb = self._sqrt_a(t, x_t)
        return (x_t - sa * x0) / sb

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x0): sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
        sa, sb = self._sqrt_a(t, x0)
        return sa * x0 + sb * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """The v-prediction target sqrt(a_t) noise - sqrt(1 - a_t) x0 (Salimans & Ho 2022)."""
        sa, sb = self._sqrt_a(t, x0)
        return sa * noise - sb * x0
