"""Peak memory of a 4096x4096 restoration on CPU, tiled and untiled (tiny random models).

A tiny release in the published file layouts (``tests/tiny_release.py``) is
loaded as ``v1``/``sr`` (SwinIR cleaner, spaced DDPM, no CFG) and a 1024x1024
input is restored x4 to 4096x4096 with ``steps=2``. Each configuration runs
in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; the
child also reports its RSS just before the restore (Python + torch + models),
the wall time, the tile plan and the output shape (checked to be 4096x4096).

Configurations: ``budget`` (``RestoreOptions(max_memory=...)``, automatic
tiles), ``explicit`` (``cleaner_tile``/``vae_tile``/``latent_tile``) and
``untiled`` (a budget so large nothing is tiled; needs several GB).

    python benchmarks/bench_tiling_memory.py --threads 2
    python benchmarks/bench_tiling_memory.py --modes budget --budget 5e8
    python benchmarks/bench_tiling_memory.py --psnr   # tiled vs untiled agreement

``--psnr`` instead measures how closely a tiled run matches the untiled one
(the setting of ``tests/test_restore_e2e.py::test_tiled_run_matches_untiled``:
v1 denoise, 192x256 input, 128-pixel tiles for every stage) for several overlaps.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODES = ("budget", "explicit", "untiled")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _load(weights: Path, version: str, task: str):
    from diffbir.restore.pipeline import DiffBIRPipeline

    return DiffBIRPipeline.from_preset(
        version,
        task,
        weights_dir=weights,
        model_config=weights / "models.yaml",
        device="cpu",
        dtype="fp32",
        download=False,
        progress=False,
    )


def _options(args: argparse.Namespace, mode: str):
    from diffbir.restore.pipeline import RestoreOptions

    common = dict(steps=args.steps, upscale=args.upscale, seed=0, tile_overlap=args.overlap)
    if mode == "budget":
        return RestoreOptions(max_memory=args.budget, **common)
    if mode == "explicit":
        tile = args.tile
        return RestoreOptions(cleaner_tile=tile, vae_tile=tile, latent_tile=tile, **common)
    return RestoreOptions(max_memory=1e15, **common)


def run_child(args: argparse.Namespace) -> dict:
    """One restore in this process; returns the figures as a dict."""
    if args.limit_gb:
        # A failed allocation beats the machine's OOM killer (the untiled run may not fit).
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(args.threads)
    pipe = _load(Path(args.weights), args.version, "sr")
    lq = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    options = _options(args, args.child)
    rss_before = _rss_mib()
    start = time.perf_counter()
    result = pipe(lq, options)
    wall = time.perf_counter() - start
    expected = round(args.size * args.upscale)
    if tuple(result.image.shape) != (1, 3, expected, expected):
        raise SystemExit(f"output is {tuple(result.image.shape)}, expected {expected}x{expected}")
    plan = result.tiles
    return {
        "mode": args.child,
        "output": f"{result.image.shape[-1]}x{result.image.shape[-2]}",
        "plan": {k: getattr(plan, k) for k in ("cleaner", "vae_encode", "vae_decode", "latent")},
        "wall_s": wall,
        "timings": result.timings,
        "rss_before_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "finite": bool(torch.isfinite(result.image).all()),
    }


def spawn(args: argparse.Namespace, mode: str, weights: Path) -> dict:
    """Run one configuration in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--child", mode, "--weights", str(weights)]
    names = ("version", "size", "upscale", "steps", "budget", "tile", "overlap", "threads")
    for name in (*names, "limit_gb"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"did not finish within {args.timeout:g} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"mode": mode, "error": f"exit {done.returncode}: {' / '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_psnr(weights: Path, overlaps: list[float], threads: int) -> None:
    """PSNR of tiled against untiled restores, the e2e test's setting, per overlap."""
    import torch

    from diffbir.restore.pipeline import RestoreOptions

    torch.set_num_threads(threads)
    pipe = _load(weights, "v1", "denoise")
    x = torch.rand(1, 3, 192, 256, generator=torch.Generator().manual_seed(0))
    whole = pipe(x, RestoreOptions(steps=2, min_side=64, seed=3)).image
    print("| overlap | tiles (cleaner/VAE/latent px) | PSNR tiled vs untiled dB |")
    print("|---|---|---|")
    for overlap in overlaps:
        options = RestoreOptions(
            steps=2,
            min_side=64,
            seed=3,
            latent_tile=128,
            vae_tile=128,
            cleaner_tile=128,
            tile_overlap=overlap,
        )
        tiled = pipe(x, options).image
        mse = torch.mean((tiled - whole) ** 2).item()
        psnr = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
        print(f"| {overlap:g} | 128/128/128 | {psnr:.1f} |")
    # One stage tiled at a time (overlap 0.25): where the difference comes from.
    for stage in ("cleaner_tile", "vae_tile", "latent_tile"):
        options = RestoreOptions(steps=2, min_side=64, seed=3, tile_overlap=0.25, **{stage: 128})
        tiled = pipe(x, options).image
        mse = torch.mean((tiled - whole) ** 2).item()
        psnr = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
        print(f"| 0.25 | only {stage.removesuffix('_tile')} at 128 | {psnr:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--version", default="v1", choices=("v1", "v2.1"))
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1e9, help="bytes, for mode 'budget'")
    parser.add_argument("--tile", type=int, default=512, help="pixels, for mode 'explicit'")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--limit-gb", type=float, default=12.0, help="address-space cap per run (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--weights", default=None, help="a tiny release folder (default: fresh)")
    parser.add_argument("--psnr", action="store_true", help="measure tiled vs untiled PSNR")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(args)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else Path(tmp)
        if not (weights / "models.yaml").is_file():
            sys.path.insert(0, str(TESTS))
            from tiny_release import make_tiny_release

            make_tiny_release(weights)
        if args.psnr:
            measure_psnr(weights, [0.125, 0.25, 0.5], args.threads)
            return 0
        out = f"{round(args.size * args.upscale)}"
        print(
            f"# v{args.version.lstrip('v')} sr, {args.size}px x{args.upscale:g} -> {out}px, "
            f"steps {args.steps}, overlap {args.overlap:g}, threads {args.threads}"
        )
        print(
            "| mode | tiles cleaner/enc/dec/latent px | stage1/encode/sample/decode s "
            "| wall s | RSS before MiB | peak RSS MiB |"
        )
        print("|---|---|---|---|---|---|")
        for mode in args.modes:
            row = spawn(args, mode, weights)
            if "error" in row:
                print(f"| {mode} | - | - | - | - | {row['error']} |")
                continue
            tiles = "/".join(str(v) if v else "whole" for v in row["plan"].values())
            stages = "/".join(
                f"{row['timings'][k]:.1f}" for k in ("stage1", "encode", "sample", "decode")
            )
            label = {"budget": f"budget {args.budget:g} B", "explicit": f"tiles {args.tile}"}
            print(
                f"| {label.get(mode, mode)} | {tiles} | {stages} | {row['wall_s']:.1f} "
                f"| {row['rss_before_mib']:.0f} | {row['peak_rss_mib']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
