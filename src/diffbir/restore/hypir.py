"""HYPIR: one-step restoration with a LoRA-tuned Stable Diffusion 2.1-base.

HYPIR (Lin et al., "Harnessing Diffusion-Yielded Score Priors for Image
Restoration", 2025; XPixelGroup/HYPIR), by DiffBIR's authors, fine-tunes SD
2.1-base with a rank-256 LoRA so that one UNet evaluation restores an image.
:class:`HypirRestorer` implements the :class:`~diffbir.restore.base.Restorer`
protocol; each step is what the published ``BaseEnhancer.enhance`` does, in its
order, so the same weights, photo, prompt and seed give its image:

1. the colour reference: the input bicubic-resized by ``upscale`` (``F.interpolate``,
   not antialiased), or the optional cleaner's output (``--cleaner``);
2. a short side at most the patch size (512) raised to it (antialiased bicubic);
   ``x * 2 - 1``, zero-padded right and bottom to a multiple of 8;
3. encode in patch x patch tiles at a stride of 256: the VAE posterior *sampled*
   (``mean + std * noise``, one draw per tile from the image's seeded stream);
4. per latent tile (64 x 64, stride 32): ``z = latent * 0.18215``, one UNet call at
   t = 200 with the prompt's embedding, the DDPM clean-latent estimate at t = 200
   ``(z - sqrt(1 - a) eps) / sqrt(a)``, divided by 0.18215;
5. decode in latent tiles of 64 (stride 32); every stage blends its tiles with
   Gaussian weights (:func:`diffbir.imaging.tiling.gaussian_tiled`);
6. crop the padding, ``(x + 1) / 2``, antialiased bicubic to the reference's size,
   the wavelet colour fix toward the reference, ``x * 255`` clamped and truncated.

The published app seeds the global generator (``set_seed``) before each image, so
its posterior draws are the first of that seed's stream: here every image draws
from its own stream seeded with the run's seed, which is the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.config.limits import LATENT_FACTOR
from diffbir.config.presets import Preset, get_preset
from diffbir.config.settings import (
    DEFAULT_MAX_MEMORY,
    RestoreOptions,
    RunConfig,
    resolve,
    resolve_device,
)
from diffbir.diffusion.noise import BatchNoise
from diffbir.errors import ConfigError
from diffbir.imaging.resize import bicubic, pad_to_multiple, to_uint8_levels
from diffbir.imaging.tiling import gaussian_tiled, stride_starts
from diffbir.models import vae_cpu
from diffbir.models.lora import merge_lora
from diffbir.models.stage2 import load_sd_base
from diffbir.models.text_encoder import encode_tokens
from diffbir.models.tokenizer import load_tokenizer
from diffbir.models.vae import VAE_SCALE
from diffbir.restore import stages
from diffbir.restore.base import LatentHook, RestoreResult
from diffbir.restore.estimate import say_if_long
from diffbir.restore.hub import CaptionerSlot, Offload, PromptEmbeddings
from diffbir.restore.loading import (
    cleaner_dtype,
    dtype_name,
    load_model_config,
    load_stage1,
    parse_dtype,
)
from diffbir.restore.plan import (
    MAX_DIFFUSION_SIDE,
    TilePlan,
    check_output_size,
    diffusion_min_side,
    plan_tiles,
)
from diffbir.restore.prompts import ImagePrompt, describe_images
from diffbir.restore.stages import timed
from diffbir.weights.checkpoint import load_state_dict
from diffbir.weights.mapped import trim_heap
from diffbir.weights.registry import resolve_many

#: The VAE's downsampling.
VAE_FACTOR = LATENT_FACTOR


class HypirModels(nn.Module):
    """HYPIR's networks: SD 2.1-base's UNet with the LoRA merged into its weights, the
    VAE, the text encoder (None once freed) and the tokenizer."""

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder, tokenizer) -> None:
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> ``[B, 77, D]`` (the text encoder's last hidden state)."""
        return encode_tokens(self.text_encoder, self.tokenizer(list(prompts)))

    def drop_text_encoder(self) -> None:
        """Free the text encoder once the run's prompts are encoded, and hand its memory
        back to the system (:func:`diffbir.weights.mapped.trim_heap`)."""
        self.text_encoder = None
        trim_heap()


