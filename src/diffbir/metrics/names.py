"""The metric names ``diffbir eval --metrics`` accepts, torch-free (read by ``--help``).

Each :class:`MetricInfo` says which module computes it (``family``), whether it
needs a reference image, which way is better, and which released weights files
it loads (names of :data:`diffbir.weights.registry.REGISTRY`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType

from diffbir.errors import ConfigError, printable


@dataclass(frozen=True)
class MetricInfo:
    """One metric: ``family`` is the module of :mod:`diffbir.metrics` that builds it."""

    name: str
    family: str
    reference: bool
    lower_better: bool
    summary: str
    weights: tuple[str, ...] = ()
    #: ``"image"``: one value per image (the table's mean); ``"set"``: one value for the
    #: restored set against the reference set (FID), needing no pairing by name.
    scope: str = "image"


def _table(*infos: MetricInfo) -> MappingProxyType:
    return MappingProxyType({info.name: info for info in infos})


#: Every metric, in the order tables list them.
METRICS = _table(
    MetricInfo(
        "psnr", "pixel", True, False, "peak signal-to-noise ratio in dB (RGB; Y with --y-channel)"
    ),
    MetricInfo(
        "ssim",
        "pixel",
        True,
        False,
        "structural similarity, 11x11 Gaussian window (RGB; Y with --y-channel)",
    ),
    MetricInfo(
        "lpips",
        "perceptual",
        True,
        True,
        "LPIPS v0.1 on AlexNet features",
        ("alexnet-owt-7be5be79.pth", "LPIPS_v0.1_alex-df73285e.pth"),
    ),
    MetricInfo(
        "lpips-vgg",
        "perceptual",
        True,
        True,
        "LPIPS v0.1 on VGG16 features",
        ("vgg16-397923af.pth", "LPIPS_v0.1_vgg-a78928a0.pth"),
    ),
    MetricInfo(
        "dists",
        "perceptual",
        True,
        True,
        "DISTS (structure and texture similarity on VGG16 features)",
        ("vgg16-397923af.pth", "DISTS_weights-f5e65c96.pth"),
    ),
    MetricInfo("niqe", "niqe", False, True, "NIQE on the YIQ luma (pyiqa's default)"),
    MetricInfo("niqe-y", "niqe", False, True, "NIQE on the Y of YCbCr (BasicSR's default)"),
    MetricInfo(
        "musiq",
        "musiq",
        False,
        False,
        "MUSIQ (KonIQ-10k): a multi-scale transformer's predicted opinion score, about 0..100",
        ("musiq_koniq_ckpt-e95806b9.pth",),
    ),
    MetricInfo(
        "maniqa",
        "maniqa",
        False,
        False,
        "MANIQA (KonIQ-10k): patch-weighted score over 20 fixed 224x224 crops, about 0..1",
        ("ckpt_koniq10k.pt",),
    ),
    MetricInfo(
        "clipiqa",
        "clipiqa",
        False,
        False,
        "CLIP-IQA on OpenAI's CLIP RN50, five antonym prompt pairs (pyiqa's clipiqa)",
        ("RN50.pt",),
    ),
    MetricInfo(
        "fid",
        "fid",
        True,
        True,
        "FID of the restored set against the reference set (InceptionV3, clean resize); "
        "one value per run, at least 2 images a side",
        ("pt_inception-2015-12-05-6726825d.pth",),
        scope="set",
    ),
)


def parse_metrics(text: str) -> list[MetricInfo]:
    """The metrics named in ``text`` (comma-separated, case-insensitive), in order, once each.

    Raises :class:`ConfigError` in one line for an unknown or empty name.
    """
    chosen: list[MetricInfo] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            raise ConfigError(f"--metrics {printable(text)!r}: an empty metric name")
        info = METRICS.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(METRICS), n=2, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(
                f"unknown metric {printable(name)!r}; {hint}known: {', '.join(METRICS)}"
            )
        if info not in chosen:
            chosen.append(info)
    return chosen
