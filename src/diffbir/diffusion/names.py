"""Sampler names and one-line descriptions (no torch import: ``--help`` reads them).

The release's names (``spaced``, ``ddim``, ``dpm++_m2``, ``edm_*``) run the
release's algorithms on its grids; ours (:data:`OWN`) run on a Karras grid.
"""

from __future__ import annotations

from ..errors import ConfigError

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
# Ours, each kept for a figure of benchmarks/bench_samplers.py (RESULTS.md, "Samplers"):
# on v1/v2 (eps) every one beats the release's edm_* of its family at every step
# count (those diverge from sigma 1e4); on v2.1 (zsnr, v) as noted.
OWN = {
    "dpmpp_2m": "ours: DPM-Solver++(2M), Karras grid; 3x closer than edm_dpm++_2m at 10 steps",
    "dpmpp_2m_sde": "ours: DPM-Solver++(2M) SDE, Karras grid; right spread from 10 steps",
    "dpmpp_3m_sde": "ours: DPM-Solver++(3M) SDE, Karras grid; for 20+ steps",
    "euler": "ours: Euler, Karras grid, exact zero-SNR first step",
    "heun": "ours: Heun, Karras grid; 5x closer than edm_heun at 20 steps",
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
