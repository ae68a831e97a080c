"""Accuracy per model call of each sampler on an exactly solvable problem (CPU, about a minute).

Data x0 ~ N(1.5, 0.5^2) per dimension; the exact eps/v denoiser is known in
closed form, and the probability-flow ODE maps the start's z-scores to
``1.5 + 0.5 z``. Two parts, each for the SD (eps) and zero-terminal-SNR (v)
schedules at 5, 10, 20 and 50 steps:

* ours: each of ``diffbir.diffusion.samplers.SAMPLERS`` through
  ``samplers.sample`` on the bare network function, all in float64. Deterministic samplers: RMS error of the output
  against that exact map; stochastic ones: output std / 0.5.
* registry: every name of ``diffbir.diffusion.names.RELEASE`` (the DiffBIR
  release's samplers on its grids) and of ``OWN`` (ours on the Karras grid),
  each through ``registry.run_sampler`` with a ``Denoiser`` around an exact
  "network" F(x, t): the eps or v of the Gaussian data at TRAINING timestep t
  (for the float t of ``dpm++_m2``, log a_t interpolated linearly between
  integer timesteps), as a real network trained on the 1000-step schedule
  would answer, whatever noise level the sampler believes x is at. The
  wrapper casts network outputs to float32 (``DenoiserRun.model_output``); the
  EDM grid and the ``ddim``/``dpm++_m2`` coefficients are float32 as in the
  release; x and the sampler state stay float64. Deterministic: RMS vs
  exact; stochastic: std / 0.5 and mean - 1.5 (with 65536 values, one
  standard error is 0.003 on std / 0.5 and 0.002 on the mean).

Start points: every sampler is handed the exact marginal, built from the same
z (seed 0), at the noise level where it places ``x_T``, so the exact answer is
``1.5 + 0.5 z`` for all of them: ``a_999`` for ``spaced`` and ours (``x_T = z``
on zsnr), the first timestep of the release's DDIM grid (801 at 5 steps) for
``ddim``, DPM-Solver's clipped t = 1 (``a_985`` on zsnr) for ``dpm++_m2``, and
for ``edm_*`` ``x_T = (1.5 + sqrt(0.25 + s0^2) z) / k`` with s0 = 1e4 and k the
sampler's own float32 ``sqrt(1 + s0^2)``. The "start" table then gives what
starting from plain N(0, I) (or SD's a_999 marginal) instead costs an exact
solver: the RMS between the exact map from the sampler's start level and
``1.5 + 0.5 z`` (7.5e-5 for ``edm_*``: s0 = 1e4 is not infinite).

    python benchmarks/bench_samplers.py [--ours-only | --release-only] [--markdown]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from diffbir.diffusion import grids
from diffbir.diffusion.denoiser import Denoiser
from diffbir.diffusion.names import OWN, RELEASE
from diffbir.diffusion.noise import BatchNoise, ImageStream
from diffbir.diffusion.registry import SamplerKnobs, run_sampler
from diffbir.diffusion.samplers import SAMPLERS, sample
from diffbir.diffusion.schedule import NoiseSchedule

MU, S = 1.5, 0.5
STEP_COUNTS = (5, 10, 20, 50)
SCHEDULES = (("sd", "eps"), ("zsnr", "v"))
STOCHASTIC = ("ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde")
REGISTRY_STOCHASTIC = {
    "spaced",
    "edm_euler_a",
    "edm_dpm_2_a",
    "edm_dpm++_2s_a",
    "edm_dpm++_sde",
    "edm_dpm++_2m_sde",
    "edm_dpm++_3m_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
}
# Release defaults (s_churn 0, eta 1, order 1: edm_lms is then edm_euler); lms also at order 4.
REGISTRY_ROWS = [(name, name, SamplerKnobs()) for name in RELEASE]
REGISTRY_ROWS.insert(
    list(RELEASE).index("edm_lms") + 1, ("edm_lms/4", "edm_lms", SamplerKnobs(order=4))
)
REGISTRY_ROWS += [(name, name, SamplerKnobs()) for name in OWN]


def start_z() -> torch.Tensor:
    return torch.randn(
        1024, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )


# -- ours, called directly (float64 throughout) -------------------------------------------


def gaussian_model(schedule, prediction, counter):
    a_all = schedule.alphas_cumprod

    def model_fn(x, t):
        counter[0] += 1
        a = a_all[t].to(x.dtype).view(-1, 1, 1, 1)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return model_fn


def ours_direct() -> None:
    for name_s, prediction in SCHEDULES:
        schedule = NoiseSchedule.from_name(name_s)
        a = float(schedule.alphas_cumprod[-1])
        z = start_z()
        x = math.sqrt(a) * MU + math.sqrt(a * S * S + 1 - a) * z
        print(f"\n{name_s} ({prediction}); deterministic: RMS vs exact ODE; stochastic: std / 0.5")
        print(f"{'sampler':14s}" + "".join(f"{n:>16d}" for n in STEP_COUNTS))
        for name in SAMPLERS:
            cells = []
            for steps in STEP_COUNTS:
                calls = [0]
                out = sample(
                    name,
                    gaussian_model(schedule, prediction, calls),
                    x,
                    schedule,
                    steps,
                    prediction=prediction,
                    generator=torch.Generator().manual_seed(1),
                )
                if name in STOCHASTIC:
                    value = out.std().item() / S
                else:
                    value = (out - (MU + S * z)).pow(2).mean().sqrt().item()
                cells.append(f"{value:10.5f} ({calls[0]:2d})")
            print(f"{name:14s}" + "".join(f"{c:>16s}" for c in cells))


# -- every registry name, through run_sampler and the Denoiser ----------------------------


def exact_network(alphas_cumprod: torch.Tensor, prediction: str, counter: list[int]):
    """model(x, t, context): the exact eps or v at training timestep t ([B], int or float)."""
    log_a = alphas_cumprod.clamp_min(1e-300).log()  # zsnr: a_999 = 0 becomes 1e-300

    def model(x, t, context):
        counter[0] += 1
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, len(log_a) - 2)
        a = torch.lerp(log_a[lo], log_a[lo + 1], t - lo).exp().to(x.dtype).view(-1, 1, 1, 1)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return model


def assumed_start(name: str, schedule: NoiseSchedule, steps: int) -> tuple[float, float]:
    """(mean, std) of the marginal the sampler takes ``x_T`` to be drawn from."""
    a_all = schedule.alphas_cumprod
    if name.startswith("edm_"):
        sigmas, _ = grids.release_sigmas(schedule, steps)
        k = float(torch.sqrt(1.0 + sigmas[0] ** 2.0))  # the sampler's own float32 scale
        s0 = float(sigmas[0])
        return MU / k, math.sqrt(S * S + s0 * s0) / k
    if name == "ddim":
        alpha2 = float(a_all[grids.ddim_timesteps(schedule, steps)[0]])
    elif name == "dpm++_m2":
        alpha, _, _ = grids.DiscreteVPTime(schedule.betas).alpha_sigma_lambda(torch.tensor(1.0))
        alpha2 = float(alpha) ** 2
    else:  # spaced and ours start at T - 1
        alpha2 = float(a_all[-1])
    return math.sqrt(alpha2) * MU, math.sqrt(alpha2 * S * S + 1.0 - alpha2)


def run_registry(name, knobs, schedule, prediction, steps, z):
    """(output, exact answer, model calls, start cost) of one run."""
    mean, std = assumed_start(name, schedule, steps)
    calls = [0]
    denoiser = Denoiser(
        model=exact_network(schedule.alphas_cumprod, prediction, calls),
        alphas_cumprod=schedule.alphas_cumprod,
        prediction=prediction,
        cond=torch.zeros(z.shape[0], 1, 1),
    )
    noise = BatchNoise([(z.shape[0], ImageStream.seeded(1, torch.device("cpu")))])
    out = run_sampler(
        name,
        denoiser,
        mean + std * z,
        schedule,
        steps,
        noise=noise,
        brownian=noise.brownian,
        knobs=knobs,
    )
    exact = MU + S * z
    # an exact solver handed plain z instead of the exact marginal at its start level
    start_cost = (MU + S * (z - mean) / std - exact).pow(2).mean().sqrt().item()
    return out, exact, calls[0], start_cost


def registry_tables(markdown: bool) -> None:
    z = start_z()
    for name_s, prediction in SCHEDULES:
        schedule = NoiseSchedule.from_name(name_s)
        title = (
            f"{name_s} ({prediction}), run_sampler: deterministic: RMS vs exact (calls); "
            f"stochastic: std / 0.5, mean - 1.5 (calls); start: cost of an N(0, I) start"
        )
        rows = []
        for label, name, knobs in REGISTRY_ROWS:
            cells, costs = [], []
            for steps in STEP_COUNTS:
                out, exact, calls, cost = run_registry(name, knobs, schedule, prediction, steps, z)
                assert out.dtype == torch.float64, out.dtype
                if name in REGISTRY_STOCHASTIC:
                    value = f"{out.std().item() / S:.4f} {out.mean().item() - MU:+.4f}"
                else:
                    value = f"{(out - exact).pow(2).mean().sqrt().item():.2e}"
                cells.append(f"{value} ({calls})")
                costs.append(cost)
            start = "/".join(f"{c:.1e}" for c in dict.fromkeys(costs))  # ddim's varies
            rows.append((label, cells, start))
        print_table(title, rows, markdown)


def print_table(title, rows, markdown: bool) -> None:
    print(f"\n{title}")
    if markdown:
        print("\n| sampler | " + " | ".join(f"{n} steps" for n in STEP_COUNTS) + " | start |")
        print("| --- |" + " ---: |" * (len(STEP_COUNTS) + 1))
        for label, cells, start in rows:
            print(f"| `{label}` | " + " | ".join(cells) + f" | {start} |")
        return
    print(f"{'sampler':17s}" + "".join(f"{n:>22d}" for n in STEP_COUNTS) + "  start")
    for label, cells, start in rows:
        print(f"{label:17s}" + "".join(f"{c:>22s}" for c in cells) + f"  {start}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ours-only", action="store_true", help="only SAMPLERS, on the bare network")
    only.add_argument("--release-only", action="store_true", help="only the run_sampler tables")
    parser.add_argument("--markdown", action="store_true", help="run_sampler tables in Markdown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    begin = time.perf_counter()
    if not args.release_only:
        ours_direct()
    if not args.ours_only:
        registry_tables(args.markdown)
    print(f"\n{time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
