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
from .schedule import NoiseSchedule

RELEASE = {
    "spaced": "spaced DDPM, the paper's sampler (IDDPM respacing); stochastic",
    "ddim": "DDIM, eta 0, the release's 'uniform+1' grid (6 steps run 7); deterministic",
    "dpm++_m2": "DPM-Solver++(2M), time-uniform; deterministic",
    "edm_euler": "Euler (Karras Alg. 2), churn with --s-churn",
    "edm_euler_a": "ancestral Euler; --eta",
    "edm_heun": "Heun, 2 calls per step; churn with --s-churn",
    "edm_dpm_2": "DPM-Solver-2 midpoint, 2 calls per step; churn with --s-churn",
    "edm_dpm_2_a": "ancestral DPM-Solver-2, 2 calls per step; --eta",
    "edm_lms": "linear multistep; --order",
    "edm_dpm++_2s_a": "ancestral DPM-Solver++(2S), 2 calls per step; --eta",
    "edm_dpm++_sde": "DPM-Solver++ SDE (Brownian tree), 2 calls per step; --eta",
    "edm_dpm++_2m": "DPM-Solver++(2M) on the EDM grid; deterministic",
    "edm_dpm++_2m_sde": "DPM-Solver++(2M) SDE (Brownian tree); --eta",
    "edm_dpm++_3m_sde": "DPM-Solver++(3M) SDE (Brownian tree), the v2.1 default; --eta",
}
OWN = {
    "dpmpp_2m": "ours: DPM-Solver++(2M) on a Karras grid, exact zero-SNR first step",
    "dpmpp_2m_sde": "ours: DPM-Solver++(2M) SDE on a Karras grid, independent noise",
    "dpmpp_3m_sde": "ours: DPM-Solver++(3M) SDE on a Karras grid, independent noise",
    "euler": "ours: Euler on a Karras grid, exact zero-SNR first step",
    "heun": "ours: Heun on a Karras grid",
}
# Earlier names of this project, still accepted.
ALIASES = {"ddpm": "spaced"}
# Knobs each sampler reads (the release's flags of the same names).
KNOBS = ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "order")


def sampler_names() -> list[str]:
    return [*RELEASE, *OWN]


def describe_samplers() -> str:
    """One line per sampler, for ``--help``."""
    return "\n".join(f"{name}: {text}" for name, text in {**RELEASE, **OWN}.items())


def canonical(name: str) -> str:
    """The registry name of ``name`` (aliases resolved); ConfigError when unknown."""
    name = ALIASES.get(name, name)
    if name not in RELEASE and name not in OWN:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(sampler_names())}")
    return name


@dataclass(frozen=True)
class SamplerKnobs:
    """The release's per-sampler settings, with its defaults."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 300.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 1


def prepares_edm_start(name: str) -> bool:
    return canonical(name).startswith("edm_")


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
        plain = den.with_options(guidance=None) if isinstance(den, Denoiser) else den
        return vp.sample_spaced(plain, x_T, schedule, steps, noise, guidance=denoiser.guidance)
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
