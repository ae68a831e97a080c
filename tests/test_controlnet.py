"""LAControlNet: golden residuals, released-layout keys, initialisation from the UNet."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.models.controlnet import (
    LAControlNet,
    build_controlnet,
    controlnet_config_from_ldm,
    controlnet_state_dict_to_ldm,
    convert_controlnet_state_dict,
    from_unet,
)
from diffbir.models.sd_unet import (
    build_unet,
    convert_unet_state_dict,
    unet_config_from_ldm,
    unet_forward,
)
from diffbir.weights.checkpoint import load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def _load(folder):
    config = json.loads((folder / "config.json").read_text())["config"]
    ldm = {k: v.float() for k, v in load_file(folder / "state_dict.safetensors").items()}
    return config, ldm, load_file(folder / "io.safetensors")


@pytest.fixture(scope="module")
def tiny(request):
    config, ldm, io = _load(request.config.rootpath / "tests" / "fixtures" / "controlnet")
    config = controlnet_config_from_ldm(config)
    net = load_into(build_controlnet(config), convert_controlnet_state_dict(ldm, config)).eval()
    return net, config, ldm, io


@pytest.fixture(scope="module")
def tiny_unet(request):
    config, ldm, io = _load(request.config.rootpath / "tests" / "fixtures" / "unet")
    config = unet_config_from_ldm(config)
    return load_into(build_unet(config), convert_unet_state_dict(ldm, config)).eval(), io


def test_golden_residuals(tiny):
    net, _, _, io = tiny
    with torch.no_grad():
        outs = net(io["x"], io["c_img"], io["t"], io["context"])
    assert len(outs) == net.num_residuals == 10
    for i, out in enumerate(outs):
        assert rel_err(out, io[f"control_{i:02d}"]) < 1e-4, i


def test_released_layout_round_trip(tiny):
    _, config, ldm, _ = tiny
    ours = convert_controlnet_state_dict(ldm, config)
    assert set(ours).isdisjoint(ldm)
    back = controlnet_state_dict_to_ldm(ours, config)
    assert back.keys() == ldm.keys()
    assert ldm["input_blocks.0.0.weight"].shape[1] == 8  # concat(z_t, c) in one conv


def test_sd_size_has_13_residuals():
    with torch.device("meta"):
        net = build_controlnet()
    assert net.num_residuals == 13
    assert tuple(net.conv_in.weight.shape) == (320, 8, 3, 3)


def test_from_unet_adds_exactly_nothing(tiny_unet):
    unet, io = tiny_unet
    net = from_unet(unet).eval()
    assert isinstance(net, LAControlNet)
    w = net.conv_in.weight
    assert torch.equal(w[:, :4], unet.conv_in.weight) and (w[:, 4:] == 0).all()
    assert torch.equal(
        net.mid_block.resnets[0].conv1.weight, unet.mid_block.resnets[0].conv1.weight
    )
    with torch.no_grad():
        outs = net(io["x"], io["c_img"], io["t"], io["context"])
        assert all((o == 0).all() for o in outs)
        with_control = unet_forward(unet, io["x"], io["t"], io["context"], outs)
        alone = unet_forward(unet, io["x"], io["t"], io["context"])
    assert torch.equal(with_control, alone)


def test_save_and_load_pretrained(tiny, tmp_path):
    net, _, _, io = tiny
    net.save_pretrained(tmp_path / "cn")
    assert (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").is_file()
    again = LAControlNet.from_pretrained(tmp_path / "cn").eval()
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
