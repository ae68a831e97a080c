"""A tiny stand-in for the released weights, written in the released file layouts.

:func:`make_tiny_release` fills a folder with random-weight checkpoints under
every released weight file name the presets use (LDM ``.ckpt`` for Stable
Diffusion, bare ControlNets, stage-1 checkpoints with their usual wrappers) at
tiny sizes, plus ``models.yaml`` describing those sizes in the
published constructor names. ``diffbir restore --weights-dir DIR
--model-config DIR/models.yaml`` then runs every task and release offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

FIXTURES = Path(__file__).parent / "fixtures"

UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
    "legacy": False,
}
VAE = {
    "embed_dim": 4,
    "ddconfig": {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}
TEXT = {
    "embed_dim": 32,
    "layer": "penultimate",
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLEANERS = {
    "swinir": {
        "img_size": 64,
        "embed_dim": 24,
        "depths": [2],
        "num_heads": [2],
        "window_size": 8,
        "mlp_ratio": 2,
    },
    "rrdbnet": {"nf": 8, "nb": 1, "gc": 8},
    "scunet": {"config": [1, 1, 1, 1, 1, 1, 1], "dim": 64},
}


def _jitter(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state with every float tensor perturbed, so zero-initialised
    parts (ControlNet residual convs) take part too."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            value = value + 0.02 * torch.randn(value.shape, generator=gen)
        out[key] = value.contiguous()
    return out


def tiny_lora(unet: torch.nn.Module, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A rank-``rank`` LoRA on HYPIR's modules of ``unet`` in peft's key names, as
    ``HYPIR_sd2.pth`` stores it, with both factors random (so it changes the output)."""
    from diffbir.config.presets import HYPIR_LORA_MODULES
    from diffbir.models.lora import lora_targets

    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for path, layer in lora_targets(unet, HYPIR_LORA_MODULES).items():
        if isinstance(layer, torch.nn.Linear):
            a_shape, b_shape = (rank, layer.in_features), (layer.out_features, rank)
        else:
            a_shape = (rank, layer.in_channels, *layer.kernel_size)
            b_shape = (layer.out_channels, rank, 1, 1)
        weights[f"{path}.lora_A.default.weight"] = 0.1 * torch.randn(a_shape, generator=gen)
        weights[f"{path}.lora_B.default.weight"] = 0.1 * torch.randn(b_shape, generator=gen)
    return weights


def make_tiny_release(folder: Path, seed: int = 0) -> Path:
    """Write tiny checkpoints for every preset's files into ``folder``; return models.yaml."""
    from tiny_captioners import save_tiny_git

    from diffbir.models.cleaner import build_cleaner
    from diffbir.models.controlnet import (
        build_controlnet,
        controlnet_config_from_ldm,
        controlnet_state_dict_to_ldm,
    )
    from diffbir.models.sd_unet import build_unet, unet_config_from_ldm, unet_state_dict_to_ldm
    from diffbir.models.text_encoder import (
        build_text_encoder,
        text_config_from_open_clip,
        text_state_dict_to_open_clip,
    )
    from diffbir.models.vae import build_vae, vae_config_from_ldm, vae_state_dict_to_ldm
    from diffbir.weights.folders import MODEL_FOLDERS

    folder.mkdir(parents=True, exist_ok=True)
    save_tiny_git(folder / MODEL_FOLDERS["git"].folder, bin_weights=True)
    torch.manual_seed(seed)
    unet_cfg = unet_config_from_ldm(UNET)
    unet = unet_state_dict_to_ldm(_jitter(build_unet(unet_cfg), seed), unet_cfg)
    vae = vae_state_dict_to_ldm(
        _jitter(build_vae(vae_config_from_ldm(VAE["ddconfig"], VAE["embed_dim"])), seed + 1)
    )
    text_cfg = text_config_from_open_clip(TEXT["text_cfg"], TEXT["embed_dim"], TEXT["layer"])
    text = text_state_dict_to_open_clip(_jitter(build_text_encoder(text_cfg), seed + 2))
    ldm = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    ldm |= {f"first_stage_model.{k}": v for k, v in vae.items()}
    ldm |= {f"cond_stage_model.{k}": v for k, v in text.items()}
    for name in ("v2-1_512-ema-pruned.ckpt", "sd2.1-base-zsnr-laionaes5.ckpt"):
        torch.save({"state_dict": ldm, "global_step": 0}, folder / name)

    cn_cfg = controlnet_config_from_ldm({**UNET, "hint_channels": 4})
    for index, name in enumerate(("v1_general.pth", "v1_face.pth", "v2.pth", "DiffBIR_v2.1.pt")):
        control = _jitter(build_controlnet(cn_cfg), seed + 10 + index)
        torch.save(controlnet_state_dict_to_ldm(control, cn_cfg), folder / name)

    cleaners = {
        "general_swinir_v1.ckpt": ("swinir", "state_dict"),
        "face_swinir_v1.ckpt": ("swinir", "state_dict"),
        "realesrgan_s4_swinir_100k.pth": ("swinir", None),
        "BSRNet.pth": ("rrdbnet", None),
        "scunet_color_real_psnr.pth": ("scunet", "params"),
    }
    for index, (name, (arch, wrapper)) in enumerate(cleaners.items()):
        state = _jitter(build_cleaner(arch, **CLEANERS[arch]), seed + 20 + index)
        torch.save({wrapper: state} if wrapper else state, folder / name)

    torch.save(tiny_lora(build_unet(unet_cfg), seed + 30), folder / "HYPIR_sd2.pth")

    # No CLIP vocabulary here: it ships inside the package, as the release ships it.
    config = folder / "models.yaml"
    config.write_text(
        yaml.safe_dump({"unet": UNET, "vae": VAE, "text": TEXT, "cleaner": CLEANERS}),
        encoding="utf-8",
    )
    return config


def load_tiny_pipeline(release: tuple[Path, Path], **overrides):
    """The tiny v2.1 ``sr`` pipeline of ``release`` = ``(folder, models.yaml)`` on the CPU
    (``overrides`` go to ``DiffBIRPipeline.from_preset``: ``dtype``, ``device``...)."""
    from diffbir.restore.pipeline import DiffBIRPipeline

    folder, config = release
    options = dict(download=False, progress=False, device="cpu") | overrides
    return DiffBIRPipeline.from_preset(
        "v2.1", "sr", weights_dir=folder, model_config=config, **options
    )
