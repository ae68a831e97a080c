"""``diffbir degrade``: outputs, determinism, resuming, --scale/--size/--save-hq, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffbir.cli import main


def _write(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def hq_dir(tmp_path):
    root = tmp_path / "hq"
    _write(root / "a.png", 48, 64, 0)
    _write(root / "b.jpg", 40, 40, 1)
    _write(root / "deep" / "c.png", 32, 48, 2)
    return root


def _pixels(path):
    return np.asarray(Image.open(path))


def test_writes_lq_at_hq_size_and_is_reproducible(hq_dir, tmp_path, capsys):
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    args = ["degrade", str(hq_dir), "--pipeline", "realesrgan", "--seed", "7", "-q"]
    assert main([*args, "-o", str(out1)]) == 0
    assert main([*args, "-o", str(out2)]) == 0
    names = sorted(p.name for p in (out1 / "lq").iterdir())
    assert names == ["a.png", "b.png"]  # not recursive by default
    assert _pixels(out1 / "lq" / "a.png").shape == (48, 64, 3)
    np.testing.assert_array_equal(_pixels(out1 / "lq" / "a.png"), _pixels(out2 / "lq" / "a.png"))
    assert not (out1 / "hq").exists()
    out3 = tmp_path / "o3"
    assert main(["degrade", str(hq_dir), "--seed", "8", "-q", "-o", str(out3)]) == 0
    assert not np.array_equal(_pixels(out1 / "lq" / "a.png"), _pixels(out3 / "lq" / "a.png"))


def test_resume_skips_existing_and_rewrites_identically(hq_dir, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["degrade", str(hq_dir), "-o", str(out), "--recursive", "--save-hq", "--seed", "3"]
    assert main(args) == 0
    assert (out / "lq" / "deep" / "c.png").is_file() and (out / "hq" / "deep" / "c.png").is_file()
    first = _pixels(out / "lq" / "deep" / "c.png")
    (out / "lq" / "deep" / "c.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "1 written, 2 already present, 0 failed" in capsys.readouterr().out
    np.testing.assert_array_equal(_pixels(out / "lq" / "deep" / "c.png"), first)


def test_size_crop_and_low_resolution_output(hq_dir, tmp_path):
    out = tmp_path / "o"
    args = ["degrade", str(hq_dir / "a.png"), "-o", str(out), "-q", "--size", "32"]
    assert main([*args, "--pipeline", "realesrgan", "--scale", "--save-hq"]) == 0
    assert _pixels(out / "hq" / "a.png").shape == (32, 32, 3)
    assert _pixels(out / "lq" / "a.png").shape == (8, 8, 3)  # 1/4 of the HQ crop


def test_custom_pipeline_file(hq_dir, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("stages:\n  - jpeg: {quality: [10, 10]}\n")
    out = tmp_path / "o"
    assert (
        main(["degrade", str(hq_dir / "a.png"), "-o", str(out), "-q", "--pipeline", str(cfg)]) == 0
    )
    assert _pixels(out / "lq" / "a.png").shape == (48, 64, 3)


def test_bad_files_are_reported_and_exit_1(hq_dir, tmp_path, capsys):
    (hq_dir / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "o"
    assert main(["degrade", str(hq_dir), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err
    assert (out / "lq" / "a.png").is_file()


def test_unknown_pipeline_is_a_one_line_error(hq_dir, tmp_path, capsys):
    assert main(["degrade", str(hq_dir), "-o", str(tmp_path / "o"), "--pipeline", "bsrgan"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffbir: error: unknown degradation pipeline 'bsrgan'")
    assert len(err.strip().splitlines()) == 1
