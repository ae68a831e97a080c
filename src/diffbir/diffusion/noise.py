"""Where a run's random numbers come from: one stream per input image.

The release seeds once and draws everything of an image (start noise, noise
augmentation, sampler noise, the Brownian tree's entropy) from that stream
in order. Here every input image gets a fresh stream seeded with the run's
seed, so an image's result never depends on the batch it is in, the order of
the files, or a resume; the ``n_samples`` results of one image share its
stream, as in the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffbir.diffusion.edm import BrownianNoise


@dataclass
class ImageStream:
    """The generators of one input image: on the device, and on the CPU (Brownian seeds)."""

    device_generator: torch.Generator
    cpu_generator: torch.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> ImageStream:
        cpu = torch.Generator().manual_seed(seed)
        if device.type == "cpu":
            return cls(cpu, cpu)
        return cls(torch.Generator(device).manual_seed(seed), cpu)


class BatchNoise:
    """Gaussian draws for a batch made of groups of rows, each group from its image's stream.

    ``noise(like)`` draws ``[rows, ...]`` from each group's generator in batch
    order and concatenates them; ``brownian(x, sigmas)`` builds the SDE
    samplers' Brownian-tree noise with one tree per group.
    """

    def __init__(self, groups: list[tuple[int, ImageStream]]) -> None:
        self.groups = groups

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.groups)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != self.rows:
            raise RuntimeError(f"noise for {like.shape[0]} rows asked of a {self.rows}-row batch")
        draws = []
        for rows, stream in self.groups:
            g = stream.device_generator
            shape = (rows, *like.shape[1:])
            draws.append(torch.randn(shape, generator=g, device=g.device, dtype=torch.float32))
        return torch.cat(draws).to(device=like.device, dtype=like.dtype)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor):
        return BrownianNoise(x, sigmas, [(rows, s.cpu_generator) for rows, s in self.groups])
