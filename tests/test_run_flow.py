"""One run, one resolve: settings are resolved once at the edge and every image and
every face uses them; the web UI runs through the same loop as `diffbir restore`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_release import FIXTURES

from diffbir.cli import main
from diffbir.config.settings import RestoreOptions
from diffbir.restore.factory import RESTORERS, load_restorer, resolve_run, restorer_entry


def _photo(path, size=(40, 32), seed=0):
    data = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path


def _restore_args(release, inputs, out, *extra, min_side="64"):
    weights, config = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", min_side]
    return args + ["--no-download", "-q", *extra]


def _count_resolves(monkeypatch) -> list[int]:
    """Counts every resolution of options (each one validates them once)."""
    calls = [0]
    validate = RestoreOptions.validate

    def counted(self):
        calls[0] += 1
        return validate(self)

    monkeypatch.setattr(RestoreOptions, "validate", counted)
    return calls


@pytest.mark.slow
def test_a_folder_of_three_images_resolves_its_settings_once(release, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(3):
        _photo(folder / f"{index}.png", seed=index)
    calls = _count_resolves(monkeypatch)
    code = main(_restore_args(release, [folder], tmp_path / "out", "--captioner", "none"))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png", "2.png"]
    assert calls[0] == 1


@pytest.mark.slow
def test_an_unset_seed_is_drawn_once_for_every_image_and_face(release, tmp_path, monkeypatch):
    """A whole-photo run with no seed: the photo and its faces use the seed the result
    records, drawn once."""
    weights, config = release
    shutil.copy(
        FIXTURES / "faces" / "tiny_yunet.onnx", weights / "face_detection_yunet_2023mar.onnx"
    )
    restorer = load_restorer(
        "v2",
        "face-whole",
        weights_dir=weights,
        model_config=config,
        download=False,
        progress=False,
        device="cpu",
        min_face_size=0,
    )
    seen = []
    for part in (restorer.background, restorer.face):
        original = part.restore

        def spy(lq, options=None, prompts=None, original=original, **hooks):
            seen.append(options.seed)
            return original(lq, options, prompts, **hooks)

        monkeypatch.setattr(part, "restore", spy)
    face = np.zeros((48, 64, 3), np.uint8)
    face[16:24, 24:32] = 255  # the stand-in detector's "face"
    lq = torch.from_numpy(face).permute(2, 0, 1).float().div(255)[None]
    options = RestoreOptions(seed=None, steps=2, min_side=64, captioner="none")
    config = restorer.resolve(options)
    assert config.faces is not None and config.faces.seed == config.seed
    result = restorer.restore(torch.cat([lq, lq]), config)
    assert result.faces[0], "the stand-in face was not found"
    assert len(seen) >= 3 and set(seen) == {result.config.seed}
    # Resolving the options again draws another seed: the run must not.
    assert {restorer.resolve(options).seed for _ in range(4)} != {config.seed}


def test_print_config_shows_the_faces_settings_with_the_runs_seed(release, tmp_path, capsys):
    import yaml

    code = main(
        _restore_args(release, [tmp_path], tmp_path / "o", "--task", "face-whole", "--print-config")
    )
    assert code == 0
    photo, faces = capsys.readouterr().out.split("# faces:\n")
    photo, faces = yaml.safe_load(photo), yaml.safe_load(faces)
    assert photo["task"] == "face-whole" and faces["task"] == "face"
    assert photo["seed"] == faces["seed"] and faces["upscale"] == 1.0


def test_the_factory_is_the_one_map_from_task_to_restorer():
    from diffbir.config.presets import ALL_VERSIONS, TASK_CHOICES, get_preset
    from diffbir.errors import ConfigError

    served = [(v, t) for entry in RESTORERS for v in entry.versions for t in entry.tasks]
    assert len(served) == len(set(served))  # each (release, task) by one restorer
    every = set()
    for version in ALL_VERSIONS:
        for task in TASK_CHOICES:
            try:
                get_preset(version, task)
            except ConfigError:
                continue
            every.add((version, task))
    assert set(served) == every
    assert restorer_entry("v2.1", "face-whole").name == "diffbir-whole-photo"
    assert restorer_entry("hypir", "sr").name == "hypir"
    assert restorer_entry("v1", "denoise").name == "diffbir"
    assert resolve_run("v1", "sr").steps == 50
    with pytest.raises(ConfigError, match="unknown task 'paint'"):
        restorer_entry("v2.1", "paint")


def test_the_web_ui_and_the_cli_write_the_same_image(release, tmp_path):
    """The same inputs and options through the page's run and `diffbir restore` give the
    same pixels (and the same record of how they were made)."""
    from diffbir.imaging.io import read_image
    from diffbir.ui.core import FormValues, PipelineCache, restore_uploads

    weights, config = release
    src = _photo(tmp_path / "a.png")
    options = ["--version", "v2.1", "--upscale", "2", "--seed", "7", "--captioner", "none"]
    # The page has no min-side control: both run at the release's 512.
    assert main(_restore_args(release, [src], tmp_path / "cli", *options, min_side="512")) == 0
    made = []

    def factory(version, task):
        restorer = load_restorer(
            version,
            task,
            weights_dir=weights,
            model_config=config,
            download=False,
            progress=False,
            device="cpu",
        )
        made.append(restorer)
        return restorer

    form = FormValues(
        version="v2.1", upscale=2, steps=2, seed=7, captioner="none", prompt="", negative_prompt=""
    )
    # The form's prompts are the release's unless edited, as the command's are.
    preset = resolve_run("v2.1", "sr")
    form.prompt, form.negative_prompt = preset.prompt, preset.negative_prompt
    run = restore_uploads([src], form, PipelineCache(factory), tmp_path / "ui")
    assert run.failures == [] and len(made) == 1
    ui = read_image(run.images[0].result).rgb
    cli = read_image(tmp_path / "cli" / "a.png").rgb
    assert torch.equal(ui, cli)
    with Image.open(run.images[0].result) as a, Image.open(tmp_path / "cli" / "a.png") as b:
        assert a.text["seed"] == b.text["seed"] == "7"
        assert a.text["sampler"] == b.text["sampler"]


def test_the_web_ui_survives_a_cpu_out_of_memory_error_and_restores_the_next(tmp_path):
    from test_app import CountingFactory, FakePipeline, _image

    from diffbir.ui.core import OOM_MESSAGE, FormValues, PipelineCache, restore_uploads

    first = _image(tmp_path / "a.png", seed=1)
    second = _image(tmp_path / "b.png", seed=2)
    error = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
    factory = CountingFactory(lambda: FakePipeline(fail_on={0}, error=error))
    run = restore_uploads([first, second], FormValues(upscale=2), PipelineCache(factory), tmp_path)
    assert run.failures == [f"a.png: {OOM_MESSAGE}"]
    assert [image.name for image in run.images] == ["b.png"]
    assert run.images[0].result.is_file()


def test_diffbir_implements_the_restorer_protocol_and_reports_its_models(pipe):
    from diffbir.restore.base import Restorer

    assert isinstance(pipe, Restorer)
    models = pipe.loaded_models()
    assert set(models) == {"cleaner", "unet", "controlnet", "vae", "text_encoder"}
    assert "DiffBIR_v2.1.pt" in models["controlnet"] and "parameters" in models["unet"]
