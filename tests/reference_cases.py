"""The recorded release runs of ../shared/reference/pipeline, as our API takes them.

One place for what tests/test_release_parity.py and benchmarks/bf16_quality.py both
need: the cases, each case's options, weights files and input, and the reference's
tiny architectures as a ``--model-config`` file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "pipeline"
CASES = json.loads((REF / "cases.json").read_text()) if (REF / "cases.json").exists() else {}
CLEANER_FILES = {"swinir": "swinir", "bsrnet": "rrdbnet", "rrdbnet": "rrdbnet", "scunet": "scunet"}


def tensor(case: dict, name: str) -> torch.Tensor:
    """One recorded tensor of ``case`` (``lq_uint8``, ``x_T``, ``output_uint8``...)."""
    from safetensors.torch import load_file

    return load_file(REF / case["tensors"][name])[name]


def lq_of(case: dict) -> torch.Tensor:
    """The case's input as a (1, 3, H, W) batch in [0, 1]."""
    return tensor(case, "lq_uint8").permute(2, 0, 1)[None].float() / 255


def restore_options(case: dict):
    """The options and seed of the recorded run."""
    from diffbir.config.settings import RestoreOptions

    return RestoreOptions(
        upscale=case["upscale"],
        steps=case["steps"],
        sampler=case["sampler"],
        cfg_scale=case["cfg_scale"],
        cfg_rescale=case["rescale_cfg"],
        prompt=case["pos_prompt"],
        negative_prompt=case["neg_prompt"],
        captioner="none",  # the reference runs were recorded with --captioner none
        control_strength=case["strength"],
        start_point=case["start_point_type"],
        noise_aug=case["noise_aug"],
        n_samples=case["n_samples"],
        samples_per_run=case["batch_size"],
        s_churn=case["s_churn"],
        s_tmin=case["s_tmin"],
        s_tmax=case["s_tmax"],
        s_noise=case["s_noise"],
        eta=case["eta"],
        order=case["order"],
        seed=case["seed"],
    )


def weights(case: dict) -> dict[str, Path]:
    """The case's weights files, by ``from_preset`` keyword."""
    return {
        "sd": REF / "sd_ldm.safetensors",
        "controlnet": REF / "controlnet.safetensors",
        "cleaner": REF / f"{CLEANER_FILES[case['cleaner']]}.safetensors",
    }


def write_model_config(folder: Path) -> Path:
    """The reference's tiny architectures in the published constructor names, written
    as ``folder/models.yaml`` (a ``--model-config`` file)."""
    config = json.loads((REF / "config.json").read_text())
    ldm = config["ControlLDM"]
    sections = {
        "unet": ldm["unet_cfg"],
        "vae": ldm["vae_cfg"],
        "text": ldm["clip_cfg"],
        "controlnet": ldm["controlnet_cfg"],
        "cleaner": {k: v["params"] for k, v in config["cleaners"].items()},
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path
