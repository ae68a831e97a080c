"""``unet_batch``: the most rows one UNet+ControlNet call takes.

Resolved per device (1 on the CPU, the whole batch elsewhere), checked, shown by
``--print-config``; and on tiny models, splitting the rows (CFG's pair, a batch of two
photos, latent tiles, tiles with prompts of their own) changes how many rows each call
gets and nothing of the image.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffbir.config.presets import get_preset
from diffbir.config.settings import RestoreOptions, resolve
from diffbir.errors import ConfigError
from diffbir.restore.prompts import ImagePrompt


def test_resolve_picks_one_row_on_cpu_and_the_whole_batch_elsewhere():
    preset = get_preset("v2.1", "sr")
    assert resolve(preset, RestoreOptions(), device_type="cpu").unet_batch == 1
    assert resolve(preset, RestoreOptions(), device_type="cuda").unet_batch == 0
    assert resolve(preset, RestoreOptions(unet_batch=4), device_type="cpu").unet_batch == 4
    assert resolve(preset, RestoreOptions(unet_batch=1), device_type="cuda").unet_batch == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_bad_values_name_the_flag(value):
    with pytest.raises(ConfigError, match="--unet-batch"):
        resolve(get_preset("v2.1", "sr"), RestoreOptions(unet_batch=value))


def test_print_config_shows_it(tmp_path, capsys):
    from diffbir.cli import main

    base = ["restore", "x.png", "-o", str(tmp_path / "out"), "--print-config", "--device", "cpu"]
    assert main(base) == 0
    assert "unet_batch: 1\n" in capsys.readouterr().out
    assert main([*base, "--unet-batch", "2"]) == 0
    assert "unet_batch: 2\n" in capsys.readouterr().out
    assert main([*base, "--unet-batch", "0"]) != 0
    assert "--unet-batch" in capsys.readouterr().err


def _lq(h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _restore(pipe, monkeypatch, lq, unet_batch, prompts=None, **kw):
    """The restored image and the rows of every UNet+ControlNet call."""
    rows: list[int] = []
    real = pipe.stage2.denoise

    def spy(x_t, t, cond_latent, text, **kwargs):
        rows.append(x_t.shape[0])
        # every input of a call has the call's rows (or one, shared)
        assert cond_latent.shape[0] == x_t.shape[0]
        assert text.shape[0] in (1, x_t.shape[0])
        return real(x_t, t, cond_latent, text, **kwargs)

    monkeypatch.setattr(pipe.stage2, "denoise", spy)
    # The v2.1 default CFG scale (6): every step evaluates the conditional and the
    # unconditional rows.
    base = dict(upscale=4, steps=2, seed=5, captioner="none", min_side=64)
    base.update(kw)
    options = RestoreOptions(unet_batch=unet_batch, **base)
    assert pipe.resolve(options).cfg_scale > 1
    result = pipe.restore(lq, options, prompts=prompts)
    monkeypatch.undo()
    return result, rows


def _same(a, b) -> None:
    """Two runs that differ only in how the rows were split: float32 rounding differs
    between batch sizes, which the sampler's first step from sigma 1e4
    magnifies (1.1e-5 measured on z of magnitude 1.7); the written image is quantised to
    8-bit levels, so a rare value sits one level away."""
    assert a.image.shape == b.image.shape
    assert float((a.intermediates["z"] - b.intermediates["z"]).abs().max()) <= 1e-4
    diff = (a.image - b.image).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-6
    assert float((diff > 0).float().mean()) < 0.01


def test_the_network_gives_the_same_rows_split_or_not(pipe):
    # One call of the model the sampler sees, whole and over latent tiles, CFG's pair
    # of two photos (4 rows): split into any row counts, its output is the same.
    from diffbir.restore.plan import TilePlan

    g = torch.Generator().manual_seed(3)
    cond = torch.randn(2, 4, 16, 24, generator=g)
    x = torch.randn(4, 4, 16, 24, generator=g)
    t = torch.tensor([500, 500, 500, 500])
    text = pipe.embeddings.rows([(1, None), (1, None)], ["a", "b"])
    text = torch.cat([text, pipe.embeddings.rows([(2, None)], [""])])
    for latent in (None, 128):
        plan = TilePlan(None, None, None, latent, 0.25)
        with torch.no_grad():
            outs = [pipe.network(cond, 1.0, plan, unet_batch=n)(x, t, text) for n in (0, 1, 3)]
        assert outs[0].shape == x.shape and outs[0].abs().max() > 0
        for out in outs[1:]:
            assert float((out - outs[0]).abs().max()) <= 1e-5


def test_cfg_pair_in_one_call_or_two(pipe, monkeypatch):
    lq = _lq()
    whole, whole_rows = _restore(pipe, monkeypatch, lq, 2)
    split, split_rows = _restore(pipe, monkeypatch, lq, 1)
    assert whole_rows and set(whole_rows) == {2}
    assert set(split_rows) == {1} and len(split_rows) == 2 * len(whole_rows)
    _same(whole, split)
    # the CPU's default is one row per call
    default, default_rows = _restore(pipe, monkeypatch, lq, None)
    assert default_rows == split_rows
    assert torch.equal(default.image, split.image)


def test_a_batch_of_two_photos(pipe, monkeypatch):
    lq = torch.cat([_lq(seed=0), _lq(seed=1)])
    whole, whole_rows = _restore(pipe, monkeypatch, lq, 4)
    split, split_rows = _restore(pipe, monkeypatch, lq, 1)
    uneven, uneven_rows = _restore(pipe, monkeypatch, lq, 3)
    calls = len(whole_rows)
    assert set(whole_rows) == {4}
    assert split_rows == [1] * (4 * calls)
    assert uneven_rows == [3, 1] * calls
    _same(whole, split)
    _same(whole, uneven)
    assert not torch.equal(whole.image[0], whole.image[1])


def test_latent_tiles(pipe, monkeypatch):
    lq = _lq(24, 40)
    tiles = dict(latent_tile=128, tile_overlap=0.25, upscale=8)
    whole, whole_rows = _restore(pipe, monkeypatch, lq, 2, **tiles)
    split, split_rows = _restore(pipe, monkeypatch, lq, 1, **tiles)
    assert whole.tiles.latent == 128
    steps = len(_restore(pipe, monkeypatch, lq, 2, **{**tiles, "latent_tile": None})[1])
    assert len(whole_rows) > steps  # several tiles per step
    assert set(whole_rows) == {2}
    assert set(split_rows) == {1} and len(split_rows) == 2 * len(whole_rows)
    _same(whole, split)


def test_tiles_with_prompts_of_their_own(pipe, monkeypatch):
    # A tile's own conditional row replaces the first row of the full text before the
    # rows are split: the result is the same either way, and differs from the plain one.
    from diffbir.restore.plan import latent_tile_regions

    lq = _lq(24, 40)
    tiles = dict(latent_tile=128, tile_overlap=0.25, upscale=8)
    plain, _ = _restore(pipe, monkeypatch, lq, 2, **tiles)
    config = pipe.resolve(RestoreOptions(captioner="none", min_side=64, **tiles))
    regions = latent_tile_regions((24, 40), config)
    prompt = plain.prompts[0]
    own = replace(
        prompt,
        tiles=((regions[0], "a completely different prompt"),)
        + tuple((r, prompt.prompt) for r in regions[1:]),
    )
    assert isinstance(own, ImagePrompt)
    whole, _ = _restore(pipe, monkeypatch, lq, 2, prompts=[own], **tiles)
    split, split_rows = _restore(pipe, monkeypatch, lq, 1, prompts=[own], **tiles)
    assert set(split_rows) == {1}
    _same(whole, split)
    assert float((whole.intermediates["z"] - plain.intermediates["z"]).abs().max()) > 1e-3
