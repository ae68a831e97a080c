"""The map of where the model invented (`diffbir restore --uncertainty`, issue #28).

The measures are checked on constructed cases (identical samples, samples that differ
in one region, an output equal to its stage-1 image or shifted in colour); the files,
resuming and refusals through :class:`RestoreJob` with a stand-in restorer passed in;
the web UI's overlay through ``restore_uploads``; and one run of each restorer with
the tiny release.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.cli import main
from diffbir.config.presets import get_preset
from diffbir.config.settings import RestoreOptions, resolve
from diffbir.errors import ConfigError, DiffBIRError
from diffbir.imaging.io import read_image
from diffbir.jobs.batch import RestoreJob
from diffbir.restore.base import RestoreResult
from diffbir.restore.prompts import ImagePrompt
from diffbir.restore.uncertainty import (
    HEAT_ANCHORS,
    SCALE_LEVELS,
    UncertaintyMap,
    detail_departure,
    heat_colours,
    map_paths,
    overlay,
    read_raw,
    sample_spread,
    uncertainty_map,
    write_maps,
)
from diffbir.ui.core import FormValues, PipelineCache, restore_uploads, uncertainty_overlay


def _rand(shape, seed=0, scale=0.8):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------ the measures
def test_spread_is_zero_for_identical_samples():
    x = _rand((3, 24, 32))
    assert torch.equal(sample_spread(torch.stack([x, x, x])), torch.zeros(24, 32))


def test_spread_rises_where_samples_differ_and_only_there():
    a = _rand((3, 24, 32))
    b = a.clone()
    b[:, 4:10, 8:20] += 0.1  # one region differs by 25.5 levels in every channel
    spread = sample_spread(torch.stack([a, b]))
    inside = spread[4:10, 8:20]
    expected = 0.1 * 255 / math.sqrt(2)  # the unbiased standard deviation of two values
    assert torch.allclose(inside, torch.full_like(inside, expected), atol=1e-3)
    outside = spread.clone()
    outside[4:10, 8:20] = 0
    assert float(outside.abs().max()) == 0.0
    # colour-only differences count: one channel changed
    c = a.clone()
    c[0, :2, :2] += 0.3
    assert float(sample_spread(torch.stack([a, c]))[:2, :2].min()) > 20


def test_spread_needs_two_samples():
    with pytest.raises(ConfigError, match="N>=2"):
        sample_spread(_rand((1, 3, 8, 8)))


def test_detail_is_zero_when_the_output_is_stage1_and_ignores_colour_shifts():
    stage1 = _rand((3, 40, 48), seed=1)
    assert float(detail_departure(stage1, stage1).max()) < 1e-4
    shift = torch.tensor([0.08, -0.04, 0.03])[:, None, None] + 0.05
    assert float(detail_departure(stage1 + shift, stage1).max()) < 1e-3
    ramp = torch.linspace(0, 0.15, 48)[None, None, :]  # a smooth gradient, to the borders
    assert float(detail_departure(stage1 + ramp, stage1).max()) < 1e-3


def test_detail_rises_where_detail_was_invented():
    stage1 = torch.full((3, 64, 64), 0.5)
    out = stage1.clone()
    out[:, 8:24, 8:24] += 0.1 * (_rand((1, 16, 16), seed=2, scale=1.0) - 0.5)  # new texture
    detail = detail_departure(out, stage1)
    assert float(detail[10:22, 10:22].mean()) > 3
    assert float(detail[40:, 40:].max()) < 0.05  # far from the texture: next to nothing
    # a stage-1 image of another size (DiffBIR's is at the diffusion's) is resized
    small = detail_departure(out, stage1[:, ::2, ::2])
    assert small.shape == (64, 64) and float(small[40:, 40:].max()) < 0.05


def test_the_map_picks_its_measure_by_the_samples():
    x = _rand((3, 16, 16))
    assert uncertainty_map(torch.stack([x, x]), None).kind == "spread"
    one = uncertainty_map(x[None], x)
    assert one.kind == "detail" and one.samples == 1 and float(one.levels.max()) < 1e-4


def test_heat_colours_have_a_fixed_scale():
    levels = torch.tensor([[0.0, SCALE_LEVELS / 2, SCALE_LEVELS, 10 * SCALE_LEVELS]])
    colours = heat_colours(levels)
    assert colours.shape == (3, 1, 4)
    assert torch.allclose(colours[:, 0, 0], torch.tensor(HEAT_ANCHORS[0]))
    assert torch.allclose(colours[:, 0, 1], torch.tensor(HEAT_ANCHORS[2]))
    assert torch.allclose(colours[:, 0, 2], torch.tensor(HEAT_ANCHORS[-1]))
    assert torch.allclose(colours[:, 0, 3], colours[:, 0, 2])  # above the scale: the top
    ramp = heat_colours(torch.linspace(0, SCALE_LEVELS, 50)[None])
    luma = (torch.tensor([0.299, 0.587, 0.114])[:, None, None] * ramp).sum(0)[0]
    assert bool((luma[1:] >= luma[:-1]).all())  # brighter means more


def test_overlay_leaves_the_photo_where_the_map_is_zero():
    image = _rand((3, 10, 12))
    levels = torch.zeros(10, 12)
    levels[:, 6:] = SCALE_LEVELS
    laid = overlay(image, levels, opacity=0.5)
    assert laid.shape == (3, 10, 12)
    assert torch.allclose(laid[:, :, :6], image[:, :, :6])
    top = torch.tensor(HEAT_ANCHORS[-1])[:, None, None]
    assert torch.allclose(laid[:, :, 6:], 0.5 * image[:, :, 6:] + 0.5 * top)
    with pytest.raises(ConfigError, match="differ in size"):
        overlay(image, torch.zeros(5, 5))
    with pytest.raises(ConfigError, match="opacity"):
        overlay(image, levels, opacity=2)


def test_map_files_round_trip_with_their_scale(tmp_path):
    levels = _rand((12, 20), scale=200.0)
    heat, raw = write_maps(tmp_path / "a.png", UncertaintyMap(levels, "spread", 3), {"seed": "7"})
    assert (heat.name, raw.name) == ("a.uncertainty.png", "a.uncertainty-raw.png")
    assert torch.allclose(read_raw(raw), levels, atol=0.5 / 256 + 1e-6)
    with Image.open(raw) as grey:
        assert grey.mode == "I;16" and grey.size == (20, 12)
        assert grey.info["uncertainty"] == "spread" and grey.info["seed"] == "7"
    with Image.open(heat) as png:
        assert png.mode == "RGB" and png.size == (20, 12)
        assert png.info["uncertainty_samples"] == "3" and "0..32" in png.info["uncertainty_scale"]
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ runs
class SameEveryTime:
    """A stand-in restorer: every sample is the input x2 (nearest), the stage-1 image too;
    with ``differ`` the samples after the first differ in the top-left quarter."""

    device = torch.device("cpu")

    def __init__(self, differ: bool = False):
        self.differ = differ
        self.calls = 0

    def image_prompts(self, lq, config, given=None):
        return [ImagePrompt(config.prompt, config.negative_prompt)] * lq.shape[0]

    def prepare_image_prompts(self, prompts, *, drop_text_encoder=False):
        pass

    def free_captioner(self):
        pass

    def restore(self, lq, config, prompts=None, *, latent_hook=None):
        self.calls += 1
        up = lq.repeat_interleave(2, -1).repeat_interleave(2, -2)
        rows = up.repeat_interleave(config.n_samples, 0).clone()
        if self.differ:
            h, w = rows.shape[-2:]
            for k in range(1, rows.shape[0]):
                rows[k, :, : h // 2, : w // 2] = (rows[k, :, : h // 2, : w // 2] + 0.2 * k) % 1
        rows = (rows * 255).floor() / 255
        return RestoreResult(
            image=rows, stage1=up.repeat_interleave(config.n_samples, 0), config=config,
            prompts=list(prompts or []),
        )  # fmt: skip


def _config(**options):
    options = RestoreOptions(upscale=2, captioner="none", uncertainty=True, **options)
    return resolve(get_preset("v2.1", "sr"), options)


def _photo(path, size=(16, 20), seed=0):
    data = (np.random.default_rng(seed).random((size[0], size[1], 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path


def _job(inputs, out, config, **kw):
    return RestoreJob(inputs=inputs, output=out, config=config, progress=False, **kw)


def test_one_map_per_input_beside_its_samples_and_zero_for_identical_ones(tmp_path):
    src = _photo(tmp_path / "cat.png")
    out = tmp_path / "out"
    summary = _job([src], out, _config(n_samples=3)).run({}, pipeline=SameEveryTime())
    assert summary.ok and summary.restored == 1
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cat.uncertainty-raw.png", "cat.uncertainty.png", "cat_0.png", "cat_1.png",
        "cat_2.png", "prompt.csv",
    ]  # fmt: skip
    assert float(read_raw(out / "cat.uncertainty-raw.png").max()) == 0.0
    with Image.open(out / "cat.uncertainty.png") as heat:
        assert heat.size == (40, 32) and heat.info["uncertainty"] == "spread"
    with Image.open(out / "cat_0.png") as png:  # the run records that a map was made
        assert png.info["uncertainty"] == "spread"


def test_the_map_is_high_where_samples_differ(tmp_path):
    src = _photo(tmp_path / "cat.png")
    out = tmp_path / "out"
    _job([src], out, _config(n_samples=2)).run({}, pipeline=SameEveryTime(differ=True))
    levels = read_raw(out / "cat.uncertainty-raw.png")
    assert levels.shape == (32, 40)
    assert float(levels[:16, :20].mean()) > 20 and float(levels[16:, 20:].max()) == 0.0


def test_one_sample_detail_map_and_resume(tmp_path):
    src = _photo(tmp_path / "cat.png")
    out = tmp_path / "out"
    restorer = SameEveryTime()
    config = _config()
    _job([src], out, config).run({}, pipeline=restorer)
    heat, raw = map_paths(out / "cat.png")
    assert float(read_raw(raw).max()) < 0.6  # output = stage 1 but for the 8-bit rounding
    with Image.open(heat) as png:
        assert png.info["uncertainty"] == "detail"
    done = {p: p.stat().st_mtime_ns for p in (out / "cat.png", heat, raw)}
    summary = _job([src], out, config, skip_existing=True).run({}, pipeline=restorer)
    assert summary.skipped == 1 and restorer.calls == 1
    assert {p: p.stat().st_mtime_ns for p in done} == done
    heat.unlink()  # an unfinished map: the input is done again
    summary = _job([src], out, config, skip_existing=True).run({}, pipeline=restorer)
    assert summary.restored == 1 and restorer.calls == 2 and heat.is_file()
    # without --uncertainty the finished output alone counts
    plain = resolve(get_preset("v2.1", "sr"), RestoreOptions(upscale=2, captioner="none"))
    heat.unlink()
    summary = _job([src], out, plain, skip_existing=True).run({}, pipeline=restorer)
    assert summary.skipped == 1 and not heat.exists()


def test_resuming_makes_the_spread_from_samples_already_written(tmp_path, capsys):
    src = _photo(tmp_path / "cat.png")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    plain = resolve(
        get_preset("v2.1", "sr"), RestoreOptions(upscale=2, n_samples=2, captioner="none")
    )
    restorer = SameEveryTime(differ=True)
    _job([src], out, plain).run({}, pipeline=restorer)  # a run without --uncertainty
    assert not map_paths(out / "cat.png")[0].exists()
    again = _job([src], out, _config(n_samples=2), skip_existing=True, verbose=True)
    summary = again.run({}, pipeline=restorer)
    assert summary.ok and summary.skipped == 1 and restorer.calls == 1  # no model run
    assert "1 uncertainty map(s) made from the samples already written" in capsys.readouterr().err
    _job([src], fresh, _config(n_samples=2)).run({}, pipeline=restorer)
    assert torch.equal(
        read_raw(out / "cat.uncertainty-raw.png"), read_raw(fresh / "cat.uncertainty-raw.png")
    )
    with Image.open(out / "cat.uncertainty.png") as heat:
        assert heat.info["uncertainty_from"] == "the written samples"


def test_a_map_over_another_inputs_output_is_refused(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _photo(folder / "a.png")
    _photo(folder / "a.uncertainty.png", seed=1)
    with pytest.raises(DiffBIRError, match="would overwrite the restoration"):
        _job([folder], tmp_path / "out", _config()).run({}, pipeline=SameEveryTime())
    assert not (tmp_path / "out").exists()


def test_flags_that_cannot_work_are_one_line_errors(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    assert main(["restore", str(clip), "-o", str(out), "--uncertainty", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"diffbir: error: --uncertainty maps photos, not video ({clip}): restore clips without it"
    ]
    src = _photo(tmp_path / "a.png")
    args = ["restore", str(src), "-o", str(out), "--task", "face-whole", "--uncertainty"]
    assert main([*args, "--n-samples", "2"]) == 1
    assert "drop --n-samples" in capsys.readouterr().err
    assert not out.exists()


def test_the_web_ui_lays_the_map_over_the_result(tmp_path):
    src = _photo(tmp_path / "cat.png")

    def factory(version, task):
        restorer = SameEveryTime(differ=True)
        restorer.resolve = lambda options: resolve(get_preset(version, task), options)
        return restorer

    form = FormValues(upscale=2, uncertainty=True, uncertainty_samples=2, overlay_opacity=0.5)
    run = restore_uploads([src], form, PipelineCache(factory), tmp_path / "ui")
    item = run.images[0]
    assert item.size == (32, 40)
    result = read_image(item.result).rgb
    laid = read_image(item.overlay).rgb
    assert laid.shape == result.shape == (3, 32, 40)
    levels = read_raw(item.uncertainty_raw)
    assert float(levels[16:, 20:].max()) == 0.0 and float(levels[:16, :20].mean()) > 20
    assert torch.equal(laid[:, 16:, 20:], result[:, 16:, 20:])  # no spread: the photo
    assert float((laid[:, :16, :20] - result[:, :16, :20]).abs().mean()) > 0.05
    again = uncertainty_overlay(item.result, item.uncertainty_raw, 0.0)  # the page's slider
    assert again.name.endswith("_overlay_000.png")
    assert torch.equal(read_image(again).rgb, result)
    assert FormValues(uncertainty=False, uncertainty_samples=4).to_options().n_samples == 1
    assert item.uncertainty_note.startswith("spread of 2 samples: mean ")


# ------------------------------------------------------------------ the tiny release
def _restore(release, src, out, *extra):
    weights, config = release
    args = ["restore", str(src), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--no-download", "-q", "--captioner", "none"]
    return main([*args, "--upscale", "2", "--uncertainty", *extra])


@pytest.mark.parametrize(
    "extra",
    [
        ("--steps", "2", "--min-side", "64", "--n-samples", "2"),
        ("--model", "hypir", "--latent-tile", "256"),
    ],
    ids=["diffbir-spread", "hypir-detail"],
)
def test_both_restorers_write_maps_at_the_outputs_size(release, single_thread, tmp_path, extra):
    src = _photo(tmp_path / "cat.png", size=(24, 32))
    out = tmp_path / "out"
    assert _restore(release, src, out, *extra) == 0
    first = out / ("cat_0.png" if "--n-samples" in extra else "cat.png")
    levels = read_raw(out / "cat.uncertainty-raw.png")
    assert levels.shape == read_image(first).rgb.shape[-2:] == (48, 64)
    assert float(levels.mean()) > 0.5  # random tiny weights: the samples and stage 1 differ
