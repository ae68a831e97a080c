"""Every sampler by name: the release's set and our own, one line each, one entry point.

The release's names (``spaced``, ``ddim``, ``dpm++_m2``, ``edm_*``) run the
release's algorithms on the release's grids, so a seed gives the release's
image. Our own samplers (``ddpm_iddpm``... see :data:`OWN`) use the Karras
grid with an exact first step from zero SNR; each is kept because
``benchmarks/bench_samplers.py`` shows it closer to the exact solution than
the release sampler of the same family at the same number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from . import edm, vp
from .denoiser import Denoiser
from .names import RELEASE, canonical
from .schedule import NoiseSchedule


@dataclass(frozen=True)
class SamplerKnobs:
    """The release's per-sampler settings, with its defaults."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 300.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 1


def grid_timesteps(name: str, schedule: NoiseSchedule, steps: int) -> list[int]:
    """The model timesteps sampler ``name`` evaluates at (descending), for per-step factors
    such as the guidance rescale; ``dpm++_m2``'s float times are rounded."""
    name = canonical(name)
    if name.startswith("edm_"):
        _, timesteps = edm.release_sigmas(schedule.alphas_cumprod, steps)
        return [int(t) for t in timesteps[:-1]]  # the appended 0 is the clean end
    if name == "spaced":
        return schedule.timesteps_for(steps, "iddpm")
    if name == "ddim":
        return sorted(vp.ddim_timesteps(schedule.num_timesteps, steps), reverse=True)
    if name == "dpm++_m2":
        time = vp.DiscreteVPTime(schedule.betas)
        ts = torch.linspace(1.0, 1.0 / time.total_n, steps + 1)[:-1]
        return [int(round(float((t - 1.0 / time.total_n) * 1000.0))) for t in ts]
    from .samplers import default_spacing

    return schedule.timesteps_for(steps, default_spacing(name, schedule))


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
) -> torch.Tensor:
    """Sample from ``x_T`` (a VP start point: N(0, I), or the noised condition) to z0.

    ``noise(like)`` gives Gaussian draws; ``brownian(x, sigmas)`` builds the
    Brownian-tree noise of the SDE samplers. ``start_step`` > 0 (our own
    samplers only) skips the first steps of the grid.
    """
    name = canonical(name)
    if start_step and name in RELEASE:
        raise ConfigError(f"{name} always starts from the top of its grid (start strength 1)")
    if name.startswith("edm_"):
        fn, reads = edm.EDM_SAMPLERS[name]
        sigmas, timesteps = edm.release_sigmas(schedule.alphas_cumprod, steps)
        sigmas, timesteps = sigmas.to(x_T.device), timesteps.to(x_T.device)
        den = _progress(denoiser.with_grid(sigmas, timesteps), progress, steps, name)
        kwargs = {k: getattr(knobs, k) for k in reads}
        if name in edm.BROWNIAN:
            if brownian is None:
                raise ConfigError(f"{name} needs a Brownian-tree noise source")
            kwargs["brownian"] = brownian
        x = x_T * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        return fn(den, x, sigmas, noise, **kwargs)
    den = _progress(denoiser, progress, steps, name)
    if name == "spaced":
        # model_output applies no guidance: sample_ddpm applies it to its x0 itself
        return vp.sample_spaced(den, x_T, schedule, steps, noise, guidance=denoiser.guidance)
    if name == "ddim":
        return vp.sample_ddim(den, x_T, steps, noise)
    if name == "dpm++_m2":
        return vp.sample_dpmpp_2m_vp(den, x_T, schedule.betas, steps)
    from .samplers import SAMPLERS

    def model_fn(x, t_batch):
        return den.model_output(x, t_batch[0])

    kwargs = {}
    if name in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        kwargs = {"eta": knobs.eta, "s_noise": knobs.s_noise}
    return SAMPLERS[name](
        model_fn,
        x_T,
        schedule,
        steps,
        prediction=denoiser.prediction,
        noise=noise,
        guidance=denoiser.guidance,
        start_step=start_step,
        **kwargs,
    )


def _progress(denoiser: Denoiser, enabled: bool, steps: int, name: str):
    """The denoiser with a progress bar ticking on every network evaluation."""
    if not enabled:
        return denoiser
    from tqdm.auto import tqdm

    bar = tqdm(desc=name, unit="call", leave=False)
    model = denoiser.model

    def counted(x, t, context):
        bar.update(1)
        return model(x, t, context)

    return denoiser.with_options(model=counted)
