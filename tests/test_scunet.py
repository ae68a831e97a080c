"""SCUNet against the published implementation's recorded outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import ConfigError
from diffbir.models.scunet import SCUNet
from diffbir.weights.checkpoint import load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def golden(request):
    folder = request.config.rootpath / "tests" / "fixtures" / "scunet"
    config = json.loads((folder / "config.json").read_text())["config"]
    state = {k: v.float() for k, v in load_file(str(folder / "state_dict.safetensors")).items()}
    model = load_into(SCUNet(**config).eval(), state)
    return model, load_file(str(folder / "io.safetensors")), config


def test_matches_published_output(golden):
    model, io, _ = golden
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape
    assert rel_err(out, io["output"]) < 1e-4


def test_any_size_is_replicate_padded_and_cropped(golden):
    model, _, _ = golden
    x = torch.rand(2, 3, 40, 75)
    with torch.no_grad():
        out = model(x)
        ref = model(torch.nn.functional.pad(x, (0, 53, 0, 24), mode="replicate"))[..., :40, :75]
    assert out.shape == x.shape
    assert rel_err(out, ref) < 1e-5


def test_rejects_a_width_without_whole_heads():
    with pytest.raises(ConfigError, match="multiple of 64"):
        SCUNet(dim=32)


def test_gradients_flow_with_and_without_checkpointing():
    torch.manual_seed(0)
    model = SCUNet(config=[1, 1, 1, 2, 1, 1, 1], dim=64).train()
    x = torch.rand(1, 3, 64, 64)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for g in grads.values())
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-7)
