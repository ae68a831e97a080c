"""``diffbir download``: list the released weights files, or fetch some of them."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffbir.cli.common import notes_as_lines

_DESCRIPTION = """\
Download released DiffBIR weights files ahead of time, so later runs can work
offline. With no NAME, list every known file, its size and whether it is
already here. Files go to --weights-dir (or DIFFBIR_WEIGHTS_DIR) when given,
otherwise to the Hugging Face cache under diffbir/. Interrupted downloads
resume; every file whose checksum is published is verified before use.
DIFFBIR_MIRROR=URL fetches every file as URL/NAME instead (checksums still apply).
"""

_EPILOG = """\
examples:
  diffbir download                          list the files and which are present
  diffbir download v2.pth BSRNet.pth        fetch two files into the cache
  diffbir download --all --weights-dir W    fetch everything into the folder W
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand to the ``diffbir`` parser."""
    parser = subparsers.add_parser(
        "download",
        help="list or download released weights files",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="released file name(s)")
    parser.add_argument("--all", action="store_true", help="download every known file")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to look in and download into (default: DIFFBIR_WEIGHTS_DIR, "
        "else the Hugging Face cache)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """List the registry, or make sure the named files are present locally."""
    from diffbir import weights
    from diffbir.errors import DiffBIRError, DownloadError, WeightsNotFoundError, printable

    with notes_as_lines():
        if not args.names and not args.all:
            _print_listing(weights, args.weights_dir)
            return 0
        names = list(weights.REGISTRY) if args.all else []
        names += [n for n in args.names if n not in names]
        files = [weights.get(n) for n in names]  # reject every unknown name before any download
        # Go on past a file that cannot be had, then name every such file in one error.
        failures: list[tuple[str, DiffBIRError]] = []
        for file in files:
            try:
                path = weights.resolve(
                    file.name, weights_dir=args.weights_dir, download=True, progress=not args.quiet
                )
            except (WeightsNotFoundError, DownloadError) as exc:
                failures.append((file.name, exc))
                continue
            if not args.quiet:
                print(f"{file.name}: {printable(path)}")
        if failures:
            raise weights.missing_files_error(failures)
    return 0


def _print_listing(weights, weights_dir: Path | None) -> None:
    rows = []
    for file in weights.REGISTRY.values():
        local = weights.find_local(file, weights_dir=weights_dir)
        rows.append((file.name, _human_size(file.size), "yes" if local else "no", file.description))
    width = max(len(r[0]) for r in rows)
    print(f"{'NAME':<{width}}  {'SIZE':>9}  {'HERE':<4}  DESCRIPTION")
    for name, size, here, description in rows:
        print(f"{name:<{width}}  {size:>9}  {here:<4}  {description}")
    # The weights are not ours: say under which terms each comes.
    licences: dict[str, list[str]] = {}
    for file in weights.REGISTRY.values():
        licences.setdefault(file.license_note or "see the URL", []).append(file.name)
    print("\nLicences:")
    for note, names in licences.items():
        print(f"  {note}: {', '.join(names)}")


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
