"""Time the release's Real-ESRGAN training degradation, one batch at a time, on the device.

Reports, per batch: drawing the kernels (what the data-loader workers do, here serial),
the device transform (sharpen + second-order degradation + torch JPEG), and the pool.

    python benchmarks/bench_realesrgan_batch.py --batch 8 --size 256 --iters 3
    python benchmarks/bench_realesrgan_batch.py --device cuda --batch 64 --size 512
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffbir.degradation.pool import TrainingPool
from diffbir.degradation.realesrgan_batch import (
    RealESRGANBatchDegradation,
    RealESRGANTrainingConfig,
    draw_sample_kernels,
    stack_kernels,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = RealESRGANTrainingConfig()
    degrade = RealESRGANBatchDegradation(cfg, device=device, seed=0)
    pool = TrainingPool(args.batch * 4, seed=0)
    rng = np.random.default_rng(0)
    hq = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    hq = hq.to(device)

    def kernels():
        return stack_kernels([draw_sample_kernels(cfg, rng) for _ in range(args.batch)])

    with torch.no_grad():
        degrade(hq, kernels())  # warm-up
        _sync(device)
        t_kernels = t_degrade = t_pool = 0.0
        for _ in range(args.iters):
            t0 = time.perf_counter()
            ks = kernels()
            t1 = time.perf_counter()
            lq, target = degrade(hq, ks)
            _sync(device)
            t2 = time.perf_counter()
            pool(lq, target)
            _sync(device)
            t3 = time.perf_counter()
            t_kernels, t_degrade, t_pool = (
                t_kernels + t1 - t0,
                t_degrade + t2 - t1,
                t_pool + t3 - t2,
            )
    n = args.iters
    print(
        f"device={device} batch={args.batch} size={args.size} iters={n} threads={torch.get_num_threads()}"
    )
    print(f"kernels (serial, per batch): {t_kernels / n * 1000:.1f} ms")
    print(
        f"device transform per batch:  {t_degrade / n * 1000:.1f} ms "
        f"({args.batch * n / t_degrade:.1f} images/s)"
    )
    print(f"pool swap per batch:         {t_pool / n * 1000:.2f} ms")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
