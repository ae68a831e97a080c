"""DiffBIRPipeline: stage 1 (cleaner) -> condition latent -> sampler -> decode -> colour fix.

The pipeline owns no file handling: it maps a batch of NCHW RGB images in
[0, 1] to restored images. ``diffbir.cli.restore`` and the web UI call it.

Data flow for one batch (sizes for an x4 super-resolution of a 128x128 photo):

1. ``clean``: the stage-1 model removes degradations and brings the image to
   the output scale (SwinIR/SCUNet see the bicubically upscaled input; BSRNet
   upscales x4 itself). The short side is raised to at least 512 pixels,
   the size the diffusion model was trained at. -> ``I_reg`` 512x512
2. ``encode_condition``: VAE encode of ``I_reg`` (posterior mode x 0.18215),
   padded to a multiple of 64 pixels. -> ``c`` 4x64x64
3. ``sample``: the sampler runs the UNet + ControlNet (+ classifier-free
   guidance, + latent image guidance), optionally over overlapping latent
   tiles. -> ``z0``
4. ``decode``: VAE decode (optionally tiled), crop the padding, wavelet
   colour fix toward ``I_reg``, resize to the requested output size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from diffbir.errors import ConfigError
from diffbir.presets import Preset, get_preset

# The diffusion models were trained on 512x512 crops; smaller conditions degrade.
MIN_DIFFUSION_SIDE = 512


@dataclass
class RestoreOptions:
    """Per-call knobs. ``None`` means "the preset's value"."""

    upscale: float | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    cfg_rescale: bool = False
    prompt: str | None = None
    negative_prompt: str | None = None
    control_strength: float = 1.0
    start_point: str = "noise"  # "noise" | "cond"
    start_strength: float = 1.0  # < 1 starts part-way from the noised condition
    guidance_scale: float = 0.0
    guidance_space: str = "latent"  # "latent" | "pixel"
    guidance_loss: str = "mse"  # "mse" | "weighted_mse"
    guidance_start: int = 1001
    guidance_stop: int = -1
    guidance_repeat: int = 1
    color_fix: str = "wavelet"  # "wavelet" | "adain" | "none"
    seed: int | None = 231
    cleaner_tile: int | None = None  # pixels; None = automatic
    vae_tile: int | None = None  # pixels of the decoded image; None = automatic
    latent_tile: int | None = None  # pixels (multiple of 64); None = automatic
    tile_overlap: float = 0.25  # fraction of a tile
    min_side: int = MIN_DIFFUSION_SIDE  # short side the diffusion stage works at, at least
    # Bytes for the networks' activations (None: a share of what the device has);
    # the full-resolution image buffers come on top.
    max_memory: float | None = None
    progress: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        checks = [
            (self.upscale is None or self.upscale > 0, "upscale must be positive"),
            (self.steps is None or self.steps >= 1, "steps must be at least 1"),
            (self.cfg_scale is None or self.cfg_scale >= 0, "cfg scale must be >= 0"),
            (self.control_strength >= 0, "control strength must be >= 0"),
            (self.start_point in ("noise", "cond"), "start point must be 'noise' or 'cond'"),
            (0 < self.start_strength <= 1, "start strength must be in (0, 1]"),
            (self.guidance_scale >= 0, "guidance scale must be >= 0"),
            (self.guidance_space in ("latent", "pixel"), "guidance space: 'latent' or 'pixel'"),
            (
                self.guidance_loss in ("mse", "weighted_mse"),
                "guidance loss: 'mse' or 'weighted_mse'",
            ),
            (self.guidance_repeat >= 1, "guidance repeat must be at least 1"),
            (
                self.guidance_loss != "weighted_mse" or self.guidance_space == "pixel",
                "the weighted_mse guidance loss works in pixel space: add --guidance-space pixel",
            ),
            (self.color_fix in ("wavelet", "adain", "none"), "colour fix: wavelet, adain, none"),
            (0 <= self.tile_overlap < 1, "tile overlap must be in [0, 1)"),
            (self.min_side >= 64 and self.min_side % 8 == 0, "min side: a multiple of 8, >= 64"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for name in ("cleaner_tile", "vae_tile", "latent_tile"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 64):
                raise ConfigError(f"{name.replace('_', ' ')} must be a multiple of 64 pixels")


@dataclass
class RestoreResult:
    """Restored images and what led to them."""

    image: torch.Tensor  # [B,3,H,W] float32 in [0,1], the requested output size
    stage1: torch.Tensor  # [B,3,h,w] the cleaner's output (the diffusion condition)
    timings: dict[str, float] = field(default_factory=dict)
    tiles: TilePlan | None = None


@dataclass(frozen=True)
class TilePlan:
    """Tile sizes in pixels of the image each stage sees; ``None`` = whole image."""

    cleaner: int | None
    vae_encode: int | None
    vae_decode: int | None
    latent: int | None
    overlap: float


# Rough peak activation bytes per pixel of the stage's image at fp32, measured on
# SD 2.1-sized models (see benchmarks/): used only to choose tile sizes.
_BYTES_PER_PIXEL = {"cleaner": 1_500, "vae_encode": 8_000, "vae_decode": 10_000, "latent": 4_000}
_TILE_CHOICES = (2048, 1536, 1024, 768, 512, 384, 256)


def plan_tiles(
    height: int,
    width: int,
    *,
    budget: float,
    element_size: int = 4,
    options: RestoreOptions | None = None,
) -> TilePlan:
    """Choose per-stage tile sizes so that each stage's activations fit ``budget`` bytes.

    ``height`` x ``width`` is the condition image (the diffusion stage's pixel
    size). Explicit sizes in ``options`` win; a stage whose whole image fits
    runs untiled.
    """
    options = options or RestoreOptions()
    scale = element_size / 4

    def choose(stage: str, explicit: int | None) -> int | None:
        if explicit is not None:
            return None if explicit >= max(height, width) else explicit
        per_pixel = _BYTES_PER_PIXEL[stage] * scale
        if height * width * per_pixel <= budget:
            return None
        for tile in _TILE_CHOICES:
            if tile * tile * per_pixel <= budget and tile < max(height, width):
                return tile
        return _TILE_CHOICES[-1]

    return TilePlan(
        cleaner=choose("cleaner", options.cleaner_tile),
        vae_encode=choose("vae_encode", options.vae_tile),
        vae_decode=choose("vae_decode", options.vae_tile),
        latent=choose("latent", options.latent_tile),
        overlap=options.tile_overlap,
    )


def default_budget(device: torch.device) -> float:
    """Bytes available for activations on ``device`` (a conservative share)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free * 0.6
    # CPU: keep a whole 4K image pipeline within a few GB.
    return 3e9


