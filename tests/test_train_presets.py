"""The shipped training presets equal the released recipes, field by field.

The released values are written here as facts (numbers and names), each with the place of
the published code it comes from (XPixelGroup/DiffBIR: ``configs/train/train_stage1.yaml``,
``train_stage2.yaml``, ``train_stage2_v2.1.yaml``, ``train_stage1.py``, ``train_stage2.py``,
``diffbir/dataset/codeformer.py``, ``diffbir/dataset/realesrgan.py``,
``diffbir/model/cldm.py``). Every field of every preset must be either in the release
table or in the short list of values the release does not set (paths, our own options) or
that the project sets deliberately differently (each listed with its reason): a field added
to the config without a decision here fails the test.
"""

from __future__ import annotations

import pytest

from diffbir.errors import ConfigError
from diffbir.training.config import load_config, per_process_batch

# ---------------------------------------------------------------------- the release

# What the two released training scripts do whatever the YAML says.
SCRIPTS = {
    "optim.name": "adamw",  # train_stage1.py:49, train_stage2.py:78 torch.optim.AdamW
    "optim.betas": [0.9, 0.999],  # torch's AdamW defaults (not overridden)
    "optim.warmup_steps": 0,  # constant learning rate: no scheduler in either script
    "optim.grad_clip": None,  # no clipping in either script
    "optim.grad_accumulation": 1,  # one backward per optimizer step
    "run.seed": 231,  # train_stage1.py:24 set_seed(231); train_stage2.py:23
    "run.mixed_precision": "no",  # Accelerator(split_batches=True): no precision given
    "run.ema_decay": None,  # no EMA anywhere
    "data.batch_size": None,  # the YAML's batch_size is the total (split_batches=True)
}

