"""Run settings: the user's overrides on top of the release's defaults, resolved once.

:class:`RestoreOptions` is what a caller sets (``None`` = "the release's
value"); :func:`resolve` turns it and a :class:`~diffbir.config.presets.Preset` into
a frozen :class:`RunConfig`, the one description of a run that the CLI, the
Python API, the web UI and whole-photo runs share, that ``--print-config``
prints and that every written image records.
"""

from __future__ import annotations

import math
import numbers
import secrets
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from diffbir.config.limits import (
    MAX_DIFFUSION_SIDE,
    TILE_CAPTIONS,
    ddim_steps_fit,
    ddim_steps_near,
)
from diffbir.config.precision import resolve_dtype
from diffbir.config.presets import Preset
from diffbir.errors import ConfigError, DiffBIRWarning

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

# The diffusion models were trained on 512x512 crops; smaller conditions degrade.
MIN_DIFFUSION_SIDE = 512
# Activation budget for choosing tile sizes when none is given: a fixed figure,
# so that the same command gives the same image on every machine.
DEFAULT_MAX_MEMORY = 4e9
#: The smallest ``--max-memory``: below it every stage runs at the smallest tiles anyway,
#: and a bare "1" is far more likely a forgotten unit than a budget.
MIN_MAX_MEMORY = 100e6
#: Seeds are what ``torch.Generator.manual_seed`` takes without wrapping: 0..2**64-1.
MAX_SEED = 2**64 - 1
#: The schedules have 1000 timesteps: no sampler can take more steps (ddim half as many).
MAX_STEPS = 1000
#: Results per input: each is a file, and a run plans every file before it starts.
MAX_SAMPLES = 1000
#: ``--output-profile``: results in the input's ICC profile, or in sRGB.
OUTPUT_PROFILES = ("input", "srgb")
#: ``--bit-depth``: of the written files; ``auto`` is the input's (16 for 16-bit inputs).
BIT_DEPTHS = ("8", "16", "auto")


