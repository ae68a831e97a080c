"""Training throughput of both stages at the released sizes (random weights, random data).

Stage 1: the released SwinIR (8 RSTBs x 6 layers, 180 channels), L2 loss, AdamW, on
``--size`` crops (released: 512). Stage 2: SD 2.1-base UNet + VAE + LAControlNet (ControlNet
trainable, the rest frozen), the diffusion loss of ``diffbir.training.stage2``, AdamW.
Each step is forward + backward + optimizer step; the first ``--warmup`` steps are not timed.
The data pipeline is left out (it runs in loader workers, in parallel with the GPU).

    python benchmarks/bench_training.py --threads 2                # CPU, batch 1
    python benchmarks/bench_training.py --device cuda --batch 8 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(step, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - start)


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def bench_stage1(args, device) -> dict:
    import torch
    import torch.nn.functional as F

    from diffbir.models.cleaner import build_cleaner

    torch.manual_seed(0)
    model = build_cleaner("swinir").to(device).train()
    model.gradient_checkpointing = args.checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lq = torch.rand(args.batch, 3, args.size, args.size, device=device)
    hq = torch.rand_like(lq)

    def step():
        with _autocast(device, args.precision):
            loss = F.mse_loss(model(lq).float(), hq)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rate = _time_steps(step, args.steps1, args.warmup, device)
    return {"stage": "stage1 (SwinIR)", "steps_per_s": rate, "peak_mib": _peak_mib(device)}


def bench_stage2(args, device) -> dict:
    import torch

    from diffbir.training.config import config_from_dict
    from diffbir.training.stage2 import Stage2Task

    precision = {"fp32": "no"}.get(args.precision, args.precision)
    cfg = config_from_dict(
        {
            "data": {"source": "unused", "size": args.size},
            "model": {"sd_checkpoint": None, "tokenizer": str(TOKENIZER)},
            "run": {
                "mixed_precision": precision,
                "gradient_checkpointing": args.checkpointing,
            },
        },
        "stage2",
    )
    torch.manual_seed(0)
    task = Stage2Task(cfg, device)
    task.text([""])  # prompts are cached: the text encoder is not part of a step
    task.stage2.drop_text_encoder()
    opt = torch.optim.AdamW([p for p in task.trainable.parameters() if p.requires_grad], lr=1e-4)
    batch = {
        "hq": torch.rand(args.batch, 3, args.size, args.size, device=device),
        "lq": torch.rand(args.batch, 3, args.size, args.size, device=device),
        "prompt": [""] * args.batch,
    }
    gen = torch.Generator(device).manual_seed(0)

    def step():
        with _autocast(device, args.precision):
            loss = task.loss(batch, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rate = _time_steps(step, args.steps2, args.warmup, device)
    return {"stage": "stage2 (ControlNet)", "steps_per_s": rate, "peak_mib": _peak_mib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="training crop (released: 512)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--stages", default="1,2", help="which stages: 1, 2 or 1,2")
    parser.add_argument("--steps1", type=int, default=3, help="timed stage-1 steps")
    parser.add_argument("--steps2", type=int, default=2, help="timed stage-2 steps")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    if "1" in args.stages:
        rows.append(bench_stage1(args, device))
    if "2" in args.stages:
        rows.append(bench_stage2(args, device))
    what = f"{device.type}, batch {args.batch} at {args.size}x{args.size}, {args.precision}"
    what += ", gradient checkpointing" if args.checkpointing else ""
    print(f"\nTraining throughput ({what})\n")
    print("| stage | steps/s | images/s | peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        images = r["steps_per_s"] * args.batch
        print(f"| {r['stage']} | {r['steps_per_s']:.3f} | {images:.3f} | {r['peak_mib']:.0f} |")
    print("\n" + json.dumps({"config": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
