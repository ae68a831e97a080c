"""RRDBNet/BSRNet against the published implementation's recorded outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.models.rrdbnet import RRDBNet
from diffbir.weights.checkpoint import load_into


@pytest.fixture(scope="module")
def golden(request):
    folder = request.config.rootpath / "tests" / "fixtures" / "rrdbnet"
    config = json.loads((folder / "config.json").read_text())["config"]
    state = {k: v.float() for k, v in load_file(str(folder / "state_dict.safetensors")).items()}
    model = load_into(RRDBNet(**config).eval(), state)
    return model, load_file(str(folder / "io.safetensors")), config


def test_matches_published_output(golden):
    model, io, _ = golden
    with torch.no_grad():
        out = model(io["input"])
    assert out.shape == io["output"].shape == (1, 3, 96, 128)
    assert ((out - io["output"]).norm() / io["output"].norm()).item() < 1e-4


def test_scale_attribute_and_x2_variant():
    assert RRDBNet(nf=8, nb=1, gc=4).scale == 4
    x2 = RRDBNet(nf=8, nb=1, gc=4, sf=2)
    assert x2.scale == 2
    with torch.no_grad():
        assert x2(torch.rand(2, 3, 10, 7)).shape == (2, 3, 20, 14)


def test_gradients_flow_with_and_without_checkpointing(golden):
    _, _, config = golden
    torch.manual_seed(0)
    model = RRDBNet(**config).train()
    x = torch.rand(2, 3, 12, 16)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-7)
