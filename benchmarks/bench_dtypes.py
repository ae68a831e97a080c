"""Our CPU bf16 path against our fp32 path, side by side: time per part and the difference.

Full-size random weights (seeded, the same for both dtypes; the ControlNet's zero
convolutions get small random weights so that its residuals count), ``--threads``
threads. Each (part, dtype) runs in its own process, best of ``--repeats`` calls
inside it; the processes alternate fp32, bf16, fp32, bf16 ... for ``--rounds``
rounds (the best round is kept), so a load that comes and goes hits both alike.

- ``unet_cn``: one UNet + ControlNet call at a 64x64 latent, batch 1 (``Stage2Model.denoise``);
- ``vae_decode``: VAE decode of a 64x64 latent to 512x512 (``decode_from_latent``);
- ``vae_encode``: VAE encode of a 512x512 image;
- ``whole`` (``--whole``): a whole v2.1 default restoration 128 -> 512 (SwinIR, 10
  steps of edm_dpm++_3m_sde with CFG 6, no captioner) of the top-left 128x128 of
  ``../shared/samples/bid/Flowers.png``, through the real loader from full-size random
  weights files under the released names (``--weights DIR``; ``--make-weights`` writes
  them first, 6.8 GB), exactly as ``bench_release_whole.py`` runs our side: the time
  of the restoration, and the peak RSS of the process (loading included; a bf16 model
  is cast tensor by tensor as it loads, never held in float32).

Quality: the bf16 output against the fp32 output of the same inputs (the UNet's
prediction: relative L2 difference; images: mean and max difference in 8-bit levels
and PSNR). bf16 needs a CPU with native bf16 units (``amx_bf16``/``avx512_bf16``).

    python benchmarks/bench_dtypes.py --threads 2 --rounds 2 --repeats 2
    python benchmarks/bench_dtypes.py --parts vae_decode --rounds 3 --whole \
        --weights /tmp/w --make-weights
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _common import best_of

PARTS = ("unet_cn", "vae_decode", "vae_encode")
LABELS = {
    "unet_cn": "UNet+ControlNet call, 64x64 latent, batch 1",
    "vae_decode": "VAE decode 64x64 -> 512x512",
    "vae_encode": "VAE encode 512x512",
    "whole": "whole v2.1 run 128 -> 512 (Flowers), 10 steps, CFG 6",
}
TARGETS = {"unet_cn": 0.4, "vae_decode": 0.5, "whole": 0.45}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The release's fp32 restoration of the same photo with the same weights files, 2
# threads on a 2-core AMD EPYC Zen 5 (bench_release_whole.py, RESULTS.md, 2026-11-30).
RELEASE_WHOLE_RUN_S = 99.68


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def _stage2(part: str):
    from diffbir.models.controlnet import build_controlnet, controlnet_config_from_unet
    from diffbir.models.sd_unet import build_unet
    from diffbir.models.vae import build_vae

    torch.manual_seed(0)
    if part != "unet_cn":
        return None, build_vae().eval()
    unet = build_unet().eval()
    controlnet = build_controlnet(controlnet_config_from_unet(unet.config)).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in controlnet.parameters():
            if p.dim() == 4 and not p.any():  # a zero convolution
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return (unet, controlnet), None


def run_part(part: str, dtype: torch.dtype, repeats: int, save: Path) -> dict:
    from diffbir.models.stage2 import Stage2Model
    from diffbir.models.vae import build_vae, decode_from_latent, encode_to_latent

    nets, vae = _stage2(part)
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 64, 64, generator=gen)
    result = {}
    with torch.inference_mode():
        if part == "unet_cn":
            stage2 = Stage2Model(nets[0], build_vae(), nets[1]).eval().to(dtype)
            x = torch.randn(1, 4, 64, 64, generator=gen)
            text = torch.randn(1, 77, 1024, generator=gen)
            t = torch.full((1,), 500)

            def call():
                result["out"] = stage2.denoise(x, t, latent, text)

        elif part == "vae_decode":
            vae = vae.to(dtype)

            def call():
                result["out"] = decode_from_latent(vae, latent * 0.18215).float()

        else:
            vae = vae.to(dtype)
            image = torch.rand(1, 3, 512, 512, generator=gen)

            def call():
                result["out"] = encode_to_latent(vae, image).float()

        seconds = best_of(call, repeats)
    torch.save(result["out"].float(), save)
    return {"s": seconds, "peak_rss_gb": peak_rss_gb()}


PHOTO = Path(__file__).resolve().parents[2] / "shared" / "samples" / "bid" / "Flowers.png"


def whole_input(folder: Path) -> Path:
    """The whole run's photo: the top-left 128x128 of the Flowers sample (as in
    ``bench_release_whole.py``'s table), written into ``folder``."""
    from PIL import Image

    path = folder / "flowers128.png"
    if not path.exists():
        with Image.open(PHOTO) as image:
            image.convert("RGB").crop((0, 0, 128, 128)).save(path)
    return path