RELEASED = {
    "stage1_swinir": {
        **SCRIPTS,
        "model.arch": "swinir",  # train_stage1.yaml:3 diffbir.model.swinir.SwinIR
        "model.config": {},  # train_stage1.yaml:4-18, our released SwinIR defaults
        "model.init": None,  # train.resume ~ (train_stage1.yaml:69)
        "model.loss_reduction": "sum",  # train_stage1.py:114 mse_loss(..., reduction="sum")
        "data.size": 512,  # train_stage1.yaml:28 out_size
        "data.crop": "center",  # train_stage1.yaml:29 crop_type
        "data.flip": False,  # codeformer.py: no flip
        "data.pipeline": "codeformer",  # train_stage1.yaml:22 CodeformerDataset
        "data.caption_column": None,  # a file list of paths: no captions
        "data.total_batch_size": 96,  # train_stage1.yaml:62 "total batch size"
        "optim.lr": 1e-4,  # train_stage1.yaml:60
        "optim.weight_decay": 0.0,  # train_stage1.py:50 weight_decay=0
        "run.max_steps": 150_000,  # train_stage1.yaml:64
        "run.log_every": 50,  # train_stage1.yaml:65
        "run.save_every": 10_000,  # train_stage1.yaml:66 ckpt_every
        "run.gradient_checkpointing": False,  # SwinIR without use_checkpoint
        "val.every": 1000,  # train_stage1.yaml:67-68 image_every, val_every
        "val.num_images": 12,  # train_stage1.py:152 N = 12
    },
    "stage2_v2": {
        **SCRIPTS,
        "model.sd_checkpoint": "v2-1_512-ema-pruned.ckpt",  # train_stage2.yaml:118 SD 2.1 base
        "model.controlnet": None,  # train_stage2.py:53 load_controlnet_from_unet
        "model.prediction": "eps",  # train_stage2.yaml:94
        "model.schedule": "sd",  # train_stage2.yaml:90-93 0.00085..0.012, zero_snr False
        "model.cleaner": "general_swinir_v1.ckpt",  # train_stage2.yaml:123 codeformer SwinIR
        "model.cleaner_arch": "swinir",  # train_stage2.yaml:70
        "model.cond_noise_max_t": 0,  # train_stage2.yaml:137 noise_aug_timestep
        "model.clean_latent": "sample",  # cldm.py:95 vae_encode(sample=True) for z_0
        "model.latent_scale": 0.18215,  # train_stage2.yaml:5 latent_scale_factor
        "data.size": 512,  # train_stage2.yaml:104
        "data.crop": "center",  # train_stage2.yaml:105
        "data.flip": False,  # codeformer.py: no flip
        "data.pipeline": "codeformer",  # train_stage2.yaml:98
        "data.caption_column": None,  # codeformer.py: prompts from a path list are ""
        "data.empty_prompt_prob": 0.5,  # codeformer.py:95 hard-coded
        "data.total_batch_size": 256,  # train_stage2.yaml:130
        "optim.lr": 1e-4,  # train_stage2.yaml:125
        "optim.weight_decay": 0.01,  # train_stage2.py:78 AdamW default
        "run.max_steps": 30_000,  # train_stage2.yaml:132
        "run.log_every": 50,  # train_stage2.yaml:133
        "run.save_every": 10_000,  # train_stage2.yaml:134
        "run.gradient_checkpointing": True,  # train_stage2.yaml:7,54 use_checkpoint True
        "val.every": 1000,  # train_stage2.yaml:135 image_every
        "val.num_images": 8,  # train_stage2.py:185 N = 8
        "val.sampler": "ddpm",  # train_stage2.py:109 SpacedSampler (our spaced DDPM)
        "val.steps": 50,  # train_stage2.py:196
    },
    "stage2_v21": {
        **SCRIPTS,
        "model.sd_checkpoint": "sd2.1-base-zsnr-laionaes5.ckpt",  # train_stage2_v2.1.yaml:167
        "model.controlnet": None,
        "model.prediction": "v",  # train_stage2_v2.1.yaml:94
        "model.schedule": "zsnr",  # train_stage2_v2.1.yaml:93 zero_snr True
        "model.cleaner": "realesrgan_s4_swinir_100k.pth",  # :172 Real-ESRGAN-trained SwinIR
        "model.cleaner_arch": "swinir",
        "model.cond_noise_max_t": 200,  # train_stage2_v2.1.yaml:182
        "model.clean_latent": "sample",  # cldm.py:95
        "model.latent_scale": 0.18215,  # train_stage2_v2.1.yaml:5
        "data.path_column": "image_path",  # train_stage2_v2.1.yaml:105
        "data.caption_column": "llava_short",  # train_stage2_v2.1.yaml:106
        "data.long_caption_column": "llava_long",  # train_stage2_v2.1.yaml:107
        "data.long_caption_prob": 0.2,  # train_stage2_v2.1.yaml:109 p_long_prompt
        "data.empty_prompt_prob": 0.2,  # train_stage2_v2.1.yaml:138 p_empty_prompt
        "data.size": 512,  # train_stage2_v2.1.yaml:114
        "data.crop": "none",  # train_stage2_v2.1.yaml:115
        "data.flip": False,  # train_stage2_v2.1.yaml:117-118 use_hflip, use_rot false
        "data.pipeline": "realesrgan_batch",  # :98 RealESRGANDataset + :141 batch transform
        "data.total_batch_size": 512,  # train_stage2_v2.1.yaml:175
        "data.num_workers": 16,  # train_stage2_v2.1.yaml:176
        "optim.lr": 1e-5,  # train_stage2_v2.1.yaml:174
        "optim.weight_decay": 0.01,  # train_stage2.py:78 AdamW default
        "run.max_steps": 1_000_000,  # train_stage2_v2.1.yaml:177
        "run.log_every": 100,  # train_stage2_v2.1.yaml:178
        "run.save_every": 10_000,  # train_stage2_v2.1.yaml:179
        "run.gradient_checkpointing": True,  # train_stage2_v2.1.yaml:7,54
        "val.every": 1000,  # train_stage2_v2.1.yaml:180 image_every
        "val.num_images": 8,
        "val.sampler": "ddpm",
        "val.steps": 50,
    },
}

# Not set by the release (paths the user gives, our own options), with our values.
OURS = {
    "data.source": None,  # a placeholder path: the user's data
    "data.num_workers": 8,  # the release leaves it empty (v2.1 says 16, in the table)
    "data.list_cache": True,
    "data.sidecar_captions": None,  # any: folders only, and without captions for v2/stage 1
    "data.path_column": None,  # found automatically when not in the table
    "data.long_caption_column": None,
    "data.long_caption_prob": 0.0,
    "data.empty_prompt_prob": 0.0,  # stage 1: no prompts
    "run.output_dir": None,
    "run.tensorboard": True,
    "val.source": None,  # null: the first training images
    "val.sampler": "ddim",  # stage 1 does not sample
    "val.steps": 20,
    "model.tokenizer": None,  # the packaged CLIP vocabulary
    "model.weights_dir": None,
    "model.unet_config": None,  # released sizes
    "model.vae_config": None,
    "model.text_config": None,
    "model.controlnet_config": None,
    "model.cleaner_config": {},
}

