"""PairedDataset: sources, crops, reproducibility per (seed, epoch, index), errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffbir.errors import ConfigError
from diffbir.training.data import PairedDataset, crop_to_size, read_records


def _write(path, h, w, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "hq"
    _write(root / "a.png", 40, 60, 0)
    _write(root / "sub" / "b.png", 70, 50, 1)
    _write(root / "small.png", 20, 30, 2)
    return root


def test_folder_source_is_recursive_and_items_have_the_training_size(folder):
    ds = PairedDataset(folder, size=32, pipeline="codeformer", seed=1)
    assert len(ds) == 3
    for i in range(len(ds)):
        s = ds[i]
        assert s["hq"].shape == s["lq"].shape == (3, 32, 32)
        assert s["hq"].dtype == torch.float32 and 0 <= s["lq"].min() and s["lq"].max() <= 1
        assert s["prompt"] == ""


def test_same_seed_epoch_index_same_pair_and_epochs_differ(folder):
    a = PairedDataset(folder, size=32, pipeline="realesrgan", seed=3)
    b = PairedDataset(folder, size=32, pipeline="realesrgan", seed=3)
    for i in (2, 0, 1):  # order of access must not matter (workers)
        torch.testing.assert_close(a[i]["lq"], b[i]["lq"], atol=0, rtol=0)
        torch.testing.assert_close(a[i]["hq"], b[i]["hq"], atol=0, rtol=0)
    first = a[0]["lq"]
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["lq"])
    c = PairedDataset(folder, size=32, pipeline="realesrgan", seed=4)
    assert not torch.equal(first, c[0]["lq"])


def test_loader_workers_reproduce_the_main_process(folder):
    ds = PairedDataset(folder, size=16, pipeline="codeformer", seed=5)
    direct = [ds[i]["lq"] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=3, num_workers=1)
    batch = next(iter(loader))
    assert batch["lq"].shape == (3, 3, 16, 16) and len(batch["prompt"]) == 3
    for i in range(3):
        torch.testing.assert_close(batch["lq"][i], direct[i], atol=0, rtol=0)


def test_text_list_with_relative_paths_and_captions(folder, tmp_path):
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("# training images\n../hq/a.png\tred fox\n\n../hq/sub/b.png\n")
    recs = read_records(listing)
    assert [r.path.name for r in recs] == ["a.png", "b.png"]
    assert [r.prompt for r in recs] == ["red fox", ""]
    ds = PairedDataset(listing, size=24, pipeline=None, crop="center")
    s = ds[0]
    assert "lq" not in s and s["hq"].shape == (3, 24, 24) and s["prompt"] == "red fox"


def test_csv_with_caption_column(folder, tmp_path):
    table = tmp_path / "meta.csv"
    table.write_text(f'image,text\n{folder / "a.png"},"a, comma"\nhq/sub/b.png,second\n')
    ds = PairedDataset(table, size=16, caption_column="text", flip=False, pipeline=None)
    assert [r.prompt for r in ds.records] == ["a, comma", "second"]
    assert ds.records[1].path == tmp_path / "hq" / "sub" / "b.png"
    with pytest.raises(ConfigError, match="no caption column 'caption'.*image.*text"):
        PairedDataset(table, size=16)


def test_parquet_needs_a_reader_or_works(folder, tmp_path):
    path = tmp_path / "meta.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="needs pyarrow"):
            read_records(path)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(folder / "a.png")], "caption": ["x"]}), path)
    assert read_records(path)[0].prompt == "x"


def test_crop_modes():
    img = torch.rand(3, 40, 60)
    rng = np.random.default_rng(0)
    out = crop_to_size(img, 32, "random", rng)
    # a random window at native resolution: found somewhere in the source
    windows = img.unfold(1, 32, 1).unfold(2, 32, 1)  # [3, 9, 29, 32, 32]
    hits = (windows == out[:, None, None]).flatten(3).all(-1).all(0)
    assert hits.sum() == 1
    assert crop_to_size(img, 32, "center", rng).shape == (3, 32, 32)
    assert crop_to_size(img, 64, "random", rng).shape == (3, 64, 64)  # enlarged first
    assert crop_to_size(img, 16, "resize", rng).shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="crop must be one of"):
        crop_to_size(img, 16, "tile", rng)


def test_flip_flips_about_half_the_time(tmp_path):
    # a left-to-right ramp: a flipped crop decreases along x
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    Image.fromarray(np.stack([ramp] * 3, -1)).save(tmp_path / "ramp.png")
    ds = PairedDataset(tmp_path, size=64, crop="center", pipeline=None, flip=True)
    flips = []
    for epoch in range(60):
        ds.set_epoch(epoch)
        hq = ds[0]["hq"]
        flips.append(bool(hq[0, 0, 0] > hq[0, 0, -1]))
    assert 15 <= sum(flips) <= 45


def test_bad_sources_and_unreadable_images(tmp_path, folder):
    with pytest.raises(ConfigError, match="no such folder or file"):
        PairedDataset(tmp_path / "nope")
    with pytest.raises(ConfigError, match="a .txt list"):
        (tmp_path / "x.json").write_text("{}")
        PairedDataset(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="crop must be"):
        PairedDataset(folder, crop="tile")
    listing = tmp_path / "l.txt"
    listing.write_text("missing.png\nhq/a.png\n")
    ds = PairedDataset(listing, size=16, pipeline=None)
    with pytest.warns(UserWarning, match="skipping unreadable"):
        s = ds[0]
    assert s["path"].endswith("a.png")  # the next image stands in
