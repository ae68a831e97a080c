"""OpenCLIP BPE tokenizer: golden ids, HF file equivalence, truncation, cleaning, bad files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffbir.errors import CheckpointError
from diffbir.models.tokenizer import (
    BPE_GZ_NAME,
    OpenCLIPTokenizer,
    clean_text,
    load_tokenizer,
    write_hf_files,
)

FOLDER = Path(__file__).parent / "fixtures" / "tokenizer"
GZ = FOLDER / BPE_GZ_NAME


@pytest.fixture(scope="module")
def tok() -> OpenCLIPTokenizer:
    return OpenCLIPTokenizer(GZ)


@pytest.fixture(scope="module")
def golden():
    prompts = json.loads((FOLDER / "config.json").read_text())["config"]["prompts"]
    return prompts, load_file(FOLDER / "io.safetensors")["tokens"]


def test_golden_ids_exact(tok, golden):
    prompts, tokens = golden
    ids = tok(prompts)
    assert ids.dtype == torch.long and ids.shape == (4, 77)
    assert torch.equal(ids, tokens)


def test_hf_files_derived_from_gz_give_identical_ids(tok, golden, tmp_path):
    prompts, tokens = golden
    vocab_json, merges_txt = write_hf_files(tok, tmp_path)
    assert len(json.loads(vocab_json.read_text(encoding="utf-8"))) == 49408
    assert merges_txt.read_text(encoding="utf-8").startswith("#version")
    hf = OpenCLIPTokenizer.from_hf_files(vocab_json, merges_txt)
    assert torch.equal(hf(prompts), tokens)
    assert torch.equal(load_tokenizer(tmp_path)(prompts), tokens)
    extra = ["naïve café — ½ & “quotes” 🙂", "hello\tworld\n\nagain"]
    assert torch.equal(hf(extra), tok(extra))


def test_special_tokens_padding_and_truncation(tok):
    ids = tok(["a photo of a cat", "word " * 200], context_length=77)
    assert ids[0, 0] == 49406 and ids[0, 6] == 49407 and (ids[0, 7:] == 0).all()
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407 and (ids[1, 1:-1] != 0).all()
    assert tok("a photo", context_length=8).shape == (1, 8)


def test_cleaning_unescapes_twice_collapses_space_and_lowercases(tok):
    assert clean_text("  Tom &amp;amp; JERRY\t\n rule ") == "tom & jerry rule"
    assert torch.equal(tok("Tom &amp;amp;   Jerry"), tok("tom & jerry"))


def test_bpe_cache_is_bounded_and_does_not_change_ids(tok):
    small = OpenCLIPTokenizer(GZ, cache_size=2)
    text = "restoration of degraded old photographs with diffusion priors"
    assert small.encode(text) == tok.encode(text)
    assert len(small._cache) <= 2
    assert small.encode(text) == tok.encode(text)


def test_load_tokenizer_accepts_gz_file_and_folder(golden):
    prompts, tokens = golden
    assert torch.equal(load_tokenizer(GZ)(prompts), tokens)
    assert torch.equal(load_tokenizer(FOLDER)(prompts), tokens)


def test_load_tokenizer_none_asks_the_weight_registry(golden, tmp_path):
    prompts, tokens = golden
    (tmp_path / BPE_GZ_NAME).write_bytes(GZ.read_bytes())
    assert torch.equal(load_tokenizer(weights_dir=tmp_path)(prompts), tokens)


def test_missing_sources_raise(tmp_path):
    with pytest.raises(CheckpointError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "nope.txt.gz")
    with pytest.raises(CheckpointError, match="vocab.json and merges.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(CheckpointError, match="vocab.json and merges.txt"):
        load_tokenizer(tmp_path)


def test_garbled_and_truncated_gz_raise(tmp_path):
    garbled = tmp_path / "garbled.txt.gz"
    garbled.write_bytes(b"\x00not gzip at all" * 10)
    with pytest.raises(CheckpointError, match="not a gzip BPE vocabulary"):
        OpenCLIPTokenizer(garbled)
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#header\na b\nc d\n")
    with pytest.raises(CheckpointError, match="merges"):
        load_tokenizer(short)


def test_garbled_hf_files_raise(tok, tmp_path):
    vocab_json, merges_txt = write_hf_files(tok, tmp_path)
    merges_txt.write_text("#version: 0.2\nonly-one-symbol\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a pair"):
        load_tokenizer(tmp_path)
    vocab_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_tokenizer(tmp_path)
    vocab_json.write_text(json.dumps({"a": 0, "<|endoftext|>": 1}), encoding="utf-8")
    merges_txt.write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not an OpenCLIP/CLIP vocabulary"):
        load_tokenizer(tmp_path)
