"""What bfloat16 changes in the images: every case of ../shared/reference/pipeline in bf16
against the same case in fp32, with the reference's tiny weights, on the CPU.

For each case the input, options and seed of the recorded release run are restored
twice through :class:`diffbir.restore.pipeline.DiffBIRPipeline`, once with the
models in float32 (the release's images) and once in bfloat16, and the two 8-bit
outputs are compared: mean and max level difference, the share of values more than
one level apart, PSNR. Prints a Markdown table (per case, and the summary line) for
``benchmarks/RESULTS.md``.

    python benchmarks/bf16_quality.py                     # every case
    python benchmarks/bf16_quality.py --cases v21_sr_edm_dpmpp_3m_sde v1_sr_spaced
    python benchmarks/bf16_quality.py --hypir             # the recorded HYPIR runs

``--hypir`` does the same for the single-image runs of the published HYPIR code in
``tests/fixtures/hypir`` (tiny SD 2.1-base and LoRA). ``--photos`` does it for photos of
``../shared/samples`` with full-size random weights (the files of
``bench_release_whole.py --make-weights`` in ``--weights``): the v2.1 default (x4, 10
steps, CFG 6, no captioner) of each photo's central 128x128.

    python benchmarks/bf16_quality.py --weights /tmp/w --photos \
        ../shared/samples/bid/Flowers.png ../shared/samples/bid/palace.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
HYPIR = HERE.parent / "tests" / "fixtures" / "hypir"
sys.path.insert(0, str(HERE.parent / "tests"))
from reference_cases import CASES, REF, lq_of, restore_options, weights, write_model_config  # noqa: E402


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """8-bit images ``a`` (bf16) against ``b`` (fp32): level differences and PSNR."""
    diff = (a.int() - b.int()).abs().float()
    mse = float((diff**2).mean())
    return {
        "mean": float(diff.mean()),
        "max": int(diff.max()),
        "over1": float((diff > 1).float().mean()),
        "psnr": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
    }


def hypir_rows() -> list[tuple[str, dict]]:
    """The recorded HYPIR runs of tests/fixtures/hypir, bf16 against fp32."""
    import numpy as np
    from PIL import Image

    from diffbir.config.settings import RestoreOptions
    from diffbir.restore.hypir import HypirRestorer

    cases = json.loads((HYPIR / "cases.json").read_text(encoding="utf-8"))["cases"]
    restorers = {
        dtype: HypirRestorer.from_preset(
            "hypir",
            "sr",
            sd=HYPIR / "base",
            lora=HYPIR / "lora.pth",
            dtype=dtype,
            download=False,
            progress=False,
        )  # fmt: skip
        for dtype in ("fp32", "bf16")
    }
    rows = []
    for case in (c for c in cases if c["batch"] == 1):
        pixels = np.asarray(Image.open(HYPIR / case["inputs"][0]).convert("RGB"))
        lq = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
        opts = RestoreOptions(
            upscale=float(case["upscale"]),
            prompt=case["prompt"],
            seed=case["seed"],
            latent_tile=case["patch_size"],
            tile_overlap=1 - case["stride"] / case["patch_size"],
        )
        images = {
            dtype: (r.restore(lq, r.resolve(opts)).image.float() * 255).round().clamp(0, 255)
            for dtype, r in restorers.items()
        }
        rows.append((f"hypir {case['name']}", compare(images["bf16"], images["fp32"])))
    return rows


def photo_rows(photos: list[Path], weights: Path) -> list[tuple[str, dict]]:
    """Sample photos restored with full-size random weights, bf16 against fp32."""
    import numpy as np
    from PIL import Image

    from diffbir.config.settings import RestoreOptions
    from diffbir.restore.pipeline import DiffBIRPipeline

    crops = {}
    for photo in photos:
        with Image.open(photo) as image:
            rgb = image.convert("RGB")
            left, top = (rgb.width - 128) // 2, (rgb.height - 128) // 2
            pixels = np.asarray(rgb.crop((left, top, left + 128, top + 128)))
        crops[photo] = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    images: dict[Path, dict] = {photo: {} for photo in photos}
    for dtype in ("fp32", "bf16"):  # one model in memory at a time
        pipe = DiffBIRPipeline.from_preset(
            "v2.1", "sr", weights_dir=weights, dtype=dtype, download=False, progress=False
        )
        for photo, lq in crops.items():
            image = pipe(lq, RestoreOptions(captioner="none")).image
            images[photo][dtype] = (image.float() * 255).round().clamp(0, 255)
        del pipe
    return [(p.name, compare(images[p]["bf16"], images[p]["fp32"])) for p in photos]


def print_row(name: str, row: dict) -> None:
    print(
        f"| {name} | {row['mean']:.3f} | {row['max']} | {100 * row['over1']:.2f} "
        f"| {row['psnr']:.2f} |",
        flush=True,
    )


def main(argv=None) -> int:
    from diffbir.restore.pipeline import DiffBIRPipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--hypir", action="store_true", help="the recorded HYPIR runs instead")
    parser.add_argument("--photos", nargs="+", type=Path, help="sample photos instead")
    parser.add_argument("--weights", type=Path, help="full-size weights folder (--photos)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.photos and args.weights is None:
        parser.error("--photos needs --weights DIR (bench_release_whole.py --make-weights)")
    torch.set_num_threads(args.threads)
    print("| case | mean level diff | max | % > 1 level | PSNR dB |\n|---|---|---|---|---|")
    if args.hypir or args.photos:
        rows = hypir_rows() if args.hypir else photo_rows(args.photos, args.weights)
        for name, row in rows:
            print_row(name, row)
        summary(rows)
        return 0
    if not CASES:
        print(f"no end-to-end reference at {REF}", file=sys.stderr)
        return 1
    cases = CASES
    names = args.cases or sorted(cases)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = write_model_config(Path(tmp))
        pipes: dict = {}
        for name in names:
            case = cases[name]
            images = {}
            for dtype in ("fp32", "bf16"):
                key = (case["version"], case["task"], case["cleaner"], dtype)
                if key not in pipes:
                    pipes[key] = DiffBIRPipeline.from_preset(
                        case["version"],
                        case["task"],
                        **weights(case),
                        model_config=config,
                        device="cpu",
                        dtype=dtype,
                        download=False,
                        progress=False,
                    )
                image = pipes[key](lq_of(case), restore_options(case)).image
                images[dtype] = (image.float() * 255).round().clamp(0, 255)
            row = compare(images["bf16"], images["fp32"])
            rows.append((name, row))
            print_row(name, row)
    summary(rows)
    return 0


def summary(rows: list[tuple[str, dict]]) -> None:
    means = [r["mean"] for _, r in rows]
    psnrs = [r["psnr"] for _, r in rows if math.isfinite(r["psnr"])]
    print(
        f"| all {len(rows)} cases | mean {sum(means) / len(means):.3f}, worst "
        f"{max(means):.3f} | {max(r['max'] for _, r in rows)} "
        f"| worst {100 * max(r['over1'] for _, r in rows):.2f} "
        f"| mean {sum(psnrs) / max(len(psnrs), 1):.2f}, lowest {min(psnrs, default=math.inf):.2f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
