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


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return "nan" if math.isnan(value) else f"{value:.{_DECIMALS}f}"


def _per_image(result) -> list[str]:
    return [m.name for m in result.metrics if m.scope == "image"]


def set_label(result) -> str:
    """The label of the set metrics' row: ``set (restored vs reference images)``."""
    restored, reference = result.set_counts
    return f"set ({restored} vs {reference})"


def format_table(result, *, per_image: bool = True) -> str:
    """A plain-text table: one row per image (unless ``per_image`` is false), then the mean,
    then (with a set metric such as FID) the ``set`` row of the one value per run."""
    names = [m.name for m in result.metrics]
    header = ["image", *[f"{m.name} {'↓' if m.lower_better else '↑'}" for m in result.metrics]]
    body = []
    has_images = bool(_per_image(result))
    if per_image and has_images:
        body = [
            [printable(pair.name), *[_cell(row.get(n)) for n in names]]
            for pair, row in zip(result.pairs, result.rows)
        ]
    mean = result.mean()
    footer = []
    if has_images:
        footer.append([f"mean ({len(result.rows)})", *[_cell(mean.get(n)) for n in names]])
    if result.sets:
        footer.append([set_label(result), *[_cell(result.sets.get(n)) for n in names]])
    widths = [max(len(r[i]) for r in [header, *body, *footer]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *[c.rjust(w) for c, w in zip(cells[1:], widths[1:])]])

    rule = "-" * len(line(header))
    rows = [line(header), rule, *[line(r) for r in body]]
    if body:
        rows.append(rule)
    rows.extend(line(r) for r in footer)
    return "\n".join(rows)


def to_json(result, options: dict) -> dict:
    """The results as a JSON-ready mapping: options, metrics, mean, one entry per image, and
    (with a set metric) ``set``: its values and the images counted on each side."""
    images = []
    for pair, row in zip(result.pairs, result.rows):
        entry = {"name": pair.name, "restored": os.fspath(pair.restored)}
        if pair.reference is not None:
            entry["reference"] = os.fspath(pair.reference)
        entry.update(row)
        images.append(entry)
    data = {
        "metrics": {
            m.name: {"reference": m.reference, "lower_better": m.lower_better, "summary": m.summary}
            for m in result.metrics
        },
        "options": options,
        "count": len(result.rows),
        "mean": result.mean(),
        "images": images,
    }
    if result.sets:
        restored, reference = result.set_counts
        data["set"] = {**result.sets, "restored": restored, "reference": reference}
    return data


def _writable(path: Path) -> None:
    if path.is_dir():
        raise DiffBIRError(f"{printable(path)}: is a folder; name a file to write")
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)


def write_csv(path: Path, result) -> None:
    """One row per image (name, restored, reference, each metric), then a ``mean`` row and,
    with a set metric, a ``set`` row (its values; empty cells for per-image metrics)."""
    _writable(path)
    names = [m.name for m in result.metrics]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "restored", "reference", *names])
        for pair, row in zip(result.pairs, result.rows):
            reference = "" if pair.reference is None else os.fspath(pair.reference)
            writer.writerow(
                [pair.name, os.fspath(pair.restored), reference, *[_csv(row.get(n)) for n in names]]
            )
        mean = result.mean()
        writer.writerow(["mean", "", "", *[_csv(mean.get(n)) for n in names]])
        if result.sets:
            writer.writerow(["set", "", "", *[_csv(result.sets.get(n)) for n in names]])


def _csv(value: float | None) -> str:
    return "" if value is None else repr(value)


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