def load_hypir_models(
    sd,
    lora,
    preset: Preset,
    *,
    configs: Mapping,
    dtype: torch.dtype,
    device: torch.device,
) -> HypirModels:
    """SD 2.1-base (an LDM checkpoint or a diffusers folder) with HYPIR's LoRA merged
    into the UNet once, in float32, then cast to ``dtype``."""
    unet, vae, text = load_sd_base(
        sd,
        unet_config=configs.get("unet"),
        vae_config=configs.get("vae"),
        text_config=configs.get("text"),
        dtype=torch.float32,
    )
    weights = load_state_dict(lora)
    merge_lora(unet, weights, preset.extra["lora_modules"], what=f"HYPIR LoRA {Path(lora).name}")
    del weights
    # HYPIR tokenizes with Hugging Face's CLIPTokenizer, which splits out its pad token "!"
    tokenizer = load_tokenizer().with_split_token("!")
    models = HypirModels(unet, vae, text, tokenizer).eval().requires_grad_(False)
    return move(models, device, dtype)


class HypirRestorer:
    """One-step restoration with HYPIR (see the module's description).

    Build it with :meth:`from_preset` (released weights through the registry) or
    from loaded :class:`HypirModels`."""

    def __init__(
        self,
        models: HypirModels,
        preset: Preset,
        *,
        cleaner: nn.Module | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.preset = preset
        self.stage2 = move(models.eval(), self.device, dtype)
        if cleaner is not None:
            cleaner = cleaner.eval().to(self.device, cleaner_dtype(self.device, dtype))
        self.cleaner = cleaner
        if self.device.type == "cuda":
            for part in (self.stage2.unet, self.stage2.vae):
                part.to(memory_format=torch.channels_last)
        a = ddpm_alphas_cumprod()[int(preset.extra["coeff_t"])]
        self._coefficients = (a.sqrt(), (1 - a).sqrt())
        self.offload = Offload(self.device, self._model)
        self.captioners = CaptionerSlot(self.device)
        self.embeddings = PromptEmbeddings(
            self.stage2.encode_prompt, lambda: self.stage2.text_encoder, self.offload, dtype
        )
        self.sources: dict[str, str] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_preset(
        cls,
        version: str = "hypir",
        task: str = "sr",
        *,
        weights_dir: str | Path | None = None,
        sd: str | Path | None = None,
        lora: str | Path | None = None,
        cleaner: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        download: bool = True,
        progress: bool = True,
        model_config: Mapping | str | Path | None = None,
        stage2: HypirModels | None = None,
        offload: bool = False,
        controlnet: str | Path | None = None,
    ) -> HypirRestorer:
        """Load HYPIR: SD 2.1-base (``sd``: the released LDM checkpoint, another one, or
        a diffusers folder such as ``stabilityai/stable-diffusion-2-1-base``'s) and the
        LoRA (``lora``, default ``HYPIR_sd2.pth``), found as every released file is
        (``weights_dir``, the cache, a download). ``cleaner`` (a released stage-1 file
        name or a path) runs in front, for inputs with strong noise or JPEG damage.
        ``dtype`` defaults to bfloat16 on CUDA (the published app's) and float32
        elsewhere. The other arguments are those of
        :meth:`DiffBIRPipeline.from_preset <diffbir.restore.pipeline.DiffBIRPipeline.from_preset>`."""
        if controlnet is not None:
            raise ConfigError(
                "--controlnet: HYPIR has no ControlNet; its own weights are a LoRA (--lora)"
            )
        preset = get_preset(version, task)
        device = resolve_device(device)
        dtype = parse_dtype(dtype, device, preset.model)
        configs = load_model_config(model_config)
        wanted = (
            [] if stage2 is not None else [str(sd or preset.sd), str(lora or preset.controlnet)]
        )
        if cleaner:
            wanted.append(str(cleaner))
        paths = resolve_many(wanted, weights_dir=weights_dir, download=download, progress=progress)
        if stage2 is None:
            stage2 = load_hypir_models(
                paths[0], paths[1], preset, configs=configs, dtype=dtype, device=device
            )
        stage1 = load_stage1(paths[-1], None, configs) if cleaner else None
        restorer = cls(stage2, preset, cleaner=stage1, device=device, dtype=dtype)
        if len(paths) >= 2 and wanted[0] == str(sd or preset.sd):
            restorer.sources.update(sd=str(paths[0]), lora=str(paths[1]))
        if cleaner:
            restorer.sources["cleaner"] = str(paths[-1])
        restorer.captioners.weights_dir = None if weights_dir is None else Path(weights_dir)
        restorer.captioners.download = download
        if offload:
            restorer.enable_offload()
        return restorer

    def enable_offload(self, to: str | torch.device = "cpu") -> HypirRestorer:
        """Keep the models in ``to``'s memory and move each to the device for its stage
        only (text encoder, VAE, UNet, VAE)."""
        self.offload.enable(to)
        return self

    def _model(self, name: str) -> nn.Module | None:
        if name == "cleaner":
            return self.cleaner
        return getattr(self.stage2, name, None) if name != "controlnet" else None

    def compile(self, backend: str = "inductor", *, mode: str | None = None) -> HypirRestorer:
        """``torch.compile`` the UNet in place (see ``DiffBIRPipeline.compile``)."""
        options = {"backend": backend} if mode is None else {"backend": backend, "mode": mode}
        self.stage2.unet.compile(**options)
        return self

    def loaded_models(self) -> dict[str, str]:
        """``part -> what was loaded``: class, size, dtype and the file it came from."""
        parts = {"unet": self.stage2.unet, "vae": self.stage2.vae}
        if self.stage2.text_encoder is not None:
            parts["text_encoder"] = self.stage2.text_encoder
        if self.cleaner is not None:
            parts["cleaner"] = self.cleaner
        described = {}
        for name, module in parts.items():
            count = sum(p.numel() for p in module.parameters())
            first = next(module.parameters(), None)
            dtype = str(first.dtype).removeprefix("torch.") if first is not None else "-"
            text = f"{type(module).__name__}, {count / 1e6:.1f}M parameters, {dtype}"
            if name == "unet" and "lora" in self.sources:
                text += f", LoRA from {self.sources['lora']} merged"
            source = self.sources.get("cleaner" if name == "cleaner" else "sd")
            described[name] = text + (f", from {source}" if source else "")
        return described

    def resolve(self, options: RestoreOptions | None = None) -> RunConfig:
        """The frozen settings of a run with ``options`` (HYPIR's defaults for ``None``)."""
        return resolve(
            self.preset, options, device_type=self.device.type, dtype=dtype_name(self.dtype)
        )

    # --------------------------------------------------------------- prompts
    def image_prompts(
        self,
        lq: torch.Tensor,
        options: RestoreOptions | RunConfig | None = None,
        given: list[ImagePrompt | None] | None = None,
    ) -> list[ImagePrompt]:
        """Each image's prompt: ``given`` where there is one, else its caption joined to
        the run's prompt (the run's prompt alone with captioner ``none``, the default)."""
        config = options if isinstance(options, RunConfig) else self.resolve(options)
        if lq.dim() == 3:
            lq = lq.unsqueeze(0)

        def captioner():
            return self.captioners.get(
                config.captioner, config.captioner_bits, progress=config.progress
            )

        element = torch.finfo(self.dtype).bits // 8
        return describe_images(lq, config, captioner, given=given, element_size=element)

    def prepare_image_prompts(
        self, prompts: list[ImagePrompt], *, drop_text_encoder: bool = False
    ) -> None:
        """Encode every prompt now; with ``drop_text_encoder`` free the text encoder."""
        for prompt in prompts:
            self.embeddings(prompt.prompt)
        if drop_text_encoder:
            self.stage2.drop_text_encoder()

    def free_captioner(self) -> None:
        """Free the captioner's weights (before the diffusion stage)."""
        self.captioners.free()

    # ------------------------------------------------------------------ call
    def __call__(self, lq, options=None, prompts=None) -> RestoreResult:
        return self.restore(lq, options, prompts)

    def restore(
        self,
        lq: torch.Tensor,
        options: RestoreOptions | RunConfig | None = None,
        prompts: list[ImagePrompt] | None = None,
        *,
        latent_hook: LatentHook | None = None,
    ) -> RestoreResult:
        """Restore a batch ``lq`` ([B,3,H,W] or [3,H,W], RGB in [0,1]); each image as if
        alone with the run's seed, ``n_samples`` results per image (``samples_per_run``
        per pass, from the image's one stream). ``latent_hook`` sees the one step's clean
        latent (video runs fuse the previous frame there)."""
        config = options if isinstance(options, RunConfig) else self.resolve(options)
        if config.model != self.preset.model:
            raise ConfigError(f"a {config.model} run's settings given to the HYPIR restorer")
        run = self._run if latent_hook is None else partial(self._run, latent_hook=latent_hook)
        return stages.restore_in_passes(self, lq, config, prompts, run)

    def _run(
        self, lq, groups, config: RunConfig, prompts: list[ImagePrompt], latent_hook=None
    ) -> RestoreResult:
        timings: dict[str, float] = {}
        noise = BatchNoise(groups)
        target_hw = check_output_size(tuple(lq.shape[-2:]), config.upscale)
        tiles = self.tiles(target_hw, config)
        self._say_if_long(target_hw, tiles, config, lq.shape[0])
        with torch.no_grad():
            with timed(timings, "stage1", self.device), self.offload.stage("stage1"):
                reference = self.reference(lq, config, tiles.plan)
            h0, w0 = reference.shape[-2:]
            x = raise_short_side(reference, tiles.min_side)
            x = x * 2 - 1
            h1, w1 = x.shape[-2:]
            x = pad_to_multiple(x, VAE_FACTOR)
            with timed(timings, "encode", self.device), self.offload.stage("encode"):
                z_lq = self.encode(x, *tiles.vae_encode, noise)
                text = self.embeddings.rows(groups, [p.prompt for p in prompts])
            with timed(timings, "sample", self.device), self.offload.stage("sample"):
                z = self.generate(z_lq, text, tiles.patch, tiles.stride)
                if latent_hook is not None:  # on the latent scaled as the other restorers'
                    content = (-(-h1 // VAE_FACTOR), -(-w1 // VAE_FACTOR))
                    t = int(self.preset.extra["model_t"])
                    z = latent_hook(z.float() * VAE_SCALE, t, content) / VAE_SCALE
            with timed(timings, "decode", self.device), self.offload.stage("decode"):
                image = self.decode(z, *tiles.vae_decode)[..., :h1, :w1]
                image = (image + 1) / 2
                if tuple(image.shape[-2:]) != (h0, w0):  # at equal size the resize is exact
                    image = F.interpolate(image, size=(h0, w0), mode="bicubic", antialias=True)
                image = stages.color_fix(image, reference, config.color_fix)
                image = to_uint8_levels(image).float().div_(255.0)
        timings["total"] = sum(timings.values())
        return RestoreResult(
            image=image,
            stage1=reference,
            timings=timings,
            tiles=tiles.plan,
            config=config,
            intermediates={"z_lq": z_lq, "z": z},
            notes=[tiles.note] * lq.shape[0],
            prompts=list(prompts),
        )

    def _say_if_long(self, target_hw, tiles: HypirTiles, config: RunConfig, rows: int) -> None:
        """A note before a CPU run that will take long (:mod:`diffbir.restore.estimate`)."""
        if self.device.type != "cpu":
            return
        short = min(target_hw)
        scale = max(1.0, tiles.min_side / short) if short else 1.0
        h, w = (math.ceil(side * scale) for side in target_hw)
        # patch x patch tiles ``stride`` apart: each pixel sampled (patch / stride)^2 times
        spans = [
            len(stride_starts(side, tiles.patch, tiles.stride)) if side >= tiles.patch else 1
            for side in (h, w)
        ]
        sampled = min(tiles.patch, h) * min(tiles.patch, w) * spans[0] * spans[1]
        images = config.n_samples if config.n_samples > 1 else rows
        say_if_long(
            self.device.type,
            target_hw,
            sampled_pixels=sampled,
            vae_pixels=h * w * images,
            unet_calls=images,
            controlnet=False,
            threads=torch.get_num_threads(),
        )

    # ---------------------------------------------------------------- stages
    def tiles(self, target_hw: tuple[int, int], config: RunConfig) -> HypirTiles:
        """The run's patch, stride and VAE tiles for an output of ``target_hw``."""
        return hypir_tiles(
            target_hw,
            config,
            patch=int(self.preset.extra["patch_size"]),
            element_size=torch.finfo(self.dtype).bits // 8,
        )

    def reference(self, lq: torch.Tensor, config: RunConfig, plan: TilePlan) -> torch.Tensor:
        """The colour reference at the output size: the cleaner's result, or the input
        bicubic-resized by the upscale factor (not antialiased, as published)."""
        x = lq.to(self.device, torch.float32)
        if self.cleaner is None:
            if config.upscale == 1:
                return x
            return F.interpolate(x, scale_factor=config.upscale, mode="bicubic")
        run_input = stages.run_input(x, config.upscale, stages.cleaner_arch(self.cleaner))
        target = stages.output_size(tuple(lq.shape[-2:]), config.upscale)
        out, _ = stages.clean(self.cleaner, run_input, config.upscale, plan=plan, min_side=1)
        if tuple(out.shape[-2:]) != target:
            out = bicubic(out, target)
        return out

    def encode(self, x: torch.Tensor, tile: int, stride: int, noise) -> torch.Tensor:
        """Sampled VAE posterior of ``x`` (in [-1, 1], padded), in ``tile`` x ``tile``
        pixel tiles ``stride`` apart; each tile's draw from the rows' streams."""
        vae = self.stage2.vae

        def sample(tile_x: torch.Tensor) -> torch.Tensor:
            moments = vae_cpu.encode_moments(
                vae, tile_x
            )  # the CPU fast path, None where it does not apply
            if moments is None:
                moments = vae.encode(tile_x).latent_dist.parameters
            mean, logvar = torch.chunk(moments, 2, dim=1)
            std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))  # diffusers' posterior
            return mean + std * noise(mean)

        return gaussian_tiled(
            sample, x.to(self.dtype), tile, stride,
            scale=1 / VAE_FACTOR, channels=vae.config.latent_channels,
        )  # fmt: skip

    def generate(self, z_lq: torch.Tensor, text: torch.Tensor, patch: int, stride: int):
        """HYPIR's one step over latent tiles: the UNet at ``model_t``, then the clean
        latent of the DDPM step at ``coeff_t``."""
        unet = self.stage2.unet
        sqrt_a, sqrt_1ma = (c.to(self.device) for c in self._coefficients)
        t = int(self.preset.extra["model_t"])

        def step(tile: torch.Tensor) -> torch.Tensor:
            z_in = tile * VAE_SCALE
            timesteps = torch.full((tile.shape[0],), t, dtype=torch.long, device=tile.device)
            eps = unet(z_in, timesteps, encoder_hidden_states=text).sample
            return (z_in - sqrt_1ma * eps) / sqrt_a / VAE_SCALE

        size = patch // VAE_FACTOR
        # As published: the blended latent (float32) goes back to the weights' dtype.
        return gaussian_tiled(step, z_lq.to(self.dtype), size, stride // VAE_FACTOR)

    def decode(self, z: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
        """Images in [-1, 1] of latents ``z``, in tiles of ``tile`` decoded pixels
        ``stride`` apart."""
        vae = self.stage2.vae

        def decode_tile(tile_z: torch.Tensor) -> torch.Tensor:
            out = vae_cpu.decode(vae, tile_z)  # the CPU fast path, None where it does not apply
            return (vae.decode(tile_z).sample if out is None else out).float()

        out = gaussian_tiled(
            decode_tile, z.to(self.dtype), tile // VAE_FACTOR,
            stride // VAE_FACTOR, scale=VAE_FACTOR, channels=3,
        )  # fmt: skip
        return out.float()


@dataclass(frozen=True)
class HypirTiles:
    """Tile sizes of a HYPIR run: ``patch`` (pixels; the UNet sees ``patch / 8`` latent
    tiles ``stride / 8`` apart), the VAE's ``(tile, stride)`` in image pixels, the short
    side inputs are raised to, the plan to report, and a note when an elongated image
    could not be raised to the patch size."""

    patch: int
    stride: int
    vae_encode: tuple[int, int]
    vae_decode: tuple[int, int]
    min_side: int
    plan: TilePlan
    note: str | None = None


def tile_stride(tile: int, overlap: float) -> int:
    """``tile * (1 - overlap)`` as a multiple of 8 (at least 8): tiles in the image and in
    the latent then start at the same places."""
    return max(VAE_FACTOR, round(tile * (1 - overlap) / VAE_FACTOR) * VAE_FACTOR)


def hypir_tiles(
    target_hw: tuple[int, int], config: RunConfig, *, patch: int, element_size: int = 4
) -> HypirTiles:
    """HYPIR tiles every stage: patches of ``--latent-tile`` pixels (default the
    release's 512) at a stride of ``patch * (1 - --tile-overlap)`` (default 256); the VAE
    runs at the patch size too unless ``--vae-tile`` or ``--max-memory`` asks for less.
    An image whose short side is at most the patch is raised to it first."""
    patch = int(config.latent_tile or patch)
    min_side = diffusion_min_side(target_hw, patch)
    note = None
    if min_side < patch:
        # Too elongated to raise to a full patch: the patch shrinks to the short side.
        h, w = target_hw
        patch = max(64, min_side // 64 * 64)
        note = (
            f"{w}x{h} is too elongated to raise its short side to {config.latent_tile or 512}"
            f": HYPIR works at a short side of {patch} (long side at most {MAX_DIFFUSION_SIDE})"
        )
    short = min(target_hw)
    raised = target_hw
    if short <= patch:
        factor = patch / short
        raised = (math.ceil(target_hw[0] * factor), math.ceil(target_hw[1] * factor))
    budget = plan_tiles(
        *raised, budget=config.max_memory, element_size=element_size, options=config
    )

    # The release runs its VAE at the patch size: only a budget the user set (not the
    # default figure) or --vae-tile makes the VAE's tiles smaller.
    budgeted = config.max_memory != DEFAULT_MAX_MEMORY

    def vae_tile(chosen: int | None) -> int:
        return min(patch, int(config.vae_tile or (chosen if budgeted else None) or patch))

    encode, decode = vae_tile(budget.vae_encode), vae_tile(budget.vae_decode)
    overlap = config.tile_overlap
    plan = TilePlan(
        cleaner=budget.cleaner, vae_encode=encode, vae_decode=decode, latent=patch, overlap=overlap
    )
    return HypirTiles(
        patch=patch,
        stride=tile_stride(patch, overlap),
        vae_encode=(encode, tile_stride(encode, overlap)),
        vae_decode=(decode, tile_stride(decode, overlap)),
        min_side=patch,
        plan=plan,
        note=note,
    )


def move(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` on ``device``, cast to ``dtype`` only where it is not (diffusers warns on
    every dtype ``.to``)."""
    for part in module.children():
        first = next(part.parameters(), None)
        if first is not None and first.dtype != dtype:
            # nn.Module's own cast: diffusers' override warns on every dtype change.
            nn.Module.to(part, dtype)
    return module.to(device)


def ddpm_alphas_cumprod(steps: int = 1000) -> torch.Tensor:
    """SD 2.1's ``alphas_cumprod`` (scaled linear betas 0.00085..0.012) in float32, computed
    as diffusers' ``DDPMScheduler`` does (the published step takes its coefficients there)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def raise_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with a short side of at most ``size`` raised to ``size`` (antialiased bicubic,
    the other side truncated as the published ``resize_at_least`` computes it)."""
    h, w = x.shape[-2:]
    if min(h, w) > size:
        return x
    if h == w:
        new = (size, size)
    elif h < w:
        new = (size, int(w * (size / h)))
    else:
        new = (int(h * (size / w)), size)
    if new == (h, w):
        return x  # the published resize at equal size is an exact identity
    return F.interpolate(x, size=new, mode="bicubic", antialias=True)
