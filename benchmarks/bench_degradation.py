"""Throughput of the degradation pipelines: HQ/LQ pairs per second at 512x512.

Modes: CPU one image at a time (the data-loader-worker path), CPU batched, and CUDA
batched when a GPU is present (the in-training-loop path; the JPEG step round-trips
through the CPU codec). ``--breakdown`` times the individual operations too.

    python benchmarks/bench_degradation.py --threads 1 --iters 20 --breakdown
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffbir.degradation import kernels as K
from diffbir.degradation import ops
from diffbir.degradation.pipelines import PRESETS, load_pipeline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pairs_per_second(name: str, device: torch.device, batch: int, iters: int, size: int) -> float:
    """Pairs/s of preset ``name`` on ``device`` with batches of ``batch`` images."""
    pipe = load_pipeline(name)
    hq = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        pipe(hq, 1000)  # warm-up: kernels, FFT plans, CUDA context
        _sync(device)
        start = time.perf_counter()
        for seed in range(iters):
            pipe(hq, seed)
        _sync(device)
    return iters * batch / (time.perf_counter() - start)


def _time(fn, iters: int, device: torch.device) -> float:
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1000


def breakdown(device: torch.device, iters: int, size: int) -> None:
    """Milliseconds per 512x512 image for each operation."""
    x = torch.rand(1, 3, size, size).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    k21 = K.gaussian_kernel(21, 2.0, 1.0, 0.5)
    k41 = K.gaussian_kernel(41, 6.0, 3.0, 0.5)
    rows = {
        "blur 21x21 (FFT)": lambda: ops.filter2d(x, k21),
        "blur 41x41 (FFT)": lambda: ops.filter2d(x, k41),
        "blur 9x9 (conv)": lambda: ops.filter2d(x, K.gaussian_kernel(9, 2.0)),
        "resize bicubic x0.25": lambda: ops.resize(x, (size // 4, size // 4), "bicubic"),
        "gaussian noise": lambda: ops.add_gaussian_noise(x, 10.0, generator=g),
        "poisson noise": lambda: ops.add_poisson_noise(x, 1.0, generator=g),
        "jpeg q=50 (OpenCV, via CPU)": lambda: ops.jpeg_compress(x, [50]),
        "usm sharpen (r=50)": lambda: ops.usm_sharpen(x),
    }
    print(f"  per-op breakdown on {device} (ms per {size}x{size} image):")
    with torch.no_grad():
        for label, fn in rows.items():
            print(f"    {label:<30} {_time(fn, iters, device):8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=20, help="batches timed per mode")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched modes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--breakdown", action="store_true", help="also time each operation")
    parser.add_argument("--no-cuda", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), numpy {np.__version__}"
    )
    cpu, modes = torch.device("cpu"), []
    modes.append(("cpu, per image", cpu, 1, args.iters))
    modes.append((f"cpu, batch {args.batch}", cpu, args.batch, max(1, args.iters // args.batch)))
    if torch.cuda.is_available() and not args.no_cuda:
        gpu = torch.device("cuda")
        print(f"GPU: {torch.cuda.get_device_name(gpu)}")
        modes.append(("cuda, per image", gpu, 1, args.iters))
        modes.append((f"cuda, batch {args.batch}", gpu, args.batch, args.iters))
    print(f"\npairs/s at {args.size}x{args.size}")
    print(f"{'pipeline':<20}" + "".join(f"{m[0]:>20}" for m in modes))
    for name in PRESETS:
        cells = [pairs_per_second(name, dev, b, n, args.size) for _, dev, b, n in modes]
        print(f"{name:<20}" + "".join(f"{c:>20.2f}" for c in cells))
    if args.breakdown:
        for _, dev, b, _n in modes:
            if b == 1:
                breakdown(dev, max(3, args.iters // 2), args.size)


if __name__ == "__main__":
    main()
