"""Accuracy per model call of each sampler on an exactly solvable problem (CPU, seconds).

Data x0 ~ N(1.5, 0.5^2) per dimension; the exact eps/v denoiser is known in
closed form, and the probability-flow ODE maps the start's z-scores to
``1.5 + 0.5 z``. Prints, per schedule and sampler, the RMS error of the output
against that exact map (deterministic samplers) or the output std against 0.5
(stochastic ones), and the number of model calls.

    python benchmarks/bench_samplers.py
"""

from __future__ import annotations

import math

import torch

from diffbir.diffusion.samplers import SAMPLERS
from diffbir.diffusion.schedule import NoiseSchedule

MU, S = 1.5, 0.5
STOCHASTIC = ("ddpm", "dpmpp_2m_sde", "dpmpp_3m_sde")


def gaussian_model(schedule, prediction, counter):
    a_all = schedule.alphas_cumprod

    def model_fn(x, t):
        counter[0] += 1
        a = a_all[t].to(x.dtype).view(-1, 1, 1, 1)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return model_fn


def main() -> None:
    torch.set_num_threads(1)
    for name_s, prediction in (("sd", "eps"), ("zsnr", "v")):
        schedule = NoiseSchedule.from_name(name_s)
        a = float(schedule.alphas_cumprod[-1])
        z = torch.randn(
            1024, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        )
        x = math.sqrt(a) * MU + math.sqrt(a * S * S + 1 - a) * z
        print(f"\n{name_s} ({prediction}); deterministic: RMS vs exact ODE; stochastic: std / 0.5")
        print(f"{'sampler':14s}" + "".join(f"{n:>16d}" for n in (5, 10, 20, 50)))
        for name, fn in SAMPLERS.items():
            cells = []
            for steps in (5, 10, 20, 50):
                calls = [0]
                out = fn(
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


if __name__ == "__main__":
    main()
