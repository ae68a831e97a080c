"""How long a CPU run will take, said before it starts, from stored per-stage figures.

A 24-megapixel photo on a CPU runs for hours; the user should know that before the
first step, not after. The figures are those of ``benchmarks/bench_hypir.py`` on a
2-core CPU in float32 with the full-size models (benchmarks/RESULTS.md, "HYPIR's
one step against v2.1's default run"), per 512x512 piece of the diffusion stage:

* one UNet+ControlNet call on a 64x64 latent: 6.6 s (DiffBIR); one UNet call: 5.2 s
  (HYPIR, which has no ControlNet);
* the VAE's encode and decode of 512x512 pixels: 19.7 s (both restorers);

scaled by the sampled latent area (tiles with their overlap counted as many times
as they are sampled), the model calls (steps, CFG's pair, samples) and the thread
count (time taken as inversely proportional to threads, which holds roughly up to
the cores). It is a rough figure, said as one: "about 2 h".
"""

from __future__ import annotations

import warnings

from diffbir.errors import DiffBIRWarning

__all__ = ["LONG_RUN_SECONDS", "cpu_seconds", "describe_seconds", "say_if_long", "warn_if_long"]

_MEASURED_THREADS = 2
_PIECE = 512 * 512  # pixels of the measured run's diffusion stage
_UNET_CONTROL_CALL = 6.6  # s per UNet+ControlNet call per 512x512 piece
_UNET_CALL = 5.2  # s per UNet call per 512x512 piece (HYPIR)
_VAE = 7.27 + 12.39  # s to encode and decode 512x512 pixels
#: A CPU run expected to take longer than this says so before it starts.
LONG_RUN_SECONDS = 600.0


def cpu_seconds(
    *,
    sampled_pixels: float,
    vae_pixels: float,
    unet_calls: int,
    controlnet: bool,
    threads: int,
) -> float:
    """Rough seconds of a CPU float32 run: ``unet_calls`` passes of the network over
    ``sampled_pixels`` (image pixels the latent tiles cover, overlaps counted each
    time), the VAE over ``vae_pixels``, with ``threads`` threads."""
    per_call = _UNET_CONTROL_CALL if controlnet else _UNET_CALL
    seconds = unet_calls * per_call * sampled_pixels / _PIECE + _VAE * vae_pixels / _PIECE
    return seconds * _MEASURED_THREADS / max(1, threads)


def describe_seconds(seconds: float) -> str:
    """``"about 40 min"``, ``"about 2.5 h"``: a rough duration, said as one."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def say_if_long(
    device_type: str,
    out_hw: tuple[int, int],
    *,
    sampled_pixels: float,
    vae_pixels: float,
    unet_calls: int,
    controlnet: bool,
    threads: int,
) -> None:
    """A restorer's note before a long CPU run: :func:`cpu_seconds` of its work (what
    each restorer counts of its own tiles), then :func:`warn_if_long`."""
    if device_type != "cpu":
        return
    seconds = cpu_seconds(
        sampled_pixels=sampled_pixels,
        vae_pixels=vae_pixels,
        unet_calls=unet_calls,
        controlnet=controlnet,
        threads=threads,
    )
    warn_if_long(device_type, seconds, out_hw, threads, stacklevel=4)


def warn_if_long(
    device_type: str,
    seconds: float,
    out_hw: tuple[int, int],
    threads: int,
    *,
    stacklevel: int = 3,
) -> None:
    """One note (a :class:`DiffBIRWarning`, printed once as a line by the CLI) when a CPU
    run of an ``out_hw`` output is expected to take more than :data:`LONG_RUN_SECONDS`."""
    if device_type != "cpu" or seconds <= LONG_RUN_SECONDS:
        return
    h, w = out_hw
    warnings.warn(
        f"a {w}x{h} result ({h * w / 1e6:.1f} MP) takes {describe_seconds(seconds)} on this "
        f"CPU with {threads} threads (from stored 2-core fp32 figures, benchmarks/RESULTS.md); "
        "a lower --upscale or --steps, or a GPU (--device cuda), shortens it",
        DiffBIRWarning,
        stacklevel=stacklevel,
    )
