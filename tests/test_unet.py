"""SD UNet on diffusers: golden outputs of the published UNet, key mapping, configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import ConfigError
from diffbir.models.sd_unet import (
    build_unet,
    convert_unet_state_dict,
    num_skip_connections,
    unet_config_from_ldm,
    unet_forward,
    unet_state_dict_to_ldm,
)
from diffbir.weights.checkpoint import load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def tiny(request):
    folder = request.config.rootpath / "tests" / "fixtures" / "unet"
    config = unet_config_from_ldm(json.loads((folder / "config.json").read_text())["config"])
    ldm = {k: v.float() for k, v in load_file(folder / "state_dict.safetensors").items()}
    unet = load_into(build_unet(config), convert_unet_state_dict(ldm, config)).eval()
    return unet, config, ldm, load_file(folder / "io.safetensors")


def test_golden_without_control(tiny):
    unet, _, _, io = tiny
    with torch.no_grad():
        eps = unet_forward(unet, io["x"], io["t"], io["context"])
    assert rel_err(eps, io["eps_without_control"]) < 1e-4


def test_golden_with_control_residuals(tiny):
    unet, config, _, io = tiny
    n = num_skip_connections(config) + 1
    residuals = [io[f"control_{i:02d}"] * io["control_scale"] for i in range(n)]
    with torch.no_grad():
        eps = unet_forward(unet, io["x"], io["t"], io["context"], residuals)
    assert rel_err(eps, io["eps"]) < 1e-4
    # The residuals matter: without them the output is far from the reference.
    assert rel_err(io["eps_without_control"], io["eps"]) > 1e-2


def test_key_mapping_round_trip(tiny):
    _, config, ldm, _ = tiny
    ours = convert_unet_state_dict(ldm, config)
    assert set(ours).isdisjoint(ldm)  # every key was renamed
    back = unet_state_dict_to_ldm(ours, config)
    assert back.keys() == ldm.keys()
    assert all(back[k] is ldm[k] for k in ldm)


def test_unknown_keys_survive_for_the_strict_check(tiny):
    _, config, ldm, _ = tiny
    ours = convert_unet_state_dict({**ldm, "foo.bar": torch.zeros(1)}, config)
    assert "foo.bar" in ours


def test_sd21_base_config_matches_diffusers_layout():
    config = unet_config_from_ldm()
    assert config["block_out_channels"] == [320, 640, 1280, 1280]
    assert config["attention_head_dim"] == [5, 10, 20, 20]
    assert config["down_block_types"][-1] == "DownBlock2D"
    assert config["up_block_types"][0] == "UpBlock2D"
    assert config["cross_attention_dim"] == 1024 and config["use_linear_projection"]
    assert num_skip_connections(config) == 12


def test_sd1_style_num_heads():
    config = unet_config_from_ldm(
        {"num_heads": 8, "num_head_channels": -1, "context_dim": 768, "legacy": True}
    )
    assert config["attention_head_dim"] == [8, 8, 8, 8]


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="unknown"):
        unet_config_from_ldm({"model_chanels": 320})
    with pytest.raises(ConfigError, match="num_head_channels"):
        unet_config_from_ldm({"num_head_channels": 48})


def test_bf16_forward_is_finite_and_close(tiny):
    unet, _, _, io = tiny
    half = build_unet(unet.config).to(torch.bfloat16)
    half.load_state_dict(unet.state_dict())
    with torch.no_grad():
        ref = unet_forward(unet, io["x"], io["t"], io["context"])
        out = unet_forward(half, io["x"].bfloat16(), io["t"], io["context"].bfloat16()).float()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 5e-2
