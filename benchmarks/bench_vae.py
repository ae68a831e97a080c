"""The SD 2.1 VAE at full size on its own: encode and decode, untiled and tiled.

Random weights with the constructors' own initialisation (no checkpoint needed),
float32, in one process, best of ``--repeats``; the calls are the ones the
pipeline makes (``encode_to_latent`` / ``decode_from_latent`` untiled,
``tiled_encode`` / ``tiled_decode`` with GroupNorm statistics shared across
tiles). Prints a Markdown table of seconds per call.

    python benchmarks/bench_vae.py --threads 2
    python benchmarks/bench_vae.py --size 512 --tiled-size 768 --tile 256 --repeats 2
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import best_of

from diffbir.imaging.tiled_vae import tiled_decode, tiled_encode
from diffbir.models.vae import build_vae, decode_from_latent, encode_to_latent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="untiled image side (pixels)")
    parser.add_argument("--tiled-size", type=int, default=768, help="tiled image side (pixels)")
    parser.add_argument("--tile", type=int, default=256, help="tile core (image pixels)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-tiled", action="store_true")
    args = parser.parse_args(argv)
    for name in ("size", "tiled_size", "tile"):
        if getattr(args, name) % 8 or getattr(args, name) < 8:
            parser.error(f"--{name.replace('_', '-')} must be a positive multiple of 8")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = build_vae().eval()
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        x = torch.rand(1, 3, args.size, args.size, generator=gen)
        z = torch.randn(1, 4, args.size // 8, args.size // 8, generator=gen)
        rows.append(
            (
                f"encode {args.size}x{args.size}",
                best_of(lambda: encode_to_latent(vae, x), args.repeats),
            )
        )
        rows.append(
            (
                f"decode {args.size}x{args.size}",
                best_of(lambda: decode_from_latent(vae, z), args.repeats),
            )
        )
        if not args.skip_tiled:
            side = args.tiled_size
            x = torch.rand(1, 3, side, side, generator=gen)
            z = torch.randn(1, 4, side // 8, side // 8, generator=gen)
            tile = f"{args.tile}-px tiles"
            seconds = best_of(lambda: tiled_encode(vae, x, args.tile), args.repeats)
            rows.append((f"tiled encode {side}x{side}, {tile}", seconds))
            seconds = best_of(lambda: tiled_decode(vae, z, args.tile // 8), args.repeats)
            rows.append((f"tiled decode {side}x{side}, {tile}", seconds))
    print(f"\n| SD VAE, fp32, {torch.get_num_threads()} threads, torch {torch.__version__} | s |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
