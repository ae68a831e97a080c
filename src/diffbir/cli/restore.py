"""``diffbir restore``: restore photos with the released (or your own) models."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from diffbir.cli.common import add_model_source_args, notes_as_lines
from diffbir.cli.video_args import add_video_arguments, video_options_from_args
from diffbir.config.precision import bf16_hint, resolve_dtype
from diffbir.config.presets import (
    FACE_WHOLE,
    MODELS,
    TASK_CHOICES,
    VERSIONS,
    get_preset,
    release_for,
)
from diffbir.config.settings import RestoreOptions, check_output_format, resolve_device
from diffbir.diffusion.names import describe_samplers
from diffbir.errors import ConfigError
from diffbir.restore.factory import resolve_run

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


def _release_defaults(field: str) -> str:
    """'v1 50, v2 50, v2.1 10': a preset field's value per release (sr task)."""

    values = []
    for version in VERSIONS:
        value = getattr(get_preset(version, "sr"), field)
        values.append(f"{version} {value if value != '' else 'empty'}")
    return ", ".join(values)


def _sampler_epilog() -> str:
    from diffbir.captioning.names import describe_captioners

    lines = describe_samplers().splitlines()
    return (
        "samplers (--sampler; the release's names first, then ours):\n  "
        + "\n  ".join(lines)
        + "\n\ncaptioners (--captioner):\n  "
        + "\n  ".join(describe_captioners().splitlines())
        + "\n\nThe release's flag spellings are accepted too (--cfg_scale, --pos_prompt, "
        "--neg_prompt, --start_point_type, --noise_aug, --rescale_cfg, --s_churn, --s_tmin, "
        "--s_tmax, --s_noise, --n_samples, --llava_bit)."
    )


#: Flags whose value is a RestoreOptions field of another name.
_FIELD_OF = {"strength": "control_strength", "batch_size": "samples_per_run"}


def _option_default(dest: str):
    """The default of the :class:`RestoreOptions` field behind ``--dest`` (the one
    table of run defaults besides the presets), or None when it has none."""
    from dataclasses import MISSING, fields

    name = _FIELD_OF.get(dest, dest)
    for f in fields(RestoreOptions):
        if f.name == name and f.default is not MISSING:
            return f.default
    return None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, the epilog's line breaks kept. Run settings default to
    ``None`` here (the release's or RestoreOptions' value is used); their help shows
    RestoreOptions' default, and the release-dependent ones name each release's value
    in their own text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            default = _option_default(action.dest)
            if default is None or isinstance(default, bool) or action.help is None:
                return action.help
            return f"{action.help} (default: {default})"
        if action.default is False:
            return action.help
        return super()._get_help_string(action)


