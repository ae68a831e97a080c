"""Pair restored images with their references and run metrics over them.

:func:`pair_files` matches images by their path relative to the folder (or glob)
they were found under, without the suffix: ``out/0001.png`` pairs with
``hq/0001.jpg``, ``out/a/b.png`` with ``hq/a/b.png``. :func:`evaluate` reads each
pair once, brings it to the size asked for, and runs every metric on it.

Set metrics (``scope="set"``: FID) give one value for the run, of the restored set
against the reference set. Images pair by name only when a per-image full-reference
metric is chosen; otherwise ``references`` is a set of its own (other names, another
count), read beside the restored images.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from diffbir.errors import ConfigError, DiffBIRError, printable
from diffbir.imaging.io import read_image, read_image_size
from diffbir.imaging.paths import InputItem, collect_inputs
from diffbir.imaging.resize import pil_bicubic
from diffbir.metrics.names import MetricInfo

#: How many names an error about unpaired files quotes.
_SHOWN = 5


@dataclass(frozen=True)
class EvalOptions:
    """How images are prepared before the metrics see them.

    Attributes:
        crop_border: pixels cut from each side (PSNR, SSIM, NIQE), as BasicSR's ``crop_border``.
        y_channel: PSNR and SSIM on the Y of YCbCr instead of RGB.
        resize_to: ``None`` (sizes must match), ``"reference"`` (each restored image is
            resized to its reference's size) or ``(height, width)`` (both are).
        weights_dir: a folder of metric weights under their released names.
        download: whether missing weights may be downloaded.
    """

    crop_border: int = 0
    y_channel: bool = False
    resize_to: str | tuple[int, int] | None = None
    weights_dir: Path | None = None
    download: bool = True


@dataclass(frozen=True)
class Pair:
    """A restored image, its reference (``None`` for no-reference runs), and its name."""

    name: str
    restored: Path
    reference: Path | None = None


@dataclass
class EvalResult:
    """Per-image values (``rows[i][metric]``) and their means, in the metrics' order;
    ``sets`` holds the set metrics' one value each, ``set_counts`` the number of
    restored and reference images they saw."""

    metrics: list[MetricInfo]
    pairs: list[Pair]
    rows: list[dict[str, float]] = field(default_factory=list)
    sets: dict[str, float] = field(default_factory=dict)
    set_counts: tuple[int, int] = (0, 0)

    def mean(self) -> dict[str, float]:
        """The mean of each per-image metric over the images (NaN for none)."""
        out = {}
        for info in self.metrics:
            if info.scope != "image":
                continue
            values = [row[info.name] for row in self.rows]
            out[info.name] = math.fsum(values) / len(values) if values else math.nan
        return out


def parse_resize(text: str | None) -> str | tuple[int, int] | None:
    """``--resize-to``: ``reference``, ``N`` (N x N) or ``WxH``, as :class:`EvalOptions` wants it."""
    if text is None:
        return None
    value = text.strip().lower()
    if value == "reference":
        return "reference"
    parts = value.split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or not all(8 <= n <= 16384 for n in numbers):
        raise ConfigError(
            f"--resize-to {printable(text)}: expected 'reference', N or WxH with sides in 8..16384"
        )
    width, height = numbers
    return (height, width)


def _key(item: InputItem) -> str:
    return item.relative.with_suffix("").as_posix()


def _keyed(items: list[InputItem], what: str) -> dict[str, InputItem]:
    keyed: dict[str, InputItem] = {}
    for item in items:
        key = _key(item)
        if key in keyed:
            raise DiffBIRError(
                f"two {what} images have the name {printable(key)}: "
                f"{printable(keyed[key].path)} and {printable(item.path)}; keep one"
            )
        keyed[key] = item
    return keyed


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(printable(k) for k in keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def pair_files(
    restored: Sequence[str],
    reference: Sequence[str] | None,
    *,
    recursive: bool = False,
) -> list[Pair]:
    """Pair the restored images with the references of the same name (see the module notes).

    Without ``reference`` every restored image stands alone. Raises
    :class:`DiffBIRError` in one line when a source has no image, when a name
    occurs twice in one set, or when an image of either set has no partner.
    """
    items = _keyed(collect_inputs(list(restored), recursive=recursive), "restored")
    if reference is None:
        return [Pair(name=k, restored=i.path) for k, i in items.items()]
    refs = _keyed(collect_inputs(list(reference), recursive=recursive), "reference")
    lonely = [k for k in items if k not in refs]
    unused = [k for k in refs if k not in items]
    if lonely or unused:
        parts = []
        if lonely:
            parts.append(f"{len(lonely)} restored image(s) without a reference: {_names(lonely)}")
        if unused:
            parts.append(f"{len(unused)} reference(s) without a restored image: {_names(unused)}")
        raise DiffBIRError(
            "; ".join(parts) + " (images pair by file name without the suffix, "
            "relative to the folders given)"
        )
    return [Pair(name=k, restored=i.path, reference=refs[k].path) for k, i in items.items()]


def needs_pairing(metrics: Sequence[MetricInfo]) -> bool:
    """Whether the restored images must pair with references by name (a per-image
    full-reference metric is chosen); set metrics alone compare two sets as they are."""
    return any(m.reference and m.scope == "image" for m in metrics)


def reference_files(reference: Sequence[str], *, recursive: bool = False) -> list[Path]:
    """The reference set of an unpaired run (set metrics only), in name order."""
    return [item.path for item in collect_inputs(list(reference), recursive=recursive)]


def check_sizes(pairs: Sequence[Pair], options: EvalOptions) -> None:
    """Refuse, before any metric runs, a pair whose sizes differ when nothing resizes them."""
    if options.resize_to is not None:
        return
    for pair in pairs:
        if pair.reference is None:
            continue
        got = read_image_size(pair.restored)
        want = read_image_size(pair.reference)
        if got != want:
            raise DiffBIRError(
                f"{printable(pair.name)}: the restored image is {got[1]}x{got[0]} but its "
                f"reference is {want[1]}x{want[0]}; pass --resize-to reference (or WxH) to "
                "compare them anyway"
            )


def required_weights(metrics: Sequence[MetricInfo]) -> list[str]:
    """The registry names of the weights files the metrics load, each once."""
    names: list[str] = []
    for info in metrics:
        names.extend(w for w in info.weights if w not in names)
    return names


def build_metrics(
    metrics: Sequence[MetricInfo], options: EvalOptions, device: torch.device
) -> dict[str, Callable]:
    """Each metric's callable ``(x, ref) -> [N] values``; weights are resolved first, all
    at once, so a missing file is reported before any image is read."""
    from diffbir.weights.registry import resolve_many

    paths = resolve_many(
        required_weights(metrics), weights_dir=options.weights_dir, download=options.download
    )
    weights = dict(zip(required_weights(metrics), paths))
    built = {}
    for info in metrics:
        module = importlib.import_module(f"diffbir.metrics.{info.family}")
        files = [weights[w] for w in info.weights]
        built[info.name] = module.build(info.name, options, device, *files)
    return built


def _read_reference(path: Path, options: EvalOptions) -> torch.Tensor:
    ref = read_image(path, keep_alpha=False).rgb[None]
    if isinstance(options.resize_to, tuple):
        ref = pil_bicubic(ref, options.resize_to)
    return ref


def _prepare(pair: Pair, options: EvalOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = read_image(pair.restored, keep_alpha=False).rgb[None]
    ref = None if pair.reference is None else read_image(pair.reference, keep_alpha=False).rgb[None]
    if options.resize_to == "reference" and ref is not None:
        x = pil_bicubic(x, tuple(ref.shape[-2:]))
    elif isinstance(options.resize_to, tuple):
        x = pil_bicubic(x, options.resize_to)
        ref = None if ref is None else pil_bicubic(ref, options.resize_to)
    if ref is not None and x.shape != ref.shape:
        raise DiffBIRError(
            f"{printable(pair.name)}: the restored image is {x.shape[-1]}x{x.shape[-2]} but its "
            f"reference is {ref.shape[-1]}x{ref.shape[-2]}"
        )
    return x, ref


def evaluate(
    pairs: Sequence[Pair],
    metrics: Sequence[MetricInfo],
    options: EvalOptions,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    references: Sequence[Path] | None = None,
) -> EvalResult:
    """Every metric on every pair; full-reference metrics need pairs with a reference.

    ``references``: the reference set of an unpaired run, for set metrics (FID) only;
    then no pair may hold a reference and no per-image metric may need one.
    """
    device = torch.device(device)
    per_image = [m for m in metrics if m.scope == "image"]
    set_metrics = [m for m in metrics if m.scope != "image"]
    unpaired = references is not None
    needs_ref = [m.name for m in (per_image if unpaired else metrics) if m.reference]
    if needs_ref and any(p.reference is None for p in pairs):
        raise ConfigError(
            f"{', '.join(needs_ref)} need a reference: pass --reference HQ "
            "(or choose only no-reference metrics)"
        )
    if set_metrics:
        _check_set_sizes(set_metrics, pairs, references)
    built = build_metrics(metrics, options, device)
    result = EvalResult(metrics=list(metrics), pairs=list(pairs))
    with torch.inference_mode():
        for pair in tqdm(pairs, desc="eval", unit="img", disable=not progress):
            x, ref = _prepare(pair, options)
            x = x.to(device)
            ref = None if ref is None else ref.to(device)
            row = {}
            for info in per_image:
                try:
                    value = built[info.name](x, ref)
                except DiffBIRError as exc:
                    raise DiffBIRError(f"{printable(pair.name)}: {info.name}: {exc}") from None
                row[info.name] = float(value.reshape(-1)[0])
            for info in set_metrics:
                built[info.name].add(x, ref)
            result.rows.append(row)
        for path in tqdm(references or [], desc="eval ref", unit="img", disable=not progress):
            ref = _read_reference(path, options).to(device)
            for info in set_metrics:
                built[info.name].add(None, ref)
    for info in set_metrics:
        result.sets[info.name] = built[info.name].value()
        result.set_counts = built[info.name].counts()
    return result


def _check_set_sizes(
    metrics: Sequence[MetricInfo], pairs: Sequence[Pair], references: Sequence[Path] | None
) -> None:
    restored = len(pairs)
    refs = (
        len(references) if references is not None else sum(p.reference is not None for p in pairs)
    )
    if restored < 2 or refs < 2:
        names = ", ".join(m.name for m in metrics)
        raise DiffBIRError(
            f"{names}: compares two sets and needs at least 2 images on each side: "
            f"got {restored} restored and {refs} reference image(s)"
        )