# Where the project differs on purpose (also in each preset's comments and the README).
DELIBERATE = {
    "run.keep_last": (3, "checkpoints hold optimizer state; the release keeps all weights"),
}

PRESETS = [("stage1_swinir", "stage1"), ("stage2_v2", "stage2"), ("stage2_v21", "stage2")]


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("config", "cleaner_config"):
            out |= _flat(value, name + ".")
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(("name", "stage"), PRESETS)
def test_every_preset_field_is_the_released_value_or_a_listed_decision(name, stage):
    fields = _flat(load_config(name, stage).to_dict())
    fields.pop("stage")
    released = RELEASED[name]
    unknown = sorted(set(released) - set(fields))
    assert not unknown, f"the table names fields the config lacks: {unknown}"
    for key, value in fields.items():
        if key in released:
            assert (
                value == pytest.approx(released[key])
                if isinstance(value, float)
                else (value == released[key])
            ), f"{name}: {key} is {value!r}, the release has {released[key]!r}"
        elif key in DELIBERATE:
            assert value == DELIBERATE[key][0], f"{name}: {key} is {value!r}"
        else:
            assert key in OURS, f"{name}: {key} is neither a released value nor a listed one"
            if OURS[key] is not None:
                assert value == OURS[key], f"{name}: {key} is {value!r}, expected {OURS[key]!r}"


def test_the_released_swinir_is_the_default_stage1_model():
    from diffbir.models.cleaner import RELEASED_CONFIGS

    # train_stage1.yaml:5-18 and train_stage2*.yaml:72-85
    assert RELEASED_CONFIGS["swinir"] == {
        "img_size": 64,
        "patch_size": 1,
        "in_chans": 3,
        "embed_dim": 180,
        "depths": [6] * 8,
        "num_heads": [6] * 8,
        "window_size": 8,
        "mlp_ratio": 2,
        "sf": 8,
        "img_range": 1.0,
        "upsampler": "nearest+conv",
        "resi_connection": "1conv",
        "unshuffle": True,
        "unshuffle_scale": 8,
    }


def test_the_released_codeformer_degradation_ranges():
    from diffbir.degradation.pipelines import load_preset

    # train_stage1.yaml:30-36 (the same in train_stage2.yaml:106-112)
    blur, resize, noise, jpeg = load_preset("codeformer").stages
    assert blur.kernel_sizes == (41,) and blur.kernel_list == ("iso", "aniso")
    assert blur.kernel_prob == (0.5, 0.5) and blur.sigma_x == blur.sigma_y == (0.1, 12)
    assert resize.downsample == (1, 12) and resize.modes == ("bilinear",)
    assert noise.gaussian_sigma == (0, 15) and noise.gaussian_prob == 1.0
    assert jpeg.quality == (30, 100)


@pytest.mark.parametrize(
    ("name", "processes", "per_process"),
    [("stage1_swinir", 8, 12), ("stage2_v2", 8, 32), ("stage2_v21", 8, 64), ("stage2_v21", 1, 512)],
)
def test_the_released_total_batch_splits_over_processes(name, processes, per_process):
    stage = "stage1" if name.startswith("stage1") else "stage2"
    cfg = load_config(name, stage)
    assert per_process_batch(cfg.data, processes) == per_process
    assert per_process_batch(cfg.data, processes) * processes == cfg.data.total_batch_size


def test_a_total_batch_that_does_not_split_is_refused():
    cfg = load_config("stage2_v21", "stage2")
    with pytest.raises(ConfigError, match=r"512 does not split over 3 process\(es\)"):
        per_process_batch(cfg.data, 3)
    with pytest.raises(ConfigError, match="use a multiple of 6"):
        per_process_batch(cfg.data, 3, grad_accumulation=2)
    assert per_process_batch(cfg.data, 4, grad_accumulation=2) == 64
    tiny = load_config("stage2_tiny", "stage2")
    assert per_process_batch(tiny.data, 3) == tiny.data.batch_size  # per process as given