def _memory(text: str) -> float:
    """'4G', '512M', '2.5GB' or a plain byte count -> bytes."""
    units = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (try 4G or 512M)") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore degraded photos (super-resolution, faces, denoising)",
        description=(
            "Restore images with DiffBIR: a stage-1 model removes degradations, then "
            "Stable Diffusion with the DiffBIR ControlNet regenerates realistic detail. "
            "With --model hypir, HYPIR restores in one step (a LoRA on SD 2.1-base). "
            "The released weights are downloaded on first use (or read from --weights-dir)."
        ),
        formatter_class=_HelpFormatter,
        epilog=_sampler_epilog(),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    _model_arguments(p)
    _face_arguments(p)
    _sampling_arguments(p)
    _prompt_arguments(p)
    _guidance_arguments(p)
    _output_arguments(p)
    _performance_arguments(p)
    add_video_arguments(p)
    p.set_defaults(handler=run)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """Which model and weights; where they are."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--task",
        choices=TASK_CHOICES,
        default="sr",
        help="sr: photos; face: aligned 512x512 faces; denoise; face-whole: photos with faces",
    )
    g.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="diffbir: the two-stage restorer (default); hypir: HYPIR-SD2, one step with a "
        "LoRA of 259M parameters on SD 2.1-base (HYPIR_sd2.pth; SupPixel's licence: "
        "non-commercial use only)",
    )
    g.add_argument(
        "--version", choices=VERSIONS, default=None, help="DiffBIR release (default v2.1)"
    )
    g.add_argument(
        "--sd", help="Stable Diffusion checkpoint (or diffusers folder) replacing the released one"
    )
    g.add_argument("--controlnet", help="ControlNet weights (file or diffbir train output)")
    g.add_argument("--lora", help="HYPIR's LoRA file replacing HYPIR_sd2.pth (--model hypir)")
    g.add_argument(
        "--cleaner",
        help="stage-1 weights (file or diffbir train output); with --model hypir a released "
        "cleaner run first (e.g. realesrgan_s4_swinir_100k.pth), for heavy noise or JPEG",
    )
    add_model_source_args(g)


def _face_arguments(p: argparse.ArgumentParser) -> None:
    """Whole photos with faces (--task face-whole)."""
    g = p.add_argument_group("faces in whole photos (--task face-whole)")
    g.add_argument("--only-center-face", action="store_true", help="restore only the central face")
    g.add_argument(
        "--min-face-size", type=float, default=8.0, help="ignore smaller faces (input pixels)"
    )
    g.add_argument("--max-faces", type=int, default=20, help="restore at most this many faces")
    g.add_argument("--face-detector", help="YuNet ONNX file replacing the released one")
    g.add_argument(
        "--save-faces", action="store_true", help="also write aligned and restored face crops"
    )


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    """The sampler and its knobs (defaults: the release's)."""
    g = p.add_argument_group("sampling (defaults: the release's)")
    g.add_argument("--upscale", type=float, help="output scale (sr default 4, others 1)")
    g.add_argument("--steps", type=int, help=f"sampling steps ({_release_defaults('steps')})")
    g.add_argument(
        "--sampler",
        metavar="NAME",
        help=f"sampler, see the list below ({_release_defaults('sampler')})",
    )
    g.add_argument(
        "--cfg-scale",
        "--cfg_scale",
        type=float,
        help=f"classifier-free guidance scale, 1 = off ({_release_defaults('cfg_scale')})",
    )
    g.add_argument(
        "--cfg-rescale",
        "--rescale-cfg",
        "--rescale_cfg",
        action="store_true",
        help="ramp the CFG scale from 1 at t=999 to 1+scale at t=0 (the release's rescale_cfg)",
    )
    g.add_argument("--strength", type=float, default=None, help="ControlNet control strength")
    g.add_argument(
        "--start-point",
        "--start-point-type",
        "--start_point_type",
        choices=("noise", "cond"),
        default=None,
        help="start from noise, or from the condition latent noised to t=999",
    )
    g.add_argument(
        "--start-strength",
        type=float,
        default=None,
        help="< 1 starts part-way from the noised condition (our own samplers only)",
    )
    g.add_argument(
        "--noise-aug",
        "--noise_aug",
        type=int,
        default=None,
        help="noise the condition latent to this timestep (more noise, more creative)",
    )
    g.add_argument(
        "--n-samples",
        "--n_samples",
        type=int,
        default=None,
        help="results per input, named NAME_0, NAME_1, ... (made --batch-size at a time)",
    )
    g.add_argument(
        "--s-churn", "--s_churn", type=float, default=None, help="edm_euler/heun/dpm_2 churn"
    )
    g.add_argument("--s-tmin", "--s_tmin", type=float, default=None, help="churn from this sigma")
    g.add_argument("--s-tmax", "--s_tmax", type=float, default=None, help="churn up to this sigma")
    g.add_argument("--s-noise", "--s_noise", type=float, default=None, help="noise scale (edm_*)")
    g.add_argument("--eta", type=float, default=None, help="ancestral/SDE noise amount (edm_*)")
    g.add_argument("--order", type=int, default=None, help="edm_lms order")
    g.add_argument("--seed", type=int, default=None, help="random seed (same seed, same result)")
    g.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved settings of the run and exit",
    )


def _prompt_arguments(p: argparse.ArgumentParser) -> None:
    """Prompts, captioners and per-image prompts."""
    g = p.add_argument_group("prompts and captions")
    g.add_argument(
        "--prompt", "--pos-prompt", "--pos_prompt", help="positive prompt (v2.1: its long default)"
    )
    g.add_argument(
        "--negative-prompt",
        "--neg-prompt",
        "--neg_prompt",
        help="negative prompt (v2 and v2.1: the release's default)",
    )
    g.add_argument(
        "--captioner",
        metavar="NAME",
        help=(
            "describe each photo and put the caption before the prompt ('caption, prompt'), "
            "as the v2.1 release does: " + _captioner_choices() + " (v2.1: llava on CUDA, "
            "the light one elsewhere; v1/v2: none)"
        ),
    )
    g.add_argument(
        "--captioner-bits",
        "--llava-bit",
        "--llava_bit",
        type=int,
        choices=(16, 8, 4),
        help="llava's weights at 16 bits, or 8/4 (need bitsandbytes and CUDA; the release's "
        "default 4 where they are there, else 16)",
    )
    g.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="per-image prompts: a CSV of file name, prompt[, negative prompt] (a run's "
        "prompt.csv works); a row's prompt replaces caption and prompt",
    )
    g.add_argument(
        "--no-sidecars",
        action="store_true",
        help="ignore NAME.txt beside an image (by default its text is used as the caption)",
    )
    g.add_argument(
        "--tile-captions",
        choices=("whole", "each", "off"),
        default=None,
        help="tiled sampling: every tile gets the photo's caption (whole, the release), "
        "its own region's caption (each), or no caption (off)",
    )


