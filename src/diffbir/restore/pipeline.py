"""DiffBIRPipeline: stage 1 (cleaner) -> condition latent -> sampler -> decode -> colour fix.

The pipeline owns no file handling: it maps a batch of NCHW RGB images in
[0, 1] to restored images. ``diffbir.cli.restore``, the web UI and
whole-photo runs call it. Settings are resolved once into a
:class:`~diffbir.config.settings.RunConfig` (release defaults, then the caller's
overrides); each step below is what the published inference path does, in
its order, so the same weights, photo, options and seed give its image:

1. ``clean``: same-size cleaners (SwinIR, SCUNet) see the input resized by
   ``upscale`` with Pillow's 8-bit bicubic; SwinIR raises the short side to
   512 first and runs zero-padded to a multiple of 64, SCUNet raises it after;
   BSRNet upscales x4 and is then resized to the output size (or a 512 short
   side). Nothing is clamped. -> ``I_reg``
2. ``encode``: ``I_reg`` zero-padded to 64 (8 when tiled), VAE posterior mean
   x 0.18215 -> the condition latent ``c``.
3. draws, per image from its own seeded stream: the start point (noise, or
   ``c`` noised to t = 999), the noise augmentation of ``c``, the sampler's.
4. ``sample``: the named sampler through one :class:`Denoiser` (CFG,
   guidance, parameterization), optionally over overlapping latent tiles.
5. ``decode`` (not clamped), crop, wavelet colour fix toward ``I_reg``,
   bicubic resize to the output size, and ``x * 255`` truncated to 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch

from diffbir.config.limits import LATENT_FACTOR
from diffbir.config.presets import Preset, get_preset
from diffbir.config.settings import (
    MIN_DIFFUSION_SIDE,
    RestoreOptions,
    RunConfig,
    resolve,
    resolve_device,
)
from diffbir.diffusion.denoiser import Denoiser
from diffbir.diffusion.noise import BatchNoise
from diffbir.diffusion.registry import SamplerKnobs, run_sampler
from diffbir.diffusion.samplers import default_spacing, prepare_start
from diffbir.diffusion.schedule import NoiseSchedule
from diffbir.errors import ConfigError
from diffbir.imaging.resize import bicubic, pad_to_multiple, to_uint8_levels
from diffbir.models.stage2 import load_stage2
from diffbir.models.tokenizer import load_tokenizer
from diffbir.restore import stages
from diffbir.restore.base import LatentHook, RestoreResult, hooked_guidance
from diffbir.restore.estimate import say_if_long
from diffbir.restore.hub import CaptionerSlot, Offload, PromptEmbeddings
from diffbir.restore.loading import (
    cleaner_dtype,
    dtype_name,
    load_model_config,
    load_stage1,
    parse_dtype,
)
from diffbir.restore.network import latent_guidance, latent_network
from diffbir.restore.plan import (
    RunPlan,
    TilePlan,
    box_fraction,
    latent_tiles,
    plan_run,
    plan_tiles,
)
from diffbir.restore.prompts import ImagePrompt, describe_images
from diffbir.restore.stages import output_size, timed
from diffbir.weights.registry import resolve_many

__all__ = [
    "DiffBIRPipeline",
    "RestoreOptions",
    "RestoreResult",
    "RunConfig",
    "TilePlan",
    "MIN_DIFFUSION_SIDE",
    "output_size",
    "pad_to_multiple",
    "plan_tiles",
]


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

        self.device = torch.device(device)
        self.dtype = dtype
        self.preset = preset
        self.cleaner = cleaner.eval().to(self.device, cleaner_dtype(self.device, dtype))
        self.stage2 = stage2.eval().to(self.device, dtype)
        if self.device.type == "cuda":
            # Convolutions run faster on NHWC tensors on recent GPUs.
            for part in (self.stage2.unet, self.stage2.controlnet, self.stage2.vae):
                part.to(memory_format=torch.channels_last)
        self.schedule = NoiseSchedule.from_name(preset.schedule)
        # The models' lifetime (diffbir.restore.hub): where idle models wait, the
        # captioner, the prompts' embeddings (computed once per distinct prompt).
        self.offload = Offload(self.device, self._model)
        self.captioners = CaptionerSlot(self.device)
        self.embeddings = PromptEmbeddings(
            self.stage2.encode_prompt, lambda: self.stage2.text_encoder, self.offload, dtype
        )
        # The files the models came from, by part (from_preset fills it).
        self.sources: dict[str, str] = {}
        # Each input size's RunPlan, made once per (size, config).
        self._plans: dict[tuple, RunPlan] = {}

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
        offload: bool = False,
        lora: str | Path | None = None,
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
        (pipelines of one release share it). The CLIP vocabulary ships with
        the package. ``offload``: see :meth:`enable_offload`.
        """

        if lora is not None:
            raise ConfigError("--lora: a LoRA file is HYPIR's (--model hypir); DiffBIR has none")
        preset = get_preset(version, task)
        device = resolve_device(device)  # one line naming what exists, if it does not
        dtype = parse_dtype(dtype, device)

        configs = load_model_config(model_config)
        wanted = [cleaner or preset.cleaner]
        if stage2 is None:
            wanted += [sd or preset.sd, controlnet or preset.controlnet]
        paths = resolve_many(
            [str(name) for name in wanted],
            weights_dir=weights_dir,
            download=download,
            progress=progress,
        )
        cleaner_path = paths[0]
        if stage2 is None:
            sd_path, control_path = paths[1:]
            stage2 = load_stage2(
                sd_path,
                control_path,
                prediction=preset.prediction,
                unet_config=configs.get("unet"),
                vae_config=configs.get("vae"),
                text_config=configs.get("text"),
                controlnet_config=configs.get("controlnet"),
                tokenizer=load_tokenizer(),
                device=device,
                dtype=dtype,
            )
        stage1 = load_stage1(cleaner_path, None if cleaner else preset.cleaner_arch, configs)
        pipeline = cls(stage1, stage2, preset, device=device, dtype=dtype)
        pipeline.sources = {"cleaner": str(cleaner_path)}
        if len(paths) == 3:
            pipeline.sources.update(sd=str(paths[1]), controlnet=str(paths[2]))
        pipeline.captioners.weights_dir = None if weights_dir is None else Path(weights_dir)
        pipeline.captioners.download = download
        if offload:
            pipeline.enable_offload()
        return pipeline

    def enable_offload(self, to: str | torch.device = "cpu") -> DiffBIRPipeline:
        """Keep every model in ``to``'s memory (the CPU's) and move each to the device
        only for its stage: the cleaner for stage 1, the text encoder for new prompts, the
        VAE to encode and decode, the UNet and ControlNet (and the VAE, for pixel
        guidance) while sampling. The device then holds one stage's weights at a time, for
        6-8 GB cards; every image pays the moves (about 5 GB over the bus at fp16)."""
        self.offload.enable(to)
        return self

    def _model(self, name: str) -> torch.nn.Module | None:
        """The module of a part of :data:`~diffbir.restore.hub.OFFLOAD_SEQUENCE`."""
        if name == "cleaner":
            return self.cleaner
        return getattr(self.stage2, name, None)

    def compile(self, backend: str = "inductor", *, mode: str | None = None) -> DiffBIRPipeline:
        """``torch.compile`` the denoiser (UNet and ControlNet) in place; returns ``self``.

        The modules are compiled where they are (``nn.Module.compile``), so their
        classes, state-dict keys and sharing between pipelines stay as they were. The
        first call, and the first with a new shape (a CFG pair, another latent size),
        compiles and is slow; later calls reuse the code. ``backend`` is a
        ``torch.compile`` backend: ``"inductor"`` generates kernels (on CPU it needs a C++
        compiler), ``"aot_eager"`` and ``"eager"`` trace but run the usual kernels (for
        checks). ``mode`` is inductor's: ``None``/``"default"``, ``"reduce-overhead"``
        (CUDA graphs: less launch time, a graph per shape, re-recorded when weights move,
        so not with :meth:`enable_offload`), ``"max-autotune"``. Calling again replaces
        the previous compilation. Output equals the uncompiled models' within float
        rounding (generated kernels may sum in another order)."""
        options = {"backend": backend} if mode is None else {"backend": backend, "mode": mode}
        for module in (self.stage2.unet, self.stage2.controlnet):
            module.compile(**options)
        return self

    def loaded_models(self) -> dict[str, str]:
        """``part -> what was loaded``: each model's class, size, dtype and device, and the
        file it came from when :meth:`from_preset` loaded it."""
        parts = {"cleaner": self.cleaner}
        for name in ("unet", "controlnet", "vae", "text_encoder"):
            module = getattr(self.stage2, name, None)
            if module is not None:
                parts[name] = module
        described = {}
        for name, module in parts.items():
            count = sum(p.numel() for p in module.parameters())
            first = next(module.parameters(), None)
            dtype = str(first.dtype).removeprefix("torch.") if first is not None else "-"
            text = f"{type(module).__name__}, {count / 1e6:.1f}M parameters, {dtype}"
            source = self.sources.get(name) or self.sources.get(
                "sd" if name in ("unet", "vae", "text_encoder") else ""
            )
            described[name] = text + (f", from {source}" if source else "")
        return described

    def resolve(self, options: RestoreOptions | None = None) -> RunConfig:
        """The frozen settings of a run with ``options`` (this release's defaults for ``None``)."""
        return resolve(
            self.preset, options, device_type=self.device.type, dtype=dtype_name(self.dtype)
        )

    # ------------------------------------------------------------------- stages
    @property
    def cleaner_arch(self) -> str:
        return stages.cleaner_arch(self.cleaner)

    def run_input(self, lq: torch.Tensor, upscale: float) -> torch.Tensor:
        """The cleaner's input (see :func:`diffbir.restore.stages.run_input`)."""
        return stages.run_input(lq, upscale, self.cleaner_arch)

    def clean(
        self,
        lq: torch.Tensor,
        upscale: float,
        plan: TilePlan | None = None,
        min_side: int = MIN_DIFFUSION_SIDE,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage 1 on the run input: ``I_reg`` (not clamped) and the output size."""
        x = lq.to(self.device, torch.float32)
        return stages.clean(self.cleaner, x, upscale, plan=plan, min_side=min_side)

    def encode_condition(
        self, image: torch.Tensor, tile: int | None, overlap: float
    ) -> torch.Tensor:
        """The condition latent of ``image`` (see :func:`diffbir.restore.stages.encode`)."""
        del overlap  # the tiled VAE computes margins around its tiles instead
        return stages.encode(self.stage2, image.to(self.device), tile, self.dtype)

    def decode(self, z: torch.Tensor, tile: int | None, overlap: float) -> torch.Tensor:
        """Images ``(x + 1) / 2`` of latents, not clamped (see :func:`diffbir.restore.stages.decode`)."""
        del overlap
        return stages.decode(self.stage2.vae, z, tile, self.dtype)

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The [1,77,D] embedding of ``prompt``, computed once per prompt."""
        return self.embeddings(prompt)

    # --------------------------------------------------------------- captions
    def captioner(self, config: RunConfig):
        """The run's captioner, loaded on first use and kept for the next images
        (``None`` for ``none``); see :mod:`diffbir.captioning`."""
        return self.captioners.get(
            config.captioner, config.captioner_bits, progress=config.progress
        )

    def free_captioner(self) -> None:
        """Free the captioner's weights (before the diffusion stage, where memory is short)."""
        self.captioners.free()

    def image_prompts(
        self,
        lq: torch.Tensor,
        options: RestoreOptions | RunConfig | None = None,
        given: list[ImagePrompt | None] | None = None,
    ) -> list[ImagePrompt]:
        """The prompts each image of ``lq`` ([B,3,H,W] in [0,1]) is restored with: the
        ``given`` one where there is one, else its caption joined to the run's prompt
        (the run's prompt alone with captioner ``none``); with ``tile_captions`` ``each``
        or ``off`` and tiled sampling, the latent tiles' own prompts too."""

        config = options if isinstance(options, RunConfig) else self.resolve(options)
        if lq.dim() == 3:
            lq = lq.unsqueeze(0)
        element = torch.finfo(self.dtype).bits // 8
        return describe_images(
            lq,
            config,
            lambda: self.captioner(config),
            given=given,
            element_size=element,
            plan=self.plan,
        )

    def prompts(self, options: RestoreOptions | RunConfig) -> tuple[str, str]:
        """The (prompt, negative prompt) a call with ``options`` uses."""
        config = options if isinstance(options, RunConfig) else self.resolve(options)
        return config.prompt, config.negative_prompt

    def prepare_prompts(self, options: RestoreOptions, *, drop_text_encoder: bool = False) -> None:
        """Encode the prompts of ``options`` now; with ``drop_text_encoder`` free the
        text encoder afterwards (about 0.7 GB at fp16), for runs with fixed prompts."""
        for prompt in self.prompts(options):
            self.text_embedding(prompt)
        if drop_text_encoder:
            self.stage2.drop_text_encoder()

    def prepare_image_prompts(
        self, prompts: list[ImagePrompt], *, drop_text_encoder: bool = False
    ) -> None:
        """Encode every prompt of ``prompts`` (tiles' included) now; with
        ``drop_text_encoder`` free the text encoder afterwards."""
        for prompt in prompts:
            for text in (prompt.prompt, prompt.negative_prompt, *(p for _, p in prompt.tiles)):
                self.text_embedding(text)
        if drop_text_encoder:
            self.stage2.drop_text_encoder()

    # -------------------------------------------------------------------- call
    def __call__(
        self,
        lq: torch.Tensor,
        options: RestoreOptions | RunConfig | None = None,
        prompts: list[ImagePrompt] | None = None,
    ) -> RestoreResult:
        return self.restore(lq, options, prompts)

    def restore(
        self,
        lq: torch.Tensor,
        options: RestoreOptions | RunConfig | None = None,
        prompts: list[ImagePrompt] | None = None,
        *,
        latent_hook: LatentHook | None = None,
    ) -> RestoreResult:
        """Restore a batch of images ``lq`` ([B,3,H,W] or [3,H,W], RGB in [0,1]).

        Every image is restored as if it were alone with the run's seed. With
        ``n_samples`` N > 1 each image gives N results (image-major order),
        made ``samples_per_run`` at a time from the image's one random stream,
        as the release's ``--n_samples``/``--batch_size`` do. ``prompts`` gives
        each image its own (see :meth:`image_prompts`, which makes them when
        None: the run's captioner, or the run's prompt). ``latent_hook`` sees every
        step's x0 estimate after the guidance (video runs fuse the previous frame there).
        """

        config = options if isinstance(options, RunConfig) else self.resolve(options)
        run = self._run if latent_hook is None else partial(self._run, latent_hook=latent_hook)
        return stages.restore_in_passes(self, lq, config, prompts, run)

    def plan(self, lq_hw: tuple[int, int], config: RunConfig) -> RunPlan:
        """The run's sizes and tiles for an input of ``lq_hw`` (planned once per size and
        config, for the prompts' tiles and the restore alike)."""
        key = (tuple(lq_hw), config)
        if key not in self._plans:
            element = torch.finfo(self.dtype).bits // 8
            self._plans[key] = plan_run(tuple(lq_hw), config, element_size=element)
        return self._plans[key]

    def _run(
        self, lq: torch.Tensor, groups, config: RunConfig, prompts: list[ImagePrompt],
        latent_hook: LatentHook | None = None,
    ) -> RestoreResult:  # fmt: skip
        """One pass of the models over ``lq``'s rows; ``groups`` gives each row's stream,
        ``prompts`` each group's prompts."""

        timings: dict[str, float] = {}
        noise = BatchNoise(groups)
        plan = self.plan(tuple(lq.shape[-2:]), config)  # sizes before any memory is spent
        self._say_if_long(plan, config, lq.shape[0])
        with torch.no_grad():
            with timed(timings, "stage1", self.device), self.offload.stage("stage1"):
                run_input = self.run_input(lq, config.upscale)
                cond_img, target_hw = self.clean(
                    run_input, config.upscale, plan.tiles, plan.min_side
                )
            h0, w0 = cond_img.shape[-2:]
            tiled = plan.tiles.vae_encode is not None or plan.tiles.latent is not None
            padded = pad_to_multiple(cond_img, LATENT_FACTOR if tiled else 64)
            with timed(timings, "encode", self.device):
                with self.offload.stage("encode"):
                    cond_latent = self.encode_condition(
                        padded, plan.tiles.vae_encode, plan.tiles.overlap
                    )
                cond_text = self.embeddings.rows(groups, [p.prompt for p in prompts])
                uncond_text = self.embeddings.rows(groups, [p.negative_prompt for p in prompts])
            x_T, control, start_step = self._start(cond_latent, noise, config)
            denoiser = self._denoiser(
                config, groups, prompts, plan.tiles, control, cond_text, uncond_text,
                cond_latent, padded, (h0, w0), latent_hook,
            )  # fmt: skip
            with timed(timings, "sample", self.device):
                z = self._sample(config, denoiser, x_T, noise, start_step)
                z = z[..., : cond_latent.shape[-2], : cond_latent.shape[-1]]
            with timed(timings, "decode", self.device), self.offload.stage("decode"):
                image = self.decode(z, plan.tiles.vae_decode, plan.tiles.overlap)[..., :h0, :w0]
                image = stages.color_fix(image, cond_img, config.color_fix)
                image = to_uint8_levels(bicubic(image, target_hw)).float().div_(255.0)
        timings["total"] = sum(timings.values())
        return RestoreResult(
            image=image,
            stage1=cond_img,
            timings=timings,
            tiles=plan.tiles,
            config=config,
            intermediates={"cond_latent": cond_latent, "x_T": x_T, "z": z},
            notes=[plan.note] * lq.shape[0],
            prompts=list(prompts),
        )

    def _say_if_long(self, plan: RunPlan, config: RunConfig, rows: int) -> None:
        """A note before a CPU run that will take long (:mod:`diffbir.restore.estimate`)."""
        if self.device.type != "cpu":
            return
        cond_h, cond_w = plan.cond_hw
        latent_hw = (-(-cond_h // LATENT_FACTOR), -(-cond_w // LATENT_FACTOR))
        boxes = latent_tiles(latent_hw, plan.tiles)
        sampled = sum((b - t) * (r - left) for t, b, left, r in boxes) * LATENT_FACTOR**2
        images = config.n_samples if config.n_samples > 1 else rows
        calls = config.steps * (1 if config.cfg_scale == 1 else 2) * images
        say_if_long(
            self.device.type,
            plan.target_hw,
            sampled_pixels=sampled,
            vae_pixels=cond_h * cond_w * images,
            unet_calls=calls,
            controlnet=True,
            threads=torch.get_num_threads(),
        )

    def _start(self, cond_latent: torch.Tensor, noise, config: RunConfig):
        """The sampler's start ``x_T``, the ControlNet's condition (noise-augmented when
        asked) and the first step (part-way starts), drawn in the release's order."""
        if config.start_point == "cond":
            x_T = self.schedule.add_noise(
                cond_latent, noise(cond_latent), self.schedule.num_timesteps - 1
            ).float()
        else:
            x_T = noise(cond_latent)
        control = cond_latent
        if config.noise_aug > 0:
            control = self.schedule.add_noise(
                cond_latent, noise(cond_latent), config.noise_aug
            ).float()
        start_step = 0
        if config.start_strength < 1:
            x_T, start_step = prepare_start(
                cond_latent,
                None,
                self.schedule,
                config.steps,
                strength=config.start_strength,
                noise=noise,
                spacing=default_spacing(config.sampler, self.schedule),
                device=self.device,
            )
        return x_T, control, start_step

    def _denoiser(
        self, config, groups, prompts, tiles, control, cond_text, uncond_text, cond_latent,
        padded, stage1_hw, latent_hook=None,
    ):  # fmt: skip
        """The run's :class:`~diffbir.diffusion.denoiser.Denoiser`: the network (whole or
        tiled), CFG and the latent guidance."""

        h0, w0 = stage1_hw
        network = self.network(
            control,
            config.control_strength,
            tiles,
            self._tile_contexts(groups, prompts, (h0 / LATENT_FACTOR, w0 / LATENT_FACTOR)),
            unet_batch=config.unet_batch,
            # a bar per step over the tiles where a step is slow: on the CPU
            progress=config.progress and self.device.type == "cpu",
        )
        return Denoiser(
            model=network,
            alphas_cumprod=self.schedule.alphas_cumprod,
            prediction=self.preset.prediction,
            cond=cond_text,
            uncond=uncond_text,
            cfg_scale=config.cfg_scale,
            rescale_cfg=config.cfg_rescale,
            rescale_needs_cfg_above_one=config.sampler != "dpm++_m2",
            guidance=hooked_guidance(
                self._guidance(config, cond_latent, padded, tiles, stage1_hw),
                latent_hook,
                (-(-h0 // LATENT_FACTOR), -(-w0 // LATENT_FACTOR)),
            ),
        )

    def _sample(self, config: RunConfig, denoiser, x_T, noise, start_step: int) -> torch.Tensor:
        """The named sampler from ``x_T`` (the models of its stage on the device)."""

        knobs = SamplerKnobs(
            config.s_churn, config.s_tmin, config.s_tmax, config.s_noise, config.eta, config.order
        )
        pixel_guidance = config.guidance_scale > 0 and config.guidance_space == "pixel"
        with self.offload.stage("sample_pixel_guidance" if pixel_guidance else "sample"):
            return run_sampler(
                config.sampler,
                denoiser,
                x_T,
                self.schedule,
                config.steps,
                noise=noise,
                brownian=noise.brownian,
                knobs=knobs,
                start_step=start_step,
                progress=config.progress,
            )

    # ----------------------------------------------------------------- helpers
    def _tile_contexts(self, groups, prompts: list[ImagePrompt], latent_hw):
        """``box -> conditional rows`` for latent tiles with prompts of their own, or None
        when every tile uses its image's prompt."""

        if not any(p.tiles for p in prompts):
            return None
        cache: dict[tuple[int, int, int, int], torch.Tensor] = {}

        def context(box: tuple[int, int, int, int]) -> torch.Tensor:
            if box not in cache:
                region = box_fraction(box, latent_hw)
                cache[box] = self.embeddings.rows(groups, [p.tile_prompt(region) for p in prompts])
            return cache[box]

        return context

    def network(
        self,
        cond_latent: torch.Tensor,
        strength: float,
        plan: TilePlan,
        tile_context: Callable[[tuple[int, int, int, int]], torch.Tensor] | None = None,
        *,
        unet_batch: int = 0,
        progress: bool = False,
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """``model(x, t, context)`` for the samplers: see :func:`diffbir.restore.network.latent_network`."""

        return latent_network(
            self.stage2,
            self.dtype,
            cond_latent,
            strength,
            tile=plan.latent,
            overlap=plan.overlap,
            tile_context=tile_context,
            unet_batch=unet_batch,
            progress=progress,
        )

    def _guidance(
        self,
        config: RunConfig,
        cond_latent: torch.Tensor,
        cond_img: torch.Tensor,
        plan: TilePlan,
        stage1_hw: tuple[int, int],
    ):
        """The run's latent image guidance, or None: see :func:`diffbir.restore.network.latent_guidance`."""

        return latent_guidance(
            config, self.stage2.vae, self.dtype, self.schedule, cond_latent, cond_img, plan,
            stage1_hw,
        )  # fmt: skip
