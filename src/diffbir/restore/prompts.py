"""The prompts each image is restored with: the run's, a per-image file, or a caption.

Where an image's positive prompt comes from, first match wins:

1. ``--prompts FILE``: a CSV row for the image (file name, prompt, optional
   negative prompt). The row's prompt is used as the whole positive prompt, so
   the ``prompt.csv`` a run writes can be given back to reproduce it.
2. A sidecar ``NAME.txt`` beside the image: a description of the photo, used
   in place of a caption (joined to the positive prompt).
3. The captioner (``--captioner``): its caption joined to the positive prompt
   as the release joins them, ``"caption, positive prompt"``.
4. The run's positive prompt alone.

Tiles (``--tile-captions``): ``whole`` gives every latent tile the image's
prompt (the release); ``each`` captions every tile's region of the photo on
its own; ``off`` leaves the caption out of the tiles (the positive prompt
only), so a whole-photo caption cannot paint its objects into every tile.

Torch-free: ``--help`` and the CSV reader import it cheaply.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from diffbir.captioning.prompt import join_prompt
from diffbir.errors import ConfigError, printable
from diffbir.restore.plan import Region, overlap_area, plan_run

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

# How large a sidecar or a prompts file may be; a prompt is at most 77 CLIP tokens anyway.
MAX_SIDECAR_BYTES = 64 * 1024
MAX_PROMPTS_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImagePrompt:
    """The prompts one image is restored with.

    ``caption``: what a captioner, sidecar or prompts file said of this image
    ("" when nothing did); ``source``: where the prompt came from
    (``options``, ``captioner:<name>``, ``sidecar``, ``prompts-file``);
    ``tiles``: (region, positive prompt) pairs for tiled sampling, a region
    being a latent tile's place as fractions of the image; empty when every
    tile uses ``prompt``.
    """

    prompt: str
    negative_prompt: str
    caption: str = ""
    source: str = "options"
    tiles: tuple[tuple[Region, str], ...] = ()

    def tile_prompt(self, region: Region) -> str:
        """The positive prompt of the latent tile covering ``region`` (fractions of the
        image): that of the planned tile it overlaps most, else the image's."""

        best, best_area = self.prompt, 0.0
        for tile_region, prompt in self.tiles:
            area = overlap_area(tile_region, region)
            if area > best_area:
                best, best_area = prompt, area
        return best


@dataclass(frozen=True)
class PromptRow:
    """One row of a ``--prompts`` file: the positive prompt and, when given, the negative."""

    prompt: str
    negative_prompt: str | None = None


_NAME_COLUMNS = ("file_name", "filename", "file", "name", "image", "image_path", "path")
_PROMPT_COLUMNS = ("pos_prompt", "prompt", "positive_prompt", "caption")
_NEGATIVE_COLUMNS = ("neg_prompt", "negative_prompt", "negative")


class PromptTable(Mapping[str, PromptRow]):
    """The rows of a ``--prompts`` CSV by image name.

    An image matches a row by its relative path, its file name, or either
    without the extension (``prompt.csv`` names outputs without one).
    """

    def __init__(self, rows: dict[str, PromptRow], source: Path) -> None:
        self._rows = rows
        self.source = source

    def __getitem__(self, key: str) -> PromptRow:
        return self._rows[key]

    def __iter__(self):
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, path: Path, relative: Path | None = None) -> PromptRow | None:
        """The row for the image at ``path`` (``relative``: its path under the input folder)."""
        keys = []
        if relative is not None:
            keys += [relative.as_posix(), relative.with_suffix("").as_posix()]
        keys += [path.name, path.stem]
        for key in keys:
            if key in self._rows:
                return self._rows[key]
        return None


