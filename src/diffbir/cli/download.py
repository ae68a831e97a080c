"""``diffbir download``: list the released weights files, or fetch some of them."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffbir.cli.common import notes_as_lines
from diffbir.errors import DiffBIRError, DownloadError, WeightsNotFoundError, printable
from diffbir.weights import folders as weights_folders
from diffbir.weights import registry as weights

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

_DESCRIPTION = """\
Download released DiffBIR weights files ahead of time, so later runs can work
offline. With no NAME, list every known file, its size and whether it is
already here. Files go to --weights-dir (or DIFFBIR_WEIGHTS_DIR) when given,
otherwise to the Hugging Face cache under diffbir/. Interrupted downloads
resume; every file whose checksum is published is verified before use.
DIFFBIR_MIRROR=URL fetches every file as URL/NAME instead (checksums still apply).
Captioner models (llava, git) are folders of several files: name them to fetch
them (URL/FOLDER/FILE through a mirror); --all leaves them out.
"""

_EPILOG = """\
examples:
  diffbir download                          list the files and which are present
  diffbir download v2.pth BSRNet.pth        fetch two files into the cache
  diffbir download --all --weights-dir W    fetch every released file into the folder W
  diffbir download git                      fetch the light captioner's model folder
  diffbir download --for v2.1 sr            fetch exactly what a v2.1 sr run needs here
                                            (weights and the captioner of this machine)
  diffbir download --for v2 face-whole --captioner none
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
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="released file name(s) or captioner name(s)"
    )
    parser.add_argument(
        "--all", action="store_true", help="download every released file (not the captioners)"
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder to look in and download into (default: DIFFBIR_WEIGHTS_DIR, "
        "else the Hugging Face cache)",
    )
    parser.add_argument(
        "--for",
        dest="run_for",
        nargs=2,
        metavar=("RELEASE", "TASK"),
        help="fetch every file a `diffbir restore --version RELEASE --task TASK` run needs "
        "(weights, its captioner, the face detector for face-whole)",
    )
    parser.add_argument(
        "--captioner",
        metavar="NAME",
        help="with --for: the run's captioner (default: the release's choice on this "
        "machine, as diffbir restore picks it; none for no captioner)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """List the registry, or make sure the named files are present locally."""

    with notes_as_lines():
        if args.run_for:
            args.names = list(args.names) + _names_for(args.run_for, args.captioner)
        if not args.names and not args.all:
            _print_listing(weights, args.weights_dir)
            return 0
        names = list(weights.REGISTRY) if args.all else []
        names += [n for n in args.names if n not in names]
        # Reject every unknown name before any download.
        known = [n if n in weights_folders.MODEL_FOLDERS else weights.get(n).name for n in names]
        # Go on past a file that cannot be had, then name every such file in one error.
        failures: list[tuple[str, DiffBIRError]] = []
        for name in known:
            resolver = (
                weights_folders.resolve_folder
                if name in weights_folders.MODEL_FOLDERS
                else weights.resolve
            )
            try:
                path = resolver(
                    name, weights_dir=args.weights_dir, download=True, progress=not args.quiet
                )
            except (WeightsNotFoundError, DownloadError) as exc:
                failures.append((name, exc))
                continue
            if not args.quiet:
                print(f"{name}: {printable(path)}")
        if failures:
            urls = {name: entry.url for name, entry in weights_folders.MODEL_FOLDERS.items()}
            raise weights.missing_files_error(failures, urls=urls)
    return 0


def _names_for(run_for: list[str], captioner: str | None) -> list[str]:
    """Registry names and captioner folders a run of (release, task) needs."""
    from diffbir.config.presets import get_preset
    from diffbir.config.settings import default_captioner, resolve_device
    from diffbir.errors import ConfigError
    from diffbir.weights.needs import run_needs

    version, task = run_for
    try:
        get_preset(version, task)
    except ConfigError as exc:
        raise ConfigError(f"--for {printable(version)} {printable(task)}: {exc}") from None
    if captioner is None:
        captioner = default_captioner(version, resolve_device(None).type)
    return [need.name for need in run_needs(version, task, captioner=captioner)]


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
    _print_model_folders(weights_dir)


def _print_model_folders(weights_dir: Path | None) -> None:
    """The captioners' model folders: fetched by name, each file from its repository."""

    entries = list(weights_folders.MODEL_FOLDERS.values())
    width = max(len(e.name) for e in entries)
    print("\nCaptioner models (folders; `diffbir download NAME`, not part of --all):")
    print(f"{'NAME':<{width}}  {'SIZE':>9}  {'HERE':<4}  DESCRIPTION")
    for e in entries:
        here = "yes" if weights_folders.find_local_folder(e, weights_dir=weights_dir) else "no"
        print(f"{e.name:<{width}}  {_human_size(e.size):>9}  {here:<4}  {e.description} ({e.repo})")
    print("Licences:")
    for e in entries:
        print(f"  {e.license_note}: {e.name}")


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
