"""A training run's output folder: checked before anything is written, never mixed with an
earlier run, and its multi-file artefacts published whole or not at all.

* :func:`check_output_dir`: the place is a folder (or can become one) that can be written.
* :func:`earlier_run` / :func:`clear_run`: what an earlier run left there. A fresh run into a
  folder that holds one is refused (its checkpoints have higher step numbers, so pruning
  would delete the new run's checkpoints and ``--resume latest`` would pick the old run);
  ``--overwrite`` deletes the earlier run's files first, and only those (:data:`RUN_ENTRIES`):
  anything else in the folder is left alone.
* :func:`publish`: the export (weights + ``model_config.json``, stage 2's ``sd/``) is written
  into a hidden staging folder, synced, then moved into place with the weights file last and
  the old weights file removed first. A kill at any point leaves the previous complete export,
  or no weights file at all; never new weights beside an old model config or the reverse.
* Checkpoints (``checkpointing.py``) are written into ``step_N.tmp`` and renamed; the
  temporary folders of a killed run are removed when the next run starts
  (:func:`remove_temporaries`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from diffbir.errors import ConfigError
from diffbir.imaging.atomic import fsync_dir

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
STAGING = ".export.tmp"
# What a run writes in its output folder and how the published exports are named. The first
# group marks a folder as holding a run; logs and samples alone do not.
EXPORT_ENTRIES = ("cleaner.safetensors", "controlnet.safetensors", "model_config.json", "sd")
RUN_MARKERS = (CONFIG_FILE, CHECKPOINTS, *EXPORT_ENTRIES)
RUN_ENTRIES = (*RUN_MARKERS, "logs", "samples", "data_list.npz", STAGING)
_TEMPORARY = (".tmp", ".old")


def check_output_dir(out: Path) -> None:
    """Raise a one-line :class:`ConfigError` unless ``out`` is, or can become, a writable folder."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.output_dir: {out} exists and is not a folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"run.output_dir: {existing} is not a folder, so {out} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.output_dir: cannot write in {existing}")


def earlier_run(out: Path) -> list[str]:
    """The entries of :data:`RUN_MARKERS` present in ``out`` (an empty ``checkpoints/`` is none)."""
    found = []
    for name in RUN_MARKERS:
        path = out / name
        if name == CHECKPOINTS:
            if path.is_dir() and any(path.iterdir()):
                found.append(name + "/")
        elif path.exists():
            found.append(name + "/" if path.is_dir() else name)
    return found


def refuse_earlier_run(out: Path) -> None:
    """A fresh run (no ``--resume``, no ``--overwrite``) may not start where a run already is."""
    found = earlier_run(out)
    if found:
        raise ConfigError(
            f"{out} already holds a training run ({', '.join(found)}): continue it with "
            "--resume latest, start over with --overwrite (deletes its checkpoints and "
            "exports), or choose another --output-dir"
        )


def clear_run(out: Path) -> None:
    """Delete what an earlier run wrote in ``out`` (:data:`RUN_ENTRIES`); nothing else.

    The weights files go first, so a kill halfway leaves no loadable half of the old export;
    whatever is left still marks the folder as holding a run (the next start is refused again).
    """
    for name in (*EXPORT_ENTRIES, *RUN_ENTRIES):  # the weights files first
        _remove(out / name)
    fsync_dir(out)


def remove_temporaries(out: Path) -> None:
    """Remove the staging folder and the unfinished checkpoint folders a killed run left."""
    _remove(out / STAGING)
    checkpoints = out / CHECKPOINTS
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            if entry.name.startswith("step_") and entry.name.endswith(_TEMPORARY):
                _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ---------------------------------------------------------------------- durability


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk, then the folders themselves."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary sibling and a rename: the old text or the new, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


# ---------------------------------------------------------------------- export


def staging_dir(out: Path) -> Path:
    """An empty hidden folder in ``out`` to write an export into before :func:`publish`."""
    staging = out / STAGING
    _remove(staging)
    staging.mkdir(parents=True)
    return staging


def publish(staged: list[Path], out: Path) -> list[Path]:
    """Move the entries of a staged export into ``out``; the first one (the weights) last.

    The weights file is the commit mark: the old one is removed before any other entry is
    replaced, and the new one arrives after all of them, so its presence means the export
    beside it is whole. Returns the published paths, in the order of ``staged``.
    """
    if not staged:
        return []
    staging = staged[0].parent
    if any(p.parent != staging for p in staged):
        raise ValueError("an export's entries must all be in the staging folder")
    fsync_tree(staging)
    weights, *others = staged
    _remove(out / weights.name)
    fsync_dir(out)
    for path in others:
        _remove(out / path.name)
        os.replace(path, out / path.name)
    os.replace(weights, out / weights.name)
    fsync_dir(out)
    _remove(staging)
    return [out / p.name for p in staged]