def read_prompts_file(path: str | Path) -> PromptTable:
    """Read a ``--prompts`` CSV: ``file name, prompt[, negative prompt]`` per row.

    A header naming the columns (``file_name,pos_prompt,neg_prompt`` as the
    release's ``prompt.csv``; also ``name``/``prompt``/``negative_prompt``)
    is recognised; without one the columns are taken in that order. An empty
    negative cell keeps the run's negative prompt.

    Raises:
        ConfigError: the file is missing, unreadable, too large, has a row
            without a name or prompt column, or names one image twice.
    """
    path = Path(path)
    shown = printable(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"--prompts {shown}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ConfigError(f"--prompts {shown}: not a file")
    if size > MAX_PROMPTS_FILE_BYTES:
        raise ConfigError(f"--prompts {shown}: {size} bytes; at most {MAX_PROMPTS_FILE_BYTES}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = list(csv.reader(f))
    except UnicodeDecodeError:
        raise ConfigError(f"--prompts {shown}: not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise ConfigError(f"--prompts {shown}: cannot read ({exc})") from None
    lines = [row for row in lines if any(cell.strip() for cell in row)]
    if not lines:
        raise ConfigError(f"--prompts {shown}: no rows")
    columns = _columns(lines[0])
    if columns is not None:
        lines = lines[1:]
    else:
        columns = (0, 1, 2)
    name_col, prompt_col, negative_col = columns
    rows: dict[str, PromptRow] = {}
    for number, row in enumerate(lines, start=2 if columns != (0, 1, 2) else 1):
        if len(row) <= max(name_col, prompt_col):
            raise ConfigError(
                f"--prompts {shown}, row {number}: needs a file name and a prompt, got {row!r}"
            )
        name = row[name_col].strip()
        if not name:
            raise ConfigError(f"--prompts {shown}, row {number}: empty file name")
        negative = None
        if negative_col is not None and negative_col < len(row) and row[negative_col].strip():
            negative = row[negative_col].strip()
        key = Path(name).as_posix()
        if key in rows:
            raise ConfigError(f"--prompts {shown}, row {number}: {name!r} is named twice")
        rows[key] = PromptRow(row[prompt_col].strip(), negative)
    return PromptTable(rows, path)


def _columns(header: list[str]) -> tuple[int, int, int | None] | None:
    """(name, prompt, negative) column indices named by ``header``, or None when it is data."""
    cells = [cell.strip().lower() for cell in header]

    def find(names):
        return next((cells.index(n) for n in names if n in cells), None)

    name, prompt = find(_NAME_COLUMNS), find(_PROMPT_COLUMNS)
    if name is None or prompt is None:
        return None
    return name, prompt, find(_NEGATIVE_COLUMNS)


def sidecar_text(image: str | Path) -> str | None:
    """The description in ``NAME.txt`` beside ``image`` (stripped, one line), or None.

    Raises:
        ConfigError: the sidecar exists but is not readable UTF-8 text of sane size.
    """
    image = Path(image)
    path = image.with_suffix(".txt")
    if path == image or not path.is_file():
        return None
    shown = printable(path)
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ConfigError(f"{shown}: a prompt sidecar of over {MAX_SIDECAR_BYTES} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: a prompt sidecar that is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read ({exc.strerror or exc})") from None
    return " ".join(text.split())


def prompt_for_file(
    path: Path,
    *,
    positive: str,
    negative: str,
    table: PromptTable | None = None,
    relative: Path | None = None,
    sidecars: bool = True,
) -> ImagePrompt | None:
    """The prompt a file gives without a captioner (prompts file, then sidecar), or None."""
    if table is not None:
        row = table.lookup(path, relative)
        if row is not None:
            return ImagePrompt(
                prompt=row.prompt,
                negative_prompt=negative if row.negative_prompt is None else row.negative_prompt,
                source="prompts-file",
            )
    if sidecars:
        text = sidecar_text(path)
        if text is not None:
            return ImagePrompt(
                prompt=join_prompt(text, positive),
                negative_prompt=negative,
                caption=text,
                source="sidecar",
            )
    return None


def describe_images(
    lq,
    config,
    captioner: Callable[[], object | None],
    *,
    given: list[ImagePrompt | None] | None = None,
    element_size: int = 4,
    plan=None,
) -> list[ImagePrompt]:
    """The :class:`ImagePrompt` of each image of ``lq`` ([B,3,H,W] in [0,1]) for the
    resolved run ``config``: ``given[i]`` where there is one, else a caption (from
    ``captioner()``, called only when a caption is needed) joined to the run's prompt,
    else the run's prompt; plus tile prompts under ``config.tile_captions``, at the tiles
    of ``plan(hw, config)`` (the restorer's :class:`~diffbir.restore.plan.RunPlan`; by
    default planned here as the pipeline plans)."""

    if plan is None:

        def plan(hw, config):
            return plan_run(hw, config, element_size=element_size, max_pixels=None)

    images = list(lq)
    given = list(given) if given is not None else [None] * len(images)
    if len(given) != len(images):
        raise ConfigError(f"{len(given)} prompts for {len(images)} images")
    need = [i for i, g in enumerate(given) if g is None]
    captions: dict[int, str] = {}
    model = None
    if need and config.captioner != "none":
        model = captioner()
        texts = model.caption([to_pil(images[i]) for i in need])
        captions = dict(zip(need, texts))
    prompts = []
    for index, image in enumerate(images):
        prompt = given[index]
        if prompt is None and index in captions:
            # One line: CLIP's tokenizer folds whitespace anyway, and records stay one row.
            caption = " ".join(captions[index].split())
            prompt = ImagePrompt(
                prompt=join_prompt(caption, config.prompt),
                negative_prompt=config.negative_prompt,
                caption=caption,
                source=f"captioner:{config.captioner}",
            )
        elif prompt is None:
            prompt = ImagePrompt(config.prompt, config.negative_prompt)
        if config.tile_captions != "whole":
            hw = tuple(image.shape[-2:])
            regions = plan(hw, config).latent_regions()
            if len(regions) > 1:
                prompt = _with_tiles(prompt, image, regions, config, captioner)
        prompts.append(prompt)
    return prompts


def _with_tiles(prompt: ImagePrompt, image, regions, config, captioner) -> ImagePrompt:
    """``prompt`` with a prompt per tile: each tile's own caption (``each``) or the run's
    prompt without the image's caption (``off``)."""
    from dataclasses import replace

    if config.tile_captions == "off":
        return replace(prompt, tiles=tuple((region, config.prompt) for region in regions))
    model = captioner()
    if model is None:
        raise ConfigError("--tile-captions each needs a captioner (--captioner)")
    crops = [to_pil(crop_region(image, region)) for region in regions]
    texts = model.caption(crops)
    tiles = tuple(
        (region, join_prompt(" ".join(text.split()), config.prompt))
        for region, text in zip(regions, texts)
    )
    return replace(prompt, tiles=tiles)


def crop_region(image, region: Region):
    """The part of ``image`` ([3,H,W]) inside ``region`` (fractions), at least 1 pixel."""
    h, w = image.shape[-2:]
    top, bottom, left, right = region
    r0, c0 = min(int(top * h), h - 1), min(int(left * w), w - 1)
    r1, c1 = max(r0 + 1, round(bottom * h)), max(c0 + 1, round(right * w))
    return image[..., r0:r1, c0:c1]


def to_pil(image):
    """A [3,H,W] tensor in [0,1] as an 8-bit RGB PIL image (what a captioner reads)."""
    from PIL import Image

    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy())
