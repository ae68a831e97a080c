"""Every sampler by name: one table of (grid, sampler, knobs), one entry point.

The one sampler contract, in the manner of k-diffusion's ``sampling.py``::

    sampler(denoiser, x, grid, *, noise, callback=None, **knobs) -> x_0

``grid`` is what the sampler steps over (a function of :mod:`grids` builds it
from the schedule), ``noise(like)`` gives every Gaussian draw (the SDE
solvers of the EDM family also take ``brownian(x, sigmas)``, a Brownian-tree
source), ``callback(info)`` follows each step. The samplers on the release's
EDM sigma grid see the sigma view of the denoiser and start from the
variance-exploding ``x_T * sqrt(1 + sigma_0^2)``; the others see the timestep
view and start from ``x_T`` (see :mod:`denoiser`).

The release's names (``spaced``, ``ddim``, ``dpm++_m2``, ``edm_*``) run the
release's algorithms on the release's grids, so a seed gives the release's
image. Our own samplers (:data:`~diffbir.diffusion.names.OWN`) use the Karras
grid with an exact first step from zero SNR; each is kept because
``benchmarks/bench_samplers.py`` shows it closer to the exact solution than
the release sampler of the same family at the same number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..config.settings import RestoreOptions
from ..errors import ConfigError
from . import edm, grids, own, vp
from .denoiser import Denoiser, DenoiserRun, VPDenoiser
from .names import RELEASE, canonical
from .samplers import join_callbacks, progress_bar
from .schedule import NoiseSchedule


@dataclass(frozen=True)
class SamplerKnobs:
    """The release's per-sampler settings; the defaults are :class:`RestoreOptions`' (one source)."""

    s_churn: float = RestoreOptions.s_churn
    s_tmin: float = RestoreOptions.s_tmin
    s_tmax: float = RestoreOptions.s_tmax
    s_noise: float = RestoreOptions.s_noise
    eta: float = RestoreOptions.eta
    order: int = RestoreOptions.order


class Entry(NamedTuple):
    grid: Callable[[NoiseSchedule, int], object]  # grid(schedule, steps)
    sampler: Callable[..., torch.Tensor]
    knobs: tuple[str, ...] = ()  # fields of SamplerKnobs it reads; "brownian": the tree source


CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
ANCESTRAL = ("eta", "s_noise")
TREE = ("brownian", "eta", "s_noise")

SAMPLERS: dict[str, Entry] = {
    "spaced": Entry(grids.spaced_timesteps, own.sample_ddpm),
    "ddim": Entry(grids.ddim_timesteps, vp.sample_ddim),
    "dpm++_m2": Entry(grids.dpm_solver_times, vp.sample_dpmpp_2m_vp),
    "edm_euler": Entry(grids.release_sigmas, edm.sample_euler, CHURN),
    "edm_euler_a": Entry(grids.release_sigmas, edm.sample_euler_ancestral, ANCESTRAL),
    "edm_heun": Entry(grids.release_sigmas, edm.sample_heun, CHURN),
    "edm_dpm_2": Entry(grids.release_sigmas, edm.sample_dpm_2, CHURN),
    "edm_dpm_2_a": Entry(grids.release_sigmas, edm.sample_dpm_2_ancestral, ANCESTRAL),
    "edm_lms": Entry(grids.release_sigmas, edm.sample_lms, ("order",)),
    "edm_dpm++_2s_a": Entry(grids.release_sigmas, edm.sample_dpmpp_2s_ancestral, ANCESTRAL),
    "edm_dpm++_sde": Entry(grids.release_sigmas, edm.sample_dpmpp_sde, TREE),
    "edm_dpm++_2m": Entry(grids.release_sigmas, edm.sample_dpmpp_2m),
    "edm_dpm++_2m_sde": Entry(grids.release_sigmas, edm.sample_dpmpp_2m_sde, TREE),
    "edm_dpm++_3m_sde": Entry(grids.release_sigmas, edm.sample_dpmpp_3m_sde, TREE),
    "dpmpp_2m": Entry(grids.karras_timesteps, own.sample_dpmpp_2m),
    "dpmpp_2m_sde": Entry(grids.karras_timesteps, own.sample_dpmpp_2m_sde, ANCESTRAL),
    "dpmpp_3m_sde": Entry(grids.karras_timesteps, own.sample_dpmpp_3m_sde, ANCESTRAL),
    "euler": Entry(grids.karras_timesteps, own.sample_euler),
    "heun": Entry(grids.karras_timesteps, own.sample_heun),
}


def grid_timesteps(name: str, schedule: NoiseSchedule, steps: int) -> list[int]:
    """The model timesteps sampler ``name`` evaluates at (descending), for per-step factors
    such as the guidance rescale; ``dpm++_m2``'s float times are rounded."""
    entry = SAMPLERS[canonical(name)]
    grid = entry.grid(schedule, steps)
    if entry.grid is grids.release_sigmas:
        return [int(t) for t in grid[1][:-1]]  # the appended 0 is the clean end
    if entry.grid is grids.dpm_solver_times:
        time = grids.DiscreteVPTime(schedule.betas)
        return [int(round(float(time.model_time(t)))) for t in grid[:-1]]
    return list(grid)


def run_sampler(
    name: str,
    denoiser: Denoiser,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    *,
    noise,
    brownian=None,
    knobs: SamplerKnobs = SamplerKnobs(),
    start_step: int = 0,
    progress: bool = False,
    callback=None,
) -> torch.Tensor:
    """Sample from ``x_T`` (a VP start point: N(0, I), or the noised condition) to z0.

    ``noise(like)`` gives Gaussian draws; ``brownian(x, sigmas)`` builds the
    Brownian-tree noise of the SDE samplers. ``start_step`` > 0 (our own
    samplers only) skips the first steps of the grid. ``callback(info)`` follows
    every step (``info``: the sampler's ``i``, ``x``, ``denoised``...).
    """
    name = canonical(name)
    if start_step and name in RELEASE:
        raise ConfigError(f"{name} always starts from the top of its grid (start strength 1)")
    entry = SAMPLERS[name]
    grid = entry.grid(schedule, steps)
    if entry.grid is grids.release_sigmas:
        sigmas, timesteps = (g.to(x_T.device) for g in grid)
        view, x, grid = DenoiserRun(denoiser, sigmas, timesteps), _ve_start(x_T, sigmas), sigmas
    else:
        view, x = VPDenoiser.of(denoiser, schedule, input_dtype=x_T.dtype), x_T
        if start_step:
            grid = grids.from_step(grid, start_step)
    read = _knob_values(name, entry.knobs, knobs, brownian)
    with progress_bar(name, progress) as tick:
        follow = join_callbacks(tick, callback)
        return entry.sampler(view, x, grid, noise=noise, callback=follow, **read)


def _ve_start(x_T: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The EDM samplers' start: x_T on the variance-exploding scale of sigma_0."""
    return x_T * torch.sqrt(1.0 + sigmas[0] ** 2.0)


def _knob_values(name: str, reads, knobs: SamplerKnobs, brownian) -> dict:
    """The keyword arguments of the knobs sampler ``name`` reads."""
    values = {}
    for knob in reads:
        if knob == "brownian":
            if brownian is None:
                raise ConfigError(f"{name} needs a Brownian-tree noise source")
            values[knob] = brownian
        else:
            values[knob] = getattr(knobs, knob)
    return values
