"""Pipeline building blocks that need no model: sizes, padding, tile plans, options."""

import pytest
import torch

from diffbir.errors import ConfigError
from diffbir.imaging.resize import resize_short_side
from diffbir.restore.pipeline import (
    RestoreOptions,
    load_model_config,
    output_size,
    pad_to_multiple,
    parse_dtype,
    plan_tiles,
)


def test_output_size_and_short_side():
    assert output_size((100, 150), 4) == (400, 600)
    assert output_size((100, 150), 2.5) == (250, 375)
    x = torch.rand(1, 3, 100, 300)
    y = resize_short_side(x, 512)
    assert y.shape[-2:] == (512, 1536)


def test_pad_to_multiple_keeps_content():
    x = torch.rand(2, 4, 65, 130)
    y = pad_to_multiple(x, 64)
    assert y.shape[-2:] == (128, 192)
    assert torch.equal(y[..., :65, :130], x)
    assert y[..., 65:, :].abs().sum() == 0
    assert pad_to_multiple(y, 64) is y


def test_tile_plan_untiled_when_it_fits_and_tiled_when_not():
    small = plan_tiles(512, 512, budget=1e12)
    assert (small.cleaner, small.vae_decode, small.latent) == (None, None, None)
    big = plan_tiles(4096, 4096, budget=2e9)
    for tile in (big.cleaner, big.vae_encode, big.vae_decode, big.latent):
        assert tile is not None and tile % 64 == 0 and tile < 4096
    # A smaller budget never gives larger tiles.
    tighter = plan_tiles(4096, 4096, budget=5e8)
    assert tighter.vae_decode <= big.vae_decode and tighter.latent <= big.latent
    # Half precision halves the bytes, so tiles may grow.
    half = plan_tiles(4096, 4096, budget=2e9, element_size=2)
    assert half.vae_decode >= big.vae_decode


def test_tile_plan_explicit_sizes_win():
    plan = plan_tiles(
        2048, 2048, budget=1e15, options=RestoreOptions(latent_tile=512, vae_tile=256)
    )
    assert (plan.latent, plan.vae_decode, plan.vae_encode, plan.cleaner) == (512, 256, 256, None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 0, "steps"),
        ("upscale", -1.0, "upscale"),
        ("start_point", "middle", "start point"),
        ("start_strength", 0.0, "start strength"),
        ("guidance_space", "rgb", "guidance space"),
        ("guidance_loss", "l1", "guidance loss"),
        ("color_fix", "magic", "colour fix"),
        ("latent_tile", 100, "multiple of 64"),
        ("tile_overlap", 1.0, "overlap"),
    ],
)
def test_options_validation(field, value, message):
    options = RestoreOptions(**{field: value})
    with pytest.raises(ConfigError, match=message):
        options.validate()


def test_parse_dtype():
    assert parse_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert parse_dtype(None, torch.device("cpu")) is torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        parse_dtype("fp8", torch.device("cpu"))


def test_model_config_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("unet:\n  model_channels: 32\ncleaner:\n  embed_dim: 24\n")
    assert load_model_config(path) == {"unet": {"model_channels": 32}, "cleaner": {"embed_dim": 24}}
    path.write_text("decoder: {}\n")
    with pytest.raises(ConfigError, match="decoder"):
        load_model_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_model_config(tmp_path / "missing.yaml")