def _guidance_arguments(p: argparse.ArgumentParser) -> None:
    """Latent image guidance toward the stage-1 output."""
    g = p.add_argument_group("latent image guidance (fidelity vs. realness)")
    g.add_argument(
        "--guidance-scale",
        "--g-scale",
        "--g_scale",
        type=float,
        default=None,
        help="pull toward the stage-1 result, in the v2 release's --g_scale units (0 = off)",
    )
    g.add_argument(
        "--guidance-space",
        choices=("latent", "pixel"),
        default=None,
        help="latent (the paper), or pixel (through the decoder; slower)",
    )
    g.add_argument(
        "--guidance-loss",
        choices=("mse", "weighted_mse"),
        default=None,
        help="weighted_mse leaves edges free (v2's w_mse)",
    )
    g.add_argument(
        "--guidance-mask",
        metavar="FILE",
        type=Path,
        help="grey image: white holds to the stage-1 result, black leaves the prior free",
    )
    g.add_argument("--guidance-start", type=int, default=None, help="apply while t < start")
    g.add_argument("--guidance-stop", type=int, default=None, help="... and t > stop")
    g.add_argument("--guidance-repeat", type=int, default=None, help="repeats per step")


def _output_arguments(p: argparse.ArgumentParser) -> None:
    """What is written, and resuming."""
    g = p.add_argument_group("output")
    g.add_argument("--no-color-fix", action="store_true", help="skip the wavelet colour fix")
    g.add_argument("--color-fix", choices=("wavelet", "adain", "none"), default=None)
    g.add_argument(
        "-f",
        "--format",
        choices=("png", "jpg", "webp", "tiff", "avif"),
        default="png",
        help="output format (png and tiff hold 16 bits; JPEG at --quality >= 90 keeps "
        "full-resolution chroma, 4:4:4)",
    )
    g.add_argument("--quality", type=int, default=95, help="JPEG/WebP/AVIF quality")
    g.add_argument(
        "--output-profile",
        choices=("input", "srgb"),
        default=None,
        help="ICC profile of the results: the input's (embedded; untagged inputs are sRGB) "
        "or sRGB; the models always work in sRGB",
    )
    g.add_argument(
        "--bit-depth",
        choices=("8", "16", "auto"),
        default=None,
        help="bits per sample of the results; auto: the input's (16-bit scans give 16-bit "
        "PNG/TIFF)",
    )
    g.add_argument(
        "--strip-metadata",
        action="store_true",
        help="do not copy the input's EXIF/XMP/IPTC (the run's settings are still recorded)",
    )
    g.add_argument(
        "--keep-gps", action="store_true", help="keep the GPS position (dropped by default)"
    )
    g.add_argument("--save-stage1", action="store_true", help="also write the stage-1 output")
    g.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write NAME.uncertainty.png (heat map, 0..32 levels) and "
        "NAME.uncertainty-raw.png (16-bit, levels x 256): where the result depends on the "
        "seed (the spread of --n-samples >= 2), or with one sample where its detail departs "
        "from the stage-1 image",
    )
    g.add_argument("--compare", action="store_true", help="also write input|result side by side")
    g.add_argument("--skip-existing", action="store_true", help="resume: skip finished outputs")
    g.add_argument("-r", "--recursive", action="store_true", help="search folders recursively")


