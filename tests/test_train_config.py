"""Training configs: shipped presets validate, every bad field is a one-line ConfigError."""

from __future__ import annotations

import json

import pytest

from diffbir.errors import ConfigError
from diffbir.training.batches import ResumableBatchSampler
from diffbir.training.config import (
    Stage1ModelConfig,
    Stage2ModelConfig,
    config_from_dict,
    load_config,
    parse_overrides,
    preset_names,
    read_preset,
)
from diffbir.training.loop import build_optimizer, lr_at


def test_shipped_presets_validate_with_released_defaults():
    names = preset_names()
    assert {"stage1_swinir", "stage2_v2", "stage2_v21", "stage1_tiny", "stage2_tiny"} <= set(names)
    for name in names:
        stage = read_preset(name)["stage"]
        cfg = load_config(name, stage)
        model_cls = Stage1ModelConfig if stage == "stage1" else Stage2ModelConfig
        assert isinstance(cfg.model, model_cls)
    # The released values themselves are checked field by field in test_train_presets.py.


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("data: {source: photos}\noptim: {lr: 1e-4}\nrun: {max_steps: 7}\n")
    cfg = load_config(path, "stage1", parse_overrides(["optim.lr=3e-4", "run.seed=5"]))
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.run.seed == 5 and cfg.run.max_steps == 7
    assert cfg.data.source == "photos" and cfg.optim.betas == [0.9, 0.999]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
        ({"optim": {"lrr": 1}}, "optim.lrr: unknown field"),
        ({"data": {"batch_size": 2.5}}, "data.batch_size: expected an integer or null, got 2.5"),
        ({"run": {"gradient_checkpointing": "yes"}}, "run.gradient_checkpointing: expected true"),
        ({"optim": {"betas": [0.9, "x"]}}, r"optim.betas\[1\]: expected a number"),
        ({"optim": {"name": "sgd"}}, "optim.name: one of adamw, adam, adamw8bit"),
        ({"run": {"mixed_precision": "fp8"}}, "run.mixed_precision: one of no, fp16, bf16"),
        ({"model": {"arch": "unet"}}, "model.arch: one of rrdbnet, scunet, swinir"),
        ({"data": {"size": 100}}, "data.size: a multiple of 8"),
        ({"data": {"source": ""}}, "data.source: required"),
        ({"data": {"batch_size": 4, "total_batch_size": 8}}, "give exactly one"),
        ({"data": {"crop": "tile"}}, "data.crop: random, center, resize or none"),
        ({"data": {"long_caption_prob": 0.2}}, "needs data.long_caption_column"),
        ({"model": {"loss_reduction": "max"}}, "model.loss_reduction: mean or sum"),
        ({"run": {"ema_decay": 1.5}}, r"run.ema_decay: in \(0, 1\) or null"),
        ({"optim": "fast"}, "optim: expected a mapping"),
        ({"trainer": {}}, "trainer: unknown section"),
    ],
)
def test_bad_fields_name_their_path(change, message):
    data = {"data": {"source": "photos"}}
    for section, value in change.items():
        data[section] = {**data.get(section, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "stage1")


def test_stage_mismatch_and_stage2_fields():
    with pytest.raises(ConfigError, match="a stage2 config, but training stage1"):
        config_from_dict({"stage": "stage2", "data": {"source": "x"}}, "stage1")
    with pytest.raises(ConfigError, match="model.prediction: eps or v"):
        config_from_dict({"data": {"source": "x"}, "model": {"prediction": "x0"}}, "stage2")
    with pytest.raises(ConfigError, match="model.arch: unknown field"):
        config_from_dict({"data": {"source": "x"}, "model": {"arch": "swinir"}}, "stage2")
    with pytest.raises(ConfigError, match="no shipped config 'nope'"):
        load_config("nope", "stage1")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["optim.lr"])


def test_adamw8bit_needs_bitsandbytes():
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    import torch

    cfg = config_from_dict({"data": {"source": "x"}, "optim": {"name": "adamw8bit"}}, "stage1")
    with pytest.raises(ConfigError, match="adamw8bit needs bitsandbytes"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)


def test_warmup_is_linear_then_constant():
    cfg = config_from_dict(
        {"data": {"source": "x"}, "optim": {"lr": 1e-3, "warmup_steps": 4}}, "stage1"
    )
    assert [lr_at(s, cfg) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    )


def test_batch_sampler_shards_epochs_and_resumes_mid_epoch():
    full = ResumableBatchSampler(10, 2, seed=3)
    full.set_epoch(1)
    batches = list(full)
    assert len(batches) == 5 and sorted(sum(batches, [])) == list(range(10))
    full.set_epoch(1, start=3)
    assert list(full) == batches[3:]
    full.set_epoch(2)
    assert list(full) != batches  # a new order each epoch
    ranks = [ResumableBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == 2 and not set(sum(shards[0], [])) & set(sum(shards[1], []))
    small = ResumableBatchSampler(3, 4, seed=0)  # smaller than a batch: repeated to fill it
    assert len(small) == 1 and sorted(set(next(iter(small)))) == [0, 1, 2]


def test_ema_averages_trainable_parameters_only():
    import torch

    from diffbir.training.ema import EMA

    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.75)
    assert set(ema.state_dict()) == {"weight"}
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model)  # 0.75 * 0 + 0.25 * 4
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1.0))
    other = torch.nn.Linear(2, 1)
    ema.copy_to(other)
    assert torch.equal(other.weight, torch.full((1, 2), 1.0))
    with pytest.raises(KeyError, match="weight"):
        ema.load_state_dict({})


def test_checkpoint_lookup_and_pruning(tmp_path):
    from diffbir.errors import CheckpointError
    from diffbir.training.checkpointing import (
        checkpoint_dir,
        find_checkpoint,
        list_checkpoints,
        prune_checkpoints,
    )

    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path, "latest")
    for step in (5, 10, 20):
        folder = checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step}))
    checkpoint_dir(tmp_path, 30).mkdir()  # unfinished: no state.json, never picked
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10, 20]
    assert find_checkpoint(tmp_path, "latest") == checkpoint_dir(tmp_path, 20)
    assert find_checkpoint(tmp_path, str(checkpoint_dir(tmp_path, 5))) == checkpoint_dir(
        tmp_path, 5
    )
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path))
    assert prune_checkpoints(tmp_path, 2) == [checkpoint_dir(tmp_path, 5)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20]
