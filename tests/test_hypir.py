"""HYPIR, the one-step restorer: the LoRA merge, its tiles, and runs through the API and
the command on the tiny release (the published code's images: test_hypir_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from diffbir.cli import main
from diffbir.errors import CheckpointError, ConfigError
from diffbir.imaging.tiling import gaussian_tile_weights, gaussian_tiled, stride_starts
from diffbir.models.lora import lora_targets, merge_lora
from diffbir.restore.hypir import hypir_tiles, raise_short_side, tile_stride


# ----------------------------------------------------------------------------- LoRA
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(6, 5)
        self.block = torch.nn.Module()
        self.block.conv1 = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.block.norm = torch.nn.GroupNorm(1, 4)
        self.conv_in = torch.nn.Conv2d(3, 3, 3)  # not a target


def _factors(model, rank=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin, conv = model.proj_in, model.block.conv1
    return (
        {
            "proj_in.lora_A.default.weight": torch.randn(rank, 6, generator=gen),
            "proj_in.lora_B.default.weight": torch.randn(5, rank, generator=gen),
            "block.conv1.lora_A.default.weight": torch.randn(rank, 3, 3, 3, generator=gen),
            "block.conv1.lora_B.default.weight": torch.randn(4, rank, 1, 1, generator=gen),
        },
        lin,
        conv,
    )


def test_merged_lora_computes_what_the_adapter_computes():
    model = _Tiny()
    weights, lin, conv = _factors(model)
    x, img = torch.randn(2, 6), torch.randn(1, 3, 9, 9)
    # peft's adapted layers: base(x) + B(A(x)) with A carrying the conv's stride/padding
    a, b = weights["proj_in.lora_A.default.weight"], weights["proj_in.lora_B.default.weight"]
    want_lin = lin(x) + x @ a.T @ b.T
    ca = weights["block.conv1.lora_A.default.weight"]
    cb = weights["block.conv1.lora_B.default.weight"]
    want_conv = conv(img) + F.conv2d(F.conv2d(img, ca, stride=2, padding=1), cb)
    before = model.conv_in.weight.clone()
    assert merge_lora(model, weights, ["proj_in", "conv1"]) == 2
    torch.testing.assert_close(model.proj_in(x), want_lin, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.block.conv1(img), want_conv, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.conv_in.weight, before)


def test_lora_targets_follow_peft_suffix_rule():
    paths = set(lora_targets(_Tiny(), ["conv1", "proj_in", "norm", "in"]))
    assert paths == {"proj_in", "block.conv1"}  # "in" is no suffix after a dot; norms are skipped


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w: w.pop("block.conv1.lora_B.default.weight"), "1 missing .*block.conv1.lora_B"),
        (lambda w: w.update({"conv_in.lora_A.weight": torch.zeros(1)}), "1 unexpected .*conv_in"),
        (lambda w: w.update({"step": torch.zeros(1)}), "unexpected .*step"),
    ],
)
def test_a_partial_or_foreign_lora_is_one_line(edit, message):
    model = _Tiny()
    weights, _, _ = _factors(model)
    before = model.proj_in.weight.clone()
    edit(weights)
    with pytest.raises(CheckpointError, match=message) as caught:
        merge_lora(model, weights, ["proj_in", "conv1"])
    assert "\n" not in str(caught.value)
    assert torch.equal(model.proj_in.weight, before)  # nothing merged


def test_lora_of_the_wrong_shape_is_named():
    model = _Tiny()
    weights, _, _ = _factors(model)
    weights["proj_in.lora_A.default.weight"] = torch.randn(2, 7)
    with pytest.raises(CheckpointError, match="proj_in: factors of shapes"):
        merge_lora(model, weights, ["proj_in", "conv1"])


# ---------------------------------------------------------------------------- tiles
def test_stride_starts_end_flush():
    assert stride_starts(512, 512, 256) == [0]
    assert stride_starts(688, 512, 256) == [0, 176]
    assert stride_starts(1024, 512, 256) == [0, 256, 512]
    assert stride_starts(86, 64, 32) == [0, 22]
    with pytest.raises(ValueError):
        stride_starts(60, 64, 32)


def test_gaussian_weights_are_the_published_formula():
    w = gaussian_tile_weights(6, 8)
    var, norm = 0.01, math.sqrt(2 * math.pi * 0.01)
    for y in range(6):
        for x in range(8):
            gy = math.exp(-((y - 3.0) ** 2) / 36 / (2 * var)) / norm  # rows centred at h / 2
            gx = math.exp(-((x - 3.5) ** 2) / 64 / (2 * var)) / norm  # columns at (w - 1) / 2
            assert w[y, x].item() == pytest.approx(gy * gx, rel=1e-12)


def test_gaussian_tiles_of_an_identity_give_the_image_back():
    x = torch.rand(2, 3, 80, 96, dtype=torch.float64)
    torch.testing.assert_close(gaussian_tiled(lambda t: t, x, 64, 32), x)
    # an encoder-like map: tiles land at a quarter of their positions
    down = gaussian_tiled(lambda t: F.avg_pool2d(t, 4), x, 64, 32, scale=1 / 4)
    assert down.shape == (2, 3, 20, 24)


def test_raise_short_side_as_published():
    assert raise_short_side(torch.zeros(1, 3, 300, 400), 512).shape[-2:] == (512, 682)
    assert raise_short_side(torch.zeros(1, 3, 400, 300), 512).shape[-2:] == (682, 512)
    assert raise_short_side(torch.zeros(1, 3, 512, 512), 512).shape[-2:] == (512, 512)
    x = torch.rand(1, 3, 513, 600)
    assert raise_short_side(x, 512) is x


def _config(**options):
    from diffbir.config.settings import RestoreOptions
    from diffbir.restore.factory import resolve_run

    return resolve_run("hypir", "sr", RestoreOptions(**options))


def test_hypir_tiles_default_to_the_release_and_follow_the_flags():
    tiles = hypir_tiles((512, 640), _config(), patch=512)
    assert (tiles.patch, tiles.stride) == (512, 256)
    assert tiles.vae_encode == tiles.vae_decode == (512, 256)
    assert tile_stride(768, 1 / 3) == 512  # the app's 768 / 512 sliders
    small = hypir_tiles((512, 640), _config(latent_tile=256, tile_overlap=0.25), patch=512)
    assert (small.patch, small.stride, small.vae_decode) == (256, 192, (256, 192))
    tight = hypir_tiles((2048, 2048), _config(max_memory=1e9), patch=512)
    assert tight.patch == 512 and tight.vae_decode[0] < 512  # the VAE shrinks, not the UNet
    strip = hypir_tiles((16, 4000), _config(upscale=1.0), patch=512)
    assert strip.patch < 512 and "too elongated" in strip.note


def test_hypir_refuses_sampling_knobs_in_one_line():
    with pytest.raises(ConfigError, match=r"steps \(--steps\).*not used by --model hypir"):
        _config(steps=20)
    with pytest.raises(ConfigError, match="guidance scale"):
        _config(guidance_scale=0.1)
    config = _config(prompt="a cat", seed=5)
    assert (config.model, config.steps, config.sampler, config.tile_overlap) == (
        "hypir",
        1,
        "one-step",
        0.5,
    )
    assert "cfg_scale" not in config.describe() and "cfg_scale" not in config.metadata()
    assert config.metadata()["model"] == "hypir" and config.metadata()["prompt"] == "a cat"


# ------------------------------------------------------------------------- restores
@pytest.fixture(scope="module")
def hypir(release, single_thread):
    from diffbir import load_restorer

    weights, config = release
    return load_restorer(
        "hypir", "sr", weights_dir=weights, model_config=config, download=False, progress=False
    )


def test_the_restorer_follows_the_protocol_and_loads_the_lora(hypir, release):
    from diffbir.restore.base import Restorer

    assert isinstance(hypir, Restorer)
    described = hypir.loaded_models()
    assert "LoRA from" in described["unet"] and "HYPIR_sd2.pth" in described["unet"]
    assert set(described) == {"unet", "vae", "text_encoder"}


def test_the_lora_changes_the_image(hypir, release):
    from diffbir.restore.hypir import HypirRestorer, load_hypir_models

    weights, config = release
    plain = torch.load(weights / "HYPIR_sd2.pth", weights_only=True)
    zero = {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in plain.items()}
    torch.save(zero, weights / "zero_lora.pth")
    base = HypirRestorer.from_preset(
        "hypir", "sr", weights_dir=weights, model_config=config, lora=weights / "zero_lora.pth",
        download=False, progress=False,
    )  # fmt: skip
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = hypir.restore(x).image, base.restore(x).image
    assert not torch.equal(a, b)
    models = load_hypir_models(
        weights / "v2-1_512-ema-pruned.ckpt", weights / "zero_lora.pth", base.preset,
        configs=yaml.safe_load(config.read_text()), dtype=torch.float32, device=torch.device("cpu"),
    )  # fmt: skip
    for (name, p), q in zip(models.unet.named_parameters(), base.stage2.unet.parameters()):
        assert torch.equal(p, q), name


def test_restore_is_seeded_per_image_and_quantised(hypir):
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    config = hypir.resolve(_options(latent_tile=256))  # a 256 patch: 4x less work
    result = hypir.restore(x, config)
    assert result.image.shape == (2, 3, 128, 160) and result.config is config
    levels = result.image * 255
    assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= 255
    alone = hypir.restore(x[1:], config).image
    # each image as if alone with the seed (a batch may round a level differently)
    assert (alone - result.image[1:]).abs().max() <= 1 / 255 + 1e-6
    assert (alone - result.image[1:]).abs().mean() < 0.01 / 255
    other = hypir.restore(x[1:], hypir.resolve(_options(seed=7, latent_tile=256))).image
    assert not torch.equal(other, alone)
    # the posterior is sampled: intermediates show the encoded latent of the raised image
    assert result.intermediates["z_lq"].shape == (2, 4, 32, 40)


def _options(**kw):
    from diffbir.config.settings import RestoreOptions

    return RestoreOptions(**kw)


def test_n_samples_differ_and_follow_one_stream(hypir):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    two = hypir.restore(x, hypir.resolve(_options(n_samples=2, latent_tile=256))).image
    assert two.shape[0] == 2 and not torch.equal(two[0], two[1])
    both = _options(n_samples=2, samples_per_run=2, latent_tile=256)
    batched = hypir.restore(x, hypir.resolve(both)).image
    assert (batched - two).abs().max() <= 1 / 255 + 1e-6  # same draws, rows in one pass


def test_prompts_change_the_image_and_are_encoded_once(hypir):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a = hypir.restore(x, hypir.resolve(_options(prompt="a dog", latent_tile=256))).image
    b = hypir.restore(x, hypir.resolve(_options(prompt="a castle at night", latent_tile=256))).image
    assert not torch.equal(a, b)
    assert {"a dog", "a castle at night"} <= hypir.embeddings.known


def test_tiled_and_untiled_runs(hypir):
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(5))
    whole = hypir.restore(x, hypir.resolve(_options(upscale=2.0)))  # 80x112 -> raised to 512
    assert whole.image.shape[-2:] == (80, 112) and whole.tiles.latent == 512
    tiled = hypir.restore(x, hypir.resolve(_options(upscale=2.0, latent_tile=256)))
    assert tiled.tiles.latent == 256 and tiled.image.shape == whole.image.shape
    assert (tiled.image - whole.image).abs().mean() > 0


def test_a_cleaner_runs_first_when_asked(release, single_thread):
    from diffbir.restore.hypir import HypirRestorer

    weights, config = release
    restorer = HypirRestorer.from_preset(
        "hypir", "sr", weights_dir=weights, model_config=config,
        cleaner="realesrgan_s4_swinir_100k.pth", download=False, progress=False,
    )  # fmt: skip
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(6))
    result = restorer.restore(x)
    assert result.image.shape == (1, 3, 96, 96) and result.stage1.shape == (1, 3, 96, 96)
    assert "cleaner" in restorer.loaded_models()


def test_the_command_restores_a_folder_of_mixed_sizes(release, tmp_path, capsys):
    from PIL import Image

    weights, config = release
    inputs = tmp_path / "in"
    inputs.mkdir()
    gen = torch.Generator().manual_seed(8)
    for name, (w, h) in {"small.png": (30, 20), "wide.png": (150, 40)}.items():
        pixels = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(inputs / name)
    out = tmp_path / "out"
    args = [
        "restore",
        str(inputs),
        "-o",
        str(out),
        "--model",
        "hypir",
        "--weights-dir",
        str(weights),
    ]
    args += ["--model-config", str(config), "--no-download", "-q", "--upscale", "2"]
    args += ["--prompt", "a street", "--latent-tile", "256"]
    assert main(args) == 0
    small, wide = Image.open(out / "small.png"), Image.open(out / "wide.png")
    assert small.size == (60, 40) and wide.size == (300, 80)
    assert small.text["model"] == "hypir" and small.text["prompt"] == "a street"
    assert "steps" not in small.text
    # a rerun skips what is there
    assert main(args + ["--skip-existing"]) == 0
    assert "skipped" in capsys.readouterr().err.lower()


def test_print_config_and_bad_flags(release, tmp_path, capsys):
    weights, config = release
    base = ["restore", str(tmp_path), "-o", str(tmp_path / "o"), "--model", "hypir"]
    assert main([*base, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == "hypir" and printed["tile_overlap"] == 0.5
    assert "steps" not in printed and "sampler" not in printed
    assert main([*base, "--print-config", "--cfg-scale", "3"]) == 1
    assert "cfg scale (--cfg-scale): not used by --model hypir" in capsys.readouterr().err
    assert main([*base, "--version", "v2", "--print-config"]) == 1
    assert "--model hypir has one release" in capsys.readouterr().err


def test_a_broken_lora_file_is_one_line(release, tmp_path, capsys):
    from PIL import Image

    weights, config = release
    broken = tmp_path / "HYPIR_sd2.pth"
    torch.save({"down_blocks.0.resnets.0.conv1.lora_A.default.weight": torch.zeros(4)}, broken)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    args = ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "hypir"]
    args += ["--weights-dir", str(weights), "--model-config", str(config), "--no-download"]
    args += ["-q", "--lora", str(broken)]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "does not fit the model" in err and "missing" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "loader",
    [{"dtype": "bf16"}, {"compile": {"backend": "aot_eager"}}, {"offload": True}],
    ids=["bf16", "compile", "offload"],
)
def test_dtype_compile_and_offload(release, single_thread, loader):
    from diffbir import load_restorer

    weights, config = release
    restorer = load_restorer(
        "hypir", "sr", weights_dir=weights, model_config=config, download=False, progress=False,
        **loader,
    )  # fmt: skip
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    image = restorer.restore(x, restorer.resolve(_options(latent_tile=256))).image
    assert image.shape == (1, 3, 128, 128) and image.dtype == torch.float32
    if "dtype" in loader:
        assert next(restorer.stage2.unet.parameters()).dtype == torch.bfloat16


def test_the_web_ui_restores_with_hypir_as_the_command_does(release, tmp_path):
    """Release "hypir" on the page: the form's sampling values (always there) are left
    out, and the image equals the command's."""
    from PIL import Image

    from diffbir.imaging.io import read_image
    from diffbir.ui.core import FormValues, PipelineCache, ReleasedModels, restore_uploads

    weights, config = release
    src = tmp_path / "a.png"
    pixels = (torch.rand(24, 32, 3, generator=torch.Generator().manual_seed(10)) * 255).byte()
    Image.fromarray(pixels.numpy()).save(src)
    args = ["restore", str(src), "-o", str(tmp_path / "cli"), "--model", "hypir"]
    args += ["--weights-dir", str(weights), "--model-config", str(config), "--no-download"]
    args += ["-q", "--upscale", "2", "--seed", "7", "--prompt", "a wall", "--latent-tile", "256"]
    assert main(args) == 0
    models = ReleasedModels(
        dict(weights_dir=weights, model_config=config, download=False, progress=False)
    )
    assert "HYPIR" in models.describe_load("hypir", "sr")
    form = FormValues(
        version="hypir", upscale=2, seed=7, prompt="a wall", steps=10, cfg_scale=6, latent_tile=256
    )
    run = restore_uploads([src], form, PipelineCache(models), tmp_path / "ui")
    assert run.failures == []
    assert torch.equal(
        read_image(run.images[0].result).rgb, read_image(tmp_path / "cli" / "a.png").rgb
    )
    with Image.open(run.images[0].result) as written:
        assert written.text["model"] == "hypir" and "cfg_scale" not in written.text
