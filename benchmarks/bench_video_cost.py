"""What video restoration costs: seconds per frame and peak memory (issue #29).

For each frame size (default 512x512 and 1920x1080) and restorer (DiffBIR v2.1 and
HYPIR), restores a short clip panning over a sample photo (``--frames`` frames, default
4, at 24 fps) with temporal consistency on, through :func:`diffbir.video.run.restore_clip`
(H.264 output, the real path of ``diffbir restore clip.mp4``), each run in a fresh
subprocess so that its peak resident memory is its own. Seconds per frame are the
clip's wall time over its frames, the first (the models' first call) included;
loading is not; CPU seconds per frame (user + system, all threads) are printed beside
them, a figure a busy machine disturbs less; the load average is printed too. 1080p runs tiled (``--tile``, default 512 pixels, for the cleaner, the
VAE and the latent).

Tiny release (``tests/tiny_release.py``) by default, so the figures say what the
frame loop, flow, fusion, VAE tiling and codec cost around tiny networks; with
``--full-size-random`` the released architectures with random weights (as
``benchmarks/bench_video.py``). Run from the repository root::

    python benchmarks/bench_video_cost.py --threads 2 --steps 4
    python benchmarks/bench_video_cost.py --threads 2 --steps 4 --full-size-random --sizes 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = {"512": (512, 512), "1080p": (1920, 1080)}


def pan_clip(path: Path, width: int, height: int, frames: int) -> None:
    """``frames`` frames of a slow pan over the sample photo, H.264 at 24 fps."""
    import av
    import cv2
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench_video import SAMPLE

    photo = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    scale = max(width / (photo.shape[1] * 0.8), height / photo.shape[0])
    for k in range(frames):
        matrix = np.array([[scale, 0, -3.0 * k], [0, scale, 0]], np.float32)
        rgb = cv2.warpAffine(photo, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(args) -> dict:
    """One (restorer, size) run in this process."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from bench_video import load

    from diffbir.config.settings import RestoreOptions, VideoOptions
    from diffbir.video.run import ClipSource, restore_clip

    width, height = SIZES[args.one_size]
    work = Path(args.work)
    source = work / f"pan_{args.one_size}.mp4"
    if not source.exists():
        pan_clip(source, width, height, args.frames)
    weights = models = None
    if not args.full_size_random:
        weights, models = work / "weights", work / "weights" / "models.yaml"
    restorer = load(args.one, weights, models)
    options = dict(captioner="none", upscale=1)
    if args.one != "hypir" and args.steps:
        options["steps"] = args.steps
    if args.one_size == "1080p":
        options.update(cleaner_tile=args.tile, vae_tile=args.tile, latent_tile=args.tile)
    config = restorer.resolve(RestoreOptions(**options))
    out = work / f"{args.one}_{args.one_size}.mp4"
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = restore_clip(restorer, config, VideoOptions(), ClipSource(source), out, progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {
        "restorer": args.one,
        "size": f"{width}x{height}",
        "tiled": args.tile if args.one_size == "1080p" else None,
        "frames": result.frames,
        "s_per_frame": seconds / result.frames,
        "cpu_s_per_frame": cpu / result.frames,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": config.steps if args.one != "hypir" else 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--restorers", default="diffbir,hypir")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="DiffBIR steps (release's)")
    parser.add_argument("--tile", type=int, default=512, help="1080p tiles (pixels)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--full-size-random", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-size", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_video_cost_"))
    if not args.full_size_random:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from tiny_release import make_tiny_release

        (work / "weights").mkdir()
        make_tiny_release(work / "weights")
    kind = "full-size random weights" if args.full_size_random else "tiny release"
    print(f"# {kind}; {platform.node()} ({platform.machine()}), {args.threads} threads")
    print(f"# load average at the start: {os.getloadavg()[0]:.1f}")
    print("| restorer | frames | tiles | steps | s/frame | CPU s/frame | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for name in args.restorers.split(","):
            command = [sys.executable, __file__, "--one", name, "--one-size", size]
            command += ["--work", str(work), "--frames", str(args.frames)]
            command += ["--tile", str(args.tile)]
            command += ["--threads", str(args.threads)] if args.threads else []
            command += ["--steps", str(args.steps)] if args.steps else []
            command += ["--full-size-random"] if args.full_size_random else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"| {name} | {size} | failed: {done.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            tiles = f"{r['tiled']} px" if r["tiled"] else "whole"
            print(
                f"| {r['restorer']} | {r['size']} x{r['frames']} | {tiles} | {r['steps']} "
                f"| {r['s_per_frame']:.2f} | {r['cpu_s_per_frame']:.2f} "
                f"| {r['peak_rss_mib']:.0f} |",
                flush=True,
            )
    print(f"# load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
