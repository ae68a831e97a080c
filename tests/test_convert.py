"""Checkpoint splitting and the full-size released layouts (manifests), on the meta device."""

from __future__ import annotations

import json

import pytest
import torch

from diffbir.models.controlnet import build_controlnet, convert_controlnet_state_dict
from diffbir.models.stage2 import Stage2Model, _assemble
from diffbir.weights.convert import (
    is_controlnet_state_dict,
    is_ldm_checkpoint,
    is_stage2_folder,
    split_ldm_checkpoint,
)


def _manifest(request, name: str) -> dict[str, torch.Tensor]:
    path = request.config.rootpath / "tests" / "fixtures" / "manifests" / name
    keys = json.loads(path.read_text())["keys"]
    return {
        k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for k, (shape, dtype) in keys.items()
    }


def test_split_strips_prefixes_and_ignores_extras():
    t = torch.zeros(1)
    sd = {
        "model.diffusion_model.out.2.weight": t,
        "first_stage_model.encoder.conv_in.weight": t,
        "cond_stage_model.model.ln_final.weight": t,
        "control_model.zero_convs.0.0.weight": t,
        "cond_encoder.1.weight": t,
        "preprocess_model.conv_first.weight": t,
        "model_ema.diffusion_modelout2weight": t,
        "betas": t,
        "alphas_cumprod": t,
    }
    parts = split_ldm_checkpoint(sd)
    assert parts == {
        "unet": {"out.2.weight": t},
        "vae": {"encoder.conv_in.weight": t},
        "text": {"model.ln_final.weight": t},
        "controlnet": {"zero_convs.0.0.weight": t},
        "cond_encoder": {"1.weight": t},
        "cleaner": {"conv_first.weight": t},
    }
    assert is_ldm_checkpoint(sd) and not is_controlnet_state_dict(sd)


def test_recognises_layouts(request, tmp_path):
    control = _manifest(request, "controlnet.json")
    assert is_controlnet_state_dict(control) and not is_ldm_checkpoint(control)
    assert not is_stage2_folder(tmp_path)
    (tmp_path / "diffbir_stage2.json").write_text("{}")
    assert is_stage2_folder(tmp_path)


def test_released_controlnet_manifest_fits_full_size_model(request):
    released = _manifest(request, "controlnet.json")
    with torch.device("meta"):
        net = build_controlnet()
    ours = convert_controlnet_state_dict(released)
    expected = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == expected
    assert len(ours) == len(released)


@pytest.mark.parametrize("layout", ["bare controlnet file", "2023 full checkpoint"])
def test_sd21_manifest_loads_into_full_size_models(request, layout):
    """Every key of the SD 2.1 LDM file and the ControlNet loads strictly; no weights allocated."""
    sd = _manifest(request, "sd21_ldm_checkpoint.json")
    sd |= {"model_ema.decay": torch.empty((), device="meta"), "betas": torch.empty(1000)}
    control = _manifest(request, "controlnet.json")
    if layout == "2023 full checkpoint":
        sd |= {f"control_model.{k}": v for k, v in control.items()}
        control = None
    # The strict loader raises CheckpointError on any missing/unexpected/misshapen key.
    model = _assemble(
        split_ldm_checkpoint(sd),
        control,
        unet_config=None,
        vae_config=None,
        text_config=None,
        controlnet_config=None,
        load_text_encoder=True,
    )
    assert isinstance(model, Stage2Model)
    assert all(p.is_meta for p in model.parameters())
    assert model.num_control_residuals == 13
    assert tuple(model.controlnet.conv_in.weight.shape) == (320, 8, 3, 3)
    counts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("unet", "controlnet", "vae", "text_encoder")
    }
    # SD 2.1-base: UNet 866M, VAE 84M, text tower without its last block 340M; ControlNet 363M.
    assert 865e6 < counts["unet"] < 867e6 and 83e6 < counts["vae"] < 84e6, counts
    assert 335e6 < counts["text_encoder"] < 345e6 and 360e6 < counts["controlnet"] < 370e6, counts