def _performance_arguments(p: argparse.ArgumentParser) -> None:
    """Batches, tiles, memory, compile, offload, verbosity."""
    g = p.add_argument_group("performance")
    g.add_argument(
        "--batch-size",
        "--batch_size",
        type=int,
        default=1,
        help="rows per model pass: images of equal size, or the samples of one image",
    )
    g.add_argument(
        "--unet-batch",
        type=int,
        metavar="N",
        help="rows per UNet+ControlNet call; default 1 on CPU (faster there, and half the "
        "activation memory), the whole batch on GPU",
    )
    g.add_argument("--max-memory", type=_memory, help="activation budget for tiling, e.g. 4G")
    g.add_argument("--cleaner-tile", type=int, help="stage-1 tile size in pixels")
    g.add_argument("--vae-tile", type=int, help="VAE tile size in pixels")
    g.add_argument(
        "--latent-tile", type=int, help="diffusion tile size in pixels (HYPIR: its patch, 512)"
    )
    g.add_argument(
        "--tile-overlap",
        type=float,
        default=None,
        help="overlap fraction of a tile (DiffBIR 0.25; HYPIR 0.5, a stride of 256)",
    )
    g.add_argument(
        "--min-side",
        type=int,
        default=None,
        help="short side the diffusion stage works at, at least (the models saw 512)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    g.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        help="with --compile: inductor's mode (reduce-overhead adds CUDA graphs; not with "
        "--offload)",
    )
    g.add_argument(
        "--compile-backend",
        default="inductor",
        metavar="NAME",
        help="with --compile: the torch.compile backend (aot_eager traces without "
        "generating kernels, for checks)",
    )
    g.add_argument(
        "--offload",
        action="store_true",
        help="keep idle models in CPU memory and move each to the GPU for its stage only "
        "(for 6-8 GB cards; every image pays the moves)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="per-stage timings")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _prompt_table(path: Path | None):
    if path is None:
        return None
    from diffbir.restore.prompts import read_prompts_file

    return read_prompts_file(path)


def _mask(path: Path | None):
    if path is None:
        return None
    from diffbir.imaging.io import read_mask

    return read_mask(path)


def options_from_args(args: argparse.Namespace):
    """The :class:`RestoreOptions` described by parsed CLI arguments (flags not given
    keep RestoreOptions' defaults)."""

    values = dict(
        upscale=args.upscale,
        steps=args.steps,
        sampler=args.sampler,
        cfg_scale=args.cfg_scale,
        cfg_rescale=args.cfg_rescale,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        control_strength=args.strength,
        start_point=args.start_point,
        start_strength=args.start_strength,
        noise_aug=args.noise_aug,
        n_samples=args.n_samples,
        samples_per_run=args.batch_size,
        s_churn=args.s_churn,
        s_tmin=args.s_tmin,
        s_tmax=args.s_tmax,
        s_noise=args.s_noise,
        eta=args.eta,
        order=args.order,
        guidance_scale=args.guidance_scale,
        guidance_space=args.guidance_space,
        guidance_loss=args.guidance_loss,
        guidance_start=args.guidance_start,
        guidance_stop=args.guidance_stop,
        guidance_repeat=args.guidance_repeat,
        guidance_mask=_mask(args.guidance_mask),
        color_fix="none" if args.no_color_fix else args.color_fix,
        captioner=args.captioner,
        captioner_bits=args.captioner_bits,
        tile_captions=args.tile_captions,
        seed=args.seed,
        cleaner_tile=args.cleaner_tile,
        vae_tile=args.vae_tile,
        latent_tile=args.latent_tile,
        tile_overlap=args.tile_overlap,
        max_memory=args.max_memory,
        min_side=args.min_side,
        unet_batch=args.unet_batch,
        output_profile=args.output_profile,
        bit_depth=args.bit_depth,
        strip_metadata=args.strip_metadata or None,
        keep_gps=args.keep_gps or None,
        uncertainty=args.uncertainty or None,
        progress=args.verbose and not args.quiet,
    )
    return RestoreOptions(**{k: v for k, v in values.items() if v is not None})


def _check_arguments(args: argparse.Namespace) -> None:
    """The command's own values, checked before anything is read, loaded or written."""
    import math

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if not 1 <= args.quality <= 100:
        raise ConfigError(f"--quality must be within 1..100, got {args.quality}")
    if args.task == FACE_WHOLE:
        if args.max_faces < 1:
            raise ConfigError("--max-faces must be at least 1")
        if not math.isfinite(args.min_face_size) or args.min_face_size < 0:
            raise ConfigError(
                f"--min-face-size must be a finite number >= 0, got {args.min_face_size}"
            )
        if args.n_samples not in (None, 1):
            raise ConfigError("--task face-whole makes one result per photo: drop --n-samples")


def _first_run_stops(args: argparse.Namespace, config) -> str | None:
    """Before any model loads (after the inputs and the output folder are checked): name
    every file the run needs that is not here (weights, captioner, face detector) with
    sizes and the one command that fetches them; that message when they cannot be
    downloaded now (the run stops with it), else None."""
    from diffbir.weights import needs as run_files
    from diffbir.weights.registry import offline_from_env

    needed = run_files.run_needs(
        args.version,
        args.task,
        captioner=config.captioner,
        given={
            "sd": args.sd,
            "controlnet": args.controlnet,
            "cleaner": args.cleaner,
            "lora": args.lora,
            "face_detector": args.face_detector,
        },
    )
    absent = run_files.missing(needed, weights_dir=args.weights_dir)
    if not absent:
        return None
    offline = args.no_download or offline_from_env() is not None
    text = run_files.first_run_message(
        absent, args.version, args.task, captioner=config.captioner, offline=offline
    )
    if offline:
        return text
    if not args.quiet:
        print(f"diffbir: {text}", file=sys.stderr)
    return None


def _device_type(args: argparse.Namespace) -> str:
    """``cpu``/``cuda``... of the run's device (picks the default captioner)."""

    return resolve_device(args.device).type


def _captioner_choices() -> str:
    from diffbir.captioning.names import CAPTIONERS

    return ", ".join(CAPTIONERS)


@contextmanager
def _sigterm_as_exit():
    """SIGTERM (a scheduler's kill, torchrun stopping a job) ends the run as Ctrl+C does:
    through the cleanup, so no temporary file outlives it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:

    with notes_as_lines():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from diffbir.jobs.batch import RestoreJob

    args.version = release_for(args.model, args.version)
    _check_arguments(args)
    options = options_from_args(args)
    video = video_options_from_args(args)
    # The run's settings, resolved once here: every image (and face) of the run uses them.
    device_type = _device_type(args)
    config = resolve_run(
        args.version, args.task, options, device_type=device_type, dtype=args.dtype
    )
    check_output_format(config, "." + args.format)
    if args.print_config:
        print(config.describe(), end="")
        if args.dtype == "auto":
            print(f"# dtype: {resolve_dtype('auto', device_type, config.model)[1]}")
        return 0
    hint = bf16_hint(config.dtype, device_type) if args.dtype is None else None
    if hint and not args.quiet:
        print(f"diffbir: note: {hint}", file=sys.stderr)
    if config.captioner != "none" and not args.quiet:
        why = "" if args.captioner else f" ({config.version}'s default here)"
        print(
            f"diffbir: captioning with {config.captioner}{why}; --captioner none for the "
            "prompt alone",
            file=sys.stderr,
        )
    job = RestoreJob(
        inputs=args.inputs,
        output=args.output,
        config=config,
        recursive=args.recursive,
        suffix="." + args.format,
        quality=args.quality,
        skip_existing=args.skip_existing,
        save_stage1=args.save_stage1,
        compare=args.compare,
        save_faces=args.save_faces,
        batch_size=args.batch_size,
        progress=not args.quiet,
        verbose=args.verbose,
        prompt_table=_prompt_table(args.prompts),
        sidecars=not args.no_sidecars,
        before_load=lambda: _first_run_stops(args, config),
        video=video,
        frames=args.frames,
    )
    loader = dict(
        version=args.version,
        task=args.task,
        weights_dir=args.weights_dir,
        sd=args.sd,
        controlnet=args.controlnet,
        lora=args.lora,
        cleaner=args.cleaner,
        device=args.device,
        dtype=config.dtype,
        download=not args.no_download,
        progress=not args.quiet,
        compile=args.compile and {"backend": args.compile_backend, "mode": args.compile_mode},
        offload=args.offload,
        model_config=args.model_config,
    )
    if args.task == FACE_WHOLE:
        loader.update(
            face_detector=args.face_detector,
            only_center=args.only_center_face,
            min_face_size=args.min_face_size,
            max_faces=args.max_faces,
        )
    with _sigterm_as_exit():
        summary = job.run(loader)
    if summary.main_process:
        if summary.fatal is not None:
            print(f"diffbir: error: {summary.fatal}", file=sys.stderr)
        print(summary.describe(), file=sys.stderr)
    if summary.interrupted is not None:
        return summary.interrupted
    return 0 if summary.ok else 1
