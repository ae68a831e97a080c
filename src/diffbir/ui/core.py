"""The web UI's work, without the web: form values -> options, a shared model, a run.

Nothing here imports gradio, so it is tested (and usable) without the ``ui``
extra. :mod:`diffbir.ui.app` lays out the page and calls :func:`restore_uploads`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffbir.config.presets import FACE_WHOLE, get_preset
from diffbir.config.settings import RestoreOptions
from diffbir.errors import DiffBIRError, ImageReadError
from diffbir.restore.factory import load_restorer
from diffbir.restore.plan import MAX_OUTPUT_PIXELS

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: Inputs larger than this many pixels are refused (2048 x 2048); the x4 result
#: of such an image is already 67 megapixels.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: Largest accepted upload, in megabytes.
DEFAULT_MAX_UPLOAD_MB = 50
#: Most images restored by one click.
DEFAULT_MAX_FILES = 16
#: Results larger than this are refused before any work (a 2048^2 input at x8 would be
#: 268 MP): the limit ``diffbir restore`` applies too.
DEFAULT_MAX_OUTPUT_PIXELS = MAX_OUTPUT_PIXELS
#: Finished runs whose files are kept on disk for download; older ones are removed.
KEEP_RUNS = 8

OOM_MESSAGE = (
    "out of memory: use smaller tiles (Tiling), a smaller upscale, or fewer images at once"
)

#: ``(fraction in [0, 1], description)`` -> None; the page's progress bar.
ProgressReport = Callable[[float, str], None]
#: ``(version, task) -> pipeline``: loads the models of one release.
PipelineFactory = Callable[[str, str], Any]


#: The page's first values: the default release's (presets) and RestoreOptions' defaults.
_PRESET = get_preset()
_OPTIONS = RestoreOptions()


@dataclass
class FormValues:
    """What the page's controls hold. Zero tiles mean automatic; seed -1 means random.
    The defaults are the release table's (v2.1 sr) and :class:`RestoreOptions`'."""

    version: str = _PRESET.version
    task: str = _PRESET.task
    upscale: float = _PRESET.upscale
    steps: int = _PRESET.steps
    sampler: str = _PRESET.sampler
    cfg_scale: float = _PRESET.cfg_scale
    prompt: str = ""  # the page fills in the release's (release_defaults)
    negative_prompt: str = ""
    control_strength: float = _OPTIONS.control_strength
    guidance_scale: float = _OPTIONS.guidance_scale
    guidance_space: str = _OPTIONS.guidance_space
    guidance_loss: str = _OPTIONS.guidance_loss
    guidance_mask: str | None = None  # path of an uploaded grey image (white: hold)
    guidance_start: int = _OPTIONS.guidance_start
    guidance_stop: int = _OPTIONS.guidance_stop
    color_fix: str = _OPTIONS.color_fix
    seed: int = _OPTIONS.seed
    cleaner_tile: int = 0
    vae_tile: int = 0
    latent_tile: int = 0
    tile_overlap: float = _PRESET.tile_overlap
    captioner: str = "auto"  # "auto": the release's choice for this device (see settings)
    caption: str = ""  # edited caption used for every uploaded image; "" = caption each
    tile_captions: str = _OPTIONS.tile_captions
    # The map of where the model invented (diffbir.restore.uncertainty): with 1 sample the
    # detail's departure from stage 1, with 2+ the spread of that many restorations
    # (each a full run); shown over the result at ``overlay_opacity``.
    uncertainty: bool = False
    uncertainty_samples: int = 1
    overlay_opacity: float = 0.6

    def to_options(self):
        """The :class:`RestoreOptions` these values describe (validated)."""

        def tile(value: float | None) -> int | None:
            return int(value) if value else None

        values = dict(
            upscale=float(self.upscale),
            steps=int(self.steps),
            sampler=self.sampler,
            cfg_scale=float(self.cfg_scale),
            prompt=self.prompt or "",
            negative_prompt=self.negative_prompt or "",
            control_strength=float(self.control_strength),
            guidance_scale=float(self.guidance_scale),
            guidance_space=self.guidance_space,
            guidance_loss=self.guidance_loss,
            guidance_mask=_read_form_mask(self.guidance_mask),
            guidance_start=int(self.guidance_start),
            guidance_stop=int(self.guidance_stop),
            color_fix=self.color_fix,
            seed=None if self.seed is None or int(self.seed) < 0 else int(self.seed),
            cleaner_tile=tile(self.cleaner_tile),
            vae_tile=tile(self.vae_tile),
            latent_tile=tile(self.latent_tile),
            tile_overlap=None if self.tile_overlap is None else float(self.tile_overlap),
            captioner=None if self.captioner in (None, "", "auto") else self.captioner,
            tile_captions=self.tile_captions or "whole",
            uncertainty=bool(self.uncertainty),
            n_samples=int(self.uncertainty_samples or 1) if self.uncertainty else 1,
            # The sampler's tqdm bar is what the page's progress bar follows.
            progress=True,
        )
        # The controls of settings the release has no use for (HYPIR's sampling) are
        # inactive on the page: their values are not the run's.
        preset = get_preset(self.version, self.task)
        options = RestoreOptions(**{k: v for k, v in values.items() if preset.takes(k)})
        options.validate()
        return options


def _read_form_mask(path: str | None):
    if not path:
        return None
    from diffbir.imaging.io import read_mask

    return read_mask(path, max_pixels=DEFAULT_MAX_PIXELS)


def release_defaults(version: str, task: str) -> dict[str, Any]:
    """The form values a release uses by default (shown when version or task changes);
    ``unused`` names the form's settings that the release has no use for."""
    preset = get_preset(version, task)
    return {
        "upscale": preset.upscale,
        "steps": preset.steps,
        "sampler": preset.sampler,
        "cfg_scale": preset.cfg_scale,
        "prompt": preset.prompt,
        "negative_prompt": preset.negative_prompt,
        "tile_overlap": preset.tile_overlap,
        "unused": preset.unused_options,
    }


