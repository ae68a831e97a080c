"""Time the stage-1 cleaners (released configurations, random weights) on one image.

Each architecture runs in its own subprocess so that peak-memory figures are
its own. Prints a Markdown table: milliseconds per image and peak memory
(CUDA: ``max_memory_allocated``; CPU: rise of the process's peak RSS during
the first forward pass over the RSS before it).

    python benchmarks/bench_stage1.py --threads 2
    python benchmarks/bench_stage1.py --device cuda --dtype float16 --batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

ARCHS = ("swinir", "scunet", "rrdbnet")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(args: argparse.Namespace) -> dict:
    """Benchmark one architecture in this process; return a result row."""
    import torch

    from diffbir.models.cleaner import build_cleaner

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build_cleaner(args.arch).to(device=device, dtype=dtype).eval()
    size = args.rrdb_size if args.arch == "rrdbnet" else args.size
    x = torch.rand(args.batch, 3, size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = _rss_mib()
        start = time.perf_counter()
        out = model(x)
        sync()
        first = time.perf_counter() - start
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = _peak_rss_mib() - before
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    best = min(times) if times else first
    return {
        "arch": args.arch,
        "params_m": params / 1e6,
        "input": f"{args.batch}x3x{size}x{size}",
        "output": "x".join(map(str, out.shape)),
        "first_ms": first * 1e3 / args.batch,
        "ms_per_image": best * 1e3 / args.batch,
        "peak_mib": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHS, action="append", help="default: all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--size", type=int, default=512, help="input side for swinir/scunet")
    parser.add_argument(
        "--rrdb-size",
        type=int,
        default=128,
        help="input side for rrdbnet (x4: 128 gives a 512x512 output, as in x4 SR use)",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.arch = args.arch[0]
        print(json.dumps(run_one(args)))
        return 0

    rows = []
    for arch in args.arch or ARCHS:
        cmd = [sys.executable, __file__, "--worker", "--arch", arch]
        for name in ("device", "dtype", "size", "rrdb_size", "batch", "repeats", "threads"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{arch}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    mem = "peak CUDA alloc (MiB)" if args.device.startswith("cuda") else "peak RSS rise (MiB)"
    print(f"device={args.device} dtype={args.dtype} threads={args.threads} batch={args.batch}")
    print(f"| arch | params (M) | input | output | first (ms/img) | best (ms/img) | {mem} |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['arch']} | {r['params_m']:.2f} | {r['input']} | {r['output']} | "
            f"{r['first_ms']:.0f} | {r['ms_per_image']:.0f} | {r['peak_mib']:.0f} |"
        )
    return 0 if len(rows) == len(args.arch or ARCHS) else 1


if __name__ == "__main__":
    sys.exit(main())
