"""``BENCH/report.md`` and its plots (matplotlib with the Agg backend: ``diffbir[bench]``).

The table has one row per configuration: each metric's mean over the images, the
seconds per image and the peak memory per image. Two plots follow when the metrics
allow them: the fidelity-realness curve (the first full-reference metric against the
first no-reference one, one point per guidance scale, a line through the
configurations that differ only in it) and quality against time per image (the first
full-reference metric, else the first no-reference one).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from diffbir.bench.store import write_bytes
from diffbir.errors import DiffBIRError

FIDELITY_PLOT = "fidelity_realness.png"
TIME_PLOT = "quality_time.png"


def _cell(value, decimals: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{decimals}f}"


def _memory(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def table(outcomes, metrics) -> str:
    """The markdown table: one row per configuration."""
    head = ["config", *[f"{m.name} {'↓' if m.lower_better else '↑'}" for m in metrics]]
    head += ["s / image", "peak memory / image", "images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for outcome in outcomes:
        name = f"`{outcome.config.name}`"
        if outcome.data is None:
            cells = [name, *["-"] * len(metrics), "-", "-", f"failed: {outcome.failed}"]
        else:
            data = outcome.data
            mean = _values(data)
            cells = [name, *[_cell(mean.get(m.name)) for m in metrics]]
            cells += [
                _cell(data["seconds_per_image"], 3),
                _memory(data["peak_memory_bytes"]),
                str(data["eval"]["count"]),
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _values(data: dict) -> dict:
    """A configuration's metric values: the per-image means and the set metrics (FID)."""
    evaluated = data["eval"]
    sets = evaluated.get("set", {})
    known = evaluated.get("metrics", {})
    return {**evaluated["mean"], **{k: v for k, v in sets.items() if k in known}}


def _axes(metrics):
    full = [m for m in metrics if m.reference]
    none = [m for m in metrics if not m.reference]
    return (full[0] if full else None), (none[0] if none else None)


def _arrow(metric) -> str:
    return f"{metric.name} ({'lower' if metric.lower_better else 'higher'} is better)"


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_bytes(path, buffer.getvalue())


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise DiffBIRError(
            "the bench's plots need matplotlib: pip install 'diffbir[bench]' (or pass --no-plots)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def fidelity_plot(outcomes, metrics, path: Path) -> bool:
    """The full-reference metric against the no-reference one, one point per guidance
    scale; False (nothing written) without one of each."""
    fidelity, realness = _axes(metrics)
    done = [o for o in outcomes if o.data is not None]
    if fidelity is None or realness is None or not done:
        return False
    plt = pyplot()
    curves: dict[str, list] = {}
    for outcome in done:
        values = {k: v for k, v in outcome.data["values"].items() if k != "guidance"}
        key = " ".join([outcome.data["version"], *[f"{k}={v}" for k, v in values.items()]])
        mean = _values(outcome.data)
        curves.setdefault(key, []).append(
            (outcome.data.get("guidance_scale"), mean[realness.name], mean[fidelity.name])
        )
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for key, points in curves.items():
        points.sort(key=lambda p: -1 if p[0] is None else p[0])
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        axes.plot(xs, ys, marker="o", label=key)
        for scale, x, y in points:
            if scale is not None:
                axes.annotate(f"g={scale:g}", (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel(_arrow(realness) + " - realness")
    axes.set_ylabel(_arrow(fidelity) + " - fidelity")
    axes.set_title("fidelity against realness (one point per guidance scale)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    _save(figure, path)
    plt.close(figure)
    return True


def time_plot(outcomes, metrics, path: Path) -> bool:
    """Quality against seconds per image, one point per configuration."""
    fidelity, realness = _axes(metrics)
    quality = fidelity or realness
    done = [o for o in outcomes if o.data is not None]
    if quality is None or not done:
        return False
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for outcome in done:
        x = outcome.data["seconds_per_image"]
        y = _values(outcome.data)[quality.name]
        axes.scatter([x], [y])
        axes.annotate(outcome.config.name, (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("seconds per image")
    axes.set_ylabel(_arrow(quality))
    axes.set_title("quality against time per image")
    axes.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)
    return True


def write_report(output: Path, outcomes, metrics, *, header: list[str], plots: bool) -> Path:
    """``output/report.md`` (and its plots unless ``plots`` is false); returns its path."""
    lines = ["# diffbir bench", "", *header, "", table(outcomes, metrics), ""]
    kinds = {o.data.get("memory_kind") for o in outcomes if o.data is not None} - {None}
    if kinds:
        lines += [
            f"Time: the restorer's own seconds per image (mean). Memory: {', '.join(sorted(kinds))}"
            " per image (the largest over the images).",
            "",
        ]
    if plots:
        if fidelity_plot(outcomes, metrics, output / FIDELITY_PLOT):
            lines += [
                "## Fidelity against realness",
                "",
                f"![fidelity-realness]({FIDELITY_PLOT})",
                "",
            ]
        else:
            lines += ["(No fidelity-realness plot: it needs a full-reference and a "
                      "no-reference metric.)", ""]  # fmt: skip
        if time_plot(outcomes, metrics, output / TIME_PLOT):
            lines += ["## Quality against time", "", f"![quality-time]({TIME_PLOT})", ""]
    path = output / "report.md"
    write_bytes(path, "\n".join(lines).encode("utf-8"))
    return path