def run_whole(dtype: torch.dtype, weights: Path, save: Path) -> dict:
    from bench_release_whole import ours

    from diffbir.restore.loading import dtype_name

    photo = whole_input(save.parent)
    result = ours(photo, weights, torch.get_num_threads(), dtype_name(dtype), save=save)
    return {
        "s": result["run"],
        "peak_rss_gb": result["peak_rss_gib"],
        "peak_anon_gb": result["peak_anon_gib"],
        "stages": result["stages"],
    }


def compare(part: str, fp32: torch.Tensor, bf16: torch.Tensor) -> str:
    if part == "unet_cn" or part == "vae_encode":
        rel = float((bf16 - fp32).norm() / fp32.norm())
        return f"relative L2 {rel:.2e}"
    levels = (bf16.clamp(0, 1) - fp32.clamp(0, 1)).abs() * 255
    mse = float((levels**2).mean())
    psnr = 10 * math.log10(255**2 / mse) if mse else float("inf")
    return f"mean {levels.mean():.3f}, max {levels.max():.1f} levels, PSNR {psnr:.1f} dB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="unet_cn,vae_decode", help=f"of {','.join(PARTS)}")
    parser.add_argument("--whole", action="store_true", help="also the whole v2.1 run")
    parser.add_argument("--rounds", type=int, default=2, help="fp32/bf16 process pairs")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, help="full-size weights folder (--whole)")
    parser.add_argument("--make-weights", action="store_true", help="write them first")
    parser.add_argument("--one", nargs=3, metavar=("PART", "DTYPE", "SAVE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.one:
        part, name, save = args.one
        if part == "whole":
            result = run_whole(DTYPES[name], args.weights, Path(save))
        else:
            result = run_part(part, DTYPES[name], args.repeats, Path(save))
        print(json.dumps(result))
        return 0
    if args.whole and args.weights is None:
        parser.error("--whole needs --weights DIR (with --make-weights to write them)")
    if args.make_weights:
        from bench_release_whole import make_weights

        make_weights(args.weights)

    from diffbir.config.precision import cpu_bf16_units
    from diffbir.models.cpu_fast import bf16_supported

    parts = [p for p in args.parts.split(",") if p] + (["whole"] if args.whole else [])
    print(f"# torch {torch.__version__}, {args.threads} threads, bf16 units: {cpu_bf16_units()}, "
          f"oneDNN bf16: {bf16_supported()}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            best = {name: float("inf") for name in DTYPES}
            rss, anon = {}, {}
            for _ in range(args.rounds):
                for name in DTYPES:
                    save = Path(tmp) / f"{part}-{name}.pt"
                    cmd = [sys.executable, __file__, "--one", part, name, str(save)]
                    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
                    if part == "whole":
                        cmd += ["--weights", str(args.weights.resolve())]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    best[name] = min(best[name], result["s"])
                    rss[name] = result["peak_rss_gb"]
                    anon[name] = result.get("peak_anon_gb")
                    stages = f", stages {result['stages']}" if "stages" in result else ""
                    if result.get("peak_anon_gb") is not None:
                        stages = f", peak anonymous {result['peak_anon_gb']:.2f} GiB" + stages
                    print(f"#   {part} {name}: {result['s']:.2f} s, peak RSS "
                          f"{result['peak_rss_gb']:.2f} GiB, load {os.getloadavg()[0]:.1f}"
                          f"{stages}", flush=True)  # fmt: skip
            outputs = {n: torch.load(Path(tmp) / f"{part}-{n}.pt") for n in DTYPES}
            rows.append((part, best, rss, compare(part, outputs["fp32"], outputs["bf16"])))
            if part == "whole":
                whole_anon = anon
    print(
        "| part | fp32 s | bf16 s | bf16 / fp32 | target | peak RSS fp32 / bf16 GB | bf16 vs fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for part, best, rss, quality in rows:
        target = f"<= {TARGETS[part]}" if part in TARGETS else "-"
        print(
            f"| {LABELS[part]} | {best['fp32']:.2f} | {best['bf16']:.2f} "
            f"| {best['bf16'] / best['fp32']:.2f} | {target} "
            f"| {rss['fp32']:.1f} / {rss['bf16']:.1f} | {quality} |"
        )
    for part, best, rss, _ in rows:
        if part == "whole":
            print(f"# whole run: peak RSS bf16 / fp32 {rss['bf16'] / rss['fp32']:.2f} "
                  f"(target <= 0.6); peak anonymous memory {whole_anon['fp32']:.2f} / "
                  f"{whole_anon['bf16']:.2f} GiB, bf16 / fp32 "
                  f"{whole_anon['bf16'] / whole_anon['fp32']:.2f} (the mapped weights files "
                  f"a bf16 load casts count in RSS, not here); bf16 / the release's fp32 "
                  f"restoration "
                  f"({RELEASE_WHOLE_RUN_S} s, RESULTS.md 2026-11-30, same CPU model) "
                  f"{best['bf16'] / RELEASE_WHOLE_RUN_S:.2f} (target <= 0.3)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
