"""``diffbir degrade``: synthesise LQ test images from HQ images with a degradation pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffbir.config.settings import resolve_device
from diffbir.errors import ConfigError, DiffBIRError, is_out_of_memory, printable
from diffbir.imaging.paths import collect_inputs, output_paths_for

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

_DESCRIPTION = """\
Degrade high-quality images into low-quality ones, to build test sets. Each LQ image
goes to OUT/lq/<same relative path>.png (with --save-hq, the matching HQ, cropped or
sharpened as the pipeline makes it, to OUT/hq/). The draws of an image depend only on
--seed and its path relative to the input folder, so an interrupted run resumes where
it stopped (existing outputs are skipped) and writes identical files. Missing inputs
and unreadable images are reported and skipped; the exit status is then 1.

Options and the pipeline are checked before any image is read: --device must exist
here, --size is 8..8192, and a pipeline file may hold only finite numbers, kernels of
size at most 201 and resizes that never exceed 8x the HQ size per side (see
diffbir.degradation.config for every limit).
"""

_EPILOG = """\
examples:
  diffbir degrade photos/ -o testset --pipeline realesrgan --seed 0
  diffbir degrade faces/ -o faces_lq --pipeline codeformer_face_v1 --size 512 --save-hq
  diffbir degrade hq/ -o x4 --pipeline my_degradation.yaml --scale
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``degrade`` subcommand to the ``diffbir`` parser."""
    parser = subparsers.add_parser(
        "degrade",
        help="make LQ images from HQ images (synthetic test sets)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="HQ", help="HQ image files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    parser.add_argument(
        "--pipeline",
        default="codeformer",
        metavar="NAME|FILE",
        help="codeformer, codeformer_face_v1, realesrgan, or a .yaml/.toml file "
        "(default: codeformer)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    parser.add_argument(
        "--size", type=int, default=None, metavar="S", help="first crop every HQ to S x S"
    )
    parser.add_argument(
        "--crop",
        choices=("center", "random", "resize"),
        default="center",
        help="how --size is reached (default: center)",
    )
    parser.add_argument("--save-hq", action="store_true", help="also write the HQ images")
    parser.add_argument("--recursive", action="store_true", help="look into sub-folders")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="keep the LQ at its low resolution instead of resizing it back to the HQ size",
    )
    parser.add_argument(
        "--skip-existing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip images whose outputs exist (default: on, which makes runs resumable)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def image_seed(seed: int, relative: Path) -> list[int]:
    """Entropy for one image: the base seed and a stable hash of its relative path."""
    import hashlib

    digest = hashlib.sha256(relative.as_posix().encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


#: Largest --size: an S x S crop, then at most 8x per side in the pipeline's resizes.
MAX_SIZE = 8192


def run(args: argparse.Namespace) -> int:
    """Degrade every input image; return 1 if any could not be read or written."""
    import sys

    import numpy as np
    import torch
    from tqdm import tqdm

    from diffbir.degradation.pipelines import load_pipeline
    from diffbir.imaging.io import read_image, write_image
    from diffbir.training.data import crop_to_size

    # Every option is checked before anything is read or written.
    if args.size is not None and not 8 <= args.size <= MAX_SIZE:
        raise ConfigError(f"--size must be in 8..{MAX_SIZE}, got {args.size}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {args.seed}")
    if args.output.exists() and not args.output.is_dir():
        raise ConfigError(f"-o {printable(args.output)}: exists and is not a folder")
    device = resolve_device(args.device)
    pipeline = load_pipeline(args.pipeline)

    def report(where: object, reason: str) -> None:
        line = f"diffbir degrade: skipped {printable(where)}: {printable(reason)}"
        tqdm.write(line, file=sys.stderr)

    problems: list[tuple[str, str]] = []
    items = collect_inputs(args.inputs, recursive=args.recursive, problems=problems)
    for _source, reason in problems:
        # The reason names the source already; print it once.
        tqdm.write(f"diffbir degrade: skipped: {printable(reason)}", file=sys.stderr)
    lq_paths = output_paths_for(items, args.output / "lq", suffix=".png")
    hq_paths = output_paths_for(items, args.output / "hq", suffix=".png")

    failed, skipped = len(problems), 0
    jobs = tqdm(
        list(zip(items, lq_paths, hq_paths)),
        desc=f"degrade ({printable(pipeline.name)})",
        unit="img",
        disable=args.quiet,
    )
    for item, lq_path, hq_path in jobs:
        done = lq_path.exists() and (hq_path.exists() or not args.save_hq)
        if args.skip_existing and done:
            skipped += 1
            continue
        rng = np.random.default_rng(image_seed(args.seed, item.relative))
        try:
            hq = read_image(item.path, keep_alpha=False).rgb
            if args.size is not None:
                hq = crop_to_size(hq, args.size, args.crop, rng)
            with torch.no_grad():
                pair = pipeline(hq[None].to(device), rng, resize_back=not args.scale)
            write_image(lq_path, pair.lq[0].cpu())
            if args.save_hq:
                write_image(hq_path, pair.hq[0].cpu())
        except DiffBIRError as err:
            failed += 1
            report(item.path, _without_name(str(err), item.path))
        except (MemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            failed += 1
            pair = hq = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report(item.path, "out of memory (try a smaller --size or a smaller image)")
    jobs.close()
    if not args.quiet:
        made = len(items) - (failed - len(problems)) - skipped
        print(
            f"{made} written, {skipped} already present, {failed} failed "
            f"-> {printable(args.output)}"
        )
    return 1 if failed else 0


def _without_name(message: str, path: Path) -> str:
    """``message`` without a leading ``<file name>: `` (the skip line names the file)."""

    for prefix in (f"{printable(path)}: ", f"{printable(path.name)}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message