def released_pipeline_factory(
    *,
    weights_dir: str | Path | None = None,
    model_config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    download: bool = True,
) -> PipelineFactory:
    """A factory loading released weights as ``diffbir restore`` does, that keeps the
    last stage-2 model (Stable Diffusion + ControlNet, ~5 GB) and reuses it for every
    task of a release that uses the same files (v2 and v2.1 share one across tasks):
    switching task then loads only the cleaner."""
    return ReleasedModels(
        dict(
            weights_dir=weights_dir,
            model_config=model_config,
            device=device,
            dtype=dtype,
            download=download,
            progress=True,
        )
    )


class ReleasedModels:
    """``(version, task) -> pipeline`` over released weights, sharing one stage-2 model."""

    def __init__(self, loader: dict[str, Any]) -> None:
        self._loader = loader
        self._stage2_key: tuple[str, str] | None = None
        self._stage2: Any = None

    @staticmethod
    def stage2_key(version: str, task: str) -> tuple[str, str]:
        """The stage-2 files ``(sd, controlnet)`` a release's task runs on (for whole
        photos: the background's)."""
        preset = get_preset(version, "sr" if task == FACE_WHOLE else task)
        return preset.sd, preset.controlnet

    def describe_load(self, version: str, task: str) -> str:
        """What asking for ``(version, task)`` now loads, for the page."""
        if self._stage2 is not None and self.stage2_key(version, task) == self._stage2_key:
            return f"loading the {version} {task} cleaner (the diffusion model is already loaded)"
        if get_preset(version, "sr" if task == FACE_WHOLE else task).model == "hypir":
            return "loading HYPIR: Stable Diffusion 2.1-base and its LoRA; this takes a while"
        return (
            f"loading the {version} {task} models: Stable Diffusion + ControlNet (~5 GB) "
            "and the cleaner; this takes a while"
        )

    def __call__(self, version: str, task: str):

        key = self.stage2_key(version, task)
        if key != self._stage2_key:
            self._stage2, self._stage2_key = None, None  # freed before the next one loads
        restorer = load_restorer(version, task, stage2=self._stage2, **self._loader)
        self._stage2, self._stage2_key = restorer.stage2, key
        return restorer


