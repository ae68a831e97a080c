"""Captions through the commands: the default captioner of v2.1 on CPU (a tiny GIT in
the tiny release), --prompts and sidecars, what a run records, `diffbir caption`, and
the one-line errors when a captioner's weights are missing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from tiny_release import make_tiny_release

from diffbir.cli import main


def _photo(path, size=(24, 16), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def _restore(release, inputs, out, *extra):
    weights, config = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "1", "--min-side", "64"]
    args += ["--no-download", "-q", "--device", "cpu", *map(str, extra)]
    return main(args)


def _rows(out):
    with open(out / "prompt.csv", encoding="utf-8", newline="") as f:
        return {row["file_name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_v21_on_cpu_captions_with_the_light_captioner(release, tmp_path, capsys):
    _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["restore", "x.png", "-o", str(out), "--print-config", "--device", "cpu"]) == 0
    assert "captioner: git" in capsys.readouterr().out
    assert _restore(release, [tmp_path / "a.png"], out, "--prompt", "sharp") == 0
    capsys.readouterr()
    weights, config = release
    args = ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"), "--steps", "1"]
    args += ["--weights-dir", str(weights), "--model-config", str(config), "--no-download"]
    assert main([*args, "--min-side", "64", "--device", "cpu"]) == 0
    assert "captioning with git (v2.1's default here)" in capsys.readouterr().err
    row = _rows(out)["a"]
    assert row["caption"] and row["pos_prompt"] == row["caption"] + ", sharp"
    with Image.open(out / "a.png") as image:
        info = dict(image.info)
    assert info["captioner"] == "git" and info["prompt_source"] == "captioner:git"
    assert info["caption"] == row["caption"]
    # v1 and v2 use no captioner unless asked
    assert main(["restore", "x.png", "-o", str(out), "--print-config", "--version", "v2"]) == 0
    assert "captioner: none" in capsys.readouterr().out


@pytest.mark.slow
def test_prompts_file_and_sidecars_win_over_the_captioner(release, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for index, name in enumerate(("boat", "street", "plain")):
        _photo(src / f"{name}.png", seed=index)
    (src / "street.txt").write_text("a wet street at night\n", encoding="utf-8")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("file_name,prompt,negative_prompt\nboat,a red boat,fog\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _restore(release, [src], out, "--prompts", prompts, "--prompt", "sharp") == 0
    rows = _rows(out)
    assert (rows["boat"]["pos_prompt"], rows["boat"]["neg_prompt"]) == ("a red boat", "fog")
    assert rows["street"]["pos_prompt"] == "a wet street at night, sharp"
    assert rows["street"]["caption"] == "a wet street at night"
    assert rows["plain"]["pos_prompt"].endswith(", sharp") and rows["plain"]["caption"]
    with Image.open(out / "street.png") as image:
        assert image.info["prompt_source"] == "sidecar"
    # the run's prompt.csv given back reproduces its prompts and images
    again = tmp_path / "again"
    args = ["--prompts", out / "prompt.csv", "--captioner", "none", "--no-sidecars"]
    assert _restore(release, [src], again, *args) == 0
    rows_again = _rows(again)
    for name in ("boat", "street", "plain"):
        assert rows_again[name]["pos_prompt"] == rows[name]["pos_prompt"]
        a = np.asarray(Image.open(out / f"{name}.png"))
        b = np.asarray(Image.open(again / f"{name}.png"))
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_tile_captions_are_recorded(release, tmp_path):
    import json

    _photo(tmp_path / "wide.png", size=(40, 24))
    out = tmp_path / "out"
    args = ["--latent-tile", "128", "--upscale", "8", "--tile-captions", "each"]
    assert _restore(release, [tmp_path / "wide.png"], out, *args) == 0
    with Image.open(out / "wide.png") as image:
        tiles = json.loads(image.info["tile_prompts"])
    assert len(tiles) > 2 and all(len(t["region"]) == 4 for t in tiles)


def test_bad_prompt_options_are_one_line(release, tmp_path, capsys):
    _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert _restore(release, [tmp_path / "a.png"], out, "--prompts", tmp_path / "nope.csv") == 1
    err = capsys.readouterr().err
    assert "--prompts" in err and "nope.csv" in err and "Traceback" not in err
    args = ["--captioner", "none", "--tile-captions", "each"]
    assert _restore(release, [tmp_path / "a.png"], out, *args) == 1
    assert "--tile-captions each" in capsys.readouterr().err
    assert _restore(release, [tmp_path / "a.png"], out, "--captioner", "ram") == 1
    assert "RAM++" in capsys.readouterr().err


def test_missing_captioner_weights_name_the_files_and_the_way_out(tmp_path, capsys, monkeypatch):
    from diffbir.weights import folders as weights_folders
    from diffbir.weights import registry as weights

    monkeypatch.setattr(weights, "default_cache_dir", lambda: tmp_path / "cache")
    folder = tmp_path / "weights"
    make_tiny_release(folder)
    import shutil

    shutil.rmtree(folder / weights_folders.MODEL_FOLDERS["git"].folder)
    _photo(tmp_path / "a.png")
    args = ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-q"]
    args += ["--weights-dir", str(folder), "--model-config", str(folder / "models.yaml")]
    args += ["--no-download", "--steps", "1", "--min-side", "64", "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    # one error, the first-run list: the captioner named with its size, the command that
    # fetches it and the way out
    assert len(lines) == 1 and "708 MB" in lines[0], err
    assert "git" in err and "diffbir download --for v2.1 sr" in err and "--captioner none" in err


@pytest.mark.slow
def test_caption_command_writes_the_release_table_and_resumes(release, tmp_path, capsys):
    import pyarrow.parquet as pq

    weights, _ = release
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        _photo(photos / f"{index}.png", seed=index)
    (photos / "broken.png").write_bytes(b"not an image")
    table = tmp_path / "captions.parquet"
    base = ["caption", str(photos), "-o", str(table), "--weights-dir", str(weights)]
    base += ["--no-download", "--device", "cpu", "-q"]
    assert main(base) == 1  # the broken file is reported and skipped
    rows = pq.read_table(table).to_pylist()
    assert [r["image_path"].rsplit("/", 1)[-1] for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(r["llava_short"] and r["llava_long"] == r["llava_short"] for r in rows)
    assert {r["captioner"] for r in rows} == {"git"}
    assert "broken.png" in capsys.readouterr().err
    # an existing table is refused unless resumed; resuming captions only new photos
    assert main(base) == 1
    assert "--resume" in capsys.readouterr().err
    (photos / "broken.png").unlink()
    _photo(photos / "3.png", seed=3)
    assert main([*base, "--resume"]) == 0
    rows = pq.read_table(table).to_pylist()
    assert len(rows) == 4 and rows[3]["image_path"].endswith("3.png")
    # the table is what the v2.1 training recipe reads
    from diffbir.training.records import read_records

    records = read_records(table, caption_column="llava_short", long_caption_column="llava_long")
    assert len(records) == 4
