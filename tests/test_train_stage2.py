"""Stage-2 training on CPU with a tiny random SD: the loss falls, resume is bit-exact, and the
trained ControlNet loads into the pipeline and restores an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import make_images

from diffbir.training.config import load_config
from diffbir.training.loop import train
from diffbir.training.stage2 import make_stage2_task

STEPS = 60


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(tmp, out, fixtures, **changes):
    overrides = [
        ("data.source", str(make_images(tmp / "hq"))),
        ("model.tokenizer", str(fixtures / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")),
        ("run.output_dir", str(out)),
        ("run.log_every", 0),
    ]
    return load_config("stage2_tiny", "stage2", overrides + list(changes.items()))


@pytest.fixture(scope="module")
def run60(tmp_path_factory, request):
    fixtures = request.config.rootpath / "tests" / "fixtures"
    tmp = tmp_path_factory.mktemp("stage2")
    changes = {
        "run.max_steps": STEPS,
        "run.save_every": 0,
        "val.source": str(tmp / "hq"),
        "val.every": STEPS,
        "val.num_images": 2,
        "val.steps": 2,
    }
    cfg = tiny_config(tmp, tmp / "run", fixtures, **changes)
    return cfg, train(cfg, make_stage2_task, progress=False)


@pytest.mark.slow
def test_loss_falls(run60):
    _, result = run60
    losses = result.losses
    assert len(losses) == STEPS and all(np.isfinite(losses))
    # Measured: the last-10 mean is ~0.8x the first-10 mean (1.11 -> 0.87); 0.9x is the bar.
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), (losses[:10], losses[-10:])


@pytest.mark.slow
def test_validation_writes_samples(run60):
    cfg, result = run60
    from diffbir.imaging.io import read_image

    folder = result.exported[0].parent / "samples" / f"step_{STEPS:08d}"
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == ["000.png", "001.png"]
    image = read_image(files[0]).rgb
    assert image.shape == (3, cfg.data.size, 4 * cfg.data.size)  # lq | stage 1 | restored | hq
    assert "val_psnr" in result.metrics


@pytest.mark.slow
def test_trained_controlnet_loads_into_the_pipeline_and_restores(run60, fixtures):
    from diffbir.config.presets import get_preset
    from diffbir.models.cleaner import build_cleaner
    from diffbir.models.stage2 import load_stage2
    from diffbir.models.tokenizer import load_tokenizer
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    cfg, result = run60
    out = result.exported[0].parent
    tokenizer = load_tokenizer(fixtures / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    stage2 = load_stage2(out / "sd", out / "controlnet.safetensors", tokenizer=tokenizer)
    trained = load_file(out / "sd" / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == stage2.controlnet.state_dict().keys()
    assert all(torch.equal(v, stage2.controlnet.state_dict()[k]) for k, v in trained.items())
    torch.manual_seed(0)
    cleaner = build_cleaner("swinir", embed_dim=24, depths=[2], num_heads=[2])
    preset = get_preset("v1", "sr").with_overrides(steps=2, sampler="ddim")
    pipe = DiffBIRPipeline(cleaner, stage2, preset)
    lq = torch.rand(1, 3, 32, 48)
    restored = pipe(lq, RestoreOptions(upscale=1.0, steps=2, seed=1))
    assert restored.image.shape == (1, 3, 32, 48)
    assert (
        torch.isfinite(restored.image).all()
        and 0 <= restored.image.min() <= restored.image.max() <= 1
    )


def test_resume_is_bit_exact_with_v_prediction_and_condition_noise(tmp_path, fixtures):
    changes = {
        "run.max_steps": 4,
        "run.save_every": 2,
        "model.prediction": "v",
        "model.schedule": "zsnr",
        "model.cond_noise_max_t": 200,
        "data.empty_prompt_prob": 0.5,
    }
    whole = train(
        tiny_config(tmp_path, tmp_path / "a", fixtures, **changes), make_stage2_task, progress=False
    )
    cfg_b = tiny_config(tmp_path, tmp_path / "b", fixtures, **changes)
    train(cfg_b, make_stage2_task, progress=False, stop_after=2)
    rest = train(cfg_b, make_stage2_task, progress=False, resume="latest")
    assert rest.losses == whole.losses[2:]
    a = load_file(whole.checkpoints[-1] / "model.safetensors")
    b = load_file(rest.checkpoints[-1] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, fixtures):
    grads = []
    for checkpointing in (False, True):
        changes = {"run.gradient_checkpointing": checkpointing}
        cfg = tiny_config(tmp_path, tmp_path / "gc", fixtures, **changes)
        torch.manual_seed(0)
        task = make_stage2_task(cfg, torch.device("cpu"))
        assert task.trainable.is_gradient_checkpointing == checkpointing
        assert task.stage2.unet.is_gradient_checkpointing == checkpointing
        data = task.train_dataset()
        batch = {
            "hq": torch.stack([data[0]["hq"], data[1]["hq"]]),
            "lq": torch.stack([data[0]["lq"], data[1]["lq"]]),
            "prompt": ["", "a photo"],
        }
        loss = task.loss(batch, torch.Generator().manual_seed(3))
        loss.backward()
        grads.append([p.grad.clone() for p in task.trainable.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_bf16_mixed_precision_runs(tmp_path, fixtures):
    changes = {"run.max_steps": 2, "run.save_every": 0, "run.mixed_precision": "bf16"}
    cfg = tiny_config(tmp_path, tmp_path / "bf16", fixtures, **changes)
    result = train(cfg, make_stage2_task, progress=False)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    trained = load_file(tmp_path / "bf16" / "controlnet.safetensors")
    assert all(v.dtype == torch.float32 for v in trained.values())  # the trained copy stays fp32


def test_condition_comes_from_a_trained_stage1_model(tmp_path, fixtures):
    from safetensors.torch import save_file

    from diffbir.models.cleaner import build_cleaner

    config = {"embed_dim": 24, "depths": [2], "num_heads": [2]}
    torch.manual_seed(0)
    cleaner = build_cleaner("swinir", **config).eval()
    save_file(cleaner.state_dict(), tmp_path / "cleaner.safetensors")
    changes = {
        "model.cleaner": str(tmp_path / "cleaner.safetensors"),
        "model.cleaner_config": config,
        "run.max_steps": 1,
        "run.save_every": 0,
    }
    cfg = tiny_config(tmp_path, tmp_path / "out", fixtures, **changes)
    task = make_stage2_task(cfg, torch.device("cpu"))
    lq = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        image, latent = task.condition(lq)
        assert torch.allclose(image, cleaner(lq).clamp(0, 1), atol=1e-5)
        assert latent.shape == (2, 4, 8, 8)
    assert not any(p.requires_grad for p in task.cleaner.parameters())
    result = train(cfg, make_stage2_task, progress=False)
    assert len(result.losses) == 1 and np.isfinite(result.losses[0])
