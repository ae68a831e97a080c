"""The note before a long CPU run: the stored figures, the rough wording, and both
restorers saying it (or not) before their first stage."""

from __future__ import annotations

import warnings

import pytest
import torch

import diffbir.restore.estimate as estimate
from diffbir.config.settings import RestoreOptions
from diffbir.errors import DiffBIRWarning
from diffbir.restore.estimate import cpu_seconds, describe_seconds, warn_if_long


def test_the_stored_figures_give_back_the_measured_runs():
    # benchmarks/RESULTS.md: the v2.1 default run 128 -> 512 took 155.0 s on 2 threads
    # (20 UNet+ControlNet calls), HYPIR's 23.35 s (one UNet call)
    v21 = cpu_seconds(
        sampled_pixels=512 * 512, vae_pixels=512 * 512, unet_calls=20, controlnet=True, threads=2
    )
    hypir = cpu_seconds(
        sampled_pixels=512 * 512, vae_pixels=512 * 512, unet_calls=1, controlnet=False, threads=2
    )
    assert v21 == pytest.approx(155.0, rel=0.05)
    assert hypir == pytest.approx(23.35, rel=0.1)
    # more threads, less time; four times the pixels, four times the time
    assert cpu_seconds(
        sampled_pixels=512 * 512, vae_pixels=512 * 512, unet_calls=20, controlnet=True, threads=4
    ) == pytest.approx(v21 / 2)
    assert cpu_seconds(
        sampled_pixels=4 * 512 * 512,
        vae_pixels=4 * 512 * 512,
        unet_calls=20,
        controlnet=True,
        threads=2,
    ) == pytest.approx(4 * v21)


def test_durations_are_said_roughly():
    assert describe_seconds(0.2) == "about 1 s"
    assert describe_seconds(45) == "about 45 s"
    assert describe_seconds(25 * 60) == "about 25 min"
    assert describe_seconds(2.5 * 3600) == "about 2.5 h"


def test_only_long_cpu_runs_say_so():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_long("cpu", 599, (4000, 6000), 2)
        warn_if_long("cuda", 10_000, (4000, 6000), 2)
        assert caught == []
        warn_if_long("cpu", 9000, (4000, 6000), 2)
    (note,) = caught
    assert issubclass(note.category, DiffBIRWarning)
    text = str(note.message)
    assert "6000x4000 result (24.0 MP)" in text and "about 2.5 h" in text and "2 threads" in text
    assert "\n" not in text


def _notes(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if "on this CPU" in str(w.message)]


def test_the_pipeline_says_it_before_a_long_run(pipe, monkeypatch):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    options = RestoreOptions(upscale=2, steps=2, captioner="none", seed=1)
    assert _notes(lambda: pipe(x, options)) == []  # 64x64: seconds, nothing said
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)
    (note,) = _notes(lambda: pipe(x, options))
    assert note.startswith("a 64x64 result (0.0 MP) takes about")


def test_hypir_says_it_too(release, single_thread, monkeypatch):
    from diffbir import load_restorer

    weights, config = release
    hypir = load_restorer(
        "hypir", "sr", weights_dir=weights, model_config=config, download=False, progress=False
    )
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert _notes(lambda: hypir.restore(x)) == []
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)
    (note,) = _notes(lambda: hypir.restore(x))
    assert note.startswith("a 128x128 result")


def test_a_tiled_cpu_step_shows_its_tiles(pipe, capsys):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    base = dict(upscale=2, steps=1, captioner="none", seed=1, latent_tile=64)
    pipe(x, RestoreOptions(**base, progress=True))
    assert "tiles" in capsys.readouterr().err
    pipe(x, RestoreOptions(**base, progress=False))
    assert "tiles" not in capsys.readouterr().err
