"""KL-f8 VAE: goldens from the published implementation, key conversion, scaling, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import CheckpointError, ConfigError
from diffbir.models.vae import (
    VAE_SCALE,
    build_vae,
    convert_vae_state_dict,
    decode_from_latent,
    encode_to_latent,
    vae_config_from_ldm,
    vae_state_dict_to_ldm,
)
from diffbir.weights.checkpoint import check_keys, load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module")
def ref():
    folder = Path(__file__).parent / "fixtures" / "vae"
    cfg = json.loads((folder / "config.json").read_text())["config"]
    ldm = {k: v.float() for k, v in load_file(folder / "state_dict.safetensors").items()}
    io = load_file(folder / "io.safetensors")
    return cfg, ldm, io


@pytest.fixture(scope="module")
def vae(ref):
    cfg, ldm, _ = ref
    model = build_vae(vae_config_from_ldm(**cfg)).eval()
    return load_into(model, convert_vae_state_dict(ldm))


def test_default_config_is_sd21_base():
    cfg = vae_config_from_ldm()
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["layers_per_block"] == 2
    assert cfg["latent_channels"] == 4
    assert cfg["scaling_factor"] == VAE_SCALE == 0.18215


def test_golden_posterior_and_decode(vae, ref):
    _, _, io = ref
    with torch.no_grad():
        posterior = vae.encode(io["image"]).latent_dist
        decoded = vae.decode(io["z"]).sample
    assert rel_err(posterior.mean, io["posterior_mean"]) < 1e-4
    assert rel_err(posterior.logvar, io["posterior_logvar"]) < 1e-4
    assert rel_err(decoded, io["decoded"]) < 1e-4


def test_encode_to_latent_is_scaled_mode_of_01_image(vae, ref):
    _, _, io = ref
    with torch.no_grad():
        z = encode_to_latent(vae, (io["image"] + 1) / 2)
    assert z.shape == (1, 4, 16, 24)
    assert rel_err(z, io["posterior_mean"] * VAE_SCALE) < 1e-4


def test_decode_from_latent_unscales_and_clamps_to_01(vae, ref):
    _, _, io = ref
    with torch.no_grad():
        image = decode_from_latent(vae, io["z"] * VAE_SCALE)
    assert image.shape == (1, 3, 32, 48)
    assert image.min() >= 0 and image.max() <= 1
    expected = ((io["decoded"] + 1) / 2).clamp(0, 1)
    assert rel_err(image, expected) < 1e-4


def test_round_trip_ldm_ours_ldm_is_identical(ref):
    _, ldm, _ = ref
    back = vae_state_dict_to_ldm(convert_vae_state_dict(ldm))
    assert back.keys() == ldm.keys()
    for key, tensor in ldm.items():
        assert back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_attention_becomes_linear_and_decoder_levels_reverse(ref):
    _, ldm, _ = ref
    ours = convert_vae_state_dict(ldm)
    assert ours["decoder.mid_block.attentions.0.to_q.weight"].shape == (64, 64)
    assert torch.equal(
        ours["decoder.mid_block.attentions.0.to_out.0.weight"],
        ldm["decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0],
    )
    # LDM's last decoder level (up.1, 64 channels, with the upsampler) runs first in diffusers.
    assert torch.equal(
        ours["decoder.up_blocks.0.upsamplers.0.conv.weight"],
        ldm["decoder.up.1.upsample.conv.weight"],
    )
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in ours


def test_full_size_sd21_manifest_converts_without_allocating(fixtures):
    manifest = json.loads((fixtures / "manifests" / "sd21_ldm_checkpoint.json").read_text())["keys"]
    prefix = "first_stage_model."
    ldm = {
        k[len(prefix) :]: torch.empty(shape, device="meta")
        for k, (shape, _dtype) in manifest.items()
        if k.startswith(prefix)
    }
    assert len(ldm) == 248
    with torch.device("meta"):
        model = build_vae()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted = convert_vae_state_dict(ldm)
    check_keys(expected, converted, what="SD 2.1 VAE")
    load_into(model, converted)
    assert all(p.is_meta for p in model.parameters())


def test_missing_key_is_reported(vae, ref):
    _, ldm, _ = ref
    broken = convert_vae_state_dict({k: v for k, v in ldm.items() if k != "quant_conv.bias"})
    with pytest.raises(CheckpointError, match="missing.*quant_conv.bias"):
        load_into(build_vae(vae_config_from_ldm(**ref[0])), broken)


@pytest.mark.parametrize(
    "ddconfig, embed_dim, message",
    [
        ({"attn_resolutions": [32]}, 4, "attention"),
        ({"double_z": False}, 4, "double_z"),
        ({}, 8, "embed_dim"),
    ],
)
def test_unsupported_configs_raise(ddconfig, embed_dim, message):
    with pytest.raises(ConfigError, match=message):
        vae_config_from_ldm(ddconfig, embed_dim)


def test_bfloat16_runs_on_cpu_close_to_float32(vae, ref):
    _, _, io = ref
    x = (io["image"] + 1) / 2
    with torch.no_grad():
        z32 = encode_to_latent(vae, x)
        y32 = decode_from_latent(vae, z32)
        vae16 = build_vae(vae_config_from_ldm(**ref[0])).eval()
        vae16.load_state_dict(vae.state_dict())
        vae16.to(torch.bfloat16)
        z16 = encode_to_latent(vae16, x)
        y16 = decode_from_latent(vae16, z16)
    assert z16.dtype == y16.dtype == torch.bfloat16
    assert torch.isfinite(z16).all() and torch.isfinite(y16).all()
    assert rel_err(z16, z32) < 5e-2
    assert rel_err(y16, y32) < 5e-2