class PipelineCache:
    """One loaded pipeline shared by every request, loaded on first use.

    Holding a single pipeline bounds memory: asking for another release frees
    the current one first. A lock makes concurrent callers load it once.
    """

    def __init__(self, factory: PipelineFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._key: tuple[str, str] | None = None
        self._pipeline: Any = None

    @property
    def loaded(self) -> tuple[str, str] | None:
        """``(version, task)`` of the pipeline in memory, or ``None``."""
        return self._key

    def get(self, version: str, task: str, on_load: Callable[[str], None] | None = None):
        """The pipeline for ``(version, task)``; ``on_load(message)`` is called before a load."""
        key = (version, task)
        with self._lock:
            if self._key == key:
                return self._pipeline
            self._release()
            if on_load is not None:
                describe = getattr(self._factory, "describe_load", None)
                on_load(
                    describe(version, task)
                    if describe is not None
                    else f"loading the {version} {task} models (first use)"
                )
            self._pipeline = self._factory(version, task)
            self._key = key
            return self._pipeline

    def clear(self) -> None:
        """Free the loaded pipeline (the next request loads again)."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        import torch

        self._pipeline = None
        self._key = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class RestoredImage:
    """One finished image: files written for display and download."""

    name: str  # the uploaded file's name
    result: Path  # full-size PNG
    stage1: Path  # the cleaner's output (the diffusion condition)
    before: Path  # the input resized to the result's size, for the before/after slider
    size: tuple[int, int]  # (height, width) of the result
    caption: str = ""  # what the captioner (or the page's edit) said of it
    # With the uncertainty toggle: the heat map, its raw 16-bit values and the result
    # with the map laid over it (diffbir.restore.uncertainty).
    uncertainty: Path | None = None
    uncertainty_raw: Path | None = None
    overlay: Path | None = None
    uncertainty_note: str = ""  # the map's measure and figures, for the page


@dataclass
class RunReport:
    """What a click produced: finished images and one line per image that failed."""

    images: list[RestoredImage] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """A one-line account for the page."""
        parts = [f"{len(self.images)} restored in {self.seconds:.1f} s"]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        return ", ".join(parts)


def restore_uploads(
    paths: Sequence[str | Path],
    form: FormValues,
    cache: PipelineCache,
    out_root: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
    report: ProgressReport | None = None,
) -> RunReport:
    """Restore uploaded image files into a new folder under ``out_root``, through the
    run loop that ``diffbir restore`` uses (:class:`~diffbir.jobs.loop.RunLoop`).

    Bad files are listed in ``failures`` and the others still run; so are images that
    run out of memory (on the GPU or the CPU). Raises a :class:`DiffBIRError` (message
    for the page) when the options are invalid, nothing was uploaded, no file is
    readable, the models cannot be loaded, or every image failed.
    """
    from diffbir.jobs.loop import RunLoop, Work

    report = report or (lambda fraction, text: None)
    started = time.perf_counter()
    options = form.to_options()
    run = RunReport()

    def failed(path: Path | str, reason: str) -> None:
        name = Path(path).name
        shown = reason if reason.startswith((f"{name}: ", f"{path}: ")) else f"{name}: {reason}"
        run.failures.append(shown)

    upscale = options.upscale or get_preset(form.version, form.task).upscale
    readable = _readable_uploads(
        paths, upscale, failed, max_files=max_files, max_pixels=max_pixels,
        max_output_pixels=max_output_pixels,
    )  # fmt: skip
    if not readable:
        raise ImageReadError("; ".join(run.failures))

    report(0.0, "loading models")
    restorer = cache.get(form.version, form.task, on_load=lambda text: report(0.0, text))
    config = restorer.resolve(options)  # once for the whole click
    given = edited_prompt(form, config)
    sink = UploadSink(new_run_folder(out_root), opacity=float(form.overlay_opacity))
    loop = RunLoop(
        restorer,
        config,
        sink,
        report=failed,
        max_pixels=max_pixels,
        oom_message=lambda exc: OOM_MESSAGE,
    )
    work = [Work(path, index) for index, path in enumerate(readable)]
    # The captioner stays loaded between clicks: the page's next run reuses it.
    prompts = loop.prompts(work, {w.key: given for w in work}, free_captioner=False)
    sink.prompts = prompts

    def starting(group: list[Work]) -> None:
        index = group[0].key
        names = ", ".join(w.source.name for w in group)
        report(index / len(work), f"restoring {names} ({index + 1}/{len(work)})")

    loop.run(work, prompts, before_group=starting)
    report(1.0, "done")
    run.images = sink.images
    if not run.images:
        raise DiffBIRError("; ".join(run.failures))
    run.seconds = time.perf_counter() - started
    return run


def _readable_uploads(
    paths: Sequence[str | Path], upscale: float, failed, *, max_files: int, **limits
) -> list[Path]:
    """The uploads whose headers pass the size limits (the others reported to
    ``failed``), checked before minutes of model loading; a :class:`DiffBIRError` for
    none or too many uploads."""
    from diffbir.jobs.loop import size_problem

    paths = [Path(p) for p in paths if p]
    if not paths:
        raise DiffBIRError("upload at least one image")
    if len(paths) > max_files:
        raise DiffBIRError(f"{len(paths)} images uploaded; at most {max_files} per run")
    readable = []
    for path in paths:
        problem = size_problem(path, upscale, **limits, knob="the upscale")
        if problem is None:
            readable.append(path)
        else:
            failed(path, problem)
    return readable


class UploadSink:
    """The run loop's sink for the page: per image the result, the stage-1 output and
    the input resized to the result's size (for the before/after slider), as PNGs that
    record how the result was made, in one run folder."""

    def __init__(self, folder: Path, opacity: float = 0.6) -> None:
        self.folder = folder
        self.opacity = opacity
        self.images: list[RestoredImage] = []
        self.prompts: dict = {}

    def write(self, work, image, result, index: int) -> None:
        from diffbir.imaging.io import write_image
        from diffbir.jobs.loop import output_metadata

        name = work.source.name
        stem = f"{work.key + 1:02d}_{safe_stem(name)}"
        n_samples = result.config.n_samples if result.config is not None else 1
        first = index * n_samples  # the page shows an input's first sample
        restored = result.image[first].float().cpu()
        size = (int(restored.shape[-2]), int(restored.shape[-1]))
        metadata = output_metadata(result, work.source, index)
        folder = self.folder
        # sRGB, what the browser shows; the photo's EXIF/XMP carried, its GPS position not.
        carry = None if image.metadata.empty else image.metadata.without_gps()
        shown = RestoredImage(
            name=name,
            result=write_image(
                folder / f"{stem}_diffbir.png",
                restored,
                alpha=image.alpha,
                metadata=metadata,
                carry=carry,
            ),
            stage1=write_image(folder / f"{stem}_stage1.png", result.stage1[first].float().cpu()),
            before=write_image(folder / f"{stem}_input.png", resized_like(image.rgb, size)),
            size=size,
            caption=result.prompts[index].caption if result.prompts else "",
        )
        if result.config is not None and result.config.uncertainty:
            from diffbir.restore.uncertainty import uncertainty_map, write_maps

            rows = result.image[first : first + n_samples]
            umap = uncertainty_map(rows, result.stage1[first])
            shown.uncertainty, shown.uncertainty_raw = write_maps(shown.result, umap, metadata)
            shown.overlay = uncertainty_overlay(shown.result, shown.uncertainty_raw, self.opacity)
            shown.uncertainty_note = umap.describe()
        self.images.append(shown)


def uncertainty_overlay(result: str | Path, raw: str | Path, opacity: float) -> Path:
    """The restored image ``result`` with the heat map of the raw map ``raw`` laid over
    it at ``opacity`` (0: the photo, 1: the map where it is high), written beside
    ``result`` as ``NAME_overlay_OPACITY.png`` (one file per opacity: the page's
    slider shows each without re-running anything)."""
    from diffbir.imaging.io import read_image, write_image
    from diffbir.restore.uncertainty import overlay, read_raw

    result = Path(result)
    opacity = min(1.0, max(0.0, float(opacity)))
    path = result.with_name(f"{result.stem}_overlay_{round(opacity * 100):03d}.png")
    if not path.exists():
        image = read_image(result, max_pixels=DEFAULT_MAX_OUTPUT_PIXELS)
        write_image(path, overlay(image.rgb, read_raw(raw), opacity))
    return path


def edited_prompt(form: FormValues, config):
    """The page's edited caption as every image's prompt, or None to caption each."""
    from diffbir.restore.prompts import ImagePrompt, join_prompt

    caption = " ".join((form.caption or "").split())
    if not caption:
        return None
    return ImagePrompt(
        prompt=join_prompt(caption, config.prompt),
        negative_prompt=config.negative_prompt,
        caption=caption,
        source="edited",
    )


def describe_upload(
    path: str | Path | None,
    form: FormValues,
    cache: PipelineCache,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: ProgressReport | None = None,
) -> str:
    """The caption the run's captioner gives the uploaded image at ``path`` (shown in
    the page, where it can be edited before the run)."""
    from diffbir.imaging.io import read_image

    report = report or (lambda fraction, text: None)
    if not path:
        raise DiffBIRError("upload an image to describe")
    options = replace(form.to_options(), tile_captions="whole")
    image = read_image(Path(path), max_pixels=max_pixels)
    restorer = cache.get(form.version, form.task, on_load=lambda text: report(0.0, text))
    config = restorer.resolve(options)
    if config.captioner == "none":
        raise DiffBIRError("choose a captioner to describe the photo")
    report(0.5, f"describing with {config.captioner} (its first use loads it)")
    return restorer.image_prompts(image.rgb.unsqueeze(0), config)[0].caption


def resized_like(rgb, size: tuple[int, int]):
    """``rgb`` [3,h,w] resized (bicubic) to ``size``, so that it lines up with the result."""
    from diffbir.imaging.resize import resize_for_display

    return resize_for_display(rgb.unsqueeze(0).float(), size)[0]


def safe_stem(name: str) -> str:
    """A file-name stem made of safe characters (uploads may be named anything)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem[:64] or "image"


def new_run_folder(out_root: str | Path, keep: int = KEEP_RUNS) -> Path:
    """A fresh folder for one run's files; only the newest ``keep`` runs are kept."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"run-{time.time_ns()}-", dir=root))
    runs = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("run-"))
    for old in runs[: max(0, len(runs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return folder
