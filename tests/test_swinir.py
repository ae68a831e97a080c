"""DiffBIR's SwinIR against the published implementation's recorded outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.models.swinir import (
    SWIN_MASK_VALUE,
    ShiftMaskCache,
    SwinIR,
    relative_position_index,
    strip_derived_buffers,
)
from diffbir.weights.checkpoint import load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def golden(request):
    folder = request.config.rootpath / "tests" / "fixtures" / "swinir"
    config = json.loads((folder / "config.json").read_text())["config"]
    raw = load_file(str(folder / "state_dict.safetensors"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
    model = SwinIR(**config).eval()
    load_into(model, strip_derived_buffers(state))
    return model, raw, load_file(str(folder / "io.safetensors")), config


@pytest.mark.parametrize("case", ["64", "128x192"])
def test_matches_published_outputs(golden, case):
    model, _, io, _ = golden
    with torch.no_grad():
        out = model(io[f"input_{case}"])
    assert out.shape == io[f"output_{case}"].shape
    assert rel_err(out, io[f"output_{case}"]) < 1e-4


def test_rebuilds_the_published_buffers(golden):
    _, raw, _, _ = golden
    assert torch.equal(
        raw["layers.0.residual_group.blocks.0.attn.relative_position_index"],
        relative_position_index(8),
    )
    mask = ShiftMaskCache().get(
        64, 64, 8, 4, value=SWIN_MASK_VALUE, device=torch.device("cpu"), dtype=torch.float32
    )
    assert torch.equal(mask, raw["layers.0.residual_group.blocks.1.attn_mask"])


def test_batch_is_independent_per_sample(golden):
    model, _, io, _ = golden
    a = io["input_64"]
    b = torch.rand_like(a)
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        alone = model(b)
    assert rel_err(both[:1], io["output_64"]) < 1e-4
    assert rel_err(both[1:], alone) < 1e-5


def test_any_size_builds_masks_per_size(golden):
    model, _, _, _ = golden
    x = torch.rand(1, 3, 70, 100)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # 70x100 pads to 128x128 -> 16x16 features; the golden case 64 gives 8x8.
    sizes = {key[:2] for key in model.masks._masks}
    assert (16, 16) in sizes
    # Reflect-padded to a multiple of 64 and cropped back.
    padded = torch.nn.functional.pad(x, (0, 28, 0, 58), mode="reflect")
    with torch.no_grad():
        ref = model(padded)[..., :70, :100]
    assert rel_err(out, ref) < 1e-5


def test_tiny_input_below_pad_size(golden):
    model, _, _, _ = golden
    with torch.no_grad():
        out = model(torch.rand(2, 3, 5, 9))
    assert out.shape == (2, 3, 5, 9)


def test_gradients_flow_with_and_without_checkpointing(golden):
    _, _, _, config = golden
    torch.manual_seed(0)
    model = SwinIR(**{**config, "drop_path_rate": 0.0}).train()
    x = torch.rand(2, 3, 64, 64)
    model(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing = True
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_low_precision_runs_close(golden):
    model, _, io, _ = golden
    half = SwinIR(**golden[3]).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    with torch.no_grad():
        out = half(io["input_64"].bfloat16())
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), io["output_64"]) < 5e-2
