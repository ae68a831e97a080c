"""Sampling from a bare network function: our samplers by name, noise sources, start points.

``sample(name, model_fn, x_T, schedule, steps, ...)`` runs one of :data:`SAMPLERS`
(the functions of :mod:`~diffbir.diffusion.own`, which follow the one sampler
contract of :mod:`~diffbir.diffusion.registry`) on ``model_fn(x_t, t) -> out``,
``t`` a LongTensor [B] of ORIGINAL timesteps (0..T-1, as the UNet expects) and
``out`` the eps or v prediction, as told by ``prediction``, with each sampler's
own spacing (``spacing`` to change it): the samplers alone, for their unit
tests and ``benchmarks/bench_samplers.py``. Code that samples (restoration,
training's validation) calls ``registry.run_sampler``, which runs every sampler,
the release's included, by its registry name on a
:class:`~diffbir.diffusion.denoiser.Denoiser` (classifier-free guidance and all).

* Timesteps visited: ``schedule.timesteps_for(steps, spacing)`` (descending,
  :func:`default_spacing` when none is given) from ``start_step`` on (see
  :func:`prepare_start`), then the clean end (a = 1, sigma = 0).
* Every Gaussian draw comes from ``noise`` (a :class:`NoiseSource` or any callable
  ``noise(like) -> Tensor``), or from ``GeneratorNoise(generator)``; with neither,
  a generator seeded with 0 (so a run is reproducible on one device).
* ``callback(step_index, total, x, x0_pred)`` after every step.
* ``guidance`` (see ``guidance.py``): called as ``guidance(x0_hat, t)`` wherever a
  sampler forms x0_hat from the model; all seven samplers support it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from . import own
from .denoiser import VPDenoiser
from .grids import from_step
from .schedule import NoiseSchedule

#: ``model_fn(x, t)`` of the plain sampling API (no text context).
PlainModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


# -- noise sources -----------------------------------------------------------------------


class NoiseSource(Protocol):
    """Gives a standard Gaussian tensor shaped, typed and placed like ``like``."""

    def __call__(self, like: torch.Tensor) -> torch.Tensor: ...


class GeneratorNoise:
    """Gaussian draws from a ``torch.Generator`` (on the generator's device, then moved).

    Draws are made in float32 and cast, so the same seed gives the same noise for
    every working dtype.
    """

    def __init__(self, generator: torch.Generator | None = None, seed: int = 0) -> None:
        if generator is None:
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        draw = torch.randn(
            like.shape, generator=self.generator, device=self.generator.device, dtype=torch.float32
        )
        return draw.to(device=like.device, dtype=like.dtype)


class RecordedNoise:
    """Replays a list of recorded draws in order (for tests against recorded trajectories)."""

    def __init__(self, draws: Sequence[torch.Tensor] | torch.Tensor) -> None:
        self.draws = list(draws)
        self.used = 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise RuntimeError(f"RecordedNoise exhausted after {self.used} draws")
        draw = self.draws[self.used]
        self.used += 1
        if tuple(draw.shape) != tuple(like.shape):
            raise RuntimeError(
                f"recorded draw {self.used - 1} has shape {tuple(draw.shape)}, "
                f"the sampler needs {tuple(like.shape)}"
            )
        return draw.to(device=like.device, dtype=like.dtype)


def _noise_source(noise, generator) -> Callable[[torch.Tensor], torch.Tensor]:
    if noise is not None:
        if not callable(noise):
            raise TypeError("noise must be callable: noise(like) -> Tensor")
        return noise
    return GeneratorNoise(generator)


# -- which spacing ---------------------------------------------------------------------

_DEFAULT_SPACING = {
    "ddpm": "iddpm",
    "ddim": "iddpm",
}


def default_spacing(sampler: str, schedule: NoiseSchedule) -> str:
    """The timestep spacing a sampler uses when none is given.

    Spaced DDPM and DDIM: IDDPM respacing (the paper). The EDM-family solvers
    (Euler, Heun, DPM++): Karras rho=7 (see ``NoiseSchedule.timesteps_for`` for the
    zero-SNR case). ``schedule`` is accepted so a schedule-dependent choice can be made.
    """
    del schedule
    return _DEFAULT_SPACING.get(sampler, "karras")


# -- our samplers by name ------------------------------------------------------------------

SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": own.sample_ddpm,
    "ddim": own.sample_ddim,
    "euler": own.sample_euler,
    "heun": own.sample_heun,
    "dpmpp_2m": own.sample_dpmpp_2m,
    "dpmpp_2m_sde": own.sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": own.sample_dpmpp_3m_sde,
}


def sample(
    name: str,
    model_fn: PlainModelFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    prediction: str = "eps",
    noise: NoiseSource | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    guidance=None,
    start_step: int = 0,
    progress: bool = False,
    spacing: str | None = None,
    **knobs,
) -> torch.Tensor:
    """Run the sampler called ``name`` (a key of :data:`SAMPLERS`) from ``x`` to x_0.

    ``ddim`` here is :func:`~diffbir.diffusion.own.sample_ddim` on the IDDPM grid,
    not the release's DDIM that ``registry.run_sampler`` runs under that name.

    ``knobs``: the sampler's own settings (``eta`` of ddim and the SDE solvers,
    ``s_noise`` of the SDE solvers)."""
    try:
        fn = SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}"
        ) from None
    denoiser = VPDenoiser.from_model_fn(
        model_fn, schedule, prediction, guidance, input_dtype=x.dtype
    )
    all_timesteps = schedule.timesteps_for(steps, spacing or default_spacing(name, schedule))
    timesteps = from_step(all_timesteps, start_step)
    draw = _noise_source(noise, generator)
    with progress_bar(name, progress, total=len(timesteps)) as bar:
        tell = _steps_callback(callback, len(timesteps))
        return fn(denoiser, x, timesteps, noise=draw, callback=join_callbacks(bar, tell), **knobs)


def sample_ddpm(
    model_fn: PlainModelFn, x: torch.Tensor, schedule: NoiseSchedule, steps: int, **options
):
    """Spaced DDPM, the paper's sampler, from a bare ``model_fn``: ``sample("ddpm", ...)``."""
    return sample("ddpm", model_fn, x, schedule, steps, **options)


