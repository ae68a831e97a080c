"""OpenCLIP text tower on transformers' CLIPTextModel: golden, causal mask, key conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import ConfigError
from diffbir.models.text_encoder import (
    build_text_encoder,
    convert_text_state_dict,
    encode_tokens,
    text_config_from_open_clip,
    text_state_dict_to_open_clip,
)
from diffbir.weights.checkpoint import check_keys, load_into


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module")
def ref():
    folder = Path(__file__).parent / "fixtures" / "text_encoder"
    cfg = json.loads((folder / "config.json").read_text())["config"]
    oc = {k: v.float() for k, v in load_file(folder / "state_dict.safetensors").items()}
    io = load_file(folder / "io.safetensors")
    config = text_config_from_open_clip(cfg["text_cfg"], cfg["embed_dim"], cfg["layer"])
    return config, oc, io


@pytest.fixture(scope="module")
def encoder(ref):
    config, oc, _ = ref
    return load_into(build_text_encoder(config).eval(), convert_text_state_dict(oc, config))


def test_default_config_is_vit_h_penultimate():
    cfg = text_config_from_open_clip()
    assert cfg["hidden_size"] == 1024
    assert cfg["num_attention_heads"] == 16
    assert cfg["num_hidden_layers"] == 23  # 24 blocks, the last one unused
    assert cfg["vocab_size"] == 49408 and cfg["max_position_embeddings"] == 77
    assert cfg["hidden_act"] == "gelu"
    assert text_config_from_open_clip(layer="last")["num_hidden_layers"] == 24


def test_golden_embedding(encoder, ref):
    _, _, io = ref
    with torch.no_grad():
        out = encode_tokens(encoder, io["tokens"])
    assert out.shape == (2, 77, 64)
    assert rel_err(out, io["embedding"]) < 1e-4


def test_attention_is_causal_without_padding_mask(encoder, ref):
    _, _, io = ref
    tokens = io["tokens"][:1].clone()
    changed = tokens.clone()
    changed[0, 40] = 7  # a padding position: OpenCLIP does not mask padding
    with torch.no_grad():
        a = encode_tokens(encoder, tokens)
        b = encode_tokens(encoder, changed)
    assert torch.equal(a[:, :40], b[:, :40])  # earlier positions never see later ones
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_round_trip_open_clip_ours_open_clip(ref):
    config, oc, _ = ref
    back = text_state_dict_to_open_clip(convert_text_state_dict(oc, config))
    dropped = {"model.text_projection", "model.logit_scale"}
    dropped |= {k for k in oc if k.startswith("model.transformer.resblocks.2.")}
    assert back.keys() == oc.keys() - dropped
    for key, tensor in back.items():
        assert torch.equal(tensor, oc[key]), key


def test_transformers_4_prefix_follows_target_keys(ref):
    config, oc, _ = ref
    nested = convert_text_state_dict(oc, config, target_keys=["text_model.final_layer_norm.weight"])
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in nested
    assert all(k.startswith("text_model.") for k in nested)
    assert (
        text_state_dict_to_open_clip(nested).keys()
        == text_state_dict_to_open_clip(convert_text_state_dict(oc, config)).keys()
    )


def test_full_size_sd21_manifest_converts_without_allocating(fixtures):
    manifest = json.loads((fixtures / "manifests" / "sd21_ldm_checkpoint.json").read_text())["keys"]
    prefix = "cond_stage_model."
    oc = {
        k[len(prefix) :]: torch.empty(shape, device="meta")
        for k, (shape, _dtype) in manifest.items()
        if k.startswith(prefix)
    }
    assert "model.transformer.resblocks.23.attn.in_proj_weight" in oc
    with torch.device("meta"):
        model = build_text_encoder()
    state = model.state_dict()
    converted = convert_text_state_dict(oc, target_keys=state.keys())
    check_keys({k: v.shape for k, v in state.items()}, converted, what="SD 2.1 text encoder")
    load_into(model, converted)
    assert all(p.is_meta for p in model.parameters())


def test_bad_layer_name_raises():
    with pytest.raises(ConfigError, match="penultimate"):
        text_config_from_open_clip(layer="middle")


def test_bfloat16_runs_on_cpu_close_to_float32(encoder, ref):
    config, _, io = ref
    model16 = build_text_encoder(config).eval()
    model16.load_state_dict(encoder.state_dict())
    model16.to(torch.bfloat16)
    with torch.no_grad():
        out16 = encode_tokens(model16, io["tokens"])
    assert out16.dtype == torch.bfloat16
    assert torch.isfinite(out16).all()
    assert rel_err(out16, io["embedding"]) < 5e-2
