"""End to end: `diffbir restore` with tiny random weights in the released layouts.

Every (release, task) runs offline from a --weights-dir holding tiny files
under the released names; outputs are checked for size, range, determinism
under --seed, resumption and bad-file handling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.cli import main
from diffbir.config.presets import TASKS, VERSIONS


def _photo(path, size=(40, 32), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    data = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    Image.fromarray(data, mode).save(path)
    return path


def _restore(release, inputs, out, *extra):
    weights, config = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", "64"]
    args += ["--no-download", "-q", *extra]
    return main(args)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.slow
def test_every_release_and_task(release, tmp_path, version, task):
    src = _photo(tmp_path / "in.png")
    code = _restore(release, [src], tmp_path / "out", "--version", version, "--task", task)
    assert code == 0
    result = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    scale = 4 if task == "sr" else 1
    assert result.shape == (32 * scale, 40 * scale, 3)
    assert result.std() > 1  # not a constant image
    assert 0 <= result.min() and result.max() <= 255


def test_upscale_factor_and_outputs(release, tmp_path):
    src = _photo(tmp_path / "a.png", size=(30, 20))
    code = _restore(
        release,
        [src],
        tmp_path / "out",
        "--version",
        "v2",
        "--upscale",
        "2.5",
        "--save-stage1",
        "--compare",
        "--format",
        "jpg",
    )
    assert code == 0
    assert Image.open(tmp_path / "out" / "a.jpg").size == (75, 50)
    assert (tmp_path / "out" / "stage1" / "a.jpg").is_file()
    compare = Image.open(tmp_path / "out" / "compare" / "a.jpg")
    assert compare.size[1] == 50 and compare.size[0] > 75


@pytest.mark.slow
def test_same_seed_same_image_other_seed_differs(release, tmp_path):
    src = _photo(tmp_path / "in.png")
    outs = []
    for run, seed in enumerate(("7", "7", "8")):
        out = tmp_path / f"out{run}"
        assert _restore(release, [src], out, "--version", "v1", "--seed", seed) == 0
        outs.append(np.asarray(Image.open(out / "in.png")))
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


@pytest.mark.slow
def test_resume_skips_finished_and_bad_files_are_reported(release, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    _photo(folder / "a.png", seed=1)
    _photo(folder / "sub" / "b.png", seed=2)
    (folder / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    code = _restore(release, [folder], out, "-r", "--version", "v2.1", "--task", "denoise")
    assert code == 1  # the broken file failed ...
    assert (out / "a.png").is_file() and (out / "sub" / "b.png").is_file()  # ... the rest did not
    err = capsys.readouterr().err
    assert "broken.png" in err and "2 restored" in err and "1 failed" in err

    first = (out / "a.png").stat().st_mtime_ns
    (out / "sub" / "b.png").unlink()
    (folder / "broken.png").unlink()
    code = _restore(release, [folder], out, "-r", "--skip-existing", "--task", "denoise")
    assert code == 0
    assert (out / "a.png").stat().st_mtime_ns == first
    assert (out / "sub" / "b.png").is_file()
    assert "1 restored, 1 skipped" in capsys.readouterr().err


def test_alpha_is_kept(release, tmp_path):
    src = _photo(tmp_path / "logo.png", mode="RGBA")
    assert _restore(release, [src], tmp_path / "out", "--task", "denoise") == 0
    result = Image.open(tmp_path / "out" / "logo.png")
    assert result.mode == "RGBA" and result.size == (40, 32)


def test_missing_weights_give_one_clear_error(tmp_path, capsys):
    src = _photo(tmp_path / "in.png")
    code = main(
        ["restore", str(src), "-o", str(tmp_path / "out"), "--weights-dir", str(tmp_path)]
        + ["--no-download", "-q"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "realesrgan_s4_swinir_100k.pth" in err and "https://" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_tiled_run_matches_untiled(release, tmp_path):
    """Latent, VAE and stage-1 tiles blend back to (nearly) the untiled result."""
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    weights, config = release
    pipe = DiffBIRPipeline.from_preset(
        "v1", "denoise", weights_dir=weights, model_config=config, download=False, progress=False
    )
    x = torch.rand(1, 3, 192, 256, generator=torch.Generator().manual_seed(0))
    base = RestoreOptions(steps=2, min_side=64, seed=3)
    whole = pipe(x, base).image
    tiled_options = RestoreOptions(
        steps=2,
        min_side=64,
        seed=3,
        latent_tile=128,
        vae_tile=128,
        cleaner_tile=128,
    )
    tiled = pipe(x, tiled_options)
    assert tiled.tiles.latent == 128 and tiled.tiles.vae_decode == 128
    mse = torch.mean((tiled.image - whole) ** 2).item()
    psnr = 10 * np.log10(1 / mse)
    # Measured 30.1 dB at the default overlap (0.25) with these random tiny models.
    assert psnr > 27, psnr


@pytest.mark.slow
def test_faces_in_whole_photos(release, tmp_path, capsys):
    """face-whole: a detected face is restored and pasted back; no face falls back."""
    import shutil

    from tiny_release import FIXTURES

    weights, _ = release
    detector = weights / "face_detection_yunet_2023mar.onnx"
    shutil.copy(FIXTURES / "faces" / "tiny_yunet.onnx", detector)
    # The stand-in detector fires on bright 8x8 cells: one white block is one "face".
    face = np.zeros((48, 64, 3), np.uint8)
    face[16:24, 24:32] = 255
    from diffbir.imaging.icc_build import make_profile

    adobe = make_profile("Adobe RGB (1998)")
    exif = Image.Exif()
    exif[0x0110] = "Kodak Brownie"
    Image.fromarray(face).save(tmp_path / "face.png", icc_profile=adobe, exif=exif)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "empty.png")
    out = tmp_path / "out"
    code = _restore(
        release,
        [tmp_path / "face.png", tmp_path / "empty.png"],
        out,
        "--task",
        "face-whole",
        "--version",
        "v2",
        "--save-faces",
        "--min-face-size",
        "0",
        "--max-faces",
        "1",
    )
    assert code == 0
    assert Image.open(out / "face.png").size == (128, 96)  # x2 by default
    assert Image.open(out / "empty.png").size == (128, 96)
    crops = sorted((out / "faces" / "cropped").iterdir())
    restored = sorted((out / "faces" / "restored").iterdir())
    assert crops and [p.name for p in crops] == [p.name for p in restored]
    assert all(p.name.startswith("face_face") for p in crops)
    assert Image.open(crops[0]).size == (512, 512)
    # The crops are written like the photo's result: in its profile, with its metadata.
    for crop in (crops[0], restored[0]):
        with Image.open(crop) as img:
            assert img.info["icc_profile"] == adobe and img.getexif()[0x0110] == "Kodak Brownie"
    assert "empty.png: no face found" in capsys.readouterr().err


def test_prompts_encoded_once_and_text_encoder_freed(release):
    from diffbir.errors import ConfigError
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    weights, config = release
    pipe = DiffBIRPipeline.from_preset(
        "v2.1", "sr", weights_dir=weights, model_config=config, download=False, progress=False
    )
    options = RestoreOptions(
        steps=1, min_side=64, prompt="a cat", negative_prompt="blur", captioner="none"
    )
    pipe.prepare_prompts(options, drop_text_encoder=True)
    assert pipe.stage2.text_encoder is None
    assert pipe.embeddings.known == {"a cat", "blur"}
    result = pipe(torch.rand(1, 3, 16, 16), options)  # the cached prompts still serve
    assert result.image.shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="text encoder was freed"):
        pipe(
            torch.rand(1, 3, 16, 16),
            RestoreOptions(steps=1, min_side=64, prompt="a dog", captioner="none"),
        )


@pytest.mark.slow
def test_two_processes_share_the_work(release, tmp_path):
    """torchrun / accelerate launch: each output once, one summary, one exit status."""
    import subprocess
    import sys

    weights, config = release
    for index in range(3):
        _photo(tmp_path / f"{index}.png", size=(16, 16), seed=index)
    (tmp_path / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "diffbir", "restore", str(tmp_path), "-o", str(out), "-q"]
    command += ["--weights-dir", str(weights), "--model-config", str(config), "--no-download"]
    command += ["--steps", "1", "--min-side", "64", "--task", "denoise"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]  # bad.png failed on one rank
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "2.png", "prompt.csv"]
    assert run.stderr.count("3 restored, 1 failed") == 1
    # both processes appended their rows to one prompt.csv, under one header
    rows = (out / "prompt.csv").read_text(encoding="utf-8").splitlines()
    assert rows.count("file_name,pos_prompt,neg_prompt,caption") == 1
    assert sorted(row.split(",")[0] for row in rows[1:]) == ["0", "1", "2"]


@pytest.mark.slow
def test_weights_dir_needs_only_the_released_weight_files(release, tmp_path):
    # The CLIP vocabulary ships inside the package: nothing but weights in the folder.
    weights, _ = release
    assert not list(weights.glob("*.gz")) and not list(weights.glob("*.txt"))
    src = _photo(tmp_path / "in.png")
    assert _restore(release, [src], tmp_path / "out", "--version", "v2.1") == 0


def test_print_config_shows_the_resolved_run_and_exits(tmp_path, capsys):
    import yaml

    out = tmp_path / "out"
    code = main(["restore", "missing.png", "-o", str(out), "--version", "v2.1", "--print-config"])
    assert code == 0 and not out.exists()  # nothing loaded, nothing written
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["sampler"], config["steps"], config["cfg_scale"]) == (
        "edm_dpm++_3m_sde",
        10,
        6.0,
    )
    assert config["prompt"].startswith("Cinematic") and config["seed"] == 231
    assert (config["prediction"], config["schedule"]) == ("v", "zsnr")
    code = main(
        ["restore", "x.png", "-o", str(out), "--version", "v2", "--steps", "20", "--print-config"]
    )
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["sampler"], config["steps"], config["cfg_scale"]) == ("spaced", 20, 4.0)
    assert config["negative_prompt"].startswith("low quality") and config["prompt"] == ""


def test_help_lists_samplers_and_release_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one help line per option
    with pytest.raises(SystemExit):
        main(["restore", "--help"])
    text = capsys.readouterr().out
    assert "v1 50, v2 50, v2.1 10" in text  # --steps per release, not None
    assert "v1 spaced, v2 spaced, v2.1 edm_dpm++_3m_sde" in text
    assert "(default: None)" not in text
    for name in ("spaced", "ddim", "dpm++_m2", "edm_lms", "edm_dpm++_3m_sde", "dpmpp_2m"):
        assert f"\n  {name}: " in text


def test_unknown_sampler_is_one_clear_error(tmp_path, capsys):
    code = main(["restore", "x.png", "-o", str(tmp_path), "--sampler", "dpm_fast"])
    assert code == 1
    err = capsys.readouterr().err
    assert "unknown sampler 'dpm_fast'" in err and "edm_dpm++_3m_sde" in err


def test_outputs_record_how_they_were_made(release, tmp_path):
    import json

    src = _photo(tmp_path / "in.png")
    out = tmp_path / "out"
    extra = ["--version", "v2", "--task", "denoise", "--seed", "7", "--prompt", "a cat"]
    assert _restore(release, [src], out, *extra) == 0
    with Image.open(out / "in.png") as image:
        info = image.info
    assert (info["version"], info["task"], info["sampler"]) == ("v2", "denoise", "spaced")
    assert (info["seed"], info["steps"], info["prompt"]) == ("7", "2", "a cat")
    assert info["cfg_scale"] == "4.0" and info["source"] == "in.png"
    import csv

    with open(out / "prompt.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["file_name", "pos_prompt", "neg_prompt", "caption"],
        ["in", "a cat", info["negative_prompt"], ""],
    ]
    assert (info["captioner"], info["caption"], info["prompt_source"]) == ("none", "", "options")
    # formats without text chunks get a JSON file beside the image
    assert _restore(release, [src], tmp_path / "jpg", *extra, "--format", "jpg") == 0
    sidecar = json.loads((tmp_path / "jpg" / "in.jpg.json").read_text(encoding="utf-8"))
    assert sidecar["seed"] == "7" and sidecar["sampler"] == "spaced"


def test_notes_are_one_line_each(tmp_path, capsys):
    # the release's edm_* samplers with an eps-prediction release: reproduced, and said
    code = main(
        ["restore", "x.png", "-o", str(tmp_path), "--version", "v1", "--sampler", "edm_euler"]
        + ["--print-config"]
    )
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("diffbir: note: edm_euler starts at sigma 1e4")
