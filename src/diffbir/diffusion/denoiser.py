"""The one wrapper around the network that every release sampler calls.

``Denoiser`` holds what the samplers must not each re-implement: the
parameterization (eps or v), classifier-free guidance (with the v2.1
release's cosine ramp), latent image guidance on the x0 estimate, and, for
the EDM family, the mapping between noise levels sigma and the network's
discrete timesteps. Samplers see two views of it:

* the VP view, ``model_output(x, t)``: the CFG-combined eps or v at model time
  ``t`` (an int timestep, or a float one for DPM-Solver); ``eps_and_x0`` on top;
* the EDM view (Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models"), ``denoiser(x, sigma)``: the denoised
  estimate ``D(x, sigma) = c_skip x + c_out F(c_in x, t(sigma))`` where
  ``x`` is the variance-exploding latent ``x_vp * sqrt(1 + sigma^2)`` and
  ``t(sigma)`` is the timestep of the grid sigma nearest to ``sigma`` (so
  churned sigmas and midpoints are evaluated at grid timesteps, as released).

``model(x, t, context)`` is the network: the UNet + ControlNet with the
condition latent bound in, ``context`` the text embeddings of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ramped_cfg_scale(scale: float, model_t: float) -> float:
    """The v2.1 release's time-dependent CFG scale ("rescale_cfg").

    ``1 + scale * (1 - cos(pi * ((1000 - t) / 1000) ** 5)) / 2``: about 1 at
    t = 999, ``1 + scale`` at t = 0.
    """
    return 1.0 + scale * (1.0 - math.cos(math.pi * ((1000.0 - model_t) / 1000.0) ** 5.0)) / 2.0


@dataclass(frozen=True)
class Denoiser:
    """The network wrapped once for sampling (see the module docstring).

    ``cond``/``uncond``: text contexts with the batch's rows; ``uncond`` None
    or ``cfg_scale`` 1 means one call per evaluation. ``rescale_cfg``: ramp the
    scale with the timestep; ``rescale_needs_cfg_above_one`` False mirrors the
    release's DPM-Solver path, which ramps any scale other than 1.
    ``guidance(x0, t) -> x0`` corrects every x0 estimate (latent image
    guidance). ``sigmas``/``timesteps``: the EDM grid (float32, long), set
    with :meth:`with_grid` before using the EDM view.
    """

    model: ModelFn
    alphas_cumprod: torch.Tensor  # float64, the training schedule
    prediction: str
    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    cfg_scale: float = 1.0
    rescale_cfg: bool = False
    rescale_needs_cfg_above_one: bool = True
    guidance: Callable | None = None
    sigmas: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v"):
            raise ConfigError(f"unknown prediction {self.prediction!r}; expected 'eps' or 'v'")

    def with_grid(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> Denoiser:
        """A copy that maps sigmas to the nearest of these grid timesteps."""
        return replace(self, sigmas=sigmas, timesteps=timesteps)

    def with_options(self, **changes) -> Denoiser:
        return replace(self, **changes)

    # -- VP view ------------------------------------------------------------------------

    def cfg_scale_at(self, model_t: float) -> float:
        scale = self.cfg_scale
        if self.rescale_cfg and (scale > 1.0 or not self.rescale_needs_cfg_above_one):
            return ramped_cfg_scale(scale, model_t)
        return scale

    def model_output(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The network's eps or v at model time ``t`` (scalar), CFG applied; float32."""
        t = torch.as_tensor(t, device=x.device)
        t_batch = t.reshape(1).expand(x.shape[0])
        scale = self.cfg_scale_at(float(t))
        # A scale of 1 (set, or ramped to exactly 1) needs the conditional branch only.
        if self.uncond is None or self.cfg_scale == 1.0 or scale == 1.0:
            return self.model(x, t_batch, self.cond).float()
        both = self.model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), self._contexts())
        cond, uncond = both.float().chunk(2)
        return uncond + scale * (cond - uncond)

    def _contexts(self) -> torch.Tensor:
        # The pair is built once per sampling run, not once per step.
        cached = self.__dict__.get("_pair")
        if cached is None:
            cached = torch.cat([self.cond, self.uncond])
            object.__setattr__(self, "_pair", cached)
        return cached

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        a = float(self.alphas_cumprod[t])
        return math.sqrt(a), math.sqrt(1.0 - a)

    def guide(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        """x0 moved toward the stage-1 result (no-op without guidance)."""
        if self.guidance is None:
            return x0
        return self.guidance(x0, int(round(float(t))))

    # -- EDM view -----------------------------------------------------------------------

    def timestep_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """The grid timestep whose sigma is nearest to ``sigma`` (0-d long tensor)."""
        if self.sigmas is None:
            raise ConfigError("the EDM view needs a sigma grid: call with_grid first")
        index = (sigma.reshape(1) - self.sigmas).abs().argmin()
        return self.timesteps[index]

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, inner: bool = False
    ) -> torch.Tensor:
        """The denoised estimate D(x, sigma) in the VE view (EDM preconditioning).

        ``inner``: a second evaluation within a step (Heun's corrector, a midpoint);
        it gets the correction that guidance made to the step's first estimate
        rather than a pull of its own, so every sampler is pulled once per step."""
        sigma = sigma.reshape(())
        c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
        if self.prediction == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip = 1.0 / (sigma**2 + 1.0)
            c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        t = self.timestep_for(sigma)
        out = self.model_output(x * c_in, t)
        denoised = out * c_out + x * c_skip
        if self.guidance is None:
            return denoised
        if inner:
            delta = self.__dict__.get("_delta")
            return denoised if delta is None else denoised + delta
        guided = self.guide(denoised, float(t))
        object.__setattr__(self, "_delta", None if guided is denoised else guided - denoised)
        return guided
