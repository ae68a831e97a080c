"""``diffbir caption``: caption a folder of photos into the table v2.1 trains on.

The release's v2.1 recipe reads a parquet file with one row per image: its
path (``image_path``), a short caption (``llava_short``) and a long one
(``llava_long``). This command writes that table with any captioner of
:mod:`diffbir.captioning`, so ``diffbir train`` with the ``stage2_v21`` preset
can be followed end to end on your own photos. Rows are written in order and
the table is rewritten atomically every ``--save-every`` images, so an
interrupted run keeps what it captioned and ``--resume`` goes on from there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffbir.cli.common import add_model_source_args
from diffbir.config.settings import default_captioner, resolve_device
from diffbir.errors import ConfigError, DiffBIRError, printable
from diffbir.imaging.paths import collect_inputs

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: The release's column names (configs/train/train_stage2_v2.1.yaml).
PATH_COLUMN = "image_path"
SHORT_COLUMN = "llava_short"
LONG_COLUMN = "llava_long"
#: The question LLaVA is asked for the long caption (the release's own short question is
#: in diffbir.captioning; its long one was not published).
LONG_QUESTION = "Describe this image and its style in a very detailed manner."


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption",
        help="caption photos into the parquet table v2.1 training reads",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  diffbir caption photos/ -r -o photos.parquet --captioner llava",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .parquet (or .csv) table")
    p.add_argument("-r", "--recursive", action="store_true", help="also caption sub-folders")
    p.add_argument(
        "--captioner",
        help="llava (the release's; CUDA) or the light one (default: llava on CUDA, the "
        "light one elsewhere); see `diffbir restore --help`",
    )
    p.add_argument("--captioner-bits", type=int, choices=(16, 8, 4), default=16)
    p.add_argument(
        "--long",
        choices=("ask", "same"),
        default=None,
        help="the long caption: ask the captioner a detailed question (llava's default) or "
        "repeat the short one (the default for captioners that take no question)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per captioner call")
    p.add_argument("--save-every", type=int, default=256, help="rewrite the table every N images")
    p.add_argument("--resume", action="store_true", help="keep the rows of an existing table")
    p.add_argument("--relative", action="store_true", help="store paths relative to the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("models")
    add_model_source_args(g)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from diffbir.captioning import load_captioner
    from diffbir.imaging.io import read_image
    from diffbir.restore.prompts import to_pil

    if args.batch_size < 1 or args.save_every < 1:
        raise ConfigError("--batch-size and --save-every must be at least 1")
    output: Path = args.output
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"-o {printable(output)}: name a .parquet or .csv file")
    if output.exists() and not args.resume:
        raise ConfigError(
            f"-o {printable(output)} exists: --resume to go on with it, or choose another name"
        )
    device = resolve_device(args.device)
    name = args.captioner or default_captioner("v2.1", device.type)
    if name == "none":
        raise ConfigError("--captioner none writes no captions; choose a captioner")
    problems: list[tuple[str, str]] = []
    items = collect_inputs(args.inputs, recursive=args.recursive, problems=problems)
    for source, reason in problems:
        print(f"diffbir: skipped {printable(source)}: {reason}", file=sys.stderr)
    rows = _read_table(output) if args.resume and output.exists() else []
    done = {row[PATH_COLUMN] for row in rows}
    todo = [item for item in items if _stored_path(item.path, output, args.relative) not in done]
    if not todo:
        print(f"diffbir: nothing to caption ({len(rows)} rows in {printable(output)})")
        return 1 if problems else 0
    long_mode = args.long or ("ask" if name == "llava" else "same")
    captioner = load_captioner(
        name,
        device=device,
        bits=args.captioner_bits,
        weights_dir=args.weights_dir,
        offline=True if args.no_download else None,
        progress=not args.quiet,
    )
    failed = 0
    since_save = 0
    try:
        with (
            captioner,
            tqdm(total=len(todo), desc="captioning", unit="img", disable=args.quiet) as bar,
        ):
            for start in range(0, len(todo), args.batch_size):
                chunk = todo[start : start + args.batch_size]
                batch, images = [], []
                for item in chunk:
                    try:
                        images.append(to_pil(read_image(item.path).rgb))
                        batch.append(item)
                    except DiffBIRError as exc:
                        failed += 1
                        print(f"diffbir: skipped {printable(item.path)}: {exc}", file=sys.stderr)
                if images:
                    short = captioner.caption(images)
                    long = _ask(captioner, images, LONG_QUESTION) if long_mode == "ask" else short
                    rows += [
                        {
                            PATH_COLUMN: _stored_path(item.path, output, args.relative),
                            SHORT_COLUMN: s,
                            LONG_COLUMN: lg,
                            "captioner": name,
                        }
                        for item, s, lg in zip(batch, short, long)
                    ]
                bar.update(len(chunk))
                since_save += len(chunk)
                if since_save >= args.save_every:
                    _write_table(output, rows)
                    since_save = 0
    finally:
        # Ctrl+C or an error keeps what was captioned: --resume goes on from it.
        if rows:
            _write_table(output, rows)
    print(
        f"diffbir: {len(rows)} rows in {printable(output)} "
        f"({len(todo) - failed} captioned with {name}"
        + (f", {failed + len(problems)} skipped" if failed or problems else "")
        + ")"
    )
    return 1 if failed or problems else 0


def _ask(captioner, images, question: str) -> list[str]:
    """The captioner's answers to ``question`` (captioners that take no question refuse)."""

    ask = getattr(captioner, "ask", None)
    if ask is None:
        raise ConfigError(f"the {captioner.name} captioner takes no question: use --long same")
    return ask(images, question)


def _stored_path(path: Path, table: Path, relative: bool) -> str:
    """How a row names its image: absolute, or relative to the table's folder."""
    import os

    path = Path(path).resolve()
    if relative:
        return Path(os.path.relpath(path, table.resolve().parent)).as_posix()
    return path.as_posix()


def _read_table(path: Path) -> list[dict]:
    """The rows of an existing table (to resume)."""

    try:
        if path.suffix.lower() == ".csv":
            import csv

            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
    except ImportError:
        raise ConfigError("parquet tables need pyarrow: pip install pyarrow") from None
    except Exception as exc:  # noqa: BLE001 - a damaged table is one line, not a traceback
        raise ConfigError(f"{printable(path)}: cannot read the table ({exc})") from None
    if rows and not {PATH_COLUMN, SHORT_COLUMN, LONG_COLUMN} <= set(rows[0]):
        raise ConfigError(
            f"{printable(path)}: not a caption table (needs {PATH_COLUMN}, {SHORT_COLUMN}, "
            f"{LONG_COLUMN})"
        )
    return rows


def _write_table(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` atomically (a temporary file beside it, then renamed)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    columns = [PATH_COLUMN, SHORT_COLUMN, LONG_COLUMN, "captioner"]
    try:
        if path.suffix.lower() == ".csv":
            import csv

            with open(temp, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: [str(row.get(c, "")) for row in rows] for c in columns})
            pq.write_table(table, temp)
        os.replace(temp, path)
    except ImportError:
        temp.unlink(missing_ok=True)
        raise ConfigError("parquet tables need pyarrow: pip install pyarrow") from None
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"{printable(path)}: cannot write ({exc.strerror or exc})") from None
