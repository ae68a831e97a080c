"""HYPIR's one step against DiffBIR v2.1's default run, side by side, full-size random weights.

Each measurement runs in a fresh subprocess (so each peak RSS is its own run's),
the two models alternating, best of ``--repeats``: the same ``--size`` input
(default 128x128) x ``--upscale`` (default 4, a 512x512 output), load excluded
from the run's time.

- ``v2.1``: the v2.1 ``sr`` release's default run (SwinIR, the ControlNet on the
  zero-SNR SD 2.1, 10 steps of edm_dpm++_3m_sde with CFG 6, its prompts), as
  ``benchmarks/bench_pipeline.py`` builds it;
- ``hypir``: SD 2.1-base's UNet (a LoRA merged changes no shape or cost), VAE and
  text encoder in :class:`diffbir.restore.hypir.HypirRestorer`, the release's
  512/256 tiles.

Prints a Markdown table (seconds per stage, total, peak RSS, peak CUDA memory) and the
HYPIR/v2.1 ratios, for ``benchmarks/RESULTS.md``.

    python benchmarks/bench_hypir.py --threads 2                     # CPU, fp32
    python benchmarks/bench_hypir.py --device cuda --dtype bf16 --sizes 512 1024 4096 --only hypir
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_hypir(device, dtype):
    """HYPIR with random full-size SD 2.1-base weights on ``device``."""
    import torch

    from diffbir.config.presets import get_preset
    from diffbir.models.sd_unet import build_unet
    from diffbir.models.text_encoder import build_text_encoder
    from diffbir.models.tokenizer import OpenCLIPTokenizer
    from diffbir.models.vae import build_vae
    from diffbir.restore.hypir import HypirModels, HypirRestorer

    sys.path.insert(0, str(HERE))
    from bench_pipeline import TOKENIZER_VOCAB

    torch.manual_seed(0)
    with torch.device(device):
        models = HypirModels(
            build_unet(),
            build_vae(),
            build_text_encoder(),
            OpenCLIPTokenizer(TOKENIZER_VOCAB).with_split_token("!"),
        )
    return HypirRestorer(models, get_preset("hypir", "sr"), device=device, dtype=dtype)


def measure(model: str, size: int, upscale: float, device: str, dtype: str, threads: int | None):
    """One run in this process: ``{"timings", "peak_rss_mib", "peak_cuda_mib", "output"}``."""
    import resource

    import torch

    from diffbir.config.settings import RestoreOptions

    sys.path.insert(0, str(HERE))
    from bench_pipeline import DTYPES, build_pipeline

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    load = time.perf_counter()
    if model == "hypir":
        restorer = build_hypir(dev, DTYPES[dtype])
        options = RestoreOptions(upscale=upscale)
    else:
        restorer = build_pipeline("v2.1", "sr", dev, DTYPES[dtype])
        options = RestoreOptions(upscale=upscale, captioner="none")
    load = time.perf_counter() - load
    lq = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    config = restorer.resolve(options)
    if dev.type == "cuda":
        restorer.restore(lq, config)  # warm-up (kernels, allocator)
        torch.cuda.reset_peak_memory_stats(dev)
    result = restorer.restore(lq, config)
    return {
        "load_s": load,
        "timings": result.timings,
        "output": list(result.image.shape[-2:]),
        "tiles": str(result.tiles),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else None,
    }


def in_subprocess(model, size, args) -> dict:
    command = [
        sys.executable, __file__, "--child", model, "--size", str(size),
        "--upscale", str(args.upscale), "--device", args.device, "--dtype", args.dtype,
    ] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model} at {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[128], help="input sides")
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="runs per model, best kept")
    parser.add_argument("--only", choices=("hypir", "v2.1"), default=None)
    parser.add_argument("--child", choices=("hypir", "v2.1"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.child:
        out = measure(args.child, args.size, args.upscale, args.device, args.dtype, args.threads)
        print(json.dumps(out))
        return 0

    import torch

    models = [args.only] if args.only else ["v2.1", "hypir"]
    machine = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor()
    )
    print(
        f"# torch {torch.__version__}, {machine or 'cpu'}, {args.device} {args.dtype}, "
        f"threads {args.threads or torch.get_num_threads()}, best of {args.repeats}, "
        f"one subprocess per run, models alternating, load excluded"
    )
    print(
        "| model | input | output | encode s | sample s | decode s | total s | peak RSS MiB "
        "| peak CUDA MiB |\n|---|---|---|---|---|---|---|---|---|"
    )
    for size in args.sizes:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for model in models:
                run = in_subprocess(model, size, args)
                if model not in best or run["timings"]["total"] < best[model]["timings"]["total"]:
                    best[model] = run
        for model in models:
            run, t = best[model], best[model]["timings"]
            cuda = run["peak_cuda_mib"]
            print(
                f"| {model} | {size}x{size} | {run['output'][1]}x{run['output'][0]} "
                f"| {t.get('encode', 0):.2f} | {t.get('sample', 0):.2f} | {t.get('decode', 0):.2f} "
                f"| {t['total']:.2f} | {run['peak_rss_mib']:.0f} "
                f"| {'-' if cuda is None else f'{cuda:.0f}'} |"
            )
        if len(best) == 2:
            h, d = best["hypir"], best["v2.1"]
            print(
                f"\nHYPIR / v2.1 at {size}x{size}: time {h['timings']['total'] / d['timings']['total']:.3f}, "
                f"peak RSS {h['peak_rss_mib'] / d['peak_rss_mib']:.2f} (tiles: {h['tiles']})\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
