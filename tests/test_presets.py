"""The release table: every (version, task) names registry files and sane defaults."""

import pytest

from diffbir.config.presets import ALL_VERSIONS, TASKS, all_presets, get_preset, release_for
from diffbir.errors import ConfigError
from diffbir.weights.registry import REGISTRY


def test_every_preset_names_registered_files():
    for preset in all_presets():
        names = (preset.cleaner, preset.sd, preset.controlnet)
        for name in names if preset.model == "diffbir" else names[1:]:  # HYPIR: no cleaner
            assert name in REGISTRY, f"{preset.version}/{preset.task}: {name} not in the registry"


def test_release_facts():
    v1 = get_preset("v1", "sr")
    assert (v1.sampler, v1.steps, v1.cfg_scale, v1.prompt) == ("spaced", 50, 1.0, "")
    assert v1.controlnet == "v1_general.pth" and v1.cleaner_arch == "swinir"
    assert get_preset("v1", "face").controlnet == "v1_face.pth"
    assert get_preset("v2", "sr").cleaner_arch == "rrdbnet"
    assert get_preset("v2", "denoise").cleaner_arch == "scunet"
    v21 = get_preset("v2.1", "sr")
    assert (v21.prediction, v21.schedule, v21.sd) == ("v", "zsnr", "sd2.1-base-zsnr-laionaes5.ckpt")
    assert v21.prompt and v21.negative_prompt
    # the published inference.py defaults
    assert (v21.sampler, v21.steps, v21.cfg_scale) == ("edm_dpm++_3m_sde", 10, 6.0)
    v2 = get_preset("v2", "sr")
    assert (v2.sampler, v2.steps, v2.cfg_scale, v2.prompt) == ("spaced", 50, 4.0, "")
    assert {p.prediction for p in all_presets() if p.version != "v2.1"} == {"eps"}
    assert len(all_presets()) == len(ALL_VERSIONS) * len(TASKS)


def test_hypir_release_facts():
    # configs/sd2_gradio.yaml and HYPIR/enhancer of the published code
    hypir = get_preset("hypir", "sr")
    assert (hypir.model, hypir.sd, hypir.controlnet) == (
        "hypir",
        "v2-1_512-ema-pruned.ckpt",
        "HYPIR_sd2.pth",
    )
    assert hypir.cleaner == "" and hypir.tile_overlap == 0.5 and hypir.upscale == 4
    assert hypir.extra["model_t"] == hypir.extra["coeff_t"] == 200
    assert hypir.extra["lora_rank"] == 256 and hypir.extra["patch_size"] == 512
    assert len(hypir.extra["lora_modules"]) == 13 and "ff.net.0.proj" in hypir.extra["lora_modules"]
    assert not hypir.takes("steps") and hypir.takes("prompt") and hypir.takes("upscale")
    assert get_preset("hypir", "face").upscale == 1
    with pytest.raises(ConfigError, match="face-whole"):
        get_preset("hypir", "face-whole")


def test_release_for_model_and_version():
    assert release_for(None, None) == "v2.1"
    assert release_for("diffbir", "v1") == "v1"
    assert release_for("hypir", None) == "hypir"
    with pytest.raises(ConfigError, match="--version v2 names a DiffBIR release"):
        release_for("hypir", "v2")
    with pytest.raises(ConfigError, match="unknown model"):
        release_for("supir", None)


def test_upscale_defaults_and_overrides():
    assert get_preset("v2", "sr").upscale == 4
    assert get_preset("v2", "face").upscale == 1
    changed = get_preset("v1", "sr").with_overrides(steps=10, sampler=None)
    assert changed.steps == 10 and changed.sampler == "spaced"


@pytest.mark.parametrize(
    ("version", "task", "word"), [("v9", "sr", "version"), ("v1", "paint", "task")]
)
def test_unknown_version_or_task(version, task, word):
    with pytest.raises(ConfigError, match=word):
        get_preset(version, task)


def test_face_whole_uses_the_sr_models_at_x2():
    whole = get_preset("v1", "face-whole")
    sr = get_preset("v1", "sr")
    assert (whole.cleaner, whole.controlnet, whole.sd) == (sr.cleaner, sr.controlnet, sr.sd)
    assert whole.task == "face-whole" and whole.upscale == 2
