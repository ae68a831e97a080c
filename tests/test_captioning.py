"""Captioners: tiny random LLaVA and GIT models built with transformers' own config classes.

No download: each test saves a tiny model, tokenizer and image processor into
``tmp_path`` and loads it through :func:`diffbir.captioning.load_captioner`.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_captioners import save_tiny_git, save_tiny_llava

from diffbir.captioning import (
    CAPTIONERS,
    LLAVA_PROMPT,
    NoCaptioner,
    canonical,
    join_prompt,
    load_captioner,
    pad_to_square,
)
from diffbir.captioning.llava import prompt_ids
from diffbir.errors import ConfigError, DiffBIRError, WeightsNotFoundError
from diffbir.weights import folders as weights_folders
from diffbir.weights import registry as weights


def photo(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real cache, no weights folder from the environment, offline unless a test says so."""
    for var in ("DIFFBIR_WEIGHTS_DIR", "DIFFBIR_MIRROR", "DIFFBIR_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "default_cache_dir", lambda: tmp_path / "cache")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def git_dir(tmp_path_factory):
    return save_tiny_git(tmp_path_factory.mktemp("git"))


# ------------------------------------------------------------------ prompt text


def test_join_prompt_is_the_releases_join():
    assert join_prompt("a dog on grass", "high quality") == "a dog on grass, high quality"
    assert join_prompt("", "high quality") == "high quality"
    assert join_prompt("a dog", "") == "a dog"
    assert join_prompt("", "") == ""


def test_llava_prompt_is_the_releases_string():
    assert LLAVA_PROMPT == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
        "Please give me a very short description of this image. ASSISTANT:"
    )


def test_pad_to_square_centres_on_the_mean_colour():
    wide = Image.new("RGB", (6, 3), (255, 0, 0))
    square = pad_to_square(wide, (122, 116, 104))
    assert square.size == (6, 6)
    rows = np.asarray(square)
    assert (rows[0] == (122, 116, 104)).all() and (rows[5] == (122, 116, 104)).all()
    assert (rows[1:4] == (255, 0, 0)).all()  # offset (6 - 3) // 2 = 1
    tall = pad_to_square(Image.new("RGB", (1, 4), (0, 0, 255)), (1, 2, 3))
    cols = np.asarray(tall)
    assert (cols[:, 1] == (0, 0, 255)).all() and (cols[:, [0, 2, 3]] == (1, 2, 3)).all()
    same = Image.new("RGB", (5, 5))
    assert pad_to_square(same, (0, 0, 0)) is same


# ------------------------------------------------------------------ names and errors


def test_names_and_unknown_and_ram():
    assert list(CAPTIONERS) == ["none", "llava", "git"]
    assert canonical(" LLaVA ") == "llava"
    with pytest.raises(ConfigError, match="choose one of none, llava, git"):
        canonical("blip")
    with pytest.raises(ConfigError, match="torchvision"):
        canonical("ram")


def test_table_is_importable_without_torch():
    code = (
        "import sys; import diffbir.captioning as c; c.describe_captioners(); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bits", [8, 4])
def test_low_bits_refused_on_cpu_in_one_line(bits, llava_dir):
    with pytest.raises(ConfigError) as info:
        load_captioner("llava", device="cpu", bits=bits, path=llava_dir)
    message = str(info.value)
    assert "\n" not in message
    assert f"--captioner-bits {bits} needs CUDA and the bitsandbytes package" in message
    with pytest.raises(ConfigError, match="llava only"):
        load_captioner("git", device="cpu", bits=bits)
    with pytest.raises(ConfigError, match="16, 8, 4"):
        load_captioner("llava", device="cpu", bits=2)


