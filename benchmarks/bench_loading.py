"""Loading the v2.1 stage-2 model from the released files: time and memory per dtype.

Each dtype loads in a process of its own (``load_stage2``: the SD 2.1 checkpoint and
the v2.1 ControlNet, text encoder included) and reports the load time, the peak RSS
(which counts the pages of a mapped file while they are mapped), the peak
anonymous memory (the process's own; sampled every 20 ms from /proc/self/status,
Linux only) and the RSS once loaded. Half-precision loads map the files and cast
each tensor from the mapping; float32 loads read them into the process and use the
tensors in place. Give a folder with the released file names, e.g. the random
full-size weights of ``bench_release_whole.py --make-weights``; run it twice, the
first run reads the files into the page cache.

    python benchmarks/bench_loading.py --weights /tmp/w --dtype fp32 fp16 bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SD_FILE = "sd2.1-base-zsnr-laionaes5.ckpt"
CONTROLNET_FILE = "DiffBIR_v2.1.pt"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def load_once(weights: Path, dtype_name: str) -> dict:
    """One load in this process (a fresh subprocess of the main script)."""
    import resource
    import threading
    import time

    import torch

    from diffbir.models.stage2 import load_stage2

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    peak = {"anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["anon"] = max(peak["anon"], _status_kib("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    model = load_stage2(weights / SD_FILE, weights / CONTROLNET_FILE, dtype=dtype)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak["anon"] = max(peak["anon"], _status_kib("RssAnon"))
    gib = 2**20
    return {
        "dtype": dtype_name,
        "load_s": round(seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib, 2),
        "peak_anon_gib": round(peak["anon"] / gib, 2),
        "rss_after_gib": round(_status_kib("VmRSS") / gib, 2),
        "parameters_gib": round(
            sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="folder of released files")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "fp16", "bf16"],
                        choices=("fp32", "fp16", "bf16"))  # fmt: skip
    parser.add_argument("--_once", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._once:
        print("RESULT " + json.dumps(load_once(args.weights, args._once)))
        return 0
    missing = [n for n in (SD_FILE, CONTROLNET_FILE) if not (args.weights / n).is_file()]
    if missing:
        parser.error(f"{args.weights} lacks {', '.join(missing)}")
    print(
        "| dtype | load (s) | peak RSS (GiB) | peak anonymous (GiB) | RSS loaded (GiB) | weights (GiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.dtype:
        cmd = [sys.executable, __file__, "--weights", str(args.weights), "--_once", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        r = json.loads(lines[-1][len("RESULT ") :])
        print(f"| {name} | {r['load_s']} | {r['peak_rss_gib']} | {r['peak_anon_gib']} | "
              f"{r['rss_after_gib']} | {r['parameters_gib']} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
