"""Stage 2: train LAControlNet with the diffusion loss, Stable Diffusion frozen.

Per batch, as the release's ``train_stage2.py``: under no_grad ``z0`` is a sample of the
VAE posterior of HQ (``model.clean_latent: sample``; or its mode) x 0.18215 and
``c = E(stage1(LQ))`` the posterior mode x 0.18215; with ``model.cond_noise_max_t`` > 0
the condition is noised, ``c <- q(c_t | c)`` with ``t_c ~ U{0..max_t-1}`` on the same
schedule; then ``t ~ U{0..999}``, ``x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps`` and the loss is
the MSE between the UNet's output (with the ControlNet's residuals) and ``eps`` or ``v``.
Prompts come from the dataset (long or short caption, then dropped to "", see
``data``). With ``data.pipeline: realesrgan_batch`` the LQ is made here, on the device,
for the whole batch (:mod:`diffbir.training.batch_degradation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from diffbir.diffusion.denoiser import Denoiser
from diffbir.diffusion.noise import BatchNoise, ImageStream
from diffbir.diffusion.registry import run_sampler
from diffbir.diffusion.schedule import NoiseSchedule
from diffbir.imaging.io import write_image
from diffbir.models.cleaner import load_cleaner
from diffbir.models.controlnet import build_controlnet, controlnet_state_dict_to_ldm, init_from_unet
from diffbir.models.sd_unet import build_unet, unet_config_from_ldm, unet_forward
from diffbir.models.stage2 import Stage2Model, load_stage2
from diffbir.models.text_encoder import build_text_encoder
from diffbir.models.tokenizer import load_tokenizer
from diffbir.models.vae import build_vae, first_parameter
from diffbir.training.batch_degradation import DataTask
from diffbir.training.config import TrainConfig
from diffbir.training.stage1 import downscale, psnr
from diffbir.weights.registry import resolve

CONTROLNET_FILE = "controlnet.safetensors"
SD_DIR = "sd"
MODEL_CONFIG_FILE = "model_config.json"
_PROMPT_CACHE_SIZE = 1024


def _place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``module``; cast only when needed (diffusers warns on every dtype ``.to``)."""
    module.to(device)
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def _frozen_dtype(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def build_random_stage2(cfg: TrainConfig):
    """SD with random weights from ``model.*_config`` (tests and benchmarks), ControlNet from its UNet."""
    from diffbir.models.stage2 import (
        Stage2Model,
        resolve_controlnet_config,
        resolve_text_config,
        resolve_vae_config,
    )

    m = cfg.model
    unet = build_unet(unet_config_from_ldm(dict(m.unet_config or {})))
    vae = build_vae(resolve_vae_config(m.vae_config))
    text = build_text_encoder(resolve_text_config(m.text_config))
    controlnet = build_controlnet(resolve_controlnet_config(m.controlnet_config, unet))
    init_from_unet(controlnet, unet)
    return Stage2Model(unet, vae, controlnet, text, prediction=m.prediction)


def load_training_stage2(cfg: TrainConfig):
    """The stage-2 model to train from: released/saved SD + an optional ControlNet to start from."""
    m = cfg.model
    wd = m.weights_dir
    if m.sd_checkpoint is None:
        model = build_random_stage2(cfg)
    else:
        control = resolve(m.controlnet, weights_dir=wd) if m.controlnet else None
        model = load_stage2(
            resolve(m.sd_checkpoint, weights_dir=wd),
            control,
            prediction=m.prediction,
            unet_config=m.unet_config,
            vae_config=m.vae_config,
            text_config=m.text_config,
            controlnet_config=m.controlnet_config,
        )
    model.tokenizer = load_tokenizer(m.tokenizer, weights_dir=wd)
    return model


def _load_condition_cleaner(cfg: TrainConfig) -> nn.Module | None:
    m = cfg.model
    if m.cleaner is None:
        return None
    cleaner = load_cleaner(
        resolve(m.cleaner, weights_dir=m.weights_dir), arch=m.cleaner_arch, **m.cleaner_config
    )
    return cleaner.requires_grad_(False).eval()


class Stage2Task(DataTask):
    """Diffusion loss on ``(HQ latent, E(stage1(LQ)))``; only the ControlNet trains."""

    prompts = True

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.dtype = _frozen_dtype(cfg.run.mixed_precision)
        self.random_sd = cfg.model.sd_checkpoint is None
        model = load_training_stage2(cfg)
        for part in (model.unet, model.vae, model.text_encoder):
            _place(part.requires_grad_(False).eval(), device, self.dtype)
        self.stage2 = model
        self.prediction = model.prediction
        self.cleaner = _load_condition_cleaner(cfg)
        if self.cleaner is not None:
            _place(self.cleaner, device, self.dtype)
        if cfg.run.gradient_checkpointing:
            model.controlnet.enable_gradient_checkpointing()
            model.unet.enable_gradient_checkpointing()  # its activations feed the residuals' grads
        # The trainable module stays float32 (autocast handles mixed precision).
        self.trainable = _place(model.controlnet, device, torch.float32).train()
        self.schedule = NoiseSchedule.from_name(cfg.model.schedule)
        self._prompts: dict[str, torch.Tensor] = {}
        self._val_batch: dict[str, Any] | None = None
        self._init_data(cfg, device)
        self.counts: dict[str, float] = {
            "cond_noised": 0.0,
            "cond_noise_t_sum": 0.0,
            "cond_noise_t_max": 0.0,
        }

    # ------------------------------------------------------------------ data
    def degraded(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """``batch`` with its LQ: as loaded, or made now by the batched degradation."""
        if self.degrade is None:
            return batch
        hq, lq, prompts = self.degrade(batch["hq"], list(batch["prompt"]), generator)
        return {**batch, "hq": hq, "lq": lq, "prompt": prompts}

    # ----------------------------------------------------------- conditions
    def text(self, prompts: list[str]) -> torch.Tensor:
        """Context ``[B, 77, D]`` of the prompts (the text encoder is frozen: cached)."""
        missing = sorted({p for p in prompts if p not in self._prompts})
        if missing:
            if len(self._prompts) + len(missing) > _PROMPT_CACHE_SIZE:
                self._prompts.clear()
            embeddings = self.stage2.encode_prompt(missing)
            self._prompts |= {p: e for p, e in zip(missing, embeddings, strict=True)}
        return torch.stack([self._prompts[p] for p in prompts])

    def condition(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(stage1(LQ), E(stage1(LQ)))``; the LQ itself when no cleaner is configured."""
        image = lq.to(self.device, self.dtype)
        if self.cleaner is not None:
            scale = int(getattr(self.cleaner, "scale", 1))
            image = self.cleaner(downscale(image, scale)).clamp(0, 1)
        return image, self.stage2.encode_image(image)

    def predict(
        self,
        control: nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        text: torch.Tensor,
    ) -> torch.Tensor:
        """The frozen UNet's output with the residuals of ``control`` (same as ``denoise``)."""
        residuals = control(x_t, cond, t, text)
        residuals = [r.to(self.dtype) for r in residuals]
        return unet_forward(self.stage2.unet, x_t.to(self.dtype), t, text.to(self.dtype), residuals)

    # ------------------------------------------------------------------ loss
    def clean_latent(self, hq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The HQ latent the diffusion loss denoises: a posterior sample (as released) or its
        mode, x ``model.latent_scale``."""
        vae = self.stage2.vae
        ref = first_parameter(vae)
        posterior = vae.encode(hq.to(ref.device, ref.dtype) * 2.0 - 1.0).latent_dist
        z = posterior.mean.float()
        if self.cfg.model.clean_latent == "sample":
            eps = torch.randn(z.shape, generator=generator, device=generator.device)
            z = z + posterior.std.float() * eps.to(z.device)
        return z * self.cfg.model.latent_scale

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        m = self.cfg.model
        with torch.no_grad():
            batch = self.degraded(batch, generator)
            z0 = self.clean_latent(batch["hq"], generator)
            _, cond = self.condition(batch["lq"])
            cond = cond.float()
            text = self.text(list(batch["prompt"]))
        n = z0.shape[0]
        gen_device = generator.device
        t = torch.randint(
            0, self.schedule.num_timesteps, (n,), generator=generator, device=gen_device
        )
        noise = torch.randn(z0.shape, generator=generator, device=gen_device).to(z0.device)
        t = t.to(z0.device)
        x_t = self.schedule.add_noise(z0, noise, t).float()
        if m.cond_noise_max_t > 0:
            tc = torch.randint(0, m.cond_noise_max_t, (n,), generator=generator, device=gen_device)
            c_noise = torch.randn(cond.shape, generator=generator, device=gen_device)
            cond = self.schedule.add_noise(
                cond, c_noise.to(cond.device), tc.to(cond.device)
            ).float()
            self.counts["cond_noised"] += n
            self.counts["cond_noise_t_sum"] += float(tc.sum())
            self.counts["cond_noise_t_max"] = max(self.counts["cond_noise_t_max"], float(tc.max()))
        target = noise if self.prediction == "eps" else self.schedule.velocity(z0, noise, t).float()
        pred = self.predict(self.trainable, x_t, t, cond, text)
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------ validation
    def validate(self, step: int, module: nn.Module) -> dict[str, float]:
        """Restore a few held-out LQ images with a short sampler; write them to ``samples/step_N/``."""
        v = self.cfg.val
        if self._val_batch is None:
            # No held-out source: the first training images, as the release logs samples
            # of its training batch.
            source = v.source
            if source is None:
                source = self.records if self.records is not None else self.cfg.data.source
            data = self._dataset(source, train=False)
            items = [data[i] for i in range(min(v.num_images, len(data)))]
            self._val_batch = {
                "hq": torch.stack([s["hq"] for s in items]).to(self.device),
                "lq": torch.stack([s["lq"] for s in items]).to(self.device),
                "prompt": [s["prompt"] for s in items],
            }
        batch = self._val_batch
        image, cond = self.condition(batch["lq"])
        text = self.text(batch["prompt"])
        # One stream for the batch, drawn as a restore run draws an image's.
        noise = BatchNoise([(cond.shape[0], ImageStream.seeded(self.cfg.run.seed, cond.device))])
        denoiser = Denoiser(
            model=lambda x_t, t, context: self.predict(module, x_t, t, cond, context),
            alphas_cumprod=self.schedule.alphas_cumprod,
            prediction=self.prediction,
            cond=text,
        )
        z0 = run_sampler(
            v.sampler,
            denoiser,
            noise(cond.float()),
            self.schedule,
            v.steps,
            noise=noise,
            brownian=noise.brownian,
        )
        restored = self.stage2.decode_latent(z0.to(self.dtype)).float()
        folder = Path(self.cfg.run.output_dir) / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(restored.shape[0]):
            # lq | stage 1 | restored | hq, side by side
            row = [batch["lq"][i], image[i].float(), restored[i], batch["hq"][i]]
            write_image(folder / f"{i:03d}.png", torch.cat([r.cpu() for r in row], dim=-1))

        return {"val_psnr": psnr(restored, batch["hq"]).mean().item()}

    # ---------------------------------------------------------------- export
    def export(self, output_dir: Path, module: nn.Module) -> list[Path]:
        """``controlnet.safetensors`` in the released key layout, + ``model_config.json``.

        ``diffbir restore --controlnet OUT/controlnet.safetensors`` (and
        ``load_stage2(sd, controlnet=...)``) take it like a released ControlNet. With a
        randomly initialised SD (tests), the whole model is also saved to ``sd/``. Written
        into the loop's staging folder and published whole, ``controlnet.safetensors`` last
        (``outputs.publish``): when it is there, the files beside it belong to it.
        """
        state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
        released = controlnet_state_dict_to_ldm(state, module.config)
        control = output_dir / CONTROLNET_FILE
        save_file({k: v.contiguous() for k, v in released.items()}, control)
        written = [control]
        m = self.cfg.model
        sections = {
            name: dict(value)
            for name, value in (
                ("unet", m.unet_config),
                ("vae", m.vae_config),
                ("text", m.text_config),
                ("controlnet", m.controlnet_config),
            )
            if value
        }
        if sections:
            path = output_dir / MODEL_CONFIG_FILE
            path.write_text(json.dumps(sections, indent=2) + "\n")
            written.append(path)
        if self.random_sd:
            s = self.stage2
            full = Stage2Model(s.unet, s.vae, module, s.text_encoder, prediction=self.prediction)
            written.append(full.save_pretrained(output_dir / SD_DIR))
        return written


def make_stage2_task(cfg: TrainConfig, device: torch.device) -> Stage2Task:
    """The :class:`~diffbir.training.loop.Task` of stage 2."""
    return Stage2Task(cfg, device)