def resize_short_side_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic (antialiased) resize so that the short side equals ``size``."""
    h, w = x.shape[-2:]
    if h <= w:
        out = (size, max(1, int(w * size / h)))
    else:
        out = (max(1, int(h * size / w)), size)
    return resize(x, out)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize computed in float32, clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0, 1).to(x.dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right edges up to a multiple of ``multiple`` (as the release)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


def output_size(lq_hw: tuple[int, int], upscale: float) -> tuple[int, int]:
    """The size of the restored image for an input of ``lq_hw`` pixels."""
    return (max(1, int(lq_hw[0] * upscale)), max(1, int(lq_hw[1] * upscale)))


class DiffBIRPipeline:
    """The two-stage restoration pipeline of DiffBIR.

    Build it with :meth:`from_preset` (released weights through the registry)
    or directly from modules. The modules are put in eval mode and never
    modified by a call.
    """

    def __init__(
        self,
        cleaner: torch.nn.Module,
        stage2: torch.nn.Module,
        preset: Preset,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from diffbir.diffusion.schedule import NoiseSchedule

        self.device = torch.device(device)
        self.dtype = dtype
        self.preset = preset
        self.cleaner = cleaner.eval().to(self.device)
        self.stage2 = stage2.eval().to(self.device, dtype)
        if self.device.type == "cuda":
            # Convolutions run faster on NHWC tensors on recent GPUs.
            for part in (self.stage2.unet, self.stage2.controlnet, self.stage2.vae):
                part.to(memory_format=torch.channels_last)
        self.schedule = NoiseSchedule.from_name(preset.schedule)
        # Prompt embeddings are computed once per distinct prompt.
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_preset(
        cls,
        version: str = "v2.1",
        task: str = "sr",
        *,
        weights_dir: str | Path | None = None,
        sd: str | Path | None = None,
        controlnet: str | Path | None = None,
        cleaner: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        download: bool = True,
        progress: bool = True,
        model_config: Mapping | str | Path | None = None,
        stage2: torch.nn.Module | None = None,
    ) -> DiffBIRPipeline:
        """Load the released weights of ``version`` for ``task``.

        Each of ``sd``, ``controlnet``, ``cleaner`` may name a file (or one of
        our saved folders) that replaces the released one, e.g. the output of
        ``diffbir train``. Files are found in ``weights_dir`` (or
        ``DIFFBIR_WEIGHTS_DIR``) under their released names, else in the
        download cache, else downloaded. ``model_config`` (a mapping or a
        YAML/JSON file) gives non-released architectures in the published
        constructor names: keys ``cleaner``, ``unet``, ``vae``, ``text``,
        ``controlnet``. An already loaded ``stage2`` model is used as is
        (pipelines of one release share it).
        """
        from diffbir.models.stage2 import load_stage2
        from diffbir.models.tokenizer import load_tokenizer
        from diffbir.weights import resolve_many

        preset = get_preset(version, task)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = parse_dtype(dtype, device)

        configs = load_model_config(model_config)
        wanted = [cleaner or preset.cleaner]
        if stage2 is None:
            wanted += [sd or preset.sd, controlnet or preset.controlnet, TOKENIZER_FILE]
        paths = resolve_many(
            [str(name) for name in wanted],
            weights_dir=weights_dir,
            download=download,
            progress=progress,
        )
        cleaner_path = paths[0]
        if stage2 is None:
            sd_path, control_path, tokenizer_path = paths[1:]
            stage2 = load_stage2(
                sd_path,
                control_path,
                prediction=preset.prediction,
                unet_config=configs.get("unet"),
                vae_config=configs.get("vae"),
                text_config=configs.get("text"),
                controlnet_config=configs.get("controlnet"),
                tokenizer=load_tokenizer(tokenizer_path),
                device=device,
                dtype=dtype,
            )
        stage1 = _load_stage1(cleaner_path, None if cleaner else preset.cleaner_arch, configs)
        return cls(stage1, stage2, preset, device=device, dtype=dtype)

    def compile(self) -> DiffBIRPipeline:
        """``torch.compile`` the denoiser (UNet and ControlNet); the first call is slow."""
        self.stage2.unet = torch.compile(self.stage2.unet)
        self.stage2.controlnet = torch.compile(self.stage2.controlnet)
        return self

    # ------------------------------------------------------------------- stages
    def clean(
        self,
        lq: torch.Tensor,
        upscale: float,
        plan: TilePlan | None = None,
        min_side: int = MIN_DIFFUSION_SIDE,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage 1. Returns the condition image ``I_reg`` and the final output size."""
        from diffbir.imaging.tiling import tiled_apply

        target = output_size(tuple(lq.shape[-2:]), upscale)
        scale = int(getattr(self.cleaner, "scale", 1))
        x = lq.to(self.device, torch.float32)
        if scale == 1:
            # Same-size cleaners see the bicubically upscaled input, as released.
            x = resize(x, target)
            if min(x.shape[-2:]) < min_side:
                x = resize_short_side_to(x, min_side)
        tile = plan.cleaner if plan else None
        cleaner_dtype = next(self.cleaner.parameters()).dtype
        with torch.no_grad():
            if tile is not None and max(x.shape[-2:]) > tile:
                overlap = _overlap_pixels(tile, plan.overlap, 8)
                out = tiled_apply(
                    lambda t: self.cleaner(t.to(cleaner_dtype)).float(),
                    x,
                    tile=tile,
                    overlap=overlap,
                    scale=scale,
                )
            else:
                out = self.cleaner(x.to(cleaner_dtype)).float()
        out = out.clamp_(0, 1)
        if scale != 1:
            # BSRNet returns x4; bring it to the requested size (or the minimum).
            if min(target) < min_side:
                out = resize_short_side_to(out, min_side)
            else:
                out = resize(out, target)
        elif min(out.shape[-2:]) < min_side:
            out = resize_short_side_to(out, min_side)
        return out, target

    def encode_condition(
        self, image: torch.Tensor, tile: int | None, overlap: float
    ) -> torch.Tensor:
        """VAE-encode ``image`` (already padded to a multiple of 64) to the condition latent."""
        from diffbir.imaging.tiling import tiled_apply

        x = image.to(self.device, self.dtype)
        if tile is not None and max(x.shape[-2:]) > tile:
            return tiled_apply(
                self.stage2.encode_image,
                x,
                tile=tile,
                overlap=_overlap_pixels(tile, overlap, 8),
                scale=1 / 8,
            ).to(self.dtype)
        return self.stage2.encode_image(x)

    def decode(self, z: torch.Tensor, tile: int | None, overlap: float) -> torch.Tensor:
        """VAE-decode latents to [0,1] images, tile by tile when ``tile`` is set (pixels)."""
        from diffbir.imaging.tiling import tiled_apply

        if tile is not None and max(z.shape[-2:]) * 8 > tile:
            latent_tile = tile // 8
            return tiled_apply(
                lambda t: self.stage2.decode_latent(t).float(),
                z,
                tile=latent_tile,
                overlap=_overlap_pixels(latent_tile, overlap, 1),
                scale=8,
            )
        return self.stage2.decode_latent(z).float()

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The [1,77,D] embedding of ``prompt``, computed once per prompt."""
        if prompt not in self._prompt_cache:
            if self.stage2.text_encoder is None:
                raise ConfigError(
                    "the text encoder was freed after the prompts were encoded; "
                    f"cannot encode the new prompt {prompt[:40]!r}"
                )
            with torch.no_grad():
                emb = self.stage2.encode_prompt([prompt])
            self._prompt_cache[prompt] = emb.to(self.device, self.dtype)
        return self._prompt_cache[prompt]

    def prompts(self, options: RestoreOptions) -> tuple[str, str]:
        """The (prompt, negative prompt) a call with ``options`` uses."""
        preset = self.preset
        prompt = options.prompt if options.prompt is not None else preset.prompt
        negative = (
            options.negative_prompt
            if options.negative_prompt is not None
            else preset.negative_prompt
        )
        return prompt, negative

    def prepare_prompts(self, options: RestoreOptions, *, drop_text_encoder: bool = False) -> None:
        """Encode the prompts of ``options`` now; with ``drop_text_encoder`` free the
        text encoder afterwards (about 0.7 GB at fp16), for runs with fixed prompts."""
        for prompt in self.prompts(options):
            self.text_embedding(prompt)
        if drop_text_encoder:
            self.stage2.drop_text_encoder()

    # -------------------------------------------------------------------- call
    def __call__(self, lq: torch.Tensor, options: RestoreOptions | None = None) -> RestoreResult:
        return self.restore(lq, options)

    def restore(self, lq: torch.Tensor, options: RestoreOptions | None = None) -> RestoreResult:
        """Restore a batch of images ``lq`` ([B,3,H,W] or [3,H,W], RGB in [0,1])."""
        from diffbir.diffusion.cfg import classifier_free_guidance
        from diffbir.diffusion.samplers import (
            GeneratorNoise,
            default_spacing,
            prepare_start,
            sample,
        )

        options = options or RestoreOptions()
        options.validate()
        if lq.dim() == 3:
            lq = lq.unsqueeze(0)
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ConfigError(f"expected an RGB batch [B,3,H,W], got shape {tuple(lq.shape)}")
        preset = self.preset
        upscale = options.upscale if options.upscale is not None else preset.upscale
        steps = options.steps or preset.steps
        sampler_name = options.sampler or preset.sampler
        cfg_scale = options.cfg_scale if options.cfg_scale is not None else preset.cfg_scale
        prompt, negative = self.prompts(options)
        timings: dict[str, float] = {}
        batch = lq.shape[0]

        with torch.no_grad():
            budget = options.max_memory or default_budget(self.device)
            element = torch.finfo(self.dtype).bits // 8
            with _timed(timings, "stage1", self.device):
                target_hw = output_size(tuple(lq.shape[-2:]), upscale)
                cond_hw = _condition_size(target_hw, options.min_side)
                plan = plan_tiles(*cond_hw, budget=budget, element_size=element, options=options)
                cond_img, target_hw = self.clean(lq, upscale, plan, options.min_side)
            h0, w0 = cond_img.shape[-2:]
            padded = pad_to_multiple(cond_img, 64)
            with _timed(timings, "encode", self.device):
                cond_latent = self.encode_condition(padded, plan.vae_encode, plan.overlap)
                cond_text = self.text_embedding(prompt).expand(batch, -1, -1)
                uncond_text = self.text_embedding(negative).expand(batch, -1, -1)

            generator = torch.Generator(self.device)
            if options.seed is not None:
                generator.manual_seed(options.seed)
            else:
                generator.seed()
            noise = GeneratorNoise(generator)

            model_fn = self._denoiser(cond_latent, options.control_strength, plan)
            model_fn = classifier_free_guidance(
                model_fn,
                cond_text,
                uncond_text,
                cfg_scale,
                rescale="cosine" if options.cfg_rescale else "none",
            )
            guidance = self._guidance(options, cond_latent, padded)
            from_cond = options.start_point == "cond" or options.start_strength < 1
            start_latent = cond_latent if from_cond else None
            x_t, start_step = prepare_start(
                start_latent,
                cond_latent.shape,
                self.schedule,
                steps,
                strength=options.start_strength,
                noise=noise,
                spacing=default_spacing(sampler_name, self.schedule),
                dtype=torch.float32,
                device=self.device,
            )
            with _timed(timings, "sample", self.device):
                z0 = sample(
                    sampler_name,
                    model_fn,
                    x_t,
                    self.schedule,
                    steps,
                    prediction=preset.prediction,
                    noise=noise,
                    guidance=guidance,
                    start_step=start_step,
                    progress=options.progress,
                )
            with _timed(timings, "decode", self.device):
                image = self.decode(z0.to(self.dtype), plan.vae_decode, plan.overlap)
                image = image[..., :h0, :w0]  # decode_latent already clamps
                image = self._color_fix(image, cond_img, options.color_fix)
                image = resize(image, target_hw)
        timings["total"] = sum(timings.values())
        return RestoreResult(image=image, stage1=cond_img, timings=timings, tiles=plan)

    # ----------------------------------------------------------------- helpers
    def _denoiser(
        self, cond_latent: torch.Tensor, strength: float, plan: TilePlan
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``model(x, t, context)`` over the whole latent or over blended latent tiles."""
        from diffbir.imaging.tiling import tiled_apply

        stage2, dtype = self.stage2, self.dtype
        # CFG doubles the batch; the repeated condition is made once, not every step.
        repeated: dict[int, torch.Tensor] = {}

        def cond_for(batch: int) -> torch.Tensor:
            if batch not in repeated:
                repeated[batch] = _repeat_to(cond_latent, batch)
            return repeated[batch]

        def whole(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            cond = cond_for(x.shape[0])
            out = stage2.denoise(x.to(dtype), t, cond, context.to(dtype), control_scale=strength)
            return out.float()

        tile = plan.latent
        if tile is None or max(cond_latent.shape[-2:]) * 8 <= tile:
            return whole
        latent_tile = tile // 8
        overlap = _overlap_pixels(latent_tile, plan.overlap, 1)

        def tiled(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            cond = cond_for(x.shape[0])
            return tiled_apply(
                lambda xt, ct: stage2.denoise(
                    xt.to(dtype), t, ct, context.to(dtype), control_scale=strength
                ).float(),
                x,
                cond,
                tile=latent_tile,
                overlap=overlap,
            )

        return tiled

    def _guidance(self, options: RestoreOptions, cond_latent: torch.Tensor, cond_img: torch.Tensor):
        if options.guidance_scale <= 0:
            return None
        from diffbir.diffusion.guidance import LatentGuidance

        pixel = options.guidance_space == "pixel"
        return LatentGuidance(
            cond_latent.float(),
            options.guidance_scale,
            start=options.guidance_start,
            stop=options.guidance_stop,
            repeat=options.guidance_repeat,
            space=options.guidance_space,
            loss=options.guidance_loss,
            decode=(lambda z: self.stage2.decode_latent(z.to(self.dtype)).float())
            if pixel
            else None,
            pixel_target=cond_img.float() if pixel else None,
        )

    @staticmethod
    def _color_fix(image: torch.Tensor, reference: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "none":
            return image
        from diffbir.imaging.color import adain_color_fix, wavelet_color_fix

        fix = wavelet_color_fix if kind == "wavelet" else adain_color_fix
        return fix(image.float(), reference.float()).clamp_(0, 1)


TOKENIZER_FILE = "bpe_simple_vocab_16e6.txt.gz"
MODEL_CONFIG_KEYS = ("cleaner", "unet", "vae", "text", "controlnet")
CLEANER_ARCHS = ("swinir", "rrdbnet", "scunet")


def _load_stage1(path: Path, arch: str | None, configs: Mapping) -> torch.nn.Module:
    """Load the cleaner; a ``cleaner`` config section may be keyed by architecture."""
    from diffbir.checkpoint import load_state_dict
    from diffbir.models.cleaner import infer_arch, load_cleaner

    config = dict(configs.get("cleaner", {}))
    if config and set(config) <= set(CLEANER_ARCHS):
        weights = load_state_dict(path)
        arch = arch or infer_arch(weights)
        return load_cleaner(weights, arch=arch, **config.get(arch, {}))
    return load_cleaner(path, arch=arch, **config)


def load_model_config(source: Mapping | str | Path | None) -> dict:
    """Architecture overrides from a mapping or a YAML/JSON file (see :meth:`from_preset`)."""
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        import yaml

        path = Path(source)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the model config ({exc})") from None
        if not isinstance(source, Mapping):
            raise ConfigError(f"{path}: the model config must be a mapping")
    unknown = sorted(set(source) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown model config section(s) {', '.join(unknown)}; "
            f"expected {', '.join(MODEL_CONFIG_KEYS)}"
        )
    for key, value in source.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"model config section {key!r} must be a mapping")
    return {key: dict(value) for key, value in source.items()}


def parse_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` (or a torch dtype) -> torch dtype; default by device."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; choose fp32, fp16 or bf16")
    return table[dtype]


def _condition_size(target_hw: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The diffusion stage's pixel size for an output of ``target_hw``."""
    h, w = target_hw
    short = min(h, w)
    if short < min_side:
        factor = min_side / short
        h, w = math.ceil(h * factor), math.ceil(w * factor)
    return h, w


def _overlap_pixels(tile: int, fraction: float, multiple: int) -> int:
    """``fraction`` of ``tile`` as a multiple of ``multiple`` (at least one when > 0)."""
    if fraction <= 0:
        return 0
    overlap = max(multiple, round(tile * fraction / multiple) * multiple)
    return min(overlap, tile - multiple)


def _repeat_to(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    return x.repeat(batch // x.shape[0], *([1] * (x.dim() - 1)))


@contextmanager
def _timed(timings: dict[str, float], name: str, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
