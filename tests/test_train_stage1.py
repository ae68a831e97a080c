"""Stage-1 training on CPU at a tiny size: overfits, resumes bit-exactly, exports loadable weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import make_images

from diffbir.cli import main
from diffbir.training.config import load_config
from diffbir.training.loop import train
from diffbir.training.stage1 import make_stage1_task

OVERFIT_STEPS = 60
# Measured: the mean loss of steps 51-60 is about 4x below that of steps 1-10; 2.5x is safe.
OVERFIT_FACTOR = 2.5


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(tmp, out, **changes):
    overrides = [
        ("data.source", str(make_images(tmp / "hq"))),
        ("data.crop", "center"),
        ("data.flip", False),
        ("run.output_dir", str(out)),
        ("run.log_every", 0),
    ]
    return load_config("stage1_tiny", "stage1", overrides + list(changes.items()))


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage1")
    cfg = tiny_config(
        tmp,
        tmp / "run",
        **{
            "run.max_steps": OVERFIT_STEPS,
            "run.save_every": 20,
            "run.keep_last": 2,
            "val.source": str(tmp / "hq"),
            "val.every": OVERFIT_STEPS,
            "val.num_images": 2,
        },
    )
    result = train(cfg, make_stage1_task, progress=False)
    return cfg, result


@pytest.mark.slow
def test_overfits_a_handful_of_images(overfit_run):
    _, result = overfit_run
    losses = result.losses
    assert len(losses) == OVERFIT_STEPS and all(np.isfinite(losses))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last * OVERFIT_FACTOR < first, (first, last)
    # Validation ran at the end (PSNR of the restored held-out images, and of the inputs).
    assert set(result.metrics) == {"val_psnr", "val_psnr_input"}
    assert 10 < result.metrics["val_psnr"] < 60


@pytest.mark.slow
def test_keeps_the_last_checkpoints(overfit_run):
    cfg, result = overfit_run
    kept = sorted(p.name for p in (result.checkpoints[0].parent).iterdir())
    assert kept == ["step_00000040", "step_00000060"]
    state = json.loads((result.checkpoints[-1] / "state.json").read_text())
    assert state["step"] == OVERFIT_STEPS


@pytest.mark.slow
def test_export_loads_as_a_cleaner_and_restores(overfit_run):
    from diffbir.models.cleaner import apply_cleaner, load_cleaner
    from diffbir.restore.pipeline import load_model_config

    cfg, result = overfit_run
    weights, config_file = result.exported
    assert weights.name == "cleaner.safetensors"
    configs = load_model_config(config_file)  # what `diffbir restore --model-config` reads
    model = load_cleaner(weights, **configs["cleaner"]["swinir"])
    lq = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        out = apply_cleaner(model, lq)
    assert out.shape == lq.shape and torch.isfinite(out).all()
    # The checkpoint's model file is the same published layout.
    again = load_cleaner(
        result.checkpoints[-1] / "model.safetensors", **configs["cleaner"]["swinir"]
    )
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    changes = {
        "run.max_steps": 4,
        "run.save_every": 2,
        "run.ema_decay": 0.9,
        "optim.grad_accumulation": 2,
        "optim.warmup_steps": 3,
        "data.batch_size": 2,
        "model.config": {"embed_dim": 24, "depths": [2], "num_heads": [2], "drop_path_rate": 0.1},
    }
    whole = train(
        tiny_config(tmp_path, tmp_path / "a", **changes), make_stage1_task, progress=False
    )
    cfg_b = tiny_config(tmp_path, tmp_path / "b", **changes)
    part = train(cfg_b, make_stage1_task, progress=False, stop_after=2)
    assert part.step == 2 and not part.exported
    rest = train(cfg_b, make_stage1_task, progress=False, resume="latest")
    assert rest.step == 4 and rest.losses == whole.losses[2:]
    for name in ("model.safetensors", "ema.safetensors"):
        from safetensors.torch import load_file

        a = load_file(whole.checkpoints[-1] / name)
        b = load_file(rest.checkpoints[-1] / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_file(whole.exported[0]), load_file(rest.exported[0])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_and_reports_bad_configs(tmp_path, capsys):
    src = make_images(tmp_path / "hq", n=2)
    out = tmp_path / "cli"
    args = ["train", "stage1", "--config", "stage1_tiny", "--data", str(src), "-q"]
    assert (
        main([*args, "--output-dir", str(out), "--max-steps", "1", "--set", "run.save_every=1"])
        == 0
    )
    assert (out / "cleaner.safetensors").is_file() and (out / "config.yaml").is_file()
    assert main([*args, "--print-config", "--set", "optim.lr=3e-4"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.0003" in printed and "stage: stage1" in printed
    assert main([*args, "--output-dir", str(out), "--set", "optim.lr=fast"]) == 1
    assert "optim.lr: expected a number, got 'fast'" in capsys.readouterr().err
    assert main([*args, "--output-dir", str(tmp_path / "none"), "--resume", "latest"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arch", "config"),
    [
        ("rrdbnet", {"nf": 8, "nb": 1, "gc": 4}),
        ("scunet", {"config": [1, 1, 1, 1, 1, 1, 1], "dim": 64}),
    ],
)
def test_other_architectures_train_and_export(tmp_path, arch, config):
    from diffbir.models.cleaner import load_cleaner

    changes = {"model.arch": arch, "model.config": config, "run.max_steps": 2, "run.save_every": 0}
    cfg = tiny_config(tmp_path, tmp_path / arch, **changes)
    result = train(cfg, make_stage1_task, progress=False)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    model = load_cleaner(result.exported[0], **config)  # the architecture is read from the keys
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert model(lq).shape[-1] == 16 * model.scale