def _steps_callback(callback: Callback | None, total: int):
    """``callback(i, total, x, x0)`` as a sampler's ``callback(info)``."""
    if callback is None:
        return None
    return lambda info: callback(info["i"], total, info["x"], info["denoised"])


def join_callbacks(*callbacks):
    """One sampler callback calling each of ``callbacks`` that is not None (or None)."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def callback(info: dict) -> None:
        for c in live:
            c(info)

    return callback


@contextmanager
def progress_bar(name: str, enabled: bool, total: int | None = None) -> Iterator:
    """A sampler callback ticking a progress bar once per step (None when not enabled)."""
    if not enabled:
        yield None
        return
    with tqdm(desc=name, total=total, unit="step", leave=False) as bar:
        yield lambda info: bar.update(1)


# -- start point ---------------------------------------------------------------------------


def prepare_start(
    cond_latent: torch.Tensor | None,
    shape: Sequence[int] | None,
    schedule: NoiseSchedule,
    steps: int,
    *,
    strength: float = 1.0,
    noise: NoiseSource | None = None,
    generator: torch.Generator | None = None,
    spacing: str = "iddpm",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """The sampler's start point ``(x_start, start_step)``.

    * ``cond_latent is None``: pure noise N(0, I) of ``shape`` (``strength`` must be 1).
    * otherwise: ``cond_latent`` noised to the first visited timestep,
      ``add_noise(cond, z, timesteps[start_step])`` with
      ``start_step = steps - round(steps * strength)``: strength 1 noises it to T-1
      (the release's ``start_point_type="cond"``; pure noise on a zero-SNR schedule),
      strength < 1 skips the first steps (img2img style).

    ``spacing`` must be the one the sampler will use (``default_spacing(name, schedule)``).
    Pass the returned ``start_step`` to the sampler.
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1], got {strength}")
    draw = _noise_source(noise, generator)
    if cond_latent is None:
        if strength != 1.0:
            raise ConfigError("strength < 1 needs a condition latent to start from")
        if shape is None:
            raise ConfigError("give either a condition latent or a shape for the start noise")
        like = torch.empty(tuple(shape), dtype=dtype, device=device)
        return draw(like), 0
    timesteps = schedule.timesteps_for(steps, spacing)
    kept = max(1, min(len(timesteps), round(len(timesteps) * strength)))
    start_step = len(timesteps) - kept
    base = cond_latent.to(dtype=dtype, device=device if device is not None else cond_latent.device)
    z = draw(base)
    return schedule.add_noise(base, z, timesteps[start_step]), start_step
