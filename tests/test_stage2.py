"""Stage2Model / load_stage2 at tiny size: end-to-end golden, save/load, control scale, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import CheckpointError, ConfigError, DiffBIRError
from diffbir.models.controlnet import controlnet_state_dict_to_ldm
from diffbir.models.sd_unet import unet_forward, unet_state_dict_to_ldm
from diffbir.models.stage2 import Stage2Model, load_stage2
from diffbir.models.text_encoder import (
    build_text_encoder,
    text_config_from_open_clip,
    text_state_dict_to_open_clip,
)
from diffbir.models.vae import build_vae, vae_config_from_ldm, vae_state_dict_to_ldm

VAE_CFG = {"embed_dim": 4, "ddconfig": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1}}
TEXT_CFG = {
    "embed_dim": 32,
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 3},
    "layer": "penultimate",
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def released(request):
    """A tiny released-layout SD checkpoint (golden UNet, random VAE/text) and ControlNet."""
    fx = request.config.rootpath / "tests" / "fixtures"
    unet_config = json.loads((fx / "unet" / "config.json").read_text())["config"]
    unet = {k: v.float() for k, v in load_file(fx / "unet" / "state_dict.safetensors").items()}
    control = {
        k: v.float() for k, v in load_file(fx / "controlnet" / "state_dict.safetensors").items()
    }
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    vae = build_vae(vae_config_from_ldm(VAE_CFG["ddconfig"], 4))
    text = build_text_encoder(text_config_from_open_clip(TEXT_CFG["text_cfg"], 32))
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    sd |= {f"first_stage_model.{k}": v for k, v in vae_state_dict_to_ldm(vae.state_dict()).items()}
    oc = text_state_dict_to_open_clip(text.state_dict())
    sd |= {f"cond_stage_model.{k}": v for k, v in oc.items()}
    # Extra keys of real files, to be ignored.
    sd |= {"betas": torch.rand(1000, generator=gen), "model_ema.decay": torch.tensor(0.9999)}
    io = load_file(fx / "unet" / "io.safetensors")
    return {"sd": sd, "control": control, "unet_config": unet_config, "io": io}


def _load(released, *args, **kwargs) -> Stage2Model:
    kwargs.setdefault("unet_config", released["unet_config"])
    return load_stage2(*args, vae_config=VAE_CFG, text_config=TEXT_CFG, **kwargs)


@pytest.fixture(scope="module")
def model(released):
    return _load(released, released["sd"], released["control"])


def test_denoise_reproduces_published_controlled_unet(model, released):
    io = released["io"]
    with torch.no_grad():
        out = model.denoise(io["x"], io["t"], io["c_img"], io["context"], control_scale=0.7)
        per_residual = model.denoise(io["x"], io["t"], io["c_img"], io["context"], [0.7] * 10)
        off = model.denoise(io["x"], io["t"], io["c_img"], io["context"], control_scale=0.0)
    assert rel_err(out, io["eps"]) < 1e-4
    assert torch.allclose(per_residual, out, atol=1e-6)
    assert rel_err(off, io["eps_without_control"]) < 1e-4
    assert model.num_control_residuals == 10 and model.prediction == "eps"


def test_full_2023_checkpoint_takes_its_control_model(released):
    full = dict(released["sd"]) | {f"control_model.{k}": v for k, v in released["control"].items()}
    full |= {"preprocess_model.conv_first.weight": torch.zeros(1)}  # the cleaner: not ours
    model = _load(released, full, prediction="v", load_text_encoder=False)
    io = released["io"]
    with torch.no_grad():
        out = model.denoise(io["x"], io["t"], io["c_img"], io["context"], control_scale=0.7)
    assert rel_err(out, io["eps"]) < 1e-4
    assert model.prediction == "v" and model.text_encoder is None


def test_batch_one_condition_and_scalar_t_broadcast(model, released):
    io = released["io"]
    x = io["x"][:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        shared = model.denoise(x, io["t"][0], io["c_img"][:1], io["context"][:1], 0.7)
    assert rel_err(shared[2:], io["eps"][:1]) < 1e-4
    with pytest.raises(ConfigError, match="expected one float or 10"):
        model.denoise(io["x"], io["t"], io["c_img"], io["context"], [1.0] * 13)
    with pytest.raises(ConfigError, match="batch"):
        model.denoise(x, io["t"][0], io["c_img"], io["context"])
    with pytest.raises(ConfigError, match="noisy latent's size"):
        model.denoise(io["x"], io["t"], io["c_img"][..., :8], io["context"])


def test_save_and_load_our_folder(model, released, tmp_path):
    folder = model.save_pretrained(tmp_path / "stage2")
    for sub in ("unet", "vae", "controlnet", "text_encoder"):
        assert any((folder / sub).glob("*.safetensors")), sub
    meta = json.loads((folder / "diffbir_stage2.json").read_text())
    assert meta["prediction"] == "eps"
    again = load_stage2(folder)
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # The released layout comes back unchanged too.
    ldm = unet_state_dict_to_ldm(again.unet.state_dict(), again.unet.config)
    assert all(torch.equal(ldm[k], v) for k, v in released["sd"].items() if k in ldm) and all(
        torch.equal(ldm[k], released["sd"][f"model.diffusion_model.{k}"]) for k in ldm
    )
    back = controlnet_state_dict_to_ldm(again.controlnet.state_dict(), again.controlnet.config)
    assert back.keys() == released["control"].keys()
    assert all(torch.equal(back[k], released["control"][k]) for k in back)
    # Our folder with a released ControlNet beside it.
    with_cn = load_stage2(folder, released["control"], load_text_encoder=False)
    assert with_cn.text_encoder is None
    # A ControlNet saved alone loads as the controlnet argument.
    model.controlnet.save_pretrained(tmp_path / "cn")
    again = _load(released, released["sd"], tmp_path / "cn", prediction="v")
    assert torch.equal(again.controlnet.conv_in.weight, model.controlnet.conv_in.weight)


def test_controlnet_initialised_from_unet_changes_nothing(released):
    model = _load(released, released["sd"], load_text_encoder=False)  # no ControlNet given
    io = released["io"]
    with torch.no_grad():
        out = model.denoise(io["x"], io["t"], io["c_img"], io["context"], control_scale=1.0)
        alone = unet_forward(model.unet, io["x"], io["t"], io["context"])
    assert torch.equal(out, alone)
    w = model.controlnet.conv_in.weight
    assert torch.equal(w[:, :4], model.unet.conv_in.weight) and (w[:, 4:] == 0).all()
    # Re-initialising a trained ControlNet resets it the same way.
    # Weights from a state dict are used in place, not copied: give this one its own.
    control = {k: v.clone() for k, v in released["control"].items()}
    trained = _load(released, released["sd"], control, load_text_encoder=False)
    trained.init_controlnet_from_unet()
    assert (control["zero_convs.0.0.weight"] == 0).all()
    with torch.no_grad():
        assert torch.equal(trained.denoise(io["x"], io["t"], io["c_img"], io["context"]), alone)


def test_text_and_image_paths(model):
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 49406 % 1000, 7
    with torch.no_grad():
        context = model.encode_text(tokens)
        assert context.shape == (2, 77, 32)
        model.tokenizer = lambda prompts: tokens[: len(prompts)]
        assert torch.equal(model.encode_prompt(["a", "b"]), context)
        z = model.encode_image(torch.rand(1, 3, 32, 48))
        assert z.shape == (1, 4, 16, 24)
        image = model.decode_latent(z)
    assert image.shape == (1, 3, 32, 48) and 0 <= image.min() and image.max() <= 1


def test_drop_text_encoder(released):
    model = _load(released, released["sd"], released["control"])
    model.drop_text_encoder()
    with pytest.raises(DiffBIRError, match="dropped"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long))


def test_bf16_denoise_is_finite_and_close(released):
    model = _load(released, released["sd"], released["control"], dtype=torch.bfloat16)
    assert model.unet.dtype == torch.bfloat16 and model.controlnet.dtype == torch.bfloat16
    io = released["io"]
    with torch.no_grad():
        out = model.denoise(io["x"], io["t"], io["c_img"], io["context"], 0.7).float()
    assert torch.isfinite(out).all()
    assert rel_err(out, io["eps"]) < 5e-2


def test_readable_errors(released, tmp_path):
    with pytest.raises(CheckpointError, match="bare ControlNet"):
        _load(released, released["control"])
    broken = {k: v for k, v in released["sd"].items() if "out.2." not in k}
    with pytest.raises(CheckpointError, match="missing"):
        _load(released, broken, released["control"])
    with pytest.raises(CheckpointError, match="wrong shape"):
        _load(
            released,
            released["sd"],
            released["control"],
            unet_config={**released["unet_config"], "model_channels": 64},
        )
    with pytest.raises(CheckpointError, match="holds no DiffBIR ControlNet"):
        _load(released, released["sd"], {"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_stage2(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="prediction"):
        load_stage2(released["sd"], prediction="x0")


def test_half_precision_weights_are_cast_before_they_are_assigned(released, monkeypatch):
    """A bf16 load never holds a float32 model: each part's tensors are cast one by one
    before assignment (the float32 ones are then let go with their part)."""
    import diffbir.models.stage2 as stage2

    seen = []
    original = stage2.load_into

    def spy(module, state_dict, *, what=None):
        seen.append((what, {v.dtype for v in state_dict.values() if v.is_floating_point()}))
        return original(module, state_dict, what=what)

    monkeypatch.setattr(stage2, "load_into", spy)
    model = _load(released, dict(released["sd"]), dict(released["control"]), dtype=torch.bfloat16)
    assert {what for what, _ in seen} == {"UNet", "VAE", "text encoder", "ControlNet"}
    assert all(dtypes == {torch.bfloat16} for _, dtypes in seen), seen
    for part in (model.unet, model.vae, model.controlnet, model.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    # float32 loads assign the checkpoint's own tensors: no copy at all
    seen.clear()
    sd = dict(released["sd"])
    fp32 = _load(released, sd, dict(released["control"]))
    key = next(k for k in released["sd"] if k.startswith("model.diffusion_model.input_blocks.0"))
    assert any(p.data_ptr() == released["sd"][key].data_ptr() for p in fp32.unet.parameters())


def test_half_precision_loads_map_the_files(released, tmp_path, monkeypatch):
    """From files, a bf16 load maps them (the float32 tensors stay in the page cache
    while each is cast) and gives the same model as a load from memory; a float32
    load reads them into the process, so its weights do not depend on the file."""
    import diffbir.models.stage2 as stage2

    torch.save(released["sd"], tmp_path / "sd.ckpt")
    torch.save(released["control"], tmp_path / "control.pth")
    calls = []
    original = stage2.load_state_dict

    def spy(source, **kwargs):
        calls.append((type(source).__name__, kwargs.get("mmap", False)))
        return original(source, **kwargs)

    monkeypatch.setattr(stage2, "load_state_dict", spy)
    files = (tmp_path / "sd.ckpt", tmp_path / "control.pth")
    half = _load(released, *files, dtype=torch.bfloat16)
    assert [mapped for name, mapped in calls if name.endswith("Path")] == [True, True]
    reference = _load(released, released["sd"], released["control"], dtype=torch.bfloat16)
    for ours, want in zip(half.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, want)
    calls.clear()
    _load(released, *files)
    assert [mapped for name, mapped in calls if name.endswith("Path")] == [False, False]
