"""The network wrapped once for sampling, and the two views the samplers see of it.

``Denoiser`` holds the settings the samplers must not each re-implement: the
parameterization (eps or v), classifier-free guidance (with the v2.1
release's cosine ramp) and latent image guidance on the x0 estimate. It is
frozen; what changes while one run samples lives in a per-run object:

* :class:`DenoiserRun`: the CFG-combined network output ``model_output(x, t)``
  at model time ``t`` (the cond/uncond context pair built once per run), and
  the EDM sigma view (Karras et al. 2022, "Elucidating the Design Space of
  Diffusion-Based Generative Models"), ``run(x, sigma)``: the denoised
  estimate ``D(x, sigma) = c_skip x + c_out F(c_in x, t(sigma))`` where ``x``
  is the variance-exploding latent ``x_vp * sqrt(1 + sigma^2)`` and
  ``t(sigma)`` is the timestep of the grid sigma nearest to ``sigma`` (so
  churned sigmas and midpoints are evaluated at grid timesteps, as released);
* :class:`VPDenoiser`: the timestep view of the variance-preserving samplers,
  ``vp(x, t) -> (x0_hat, eps_hat)`` at an original timestep of the schedule.

Both remember the guidance correction of the current step
(:class:`~diffbir.diffusion.guidance.StepGuidance`), so make one per run.
``model(x, t, context)`` is the network: the UNet + ControlNet with the
condition latent bound in, ``context`` the text embeddings of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from .guidance import StepGuidance
from .schedule import PREDICTIONS, NoiseSchedule

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ramped_cfg_scale(scale: float, model_t: float) -> float:
    """The v2.1 release's time-dependent CFG scale ("rescale_cfg").

    ``1 + scale * (1 - cos(pi * ((1000 - t) / 1000) ** 5)) / 2``: about 1 at
    t = 999, ``1 + scale`` at t = 0.
    """
    return 1.0 + scale * (1.0 - math.cos(math.pi * ((1000.0 - model_t) / 1000.0) ** 5.0)) / 2.0


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ConfigError(f"unknown prediction {prediction!r}; expected 'eps' or 'v'")


@dataclass(frozen=True)
class Denoiser:
    """The network's settings for sampling (see the module docstring); never changes.

    ``cond``/``uncond``: text contexts with the batch's rows; ``uncond`` None
    or ``cfg_scale`` 1 means one call per evaluation. ``rescale_cfg``: ramp the
    scale with the timestep; ``rescale_needs_cfg_above_one`` False mirrors the
    release's DPM-Solver path, which ramps any scale other than 1.
    ``guidance(x0, t) -> x0`` corrects every x0 estimate (latent image
    guidance). ``alphas_cumprod``: the training schedule's a_t (float64), read by no
    sampler (they take a_t from the schedule handed to ``run_sampler``); it goes when its
    callers (``restore/pipeline.py``, the benchmarks, the tests) stop passing it.
    """

    model: ModelFn
    alphas_cumprod: torch.Tensor
    prediction: str
    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    cfg_scale: float = 1.0
    rescale_cfg: bool = False
    rescale_needs_cfg_above_one: bool = True
    guidance: Callable | None = None

    def __post_init__(self) -> None:
        _check_prediction(self.prediction)

    def with_options(self, **changes) -> Denoiser:
        return replace(self, **changes)

    @property
    def uses_cfg(self) -> bool:
        """Whether any step may need the unconditional branch."""
        return self.uncond is not None and self.cfg_scale != 1.0

    def cfg_scale_at(self, model_t: float) -> float:
        scale = self.cfg_scale
        if self.rescale_cfg and (scale > 1.0 or not self.rescale_needs_cfg_above_one):
            return ramped_cfg_scale(scale, model_t)
        return scale


class DenoiserRun:
    """One sampling run of a :class:`Denoiser`: the network output with CFG, and the
    EDM sigma view on the grid ``sigmas`` (float32) with its ``timesteps`` (long)."""

    def __init__(
        self,
        denoiser: Denoiser,
        sigmas: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.sigmas, self.timesteps = sigmas, timesteps
        # The cond/uncond pair is built once per run, not once per step.
        self.contexts = torch.cat([denoiser.cond, denoiser.uncond]) if denoiser.uses_cfg else None
        guidance = denoiser.guidance
        self.steps = None if guidance is None else StepGuidance(guidance)

    def model_output(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The network's eps or v at model time ``t`` (scalar), CFG applied; float32."""
        den = self.denoiser
        t = torch.as_tensor(t, device=x.device)
        t_batch = t.reshape(1).expand(x.shape[0])
        scale = den.cfg_scale_at(float(t))
        # A scale of 1 (set, or ramped to exactly 1) needs the conditional branch only.
        if self.contexts is None or scale == 1.0:
            return den.model(x, t_batch, den.cond).float()
        both = den.model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), self.contexts)
        cond, uncond = both.float().chunk(2)
        return uncond + scale * (cond - uncond)

    def timestep_for(self, sigma: torch.Tensor) -> torch.Tensor:
        """The grid timestep whose sigma is nearest to ``sigma`` (0-d long tensor)."""
        if self.sigmas is None:
            raise ConfigError("the EDM view needs a sigma grid: DenoiserRun(denoiser, sigmas, ...)")
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
        if self.denoiser.prediction == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip = 1.0 / (sigma**2 + 1.0)
            c_out = -sigma / (sigma**2 + 1.0) ** 0.5
        t = self.timestep_for(sigma)
        out = self.model_output(x * c_in, t)
        denoised = out * c_out + x * c_skip
        if self.steps is None:
            return denoised
        return self.steps.reuse(denoised) if inner else self.steps.pull(denoised, t)


