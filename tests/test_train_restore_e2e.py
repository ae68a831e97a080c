"""End to end through the CLI: train both stages from the (tiny) released files, then restore.

``diffbir train stage2`` starts from the released-layout SD checkpoint and ControlNet found
in ``model.weights_dir`` (tiny random stand-ins from ``tests/tiny_release.py``), conditions on
a released stage-1 model, and ``diffbir restore --cleaner/--controlnet`` loads the results.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_release import make_tiny_release
from train_helpers import make_images

from diffbir.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


def _set(key, value):
    return ["--set", f"{key}={json.dumps(value)}"]


def test_trained_models_load_into_diffbir_restore(tmp_path):
    weights = tmp_path / "weights"
    models_yaml = make_tiny_release(weights)
    sizes = yaml.safe_load(models_yaml.read_text())
    hq = make_images(tmp_path / "hq", n=3)
    common = ["--data", str(hq), "--max-steps", "2", "-q"]

    s1 = tmp_path / "s1"
    args = ["train", "stage1", "--config", "stage1_tiny", "--output-dir", str(s1), *common]
    assert main(args + _set("model.config", sizes["cleaner"]["swinir"])) == 0

    s2 = tmp_path / "s2"
    args = ["train", "stage2", "--config", "stage2_tiny", "--output-dir", str(s2), *common]
    args += _set("model.sd_checkpoint", "v2-1_512-ema-pruned.ckpt")
    args += _set("model.controlnet", "v1_general.pth")  # fine-tune the released ControlNet
    args += _set("model.weights_dir", str(weights))
    args += _set("model.unet_config", sizes["unet"])
    args += _set("model.vae_config", sizes["vae"])
    args += _set("model.text_config", sizes["text"])
    args += _set("model.cleaner", "general_swinir_v1.ckpt")
    args += _set("model.cleaner_config", sizes["cleaner"]["swinir"])
    assert main(args) == 0
    assert (s2 / "controlnet.safetensors").is_file() and not (s2 / "sd").exists()

    photo = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)).save(
        photo
    )
    restore = ["restore", str(photo), "--weights-dir", str(weights), "--model-config"]
    restore += [str(models_yaml), "--version", "v1", "--steps", "2", "--min-side", "64"]
    restore += ["--upscale", "2", "--no-download", "-q"]
    trained = [
        "--cleaner",
        str(s1 / "cleaner.safetensors"),
        "--controlnet",
        str(s2 / "controlnet.safetensors"),
    ]
    assert main([*restore, "-o", str(tmp_path / "mine"), *trained]) == 0
    assert main([*restore, "-o", str(tmp_path / "released")]) == 0
    mine = np.asarray(Image.open(tmp_path / "mine" / "in.png"))
    released = np.asarray(Image.open(tmp_path / "released" / "in.png"))
    assert mine.shape == released.shape == (48, 64, 3)
    assert np.abs(mine.astype(int) - released).mean() > 0.5  # the trained models were used
