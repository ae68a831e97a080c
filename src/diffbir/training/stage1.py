"""Stage 1: train the restoration module (SwinIR, RRDBNet or SCUNet) with an L2 loss.

The release sums the squared error over the batch (``model.loss_reduction: sum``); ``mean``
divides by the number of values. With Adam(W) the two differ only through ``eps``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from diffbir.models.cleaner import build_cleaner, load_cleaner
from diffbir.training.batch_degradation import DataTask
from diffbir.training.config import TrainConfig
from diffbir.weights.registry import resolve

CLEANER_FILE = "cleaner.safetensors"
MODEL_CONFIG_FILE = "model_config.json"


def downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic (antialiased) downscale by an integer factor: the input of an x``factor`` model."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    size = (h // factor, w // factor)
    out = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(0, 1).to(x.dtype)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of two [0,1] batches."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def build_stage1_model(cfg: TrainConfig) -> nn.Module:
    """The cleaner to train: the released config updated by ``model.config``, optionally initialised."""
    m = cfg.model
    if m.init:
        model = load_cleaner(resolve(m.init), arch=m.arch, **m.config)
    else:
        model = build_cleaner(m.arch, **m.config)
    if cfg.run.gradient_checkpointing:
        model.gradient_checkpointing = True
    return model.train()


class Stage1Task(DataTask):
    """L2 regression of HQ from LQ; validation PSNR; export as safetensors + model config."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.trainable = build_stage1_model(cfg).to(device)
        self.scale = int(getattr(self.trainable, "scale", 1))
        self._val_batch: dict[str, torch.Tensor] | None = None
        self._init_data(cfg, device)
        self.counts: dict[str, float] = {}

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        hq, lq = batch["hq"], batch.get("lq")
        if self.degrade is not None:
            with torch.no_grad():
                hq, lq, _ = self.degrade(hq, list(batch.get("prompt", [""] * len(hq))), generator)
        out = self.trainable(downscale(lq, self.scale))
        return F.mse_loss(out.float(), hq.float(), reduction=self.cfg.model.loss_reduction)

    def _validation_batch(self) -> dict[str, torch.Tensor]:
        if self._val_batch is None:
            source = self.cfg.val.source
            if source is None:  # the first training images, as the release logs its batch
                source = self.records if self.records is not None else self.cfg.data.source
            data = self._dataset(source, train=False)
            n = min(self.cfg.val.num_images, len(data))
            samples = [data[i] for i in range(n)]
            self._val_batch = {
                key: torch.stack([s[key] for s in samples]).to(self.device) for key in ("hq", "lq")
            }
        return self._val_batch

    def validate(self, step: int, module: nn.Module) -> dict[str, float]:
        """PSNR of the restored held-out images, and of the degraded inputs for reference."""
        batch = self._validation_batch()
        out = module(downscale(batch["lq"], self.scale)).clamp(0, 1)
        return {
            "val_psnr": psnr(out, batch["hq"]).mean().item(),
            "val_psnr_input": psnr(batch["lq"], batch["hq"]).mean().item(),
        }

    def export(self, output_dir: Path, module: nn.Module) -> list[Path]:
        """``cleaner.safetensors`` (published key layout) + ``model_config.json``, weights first.

        Written into the loop's staging folder and published whole: the weights file arrives
        last, so beside it the model config always matches (``outputs.publish``).
        ``diffbir restore --cleaner OUT/cleaner.safetensors --model-config OUT/model_config.json``
        loads it (the model config is needed only for a non-released architecture).
        """
        weights = output_dir / CLEANER_FILE
        state = {k: v.detach().float().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(state, weights, metadata={"arch": self.cfg.model.arch})
        config = output_dir / MODEL_CONFIG_FILE
        sections = {"cleaner": {self.cfg.model.arch: dict(self.cfg.model.config)}}
        config.write_text(json.dumps(sections, indent=2) + "\n")
        return [weights, config]


def make_stage1_task(cfg: TrainConfig, device: torch.device) -> Stage1Task:
    """The :class:`~diffbir.training.loop.Task` of stage 1."""
    return Stage1Task(cfg, device)
