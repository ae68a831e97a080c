"""The results of ``diffbir eval`` as a table, a CSV file and a JSON file (torch-free)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from diffbir.errors import DiffBIRError, printable

#: Decimals shown in the table (files keep full precision).
_DECIMALS = 4


def _cell(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.{_DECIMALS}f}"


def format_table(result, *, per_image: bool = True) -> str:
    """A plain-text table: one row per image (unless ``per_image`` is false), then the mean."""
    names = [m.name for m in result.metrics]
    header = ["image", *[f"{m.name} {'↓' if m.lower_better else '↑'}" for m in result.metrics]]
    body = []
    if per_image:
        body = [
            [printable(pair.name), *[_cell(row[n]) for n in names]]
            for pair, row in zip(result.pairs, result.rows)
        ]
    mean = result.mean()
    footer = [f"mean ({len(result.rows)})", *[_cell(mean[n]) for n in names]]
    widths = [max(len(r[i]) for r in [header, *body, footer]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *[c.rjust(w) for c, w in zip(cells[1:], widths[1:])]])

    rule = "-" * len(line(header))
    rows = [line(header), rule, *[line(r) for r in body]]
    if body:
        rows.append(rule)
    rows.append(line(footer))
    return "\n".join(rows)


def to_json(result, options: dict) -> dict:
    """The results as a JSON-ready mapping: options, metrics, mean, and one entry per image."""
    images = []
    for pair, row in zip(result.pairs, result.rows):
        entry = {"name": pair.name, "restored": os.fspath(pair.restored)}
        if pair.reference is not None:
            entry["reference"] = os.fspath(pair.reference)
        entry.update(row)
        images.append(entry)
    return {
        "metrics": {
            m.name: {"reference": m.reference, "lower_better": m.lower_better, "summary": m.summary}
            for m in result.metrics
        },
        "options": options,
        "count": len(result.rows),
        "mean": result.mean(),
        "images": images,
    }


def _writable(path: Path) -> None:
    if path.is_dir():
        raise DiffBIRError(f"{printable(path)}: is a folder; name a file to write")
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)


def write_csv(path: Path, result) -> None:
    """One row per image (name, restored, reference, each metric), then a ``mean`` row."""
    _writable(path)
    names = [m.name for m in result.metrics]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "restored", "reference", *names])
        for pair, row in zip(result.pairs, result.rows):
            reference = "" if pair.reference is None else os.fspath(pair.reference)
            writer.writerow(
                [pair.name, os.fspath(pair.restored), reference, *[repr(row[n]) for n in names]]
            )
        mean = result.mean()
        writer.writerow(["mean", "", "", *[repr(mean[n]) for n in names]])


def write_json(path: Path, result, options: dict) -> None:
    """:func:`to_json` written to ``path`` (NaN written as ``null``)."""
    _writable(path)
    data = to_json(result, options)
    text = json.dumps(_no_nan(data), indent=2, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _no_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value
