"""The ``diffbir`` command: parses arguments, then calls the library.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to the
function that runs it. Modules import heavy dependencies (torch, diffusers)
inside their handlers so that ``diffbir --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from diffbir import __version__
from diffbir.errors import DiffBIRError

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

# Subcommand modules, in the order --help lists them.
COMMANDS: tuple[str, ...] = (
    "restore",
    "download",
    "degrade",
    "eval",
    "bench",
    "caption",
    "train",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffbir",
        description="Restore degraded photos with a generative diffusion prior (DiffBIR).",
    )
    parser.add_argument("--version", action="version", version=f"diffbir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"diffbir.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DiffBIRError as exc:
        print(f"diffbir: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffbir: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