@pytest.mark.parametrize("name", ["llava", "git"])
def test_offline_missing_model_is_one_line(name, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        load_captioner(name, device="cpu", weights_dir=tmp_path / "w")
    message = str(info.value)
    folder = weights_folders.MODEL_FOLDERS[name].folder
    assert "\n" not in message
    assert str(tmp_path / "w" / folder) in message and "config.json" in message
    assert f"`diffbir download {name}`" in message and "--captioner none" in message
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message


def test_offline_never_touches_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(weights.urllib.request, "urlopen", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsNotFoundError, match="downloading was not allowed"):
        load_captioner("git", device="cpu", weights_dir=tmp_path, offline=True)


def test_none_captions_empty_strings():
    captioner = load_captioner("none", device="cpu")
    assert isinstance(captioner, NoCaptioner)
    assert captioner.caption([photo(8, 8, 0), photo(9, 7, 1)]) == ["", ""]


# ------------------------------------------------------------------ LLaVA


def test_llava_prompt_ids_follow_tokenizer_image_token(llava_dir):
    with load_captioner("llava", device="cpu", path=llava_dir, max_new_tokens=3) as captioner:
        ids = captioner.prompt_ids
        tok = captioner.tokenizer
        assert captioner.prompt == LLAVA_PROMPT
        head, _, tail = LLAVA_PROMPT.partition("<image>")
        n_image = (28 // 14) ** 2
        assert ids.count(4) == n_image and ids[0] == 1  # one BOS, then text
        start = ids.index(4)
        assert ids[start : start + n_image] == [4] * n_image
        assert tok.decode(ids[1:start]) == head and tok.decode(ids[start + n_image :]) == tail
        assert ids == prompt_ids(tok, LLAVA_PROMPT, 4, n_image)


def test_llava_pads_with_the_processor_mean_before_it(llava_dir, monkeypatch):
    with load_captioner("llava", device="cpu", path=llava_dir, max_new_tokens=2) as captioner:
        assert captioner.fill == (122, 116, 104)  # CLIP's mean x 255, truncated
        seen = []
        processor = captioner.image_processor

        def spy(images, **kwargs):
            seen.extend(images)
            return processor(images=images, **kwargs)

        monkeypatch.setattr(captioner, "image_processor", spy)
        captioner.caption([Image.new("RGB", (40, 20), (255, 255, 255))])
    (square,) = seen
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((20, 20)) == (255,) * 3


def test_llava_captions_batched_equal_one_by_one_and_are_deterministic(llava_dir):
    images = [photo(40, 30, 1), photo(30, 30, 2), photo(20, 50, 3)]
    with load_captioner(
        "llava", device="cpu", path=llava_dir, dtype=torch.float32, batch_size=3, max_new_tokens=6
    ) as captioner:
        batched = captioner.caption(images)
        again = captioner.caption(images)
        single = [captioner.caption([image])[0] for image in images]
    assert all(isinstance(text, str) for text in batched)
    assert batched == again == single
    assert len(set(batched)) > 1  # the image matters, so batching could have mixed them up
    assert all(text == text.strip() for text in batched)


def test_llava_cpu_default_is_bfloat16(llava_dir):
    with load_captioner("llava", device="cpu", path=llava_dir, max_new_tokens=2) as captioner:
        assert next(captioner.model.parameters()).dtype == torch.bfloat16
        assert len(captioner.caption([photo(30, 20, 0)])) == 1


# ------------------------------------------------------------------ GIT


def test_git_from_a_weights_dir_like_the_published_folder(tmp_path):
    wdir = tmp_path / "w"
    folder = wdir / "git-base-coco"
    folder.mkdir(parents=True)
    save_tiny_git(folder, bin_weights=True)
    assert weights_folders.missing_in_folder(weights_folders.MODEL_FOLDERS["git"], folder) == []
    images = [photo(64, 48, 5), photo(32, 32, 6)]
    with load_captioner("git", device="cpu", weights_dir=wdir, batch_size=2, max_new_tokens=5) as c:
        assert next(c.model.parameters()).dtype == torch.float32
        batched = c.caption(images)
        single = [c.caption([image])[0] for image in images]
        assert batched == single == c.caption(images)
        assert batched[0] != batched[1]
        assert all(isinstance(text, str) and text == text.strip() for text in batched)


@pytest.mark.parametrize("name", ["git", "llava"])
def test_close_frees_the_model(name, request):
    folder = request.getfixturevalue(f"{name}_dir")
    captioner = load_captioner(name, device="cpu", path=folder, max_new_tokens=2)
    captioner.caption([photo(32, 32, 0)])
    model = weakref.ref(captioner.model)
    captioner.close()
    gc.collect()
    assert model() is None
    with pytest.raises(DiffBIRError, match="closed"):
        captioner.caption([photo(32, 32, 0)])
    captioner.close()  # twice is fine


def test_path_without_a_model_is_one_line(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not a model folder") as info:
        load_captioner("git", device="cpu", path=tmp_path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ registry and download


def test_download_fetches_the_folder_file_by_file_then_loads_offline(tmp_path, monkeypatch, capsys):
    from test_weights import running_server

    from diffbir.cli import main

    entry = weights_folders.MODEL_FOLDERS["git"]
    source = save_tiny_git(tmp_path / "source", bin_weights=True)
    with running_server() as server:
        for path in (*entry.required, *entry.extra):
            stand_in = b"{}" if path.endswith(".json") else b"stand-in"
            data = (source / path).read_bytes() if (source / path).is_file() else stand_in
            server.add(f"{entry.folder}/{path}", data)
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv("DIFFBIR_MIRROR", server.base)
        wdir = tmp_path / "w"
        assert main(["download", "git", "--weights-dir", str(wdir), "-q"]) == 0
        assert len(server.state.requests) == len(entry.required) + len(entry.extra)
        assert main(["download", "git", "--weights-dir", str(wdir)]) == 0  # present: no request
        assert len(server.state.requests) == len(entry.required) + len(entry.extra)
    assert f"git: {wdir / entry.folder}" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with load_captioner("git", device="cpu", weights_dir=wdir, max_new_tokens=3) as captioner:
        assert len(captioner.caption([photo(40, 40, 0)])) == 1


def test_listing_shows_captioners_with_size_and_licence(tmp_path, capsys):
    from diffbir.cli import main

    assert main(["download", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split("Captioner models")[1]
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    assert "13.2 GiB  no" in rows["llava"] and "llava-hf/llava-1.5-7b-hf" in rows["llava"]
    assert "675.2 MiB  no" in rows["git"] and "microsoft/git-base-coco" in rows["git"]
    assert "Llama 2 Community License" in out and "MIT (https://huggingface.co/microsoft" in out


def test_folder_entries_are_pinned_resolve_urls():
    for name, entry in weights_folders.MODEL_FOLDERS.items():
        assert name in CAPTIONERS and CAPTIONERS[name].model == entry.repo
        for file in entry.files():
            assert file.url == (
                f"https://huggingface.co/{entry.repo}/resolve/{entry.revision}/{file.name}"
            )
        assert "config.json" in entry.required and entry.license_note


def test_llava_answers_other_questions_in_the_releases_template(llava_dir):
    from diffbir.captioning import LLAVA_QUESTION

    with load_captioner("llava", path=llava_dir, device="cpu", max_new_tokens=6) as captioner:
        image = photo(30, 20, 1)
        short = captioner.caption([image])
        assert captioner.ask([image], LLAVA_QUESTION) == short  # the same prompt, same answer
        other = captioner.ask([image], "Describe this image in a very detailed manner.")
        assert isinstance(other[0], str)
        assert captioner.caption([image]) == short  # asking leaves the caption prompt alone
        with pytest.raises(DiffBIRError, match="empty"):
            captioner.ask([image], "  ")


def test_llava_ask_leaves_the_captioner_unchanged_while_it_runs(llava_dir):
    """A question's tokens go with its call only, so another thread captioning with the
    same captioner meanwhile still asks the release's question."""
    with load_captioner("llava", path=llava_dir, device="cpu", max_new_tokens=2) as captioner:
        release_ids = list(captioner.prompt_ids)
        generate, seen = captioner.model.generate, []

        def spy(*args, **kwargs):
            seen.append((list(captioner.prompt_ids), kwargs["input_ids"][0].tolist()))
            return generate(*args, **kwargs)

        captioner.model.generate = spy
        captioner.ask([photo(30, 20, 1)], "Describe this image in a very detailed manner.")
    ((during, asked),) = seen
    assert during == release_ids
    assert asked != release_ids


def test_quiet_loading_hides_transformers_bars_and_restores_them(git_dir, capsys):
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    load_captioner("git", path=git_dir, device="cpu", progress=False).close()
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # as it was before
