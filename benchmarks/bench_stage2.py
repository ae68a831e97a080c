"""Time one stage-2 denoiser call (UNet + LAControlNet) at 512x512 (a 64x64 latent).

Full-size SD 2.1-base shapes with random weights (no checkpoint needed).
CPU: float32 with a fixed thread count; CUDA (when present): float16 and
bfloat16, optionally ``torch.compile``d. Prints ms per call and peak memory
(CPU: peak RSS of the process; CUDA: ``torch.cuda.max_memory_allocated``).

    python benchmarks/bench_stage2.py --device cpu --threads 2
    python benchmarks/bench_stage2.py --device cuda --dtype fp16 bf16 --compile
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from torch import nn

from diffbir.models.controlnet import build_controlnet, controlnet_config_from_unet
from diffbir.models.sd_unet import build_unet
from diffbir.models.stage2 import Stage2Model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_model(device: torch.device, dtype: torch.dtype) -> Stage2Model:
    """SD 2.1-base UNet + ControlNet with small random weights, allocated once on ``device``."""
    with torch.device("meta"):
        unet = build_unet()
        controlnet = build_controlnet(controlnet_config_from_unet(unet.config))
    gen = torch.Generator(device="cpu").manual_seed(0)
    for module in (unet, controlnet):
        # Cast on meta first so the weights are allocated once, in the target dtype.
        module.to(dtype)
        module.to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
    # The VAE plays no part in denoise; a placeholder keeps the benchmark small.
    return Stage2Model(unet, nn.Identity(), controlnet).eval()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(model: Stage2Model, batch: int, device, dtype, repeats: int) -> float:
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 4, 64, 64, generator=gen).to(device, dtype)
    cond = torch.randn(1, 4, 64, 64, generator=gen).to(device, dtype)
    text = torch.randn(1, 77, 1024, generator=gen).to(device, dtype)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model.denoise(x, t, cond, text)  # warm-up (and compilation)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            out = model.denoise(x, t, cond, text)
        sync()
    assert torch.isfinite(out).all()
    return (time.perf_counter() - start) / repeats * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=None)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile UNet and ControlNet")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["fp16", "bf16"] if device.type == "cuda" else ["fp32"])
    repeats = args.repeats or (20 if device.type == "cuda" else 2)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    for name in dtypes:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        model = random_model(device, DTYPES[name])
        if args.compile:
            model.unet = torch.compile(model.unet)
            model.controlnet = torch.compile(model.controlnet)
        for batch in args.batch:
            ms = time_calls(model, batch, device, DTYPES[name], repeats)
            print(
                f"{name} batch {batch}: {ms:9.1f} ms/call   "
                f"peak memory {peak_memory_mb(device):8.0f} MiB"
                f"{'  (compiled)' if args.compile else ''}"
            )
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
