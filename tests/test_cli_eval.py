"""``diffbir eval`` end to end on tiny images made here: pairing, table, CSV/JSON,
options, and the one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffbir.cli import main


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image(seed, h=40, w=48):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _noisy(array, sigma, seed):
    noise = np.random.default_rng(seed).normal(0, sigma, array.shape)
    return np.clip(array + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture
def sets(tmp_path):
    """hq/{0,1,2}.png and out/{0,1,2}.png (noisy copies), out/2 exactly the reference."""
    hq, out = tmp_path / "hq", tmp_path / "out"
    for i in range(3):
        clean = _image(i)
        _write(hq / f"{i}.png", clean)
        _write(out / f"{i}.png", clean if i == 2 else _noisy(clean, 10, 100 + i))
    return hq, out


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return 10 * math.log10(1 / (mse + 1e-8))


def _lines_and_error(capsys):
    captured = capsys.readouterr()
    return captured.out, captured.err.strip().splitlines()


def test_table_csv_and_json(sets, tmp_path, capsys):
    hq, out = sets
    csv_path, json_path = tmp_path / "r" / "s.csv", tmp_path / "s.json"
    args = ["eval", str(out), "--reference", str(hq), "--metrics", "psnr,ssim", "-q"]
    assert main([*args, "--csv", str(csv_path), "--json", str(json_path)]) == 0
    table, _ = _lines_and_error(capsys)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["image", "psnr", "↑"]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert lines[-1].startswith("mean (3)")
    assert "80.0000" in lines[4] and "1.0000" in lines[4]  # identical pair

    expected = [
        _psnr(np.asarray(Image.open(out / f"{i}.png")), np.asarray(Image.open(hq / f"{i}.png")))
        for i in range(3)
    ]
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert [r["image"] for r in rows] == ["0", "1", "2", "mean"]
    for row, value in zip(rows, expected):
        assert float(row["psnr"]) == pytest.approx(value, rel=1e-7)
    assert float(rows[3]["psnr"]) == pytest.approx(sum(expected) / 3, rel=1e-7)

    data = json.loads(json_path.read_text())
    assert data["count"] == 3 and list(data["metrics"]) == ["psnr", "ssim"]
    assert data["mean"]["psnr"] == pytest.approx(sum(expected) / 3, rel=1e-7)
    assert data["images"][2]["ssim"] == pytest.approx(1.0)
    assert data["images"][0]["reference"].endswith("0.png")
    assert data["options"] == {"crop_border": 0, "y_channel": False, "resize_to": None}


def test_pairs_by_name_across_suffixes_globs_and_subfolders(tmp_path, capsys):
    clean = _image(5)
    _write(tmp_path / "hq" / "a" / "x.png", clean)
    Image.fromarray(clean).save(tmp_path / "hq" / "b.bmp")
    _write(tmp_path / "out" / "a" / "x.png", _noisy(clean, 5, 1))
    _write(tmp_path / "out" / "b.png", clean)
    args = ["eval", str(tmp_path / "out"), "--reference", str(tmp_path / "hq"), "--recursive"]
    assert main([*args, "--metrics", "psnr", "-q"]) == 0
    table, _ = _lines_and_error(capsys)
    assert [line.split()[0] for line in table.splitlines()[2:4]] == ["a/x", "b"]
    # A glob of the restored images, a folder of references.
    pattern = str(tmp_path / "out" / "*.png")
    assert main(["eval", pattern, "--reference", str(tmp_path / "hq"), "--metrics", "psnr"]) == 0
    assert "mean (1)" in capsys.readouterr().out


def test_options_change_the_values(sets, tmp_path, capsys):
    hq, out = sets

    def mean(*extra):
        path = tmp_path / "m.json"
        base = ["eval", str(out), "--reference", str(hq), "--metrics", "psnr,ssim", "-q"]
        assert main([*base, "--json", str(path), *extra]) == 0
        return json.loads(path.read_text())["mean"]

    rgb, y, cropped = mean(), mean("--y-channel"), mean("--crop-border", "4")
    assert y["psnr"] != rgb["psnr"] and cropped["psnr"] != rgb["psnr"]
    capsys.readouterr()
    # --mean-only prints the header and the mean, no image rows.
    base = ["eval", str(out), "--reference", str(hq), "--mean-only", "-q"]
    assert main(base) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_resize_to_reference_and_to_a_size(tmp_path, capsys):
    clean = _image(3, 32, 32)
    _write(tmp_path / "hq" / "a.png", clean)
    big = np.asarray(Image.fromarray(clean).resize((64, 64), Image.BICUBIC))
    _write(tmp_path / "out" / "a.png", big)
    args = ["eval", str(tmp_path / "out"), "--reference", str(tmp_path / "hq"), "-q"]
    assert main([*args, "--metrics", "psnr"]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1 and "64x64 but its reference is 32x32" in err[0]
    assert "--resize-to reference" in err[0]
    assert main([*args, "--resize-to", "reference"]) == 0
    assert main([*args, "--resize-to", "24x16", "--metrics", "psnr"]) == 0
    assert main([*args, "--resize-to", "big"]) == 1
    _, err = _lines_and_error(capsys)
    assert err == [
        "diffbir: error: --resize-to big: expected 'reference', N or WxH with sides in 8..16384"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "psnr,foo"], "unknown metric 'foo'; known: psnr, ssim"),
        (["--metrics", "ssmi"], "unknown metric 'ssmi'; did you mean ssim?"),
        (["--metrics", "psnr,"], "an empty metric name"),
        (["--crop-border", "-1"], "--crop-border must be 0 or more"),
    ],
)
def test_bad_options_fail_in_one_line(sets, extra, message, capsys):
    hq, out = sets
    assert main(["eval", str(out), "--reference", str(hq), "-q", *extra]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1 and message in err[0]


def test_unpaired_files_fail_in_one_line(sets, capsys):
    hq, out = sets
    (hq / "1.png").unlink()
    _write(hq / "9.png", _image(9))
    assert main(["eval", str(out), "--reference", str(hq), "-q"]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1
    assert "1 restored image(s) without a reference: 1" in err[0]
    assert "1 reference(s) without a restored image: 9" in err[0]


def test_same_name_twice_and_missing_folder(sets, tmp_path, capsys):
    hq, out = sets
    Image.fromarray(_image(0)).save(out / "0.jpg")
    assert main(["eval", str(out), "--reference", str(hq), "-q"]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1 and "two restored images have the name 0" in err[0]
    assert main(["eval", str(tmp_path / "nowhere"), "--metrics", "niqe", "-q"]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1 and "no such file or folder" in err[0]


def test_full_reference_metrics_need_a_reference(sets, capsys):
    _, out = sets
    assert main(["eval", str(out), "--metrics", "niqe,psnr,ssim", "-q"]) == 1
    _, err = _lines_and_error(capsys)
    assert err == [
        "diffbir: error: psnr, ssim need a reference: pass --reference HQ "
        "(or choose only no-reference metrics)"
    ]


def test_too_small_for_ssim_names_the_image(tmp_path, capsys):
    _write(tmp_path / "hq" / "t.png", _image(1, 12, 12))
    _write(tmp_path / "out" / "t.png", _image(2, 12, 12))
    args = ["eval", str(tmp_path / "out"), "--reference", str(tmp_path / "hq"), "-q"]
    assert main([*args, "--metrics", "ssim", "--crop-border", "1"]) == 1
    _, err = _lines_and_error(capsys)
    assert len(err) == 1 and "t: ssim: SSIM needs at least 11x11 pixels" in err[0]


def test_learned_metrics_load_from_weights_dir(sets, tmp_path, capsys):
    """LPIPS end to end: torchvision's backbone file name (a stand-in backbone in its
    layout) and the published linear layers, in --weights-dir."""
    import shutil
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_metrics import WEIGHTS, stand_in_backbone

    hq, out = sets
    weights = tmp_path / "w"
    weights.mkdir()
    torch.save(stand_in_backbone("alex"), weights / "alexnet-owt-7be5be79.pth")
    shutil.copy(WEIGHTS / "LPIPS_v0.1_alex-df73285e.pth", weights)
    json_path = tmp_path / "l.json"
    args = ["eval", str(out), "--reference", str(hq), "--metrics", "lpips,psnr", "-q"]
    assert main([*args, "--weights-dir", str(weights), "--json", str(json_path)]) == 0
    data = json.loads(json_path.read_text())
    assert data["images"][2]["lpips"] == pytest.approx(0.0, abs=1e-6)  # identical pair
    assert data["images"][0]["lpips"] > 0
    capsys.readouterr()
    # Offline with the files absent: the error names each missing file and its URL.
    empty = tmp_path / "none"
    empty.mkdir()
    no_net = ["--weights-dir", str(empty), "--no-download", "--metrics", "dists"]
    assert main(["eval", str(out), "--reference", str(hq), "-q", *no_net]) == 1
    err = capsys.readouterr().err
    assert "2 weights files are missing" in err
    assert "vgg16-397923af.pth  https://download.pytorch.org/models/vgg16-397923af.pth" in err
    assert "DISTS_weights-f5e65c96.pth" in err