class VPDenoiser:
    """One run's timestep view for the VP samplers (the release's and ours).

    ``model_output(x, t)``: the network's eps or v at model time ``t``, as the
    release's samplers use it (they do their own float32 arithmetic);
    ``vp(x, t)``: (x0_hat, eps_hat) at original timestep ``t`` of ``schedule``,
    guidance pulled once per step, as our samplers use it. The network sees
    ``input_dtype`` (the caller's x); the estimates come in ``x``'s dtype.
    """

    def __init__(
        self,
        model_output: Callable[[torch.Tensor, int | torch.Tensor], torch.Tensor],
        schedule: NoiseSchedule,
        prediction: str,
        guidance: Callable | None = None,
        *,
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        _check_prediction(prediction)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError("schedule must be a NoiseSchedule")
        self.model_output = model_output
        self.schedule = schedule
        self.prediction = prediction
        self.guidance = guidance
        self.input_dtype = input_dtype
        self.steps = None if guidance is None else StepGuidance(guidance)
        self._a = schedule.alphas_cumprod.tolist()

    @classmethod
    def of(cls, denoiser: Denoiser, schedule: NoiseSchedule, *, input_dtype) -> VPDenoiser:
        """The view of a :class:`Denoiser` (its CFG through a fresh :class:`DenoiserRun`)."""
        run = DenoiserRun(denoiser)
        return cls(
            run.model_output,
            schedule,
            denoiser.prediction,
            denoiser.guidance,
            input_dtype=input_dtype,
        )

    @classmethod
    def from_model_fn(
        cls, model_fn, schedule: NoiseSchedule, prediction: str, guidance=None, *, input_dtype
    ) -> VPDenoiser:
        """The view of a bare ``model_fn(x_t, t) -> eps or v``, ``t`` a LongTensor [B]."""

        def model_output(x: torch.Tensor, t: int) -> torch.Tensor:
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            return model_fn(x, t_batch)

        return cls(model_output, schedule, prediction, guidance, input_dtype=input_dtype)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    def a(self, t: int) -> float:
        """a_t; t = -1 is the clean end (1)."""
        return 1.0 if t < 0 else self._a[t]

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        """VP (sqrt(a_t), sqrt(1 - a_t)); t = -1 is the clean end (1, 0)."""
        if t < 0:
            return 1.0, 0.0
        return math.sqrt(self._a[t]), math.sqrt(1.0 - self._a[t])

    def guide(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        """x0 moved toward the stage-1 result (no-op without guidance), for the release's
        samplers, which evaluate once per step."""
        if self.guidance is None:
            return x0
        return self.guidance(x0, int(round(float(t))))

    def __call__(
        self, x: torch.Tensor, t: int, step_scale: float = 1.0, *, inner: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) at original timestep t, guidance applied to x0_hat.

        ``inner``: a step's second evaluation (Heun's corrector) reuses the correction
        guidance made to the step's first estimate, so a step is pulled once.
        ``step_scale``: a per-step factor on the guidance step (spaced DDPM's 1/coef1)."""
        out = self.model_output(x.to(self.input_dtype), t).to(x.dtype)
        x0 = self.schedule.to_x0(x, out, t, self.prediction)
        if self.steps is not None:
            guided = self.steps.reuse(x0) if inner else self.steps.pull(x0, t, step_scale)
            if guided is not x0:
                return guided, self.schedule.eps_from_x0(x, guided, t)
        return x0, self.schedule.to_eps(x, out, t, self.prediction)
