"""``diffbir eval``: image quality metrics of restored images, with or without references."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from diffbir.errors import ConfigError, printable
from diffbir.metrics.names import METRICS, parse_metrics

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

_DESCRIPTION = """\
Measure restored images: full-reference metrics against the images of --reference
(paired by file name without the suffix, relative to the folders given: out/0001.png
with hq/0001.jpg), no-reference metrics on the restored images alone. Prints a table
(each image, then the mean); --csv and --json write the same values in full precision.
Every image must have its partner, and paired images must have the same size unless
--resize-to says how to bring them to one. FID is one value for the run (the table's
"set" row): the restored set against the --reference set, which need not pair by name
unless a per-image full-reference metric is chosen too.

The metrics are this project's own code (Apache-2.0) and follow pyiqa's conventions,
the values restoration papers report; see README for each one. Learned metrics load
their published weights through the weights registry (`diffbir download NAME`).
"""


def _metric_lines() -> str:
    width = max(len(n) for n in METRICS)
    lines = []
    for info in METRICS.values():
        kind = "FR" if info.reference else "NR"
        arrow = "lower is better" if info.lower_better else "higher is better"
        lines.append(f"  {info.name.ljust(width)}  {kind}, {arrow}: {info.summary}")
    return "\n".join(lines)


_EPILOG = f"""\
metrics (FR: needs --reference, NR: does not):
{_metric_lines()}

examples:
  diffbir eval restored/ --reference hq/ --metrics psnr,ssim,lpips --y-channel --crop-border 4
  diffbir eval 'out/*.png' --reference hq/ --metrics psnr,dists --csv scores.csv --json scores.json
  diffbir eval restored/ --metrics niqe,clipiqa
  diffbir eval restored/ --reference hq/ --metrics fid
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand to the ``diffbir`` parser."""
    parser = subparsers.add_parser(
        "eval",
        help="measure restored images (PSNR, SSIM, LPIPS, DISTS, NIQE)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="RESTORED", help="restored image files, folders or globs"
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        metavar="HQ",
        help="reference (ground-truth) image files, folders or globs",
    )
    parser.add_argument(
        "--metrics",
        metavar="LIST",
        help="comma-separated metric names (default: psnr,ssim with --reference, else niqe)",
    )
    parser.add_argument(
        "--crop-border",
        type=int,
        default=0,
        metavar="N",
        help="leave N pixels of each side out of PSNR, SSIM and NIQE (default: 0)",
    )
    parser.add_argument(
        "--y-channel",
        action="store_true",
        help="PSNR and SSIM on the Y of YCbCr (BT.601, as BasicSR) instead of RGB",
    )
    parser.add_argument(
        "--resize-to",
        metavar="SIZE",
        help="'reference': resize each restored image to its reference's size; "
        "N or WxH: resize both to that size (Pillow bicubic)",
    )
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the values as CSV")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the values as JSON")
    parser.add_argument(
        "--mean-only", action="store_true", help="print only the mean row, not each image"
    )
    parser.add_argument("--recursive", action="store_true", help="look into sub-folders")
    parser.add_argument(
        "--weights-dir", type=Path, help="folder of metric weights under their released names"
    )
    parser.add_argument(
        "--no-download", action="store_true", help="never download weights; fail if missing"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (unset: cuda if available)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace):
    """The :class:`~diffbir.metrics.evaluate.EvalOptions` of the command line, checked."""
    from diffbir.metrics.evaluate import EvalOptions, parse_resize

    if args.crop_border < 0:
        raise ConfigError(f"--crop-border must be 0 or more, got {args.crop_border}")
    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if path is not None and path.is_dir():
            raise ConfigError(f"{flag} {printable(path)}: is a folder; name a file to write")
    return EvalOptions(
        crop_border=args.crop_border,
        y_channel=args.y_channel,
        resize_to=parse_resize(args.resize_to),
        weights_dir=args.weights_dir,
        download=not args.no_download,
    )


def run(args: argparse.Namespace) -> int:
    """Pair, measure, print and write; any problem stops the run with one line."""
    from diffbir.config.settings import resolve_device
    from diffbir.metrics import evaluate, report

    default = "psnr,ssim" if args.reference else "niqe"
    metrics = parse_metrics(args.metrics or default)
    options = options_from_args(args)
    needs_ref = [m.name for m in metrics if m.reference]
    if needs_ref and not args.reference:
        raise ConfigError(
            f"{', '.join(needs_ref)} need a reference: pass --reference HQ "
            "(or choose only no-reference metrics)"
        )
    device = resolve_device(args.device)
    references = None
    if args.reference and needs_ref and not evaluate.needs_pairing(metrics):
        # Only set metrics (FID) use the references: two sets, compared as they are.
        pairs = evaluate.pair_files(args.inputs, None, recursive=args.recursive)
        references = evaluate.reference_files(args.reference, recursive=args.recursive)
    else:
        pairs = evaluate.pair_files(args.inputs, args.reference, recursive=args.recursive)
        evaluate.check_sizes(pairs, options)
    result = evaluate.evaluate(
        pairs, metrics, options, device=device, progress=not args.quiet, references=references
    )
    print(report.format_table(result, per_image=not args.mean_only))
    settings = {
        "crop_border": options.crop_border,
        "y_channel": options.y_channel,
        "resize_to": args.resize_to,
    }
    if args.csv is not None:
        report.write_csv(args.csv, result)
    if args.json is not None:
        report.write_json(args.json, result, settings)
    written = [os.fspath(p) for p in (args.csv, args.json) if p is not None]
    if written and not args.quiet:
        print(f"wrote {', '.join(printable(p) for p in written)}")
    return 0
