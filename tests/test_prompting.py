"""Per-image prompts: the --prompts CSV, NAME.txt sidecars, captions joined to the
prompt as the release joins them, and tile captions through the restore path."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_release import load_tiny_pipeline

from diffbir.config.settings import RestoreOptions
from diffbir.errors import ConfigError
from diffbir.restore.plan import latent_tile_regions, overlap_area
from diffbir.restore.prompts import (
    ImagePrompt,
    join_prompt,
    prompt_for_file,
    read_prompts_file,
    sidecar_text,
)


# ------------------------------------------------------------------ the join
def test_join_prompt_is_the_releases_join():
    assert join_prompt("a cat on a sofa", "sharp, detailed") == "a cat on a sofa, sharp, detailed"
    assert join_prompt("", "sharp") == "sharp"
    assert join_prompt("a dog", "") == "a dog"
    assert join_prompt("", "") == ""


# ------------------------------------------------------------- prompts file
def test_prompts_file_with_the_release_header(tmp_path):
    path = tmp_path / "prompt.csv"
    path.write_text(
        "file_name,pos_prompt,neg_prompt,caption\n"
        'photo,"a boat, at dusk",blurry,a boat\n'
        "sub/other,a street,,\n",
        encoding="utf-8",
    )
    table = read_prompts_file(path)
    assert len(table) == 2
    row = table.lookup(tmp_path / "photo.jpg")
    assert row.prompt == "a boat, at dusk" and row.negative_prompt == "blurry"
    # a relative path under the input folder, with or without its extension
    other = table.lookup(
        tmp_path / "x" / "other.png", tmp_path.joinpath("sub/other.png").relative_to(tmp_path)
    )
    assert other.prompt == "a street" and other.negative_prompt is None
    assert table.lookup(tmp_path / "missing.png") is None


def test_prompts_file_without_header_is_name_prompt_negative(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a.png,first prompt\nb.png,second,neg\n", encoding="utf-8")
    table = read_prompts_file(path)
    assert table.lookup(tmp_path / "a.png").prompt == "first prompt"
    assert table.lookup(tmp_path / "b.png").negative_prompt == "neg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.png,one\na.png,two\n", "named twice"),
        ("a.png\n", "needs a file name and a prompt"),
        ("", "no rows"),
        (",a prompt\n", "empty file name"),
    ],
)
def test_bad_prompts_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        read_prompts_file(path)
    assert "\n" not in str(info.value)


def test_prompts_file_that_is_missing_or_not_text(tmp_path):
    with pytest.raises(ConfigError, match="--prompts .*missing.csv"):
        read_prompts_file(tmp_path / "missing.csv")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_prompts_file(path)


# ------------------------------------------------------------------ sidecars
def test_sidecar_text_and_precedence(tmp_path):
    image = tmp_path / "boat.png"
    image.write_bytes(b"")
    assert sidecar_text(image) is None
    (tmp_path / "boat.txt").write_text("  a red boat\non a lake \n", encoding="utf-8")
    assert sidecar_text(image) == "a red boat on a lake"
    found = prompt_for_file(image, positive="sharp", negative="blurry")
    assert found == ImagePrompt(
        "a red boat on a lake, sharp", "blurry", "a red boat on a lake", "sidecar"
    )
    assert prompt_for_file(image, positive="sharp", negative="blurry", sidecars=False) is None
    # a prompts-file row wins over the sidecar and replaces caption and prompt
    csv = tmp_path / "p.csv"
    csv.write_text("boat.png,exactly this\n", encoding="utf-8")
    row = prompt_for_file(image, positive="sharp", negative="blurry", table=read_prompts_file(csv))
    assert (row.prompt, row.negative_prompt, row.source) == (
        "exactly this",
        "blurry",
        "prompts-file",
    )


# ---------------------------------------------------------------- tile plans
def _config(**kw):
    from diffbir.config.presets import get_preset
    from diffbir.config.settings import resolve

    return resolve(get_preset("v2.1", "sr"), RestoreOptions(seed=1, captioner="none", **kw))


def test_tile_regions_cover_the_image():
    assert latent_tile_regions((64, 64), _config(upscale=4)) == [(0.0, 1.0, 0.0, 1.0)]
    regions = latent_tile_regions((300, 400), _config(upscale=4, latent_tile=512))
    assert len(regions) == 12
    assert sum(overlap_area(r, r) for r in regions) > 1.0  # they overlap
    for y in (0.01, 0.5, 0.99):
        for x in (0.01, 0.5, 0.99):
            assert any(r[0] <= y <= r[1] and r[2] <= x <= r[3] for r in regions)


def test_tile_prompt_is_the_most_overlapping_planned_tile():
    prompt = ImagePrompt(
        "whole",
        "neg",
        tiles=(((0.0, 0.5, 0.0, 1.0), "top"), ((0.5, 1.0, 0.0, 1.0), "bottom")),
    )
    assert prompt.tile_prompt((0.0, 0.4, 0.0, 1.0)) == "top"
    assert prompt.tile_prompt((0.45, 0.9, 0.2, 0.8)) == "bottom"
    assert ImagePrompt("whole", "neg").tile_prompt((0.0, 1.0, 0.0, 1.0)) == "whole"


def test_tile_captions_each_needs_a_captioner():
    with pytest.raises(ConfigError, match="--tile-captions each"):
        _config(tile_captions="each")


# --------------------------------------------------- through the restore path
class FakeCaptioner:
    """Says how large and how bright each image is; counts its calls."""

    name = "fake"

    def __init__(self):
        self.seen: list[tuple[int, int]] = []
        self.closed = False

    def caption(self, images):
        self.seen += [image.size for image in images]
        return [f"a photo {image.size[0]}x{image.size[1]}" for image in images]

    def close(self):
        self.closed = True


def _lq(h=16, w=16, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _options(**kw):
    base = dict(upscale=4, steps=2, seed=5, captioner="none", min_side=64)
    base.update(kw)
    return RestoreOptions(**base)


def test_captions_are_joined_to_the_prompt(pipe, monkeypatch):
    fake = FakeCaptioner()
    monkeypatch.setattr(pipe, "captioner", lambda config: fake)
    options = _options(prompt="sharp", captioner="llava")
    result = pipe.restore(torch.cat([_lq(16, 16), _lq(16, 16, 1)]), options)
    assert [p.prompt for p in result.prompts] == ["a photo 16x16, sharp"] * 2
    assert result.prompts[0].caption == "a photo 16x16"
    assert result.prompts[0].source == "captioner:llava"
    assert fake.seen == [(16, 16), (16, 16)]  # the photos as given, in one batch


def test_a_given_prompt_is_the_same_as_the_option(pipe):
    lq = _lq()
    by_option = pipe.restore(lq, _options(prompt="a lighthouse", negative_prompt="fog"))
    given = pipe.restore(
        lq, _options(prompt="ignored"), prompts=[ImagePrompt("a lighthouse", "fog")]
    )
    assert torch.equal(by_option.image, given.image)
    other = pipe.restore(lq, _options(prompt="a forest at night", negative_prompt="fog"))
    assert not torch.equal(other.intermediates["z"], by_option.intermediates["z"])


def test_each_image_of_a_batch_gets_its_own_prompt(pipe):
    lq = torch.cat([_lq(seed=0), _lq(seed=1)])
    prompts = [ImagePrompt("a lighthouse", "fog"), ImagePrompt("a forest at night", "")]
    batch = pipe.restore(lq, _options(), prompts=prompts)
    for index in range(2):
        alone = pipe.restore(lq[index : index + 1], _options(), prompts=[prompts[index]])
        diff = (batch.intermediates["z"][index] - alone.intermediates["z"][0]).abs().max()
        assert diff < 1e-4
    with pytest.raises(ConfigError, match="1 prompts for 2 images"):
        pipe.restore(lq, _options(), prompts=prompts[:1])


def test_tile_prompts_reach_each_latent_tile(pipe, monkeypatch):
    lq = _lq(24, 40)
    options = _options(latent_tile=128, tile_overlap=0.25, upscale=8)
    whole = pipe.restore(lq, options)
    regions = latent_tile_regions((24, 40), pipe.resolve(options))
    assert len(regions) > 2
    # tiles that all carry the image's prompt change nothing
    same = ImagePrompt(
        whole.prompts[0].prompt,
        whole.prompts[0].negative_prompt,
        tiles=tuple((r, whole.prompts[0].prompt) for r in regions),
    )
    assert torch.equal(pipe.restore(lq, options, prompts=[same]).image, whole.image)
    # one tile with another prompt changes that tile's part only
    tiles = list(same.tiles)
    tiles[0] = (tiles[0][0], "a completely different prompt")
    changed = pipe.restore(lq, options, prompts=[replace(same, tiles=tuple(tiles))])
    delta = (changed.intermediates["z"] - whole.intermediates["z"]).abs()[0].sum(0)
    h, w = delta.shape
    top, bottom, left, right = regions[0]
    inside = delta[: int(bottom * h), : int(right * w)].sum()
    far = delta[int(0.9 * h) :, int(0.9 * w) :].sum()
    assert inside > 0 and far == 0


def test_tile_captions_each_captions_every_region(pipe, monkeypatch):
    fake = FakeCaptioner()
    monkeypatch.setattr(pipe, "captioner", lambda config: fake)
    lq = _lq(24, 40)
    options = _options(latent_tile=128, upscale=8, captioner="llava", tile_captions="each")
    prompts = pipe.image_prompts(lq, options)
    regions = latent_tile_regions((24, 40), pipe.resolve(options))
    assert len(fake.seen) == 1 + len(regions)  # the photo, then each tile's part of it
    assert fake.seen[0] == (40, 24)
    assert all(w < 40 or h < 24 for w, h in fake.seen[1:])
    assert [r for r, _ in prompts[0].tiles] == regions
    assert all(p.endswith(", " + pipe.resolve(options).prompt) for _, p in prompts[0].tiles)
    off = pipe.image_prompts(lq, replace(options, tile_captions="off"))
    assert {p for _, p in off[0].tiles} == {pipe.resolve(options).prompt}
    assert off[0].caption == "a photo 40x24"  # the image keeps its caption


# ------------------------------------------------------------------- offload
def test_offload_moves_each_model_for_its_stage_only(release, single_thread):
    """With offloading, idle models wait on the offload device and each stage brings its
    own to the device and back; the image is the same. (On a CPU-only machine the
    offload device is cpu:0, another name for the same memory, so the moves are
    recorded rather than seen in memory.)"""
    plain = load_tiny_pipeline(release)
    offloaded = load_tiny_pipeline(release).enable_offload(torch.device("cpu", 0))
    moves = []
    names = {"cleaner": offloaded.cleaner}
    names |= {
        n: getattr(offloaded.stage2, n) for n in ("vae", "unet", "controlnet", "text_encoder")
    }
    for name, module in names.items():
        original = module.to

        def to(*args, _name=name, _original=original, **kwargs):
            moves.append((_name, str(args[0])))
            return _original(*args, **kwargs)

        module.to = to
    lq = _lq()
    assert torch.equal(offloaded.restore(lq, _options()).image, plain.restore(lq, _options()).image)
    pairs = [(name, device) for name, device in moves]
    for name in ("cleaner", "vae", "unet", "controlnet", "text_encoder"):
        assert (name, "cpu") in pairs and (name, "cpu:0") in pairs
    # every move to the device is followed by the move back
    for name in names:
        targets = [d for n, d in pairs if n == name]
        assert targets[::2] == ["cpu"] * len(targets[::2])
        assert targets[1::2] == ["cpu:0"] * len(targets[1::2])
    # the UNet and ControlNet come to the device once, for sampling, not for the VAE stages
    assert [d for n, d in pairs if n == "unet"] == ["cpu", "cpu:0"]