@dataclass
class RestoreOptions:
    """Per-call knobs. ``None`` means "the release's value" (see :func:`resolve`)."""

    upscale: float | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    cfg_rescale: bool = False
    prompt: str | None = None
    negative_prompt: str | None = None
    control_strength: float = 1.0
    start_point: str = "noise"  # "noise" | "cond"
    start_strength: float = 1.0  # < 1 starts part-way (our own samplers only)
    noise_aug: int = 0  # noise the condition latent to this timestep (the release's --noise_aug)
    n_samples: int = 1  # outputs per input
    samples_per_run: int = 1  # rows per model pass when n_samples > 1 (the release's --batch_size)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 300.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 1
    guidance_scale: float = 0.0
    guidance_space: str = "latent"  # "latent" | "pixel"
    guidance_loss: str = "mse"  # "mse" | "weighted_mse"
    guidance_start: int = 1001
    guidance_stop: int = -1
    guidance_repeat: int = 1
    # Where guidance pulls: [1,1,H,W] (or [H,W]) weights in [0, 1] at the input's size
    # (white: hold to the stage-1 result; black: leave the prior free); resized per image.
    guidance_mask: Any = None
    color_fix: str = "wavelet"  # "wavelet" | "adain" | "none"
    # A model that describes each photo; its caption is joined to the prompt ("caption,
    # prompt"). None: the release's choice (v2.1: llava on CUDA, the light one elsewhere;
    # v1/v2: none). See diffbir.captioning.
    captioner: str | None = None
    # llava's weights: 16, or 8/4 (bitsandbytes, CUDA only); None: the release's 4 where
    # bitsandbytes and CUDA are there, else 16.
    captioner_bits: int | None = None
    tile_captions: str = (
        "whole"  # tiled sampling: "whole" | "each" | "off" (diffbir.restore.prompts)
    )
    seed: int | None = 231
    cleaner_tile: int | None = None  # pixels; None = automatic
    vae_tile: int | None = None  # pixels of the decoded image; None = automatic
    latent_tile: int | None = None  # pixels (multiple of 64); None = automatic
    tile_overlap: float | None = None  # fraction of a tile; None: the release's
    min_side: int = MIN_DIFFUSION_SIDE  # short side the diffusion stage works at, at least
    # Bytes for the networks' activations; the full-resolution image buffers come on top.
    max_memory: float | None = None
    # Rows (images, and CFG's conditional and unconditional rows counted apart) per
    # UNet+ControlNet call; None: 1 on the CPU (faster there), the whole batch elsewhere.
    unet_batch: int | None = None
    progress: bool = False
    # The written files (diffbir.imaging): the ICC profile results are written in ("input":
    # the input's, "srgb"), their bit depth ("8", "16", "auto": the input's), and the
    # photo's own metadata (EXIF/XMP/IPTC copied unless stripped; GPS only when kept).
    output_profile: str = "input"
    bit_depth: str = "auto"
    strip_metadata: bool = False
    keep_gps: bool = False
    # Also write, beside each output, a map of where the model invented
    # (diffbir.restore.uncertainty): the spread of the n_samples results, or with one
    # sample the departure of its detail from the stage-1 image.
    uncertainty: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line naming the option) for values that cannot
        work: every number finite and in its range, every name known."""
        self._check_types()
        for ok, message in self._range_checks():
            if not ok:
                raise ConfigError(message)
        for name in ("cleaner_tile", "vae_tile", "latent_tile"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 64):
                raise ConfigError(f"{name.replace('_', ' ')} must be a multiple of 64 pixels")
        self._check_names()
        if self.guidance_mask is not None:
            _check_mask(self.guidance_mask)

    def _check_types(self) -> None:
        """Numbers are finite numbers, whole numbers whole (bools refused)."""
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is None or isinstance(value, bool):
                continue
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"{_named(name)} must be a finite number, got {value!r}")
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral)
            ):
                raise ConfigError(f"{_named(name)} must be a whole number, got {value!r}")

    def _range_checks(self) -> list[tuple[bool, str]]:
        """``(value is in its range, the message when not)`` for every option."""
        return [
            (self.upscale is None or self.upscale > 0, "upscale must be positive"),
            (self.steps is None or self.steps >= 1, "steps must be at least 1"),
            (
                self.steps is None or self.steps <= MAX_STEPS,
                f"steps (--steps) must be at most {MAX_STEPS} (ddim: {MAX_STEPS // 2})",
            ),
            (self.cfg_scale is None or self.cfg_scale >= 0, "cfg scale must be >= 0"),
            (self.control_strength >= 0, "control strength must be >= 0"),
            (self.start_point in ("noise", "cond"), "start point must be 'noise' or 'cond'"),
            (0 < self.start_strength <= 1, "start strength must be in (0, 1]"),
            (0 <= self.noise_aug <= 999, "noise aug must be a timestep in [0, 999]"),
            (self.n_samples >= 1, "n samples must be at least 1"),
            (
                self.n_samples <= MAX_SAMPLES,
                f"n samples (--n-samples) must be at most {MAX_SAMPLES}",
            ),
            (self.samples_per_run >= 1, "samples per run must be at least 1"),
            (self.s_noise >= 0 and self.s_churn >= 0, "s_churn and s_noise must be >= 0"),
            (self.eta >= 0, "eta must be >= 0"),
            (1 <= self.order <= 4, "order (edm_lms) must be 1 to 4"),
            (self.guidance_scale >= 0, "guidance scale must be >= 0"),
            (
                self.guidance_space in ("latent", "pixel"),
                "guidance space: 'latent' or 'pixel'",
            ),
            (
                self.guidance_loss in ("mse", "weighted_mse"),
                "guidance loss: 'mse' or 'weighted_mse'",
            ),
            (self.guidance_repeat >= 1, "guidance repeat must be at least 1"),
            (
                self.color_fix in ("wavelet", "adain", "none"),
                "colour fix: wavelet, adain, none",
            ),
            (
                self.tile_overlap is None or 0 <= self.tile_overlap < 1,
                "tile overlap must be in [0, 1)",
            ),
            (
                self.captioner_bits in (None, 16, 8, 4),
                "captioner bits (--captioner-bits): 16, 8 or 4",
            ),
            (
                self.tile_captions in TILE_CAPTIONS,
                "tile captions (--tile-captions): " + ", ".join(TILE_CAPTIONS),
            ),
            (
                self.min_side >= 64 and self.min_side % 8 == 0,
                "min side: a multiple of 8, >= 64",
            ),
            (
                self.min_side <= MAX_DIFFUSION_SIDE,
                f"min side (--min-side) must be at most {MAX_DIFFUSION_SIDE}",
            ),
            (
                self.max_memory is None or self.max_memory > 0,
                "max memory must be positive",
            ),
            (
                self.max_memory is None or self.max_memory >= MIN_MAX_MEMORY,
                f"max memory (--max-memory) must be at least {MIN_MAX_MEMORY / 1e6:.0f}M (bytes, or "
                f"with a unit: 4G, 512M), got {self.max_memory!r}",
            ),
            (
                self.unet_batch is None or self.unet_batch >= 1,
                f"unet batch (--unet-batch) must be at least 1, got {self.unet_batch!r}",
            ),
            (
                self.output_profile in OUTPUT_PROFILES,
                "output profile (--output-profile): " + ", ".join(OUTPUT_PROFILES),
            ),
            (
                str(self.bit_depth) in BIT_DEPTHS,
                "bit depth (--bit-depth): " + ", ".join(BIT_DEPTHS),
            ),
            (
                self.seed is None or 0 <= self.seed <= MAX_SEED,
                f"seed (--seed) must be in 0..{MAX_SEED} (what torch.Generator takes), "
                f"got {self.seed!r}",
            ),
        ]

    def _check_names(self) -> None:
        """The sampler and the captioner are known names."""
        # The names live with their samplers and captioners, above this module.
        from diffbir.diffusion.names import canonical

        if self.sampler is not None:
            canonical(self.sampler)
        if self.captioner is not None:
            from diffbir.captioning.names import canonical as captioner

            if captioner(self.captioner) != self.captioner:
                raise ConfigError(
                    f"captioner (--captioner): {self.captioner!r}; say {captioner(self.captioner)!r}"
                )


def _check_mask(mask) -> None:
    """A guidance mask is a [H,W] or [1,1,H,W] tensor of finite weights in [0, 1]."""
    import torch  # only when a mask is given: settings stay importable without torch

    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3, 4):
        raise ConfigError("the guidance mask must be a [H,W] or [1,1,H,W] tensor in [0,1]")
    if mask.numel() == 0 or not bool(torch.isfinite(mask).all()):
        raise ConfigError("the guidance mask holds weights in [0, 1]")
    if bool(mask.min() < 0) or bool(mask.max() > 1):
        raise ConfigError("the guidance mask holds weights in [0, 1]")


# RestoreOptions fields that are numbers; each must be finite (NaN and inf refused).
_FLOAT_FIELDS = (
    "upscale cfg_scale control_strength start_strength s_churn s_tmin s_tmax s_noise eta "
    "guidance_scale tile_overlap max_memory"
).split()
_INT_FIELDS = (
    "steps noise_aug n_samples samples_per_run order guidance_start guidance_stop "
    "guidance_repeat seed cleaner_tile vae_tile latent_tile min_side captioner_bits unet_batch"
).split()
# Option names as the CLI spells them, where they differ from the field's.
_FLAGS = {"control_strength": "strength", "samples_per_run": "batch-size"}


def _named(field_name: str) -> str:
    """``cfg_scale`` -> ``cfg scale (--cfg-scale)``: how a message names an option, for the
    API's and the web UI's users and the command's alike."""
    flag = "--" + _FLAGS.get(field_name, field_name.replace("_", "-"))
    return f"{field_name.replace('_', ' ')} ({flag})"


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run, resolved: nothing here is ``None`` but the tiles
    (automatic). ``unet_batch`` is the most rows one UNet+ControlNet call takes, ``0``
    meaning the whole batch (CFG's pair included) in one call."""

    version: str
    task: str
    model: str  # the model family ("diffbir", "hypir") whose restorer runs the release
    upscale: float
    steps: int
    sampler: str
    prediction: str
    schedule: str
    cfg_scale: float
    cfg_rescale: bool
    prompt: str
    negative_prompt: str
    control_strength: float
    start_point: str
    start_strength: float
    noise_aug: int
    n_samples: int
    samples_per_run: int
    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    eta: float
    order: int
    guidance_scale: float
    guidance_space: str
    guidance_loss: str
    guidance_start: int
    guidance_stop: int
    guidance_repeat: int
    guidance_mask: Any = field(compare=False, repr=False)
    color_fix: str
    captioner: str
    captioner_bits: int
    tile_captions: str
    seed: int
    cleaner_tile: int | None
    vae_tile: int | None
    latent_tile: int | None
    tile_overlap: float
    min_side: int
    max_memory: float
    unet_batch: int
    progress: bool
    output_profile: str = "input"
    bit_depth: str = "auto"
    strip_metadata: bool = False
    keep_gps: bool = False
    uncertainty: bool = False  # write the map of where the model invented
    # The number format the models compute in (config.precision): fp32, fp16 or bf16.
    dtype: str = "fp32"
    # Whole-photo runs (task face-whole): the faces' own settings, resolved with the
    # photo's (the same seed, x1); None for every other task.
    faces: RunConfig | None = field(default=None, compare=False, repr=False)
    # Settings the release has no use for (a one-step restorer's sampling knobs): left
    # out of what is printed and recorded.
    unused: frozenset = field(default=frozenset(), compare=False, repr=False)

    def as_dict(self) -> dict:
        """Every setting the release uses, by name (the faces' apart); the guidance mask
        as ``"given"`` or ``None``."""
        skip = {"faces", "unused", *self.unused}
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        if "guidance_mask" in data:
            data["guidance_mask"] = None if self.guidance_mask is None else "given"
        return data

    def describe(self) -> str:
        """``key: value`` lines (YAML), as ``--print-config`` shows them; a whole-photo
        run's faces follow under ``# faces:``."""
        import yaml

        data = {k: v for k, v in self.as_dict().items() if k != "progress"}
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        if self.faces is not None:
            text += "# faces:\n" + self.faces.describe()
        return text

    def metadata(self) -> dict[str, str]:
        """What a written image records of how it was made (text chunks / JSON)."""
        keys = (
            "model version task upscale sampler steps cfg_scale cfg_rescale prompt negative_prompt "
            "seed control_strength start_point noise_aug s_churn s_tmin s_tmax s_noise eta "
            "order guidance_scale guidance_space guidance_loss guidance_start guidance_stop "
            "guidance_repeat guidance_mask color_fix captioner dtype"
        ).split()
        data = self.as_dict()
        recorded = {key: str(data[key]) for key in keys if key in data}
        if self.uncertainty:  # which map was written beside the output
            recorded["uncertainty"] = self.uncertainty_kind
        return recorded

    @property
    def uncertainty_kind(self) -> str:
        """The uncertainty map's measure: ``spread`` of several samples, else ``detail``."""
        return "spread" if self.n_samples >= 2 else "detail"

    def output_bit_depth(self, input_bit_depth: int, suffix: str) -> int:
        """Bits per sample of a written file: ``bit_depth``, or the input's for ``auto``;
        8 where the format has no 16 bits (``auto`` only: an explicit 16 is refused
        before the run, see :func:`check_output_format`)."""
        depth = input_bit_depth if self.bit_depth == "auto" else int(self.bit_depth)
        return depth if suffix.lower() in SIXTEEN_BIT_SUFFIXES else 8


#: Output suffixes that hold 16 bits per sample.
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")


def check_output_format(config: RunConfig, suffix: str) -> None:
    """Refuse ``--bit-depth 16`` with a format that has only 8 bits, in one line."""
    if config.bit_depth == "16" and suffix.lower() not in SIXTEEN_BIT_SUFFIXES:
        raise ConfigError(f"--bit-depth 16 needs --format png or tiff, not {suffix.lstrip('.')}")


def resolve(
    preset: Preset,
    options: RestoreOptions | None = None,
    *,
    device_type: str = "cpu",
    dtype: str | None = None,
) -> RunConfig:
    """The run described by ``options`` for the release ``preset`` (its values for ``None``).

    A ``None`` seed is drawn here, once, so the run (and what it records) is
    reproducible. ``device_type`` (``"cpu"``, ``"cuda"``...) picks the default
    captioner (the release's where it can run, the light one elsewhere) and the rows
    per UNet+ControlNet call (:func:`default_unet_batch`); ``dtype`` (what ``--dtype``
    says: ``None``, ``"auto"`` or a name) the number format
    (:func:`diffbir.config.precision.resolve_dtype`).
    """
    from diffbir.diffusion.names import canonical

    options = options or RestoreOptions()
    options.validate()
    _refuse_unused(preset, options)
    known = {f.name for f in fields(RunConfig)}
    values = {f.name: getattr(options, f.name) for f in fields(options) if f.name in known}

    def pick(value, default):
        return default if value is None else value

    sampler = pick(options.sampler, preset.sampler)
    values.update(
        version=preset.version,
        task=preset.task,
        model=preset.model,
        upscale=float(pick(options.upscale, preset.upscale)),
        steps=int(pick(options.steps, preset.steps)),
        sampler=canonical(sampler) if preset.takes("sampler") else sampler,
        prediction=preset.prediction,
        schedule=preset.schedule,
        cfg_scale=float(pick(options.cfg_scale, preset.cfg_scale)),
        prompt=pick(options.prompt, preset.prompt),
        negative_prompt=pick(options.negative_prompt, preset.negative_prompt),
        seed=int(options.seed) if options.seed is not None else secrets.randbelow(2**31),
        captioner=pick(options.captioner, default_captioner(preset.version, device_type)),
        captioner_bits=pick(options.captioner_bits, default_captioner_bits(device_type)),
        max_memory=float(pick(options.max_memory, DEFAULT_MAX_MEMORY)),
        tile_overlap=float(pick(options.tile_overlap, preset.tile_overlap)),
        unused=preset.unused_options,
        unet_batch=int(pick(options.unet_batch, default_unet_batch(device_type))),
        bit_depth=str(options.bit_depth),
        dtype=resolve_dtype(dtype, device_type, preset.model)[0],
    )
    config = RunConfig(**values)
    if config.sampler.startswith("edm_") and config.prediction == "eps":
        warnings.warn(
            f"{config.sampler} starts at sigma 1e4 as the release does, where an "
            f"eps-prediction model ({config.version}) cannot denoise: its first estimate is "
            "off by hundreds and the image degrades (the release's too); prefer spaced, "
            "ddim, dpm++_m2 or our dpmpp_2m/euler/heun with this release",
            DiffBIRWarning,
            stacklevel=2,
        )
    if config.tile_captions == "each" and config.captioner == "none":
        raise ConfigError(
            "tile captions (--tile-captions each) caption each tile: name a captioner (--captioner)"
        )
    if config.sampler == "ddim" and config.steps > MAX_STEPS // 2:
        # The release's DDIM grid strides by 1000 // steps, which must be at least 2.
        raise ConfigError(
            f"steps (--steps): ddim takes at most {MAX_STEPS // 2}, got {config.steps}"
        )
    if config.sampler == "ddim" and not ddim_steps_fit(MAX_STEPS, config.steps):
        # Its grid would reach t = 1000, one past the schedule (the release fails there).
        near = " or ".join(map(str, ddim_steps_near(MAX_STEPS, config.steps)))
        raise ConfigError(
            f"steps (--steps): ddim's grid with {config.steps} steps reaches timestep "
            f"{MAX_STEPS}, past the schedule's end; try {near}"
        )
    if config.sampler == "dpm++_m2" and config.steps < 2:
        raise ConfigError(f"steps (--steps): dpm++_m2 needs at least 2, got {config.steps}")
    if config.start_strength < 1 and config.sampler.startswith(("edm_", "spaced", "ddim", "dpm++")):
        raise ConfigError(
            f"--start-strength below 1 works with our own samplers only, not {config.sampler}"
        )
    return config


def _refuse_unused(preset: Preset, options: RestoreOptions) -> None:
    """One line naming the options set that ``preset``'s release has no use for (a
    one-step restorer has no sampler, steps, CFG or guidance)."""
    defaults = RestoreOptions()

    def is_set(name: str) -> bool:
        value, default = getattr(options, name), getattr(defaults, name)
        return value is not None if default is None else value != default

    given = [f.name for f in fields(options) if not preset.takes(f.name) and is_set(f.name)]
    if given:
        named = ", ".join(_named(name) for name in given)
        raise ConfigError(
            f"{named}: not used by --model {preset.model} (it restores in one step, with no "
            "sampler, CFG or guidance); drop the option"
        )


def resolve_whole_photo(
    version: str,
    options: RestoreOptions | None = None,
    *,
    device_type: str = "cpu",
    dtype: str | None = None,
) -> RunConfig:
    """A whole-photo run (task ``face-whole``): the photo's settings (the release's ``sr``
    models at its whole-photo upscale) with the faces' (``face`` models, x1) in
    :attr:`RunConfig.faces`. An unset seed is drawn once and used for both."""
    from dataclasses import replace

    from diffbir.config.presets import FACE_WHOLE, get_preset

    options = options or RestoreOptions()
    if options.n_samples != 1:
        raise ConfigError("--task face-whole makes one result per photo: drop --n-samples")
    photo = resolve(get_preset(version, FACE_WHOLE), options, device_type=device_type, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the photo's resolve said it already
        faces = resolve(
            get_preset(version, "face"),
            replace(options, upscale=1.0, seed=photo.seed),
            device_type=device_type,
            dtype=dtype,
        )
    return replace(photo, faces=faces)


#: --video-codec names (diffbir.video.io.CODECS has their encoders).
VIDEO_CODECS = ("h264", "h265", "ffv1", "png")
#: --video-captions: one caption for the clip, or one per scene.
VIDEO_CAPTIONS = ("clip", "scene")


@dataclass(frozen=True)
class VideoOptions:
    """How clips are read, kept consistent and written (the frames themselves are
    restored with the run's :class:`RunConfig`). ``temporal`` False restores frame by
    frame; the fusion knobs are :class:`diffbir.video.temporal.LatentPropagation`'s."""

    temporal: bool = True
    temporal_strength: float = 0.9  # how much of the warped previous frame, where reliable
    temporal_start: int = 1001  # fuse the estimates of timesteps stop < t < start
    temporal_stop: int = -1
    # how much of the previous output frame, warped, in each decoded frame where reliable
    temporal_output: float = 0.5
    scene_threshold: float = 0.3  # a cut: fewer matched pixels than this after the warp
    codec: str = "h264"
    quality: int | None = None  # x264/x265 CRF, 0..51; None: the codec's default
    chunk_frames: int = 24  # frames per finished (resumable) chunk
    max_frames: int | None = None
    start: float | None = None  # seconds
    end: float | None = None
    fps: float | None = None  # at most this many frames per second (previews)
    captions: str = "clip"
    frames_rate: float = 24.0  # the rate of a folder of frames (--frames)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the flag of a value that cannot work."""
        checks = [
            (0 <= self.temporal_strength <= 1, "--temporal-strength must be in [0, 1]"),
            (0 <= self.temporal_output <= 1, "--temporal-output must be in [0, 1]"),
            (0 <= self.scene_threshold <= 1, "--scene-threshold must be in [0, 1]"),
            (self.codec in VIDEO_CODECS, "--video-codec: " + ", ".join(VIDEO_CODECS)),
            (
                self.quality is None or 0 <= self.quality <= 51,
                "--video-quality (CRF) must be within 0..51",
            ),
            (self.chunk_frames >= 1, "--chunk-frames must be at least 1"),
            (self.max_frames is None or self.max_frames >= 1, "--max-frames must be at least 1"),
            (self.start is None or self.start >= 0, "--start must be >= 0 seconds"),
            (
                self.end is None or self.end > (self.start or 0),
                "--end must be after --start",
            ),
            (self.fps is None or self.fps > 0, "--fps must be positive"),
            (self.frames_rate > 0, "--frames-rate must be positive"),
            (self.captions in VIDEO_CAPTIONS, "--video-captions: clip or scene"),
        ]
        values = (self.temporal_strength, self.temporal_output, self.scene_threshold)
        for value in (*values, self.fps, self.start):
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"video options must be finite numbers, got {value!r}")
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def default_captioner(version: str, device_type: str) -> str:
    """The captioner a run of ``version`` on ``device_type`` uses unless told: v2.1 was
    trained on LLaVA captions and its release captions with LLaVA, which needs a GPU, so
    v2.1 uses it on CUDA and the light captioner elsewhere; v1 and v2 use none (the
    prompt alone, as they were trained)."""
    from diffbir.captioning.names import LIGHT, RELEASE

    if version != "v2.1":  # HYPIR's app captions only when asked to (its GPT captioner)
        return "none"
    return RELEASE if device_type == "cuda" else LIGHT


def default_captioner_bits(device_type: str) -> int:
    """LLaVA's weights unless told: 4 bits as the release's default where bitsandbytes
    and CUDA are there, else 16."""
    import importlib.util

    if device_type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        return 4
    return 16


def default_unet_batch(device_type: str) -> int:
    """Rows per UNet+ControlNet call unless told: 1 on the CPU, where two one-row calls
    take less time than one two-row call (and half the activation memory); the release's
    spaced and EDM samplers also run CFG's two branches as two calls (its DDIM batches
    them). ``0`` (the whole batch, CFG's pair in one call) elsewhere."""
    return 1 if device_type == "cpu" else 0


def available_devices() -> list[str]:
    """The devices this machine can run on, as ``--device`` spells them."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += ["xpu"] + [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def resolve_device(device=None):
    """``device`` (``None``: CUDA when present, else the CPU) as a ``torch.device`` that
    exists on this machine, or a :class:`ConfigError` in one line that names what does."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from diffbir.errors import printable

    available = available_devices()
    listed = ", ".join(available)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"--device {printable(device)}: not a device name; available here: {listed}"
        ) from None
    if resolved.type == "cpu":
        return resolved
    plain = resolved.type if resolved.index is None else f"{resolved.type}:{resolved.index}"
    if plain in available:
        return resolved
    why = ""
    if resolved.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            why = " (this PyTorch build has no CUDA support)"
        elif not torch.cuda.is_available():
            why = " (no CUDA device is visible)"
        else:
            count = torch.cuda.device_count()
            why = f" (this machine has {count} CUDA device{'s' if count != 1 else ''})"
    raise ConfigError(f"--device {printable(device)}: not available{why}; available here: {listed}")
