"""Loading stage-1 checkpoints: architecture inference, wrappers, released layouts, errors."""

from __future__ import annotations

import ast
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffbir.errors import CheckpointError, ConfigError
from diffbir.models.cleaner import (
    RELEASED_CONFIGS,
    apply_cleaner,
    build_cleaner,
    infer_arch,
    load_cleaner,
)
from diffbir.models.swinir import strip_derived_buffers
from diffbir.weights.checkpoint import check_keys, load_into

ARCHS = ("swinir", "rrdbnet", "scunet")


def fixture_case(fixtures, arch):
    folder = fixtures / arch
    config = json.loads((folder / "config.json").read_text())["config"]
    return folder, config, load_file(str(folder / "io.safetensors"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def manifest(fixtures, arch):
    data = json.loads((fixtures / "manifests" / f"{arch}.json").read_text())
    config = ast.literal_eval(data["note"].split("config:", 1)[1].strip())
    shapes = {k: tuple(shape) for k, (shape, _dtype) in data["keys"].items()}
    return shapes, config


@pytest.mark.parametrize("arch", ARCHS)
def test_released_config_matches_manifest(fixtures, arch):
    _, config = manifest(fixtures, arch)
    assert RELEASED_CONFIGS[arch] == config


@pytest.mark.parametrize("arch", ARCHS)
def test_every_released_key_loads_strictly(fixtures, arch):
    shapes, _ = manifest(fixtures, arch)
    with torch.device("meta"):
        model = build_cleaner(arch)
        released = {k: torch.empty(s) for k, s in shapes.items()}
    assert infer_arch(released) == arch
    if arch == "swinir":
        # The released file carries derived buffers; they are dropped before loading.
        assert any(k.endswith(".attn_mask") for k in released)
        released = strip_derived_buffers(released)
    check_keys({k: v.shape for k, v in model.state_dict().items()}, released, what=arch)
    load_into(model, released)  # strict, assigns on meta


@pytest.mark.parametrize("arch", ARCHS)
def test_load_cleaner_from_file_reproduces_golden(fixtures, arch):
    folder, config, io = fixture_case(fixtures, arch)
    model = load_cleaner(folder / "state_dict.safetensors", **config)
    assert not model.training
    assert model.scale == (4 if arch == "rrdbnet" else 1)
    key = "input_64" if arch == "swinir" else "input"
    with torch.no_grad():
        out = model(io[key])
    assert rel_err(out, io[key.replace("input", "output")]) < 1e-4


def test_wrapped_prefixed_pickle_loads(tmp_path, fixtures):
    folder, config, io = fixture_case(fixtures, "rrdbnet")
    state = load_file(str(folder / "state_dict.safetensors"))
    path = tmp_path / "bsrnet.pth"
    torch.save({"params": {f"module.{k}": v for k, v in state.items()}, "iter": 3}, path)
    model = load_cleaner(path, **config)
    with torch.no_grad():
        assert rel_err(model(io["input"]), io["output"]) < 1e-4


def test_swinir_inside_a_full_checkpoint(fixtures):
    folder, config, io = fixture_case(fixtures, "swinir")
    state = load_file(str(folder / "state_dict.safetensors"))
    full = {f"preprocess_model.{k}": v for k, v in state.items()}
    full["model.diffusion_model.out.0.weight"] = torch.zeros(4)
    model = load_cleaner(full, **config)
    with torch.no_grad():
        assert rel_err(model(io["input_64"]), io["output_64"]) < 1e-4


def test_device_and_dtype_arguments(fixtures):
    folder, config, _ = fixture_case(fixtures, "rrdbnet")
    model = load_cleaner(
        folder / "state_dict.safetensors", device="cpu", dtype=torch.float64, **config
    )
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.rand(1, 3, 4, 4, dtype=torch.float64)).dtype == torch.float64


def test_unknown_keys_are_refused_with_a_clear_error():
    with pytest.raises(CheckpointError, match="not a stage-1"):
        infer_arch({"encoder.conv_in.weight": torch.zeros(1)})


def test_wrong_architecture_lists_mismatched_keys(fixtures):
    folder, _, _ = fixture_case(fixtures, "rrdbnet")
    with pytest.raises(CheckpointError) as err:
        load_cleaner(folder / "state_dict.safetensors", arch="scunet", config=[1] * 7)
    message = str(err.value)
    assert "missing" in message and "unexpected" in message
    assert "m_head.0.weight" in message and "RRDB_trunk.0.RDB1.conv1.weight" in message


def test_wrong_shape_lists_the_shapes(fixtures):
    folder, config, _ = fixture_case(fixtures, "rrdbnet")
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape: .*conv_first.weight: checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)",
    ):
        load_cleaner(folder / "state_dict.safetensors", **{**config, "nf": 32})


def test_unknown_option_and_arch_are_config_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        build_cleaner("rrdbnet", channels=3)
    with pytest.raises(ConfigError, match="unknown cleaner architecture"):
        build_cleaner("esrgan")


def test_our_saved_swinir_round_trips(tmp_path, fixtures):
    folder, config, io = fixture_case(fixtures, "swinir")
    model = load_cleaner(folder / "state_dict.safetensors", **config)
    path = tmp_path / "swinir.safetensors"
    save_file(model.state_dict(), str(path))
    again = load_cleaner(path, **config)
    with torch.no_grad():
        assert torch.equal(again(io["input_64"]), model(io["input_64"]))


def test_apply_cleaner_untiled_and_auto_tiled(fixtures):
    folder, config, _ = fixture_case(fixtures, "rrdbnet")
    model = load_cleaner(folder / "state_dict.safetensors", **config)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(apply_cleaner(model, x), ref)
        tiled = apply_cleaner(model, x, auto_tile_above=32, tile=None, overlap=8)
        # The default tile (512) covers this input: auto-tiling falls back to one call.
        assert torch.equal(tiled, ref)
        tiled = apply_cleaner(model, x, tile=24, overlap=12)
    assert tiled.shape == (1, 3, 160, 224)
    psnr = -10 * torch.log10((tiled - ref).square().mean() / ref.square().max())
    assert psnr > 40
