"""Where ``diffbir bench`` keeps its results, and its JSON records (torch-free).

``BENCH/data/`` holds the LQ set made by ``diffbir degrade`` (``lq/``, and the
pipeline's ``hq/`` the outputs are measured against) with ``degradation.json``;
``BENCH/<config-name>/`` holds one configuration: ``images/`` (the restorations),
``timings.json`` (seconds and peak memory per image, written after each image) and
``result.json`` (the settings, the metrics of every image and their means, the
timings), written once the configuration is measured. Every file is written to a
temporary name and renamed, so Ctrl+C leaves either the old file or the new one.
A rerun skips the images and the measurements already there.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from diffbir.errors import DiffBIRError, printable


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON (NaN written as ``null``), atomically."""
    text = json.dumps(_no_nan(data), indent=2, ensure_ascii=False) + "\n"
    write_bytes(path, text.encode("utf-8"))


def read_json(path: Path):
    """The JSON in ``path``, or None when it is not there; a broken file is one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DiffBIRError(f"{printable(path)}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except ValueError:
        raise DiffBIRError(
            f"{printable(path)}: not valid JSON; remove it and run again to redo it"
        ) from None


def _no_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


class ConfigFolder:
    """``BENCH/<name>/`` of one configuration."""

    def __init__(self, bench: Path, name: str) -> None:
        self.root = bench / name
        self.images = self.root / "images"
        self.timings = self.root / "timings.json"
        self.result = self.root / "result.json"
        self.settings = self.root / "settings.json"

    def check_settings(self, settings: dict) -> None:
        """Record ``settings`` the first time; refuse, in one line, a folder made with
        other settings (its images would be mixed with this run's)."""
        kept = read_json(self.settings)
        if kept is None:
            write_json(self.settings, settings)
            return
        if kept != json.loads(json.dumps(_no_nan(settings))):
            changed = sorted(k for k in set(kept) | set(settings) if kept.get(k) != settings.get(k))
            raise DiffBIRError(
                f"{printable(self.root)} was made with other settings "
                f"({', '.join(changed[:4])} differ); remove it or choose another -o"
            )
