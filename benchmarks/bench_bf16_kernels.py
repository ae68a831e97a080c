"""Does this CPU compute bfloat16? GFLOP/s of the products the models run, fp32 against bf16.

Prints what :func:`diffbir.config.precision.cpu_bf16_units` finds, whether oneDNN
offers bf16 primitives here, and the throughput (best of ``--repeats``) of a
2048x2048 matmul, a linear layer through ``F.linear`` and through oneDNN as our fast
paths call it (the UNet's feed-forward shape), and a 3x3 convolution at
64x64 with 256 channels (contiguous and channels-last), in float32 and bfloat16,
with ``--threads`` threads. Without native bf16 units PyTorch converts every
bfloat16 value and bf16 runs far below fp32: what ``--dtype auto`` avoids.

    python benchmarks/bench_bf16_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    from diffbir.config.precision import cpu_bf16_units

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"cpu: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 units: {cpu_bf16_units()}, "
          f"oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")  # fmt: skip
    print("| product | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 time |\n|---|---|---|---|")
    n = 2048
    conv_flops = 2 * 9 * 256 * 256 * 64 * 64
    cases = {
        "matmul 2048^3": (2 * n**3, lambda dt: (torch.randn(n, n, dtype=dt),) * 2, torch.mm),
        "F.linear 512x1024x1024": (
            2 * 512 * 1024 * 1024,
            lambda dt: (torch.randn(512, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)),
            F.linear,
        ),
        # The product our fast paths run (diffbir.models.cpu_fast): oneDNN's own GEMM
        # in both dtypes, so the ratio is the hardware's, not BLAS against oneDNN.
        "oneDNN linear 4096x320 -> 2560 (ours)": (
            2 * 4096 * 320 * 2560,
            lambda dt: (torch.randn(4096, 320, dtype=dt), torch.randn(2560, 320, dtype=dt)),
            lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
        ),
        "conv 3x3 256ch 64x64": (
            conv_flops,
            lambda dt: (
                torch.randn(1, 256, 64, 64, dtype=dt),
                torch.randn(256, 256, 3, 3, dtype=dt),
            ),
            lambda x, w: F.conv2d(x, w, padding=1),
        ),
        "conv 3x3 256ch 64x64 channels-last": (
            conv_flops,
            lambda dt: (
                torch.randn(1, 256, 64, 64, dtype=dt).contiguous(memory_format=torch.channels_last),
                torch.randn(256, 256, 3, 3, dtype=dt).contiguous(memory_format=torch.channels_last),
            ),
            lambda x, w: F.conv2d(x, w, padding=1),
        ),
    }
    with torch.inference_mode():
        for name, (flops, make, op) in cases.items():
            seconds = {}
            for dtype in (torch.float32, torch.bfloat16):
                inputs = make(dtype)
                seconds[dtype] = best(lambda inputs=inputs, op=op: op(*inputs), args.repeats)
            fp32, bf16 = seconds[torch.float32], seconds[torch.bfloat16]
            print(f"| {name} | {flops / fp32 / 1e9:.1f} | {flops / bf16 / 1e9:.1f} "
                  f"| {bf16 / fp32:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
