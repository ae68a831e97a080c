"""--bit-depth 8|16|auto and 16-bit scans through a run."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from diffbir.cli import main
from diffbir.imaging.icc_build import make_profile
from diffbir.imaging.io import read_image, write_image


def _scan(path, icc=None):
    ramp = np.linspace(0, 1, 64, dtype=np.float32)
    rgb = torch.from_numpy(np.stack([ramp, ramp[::-1], ramp * 0.5])[:, None, :].repeat(40, 1))
    return write_image(path, rgb, bit_depth=16, icc_profile=icc)


def _restore(release, src, out, *extra):
    weights, config = release
    args = ["restore", str(src), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", "64"]
    args += ["--no-download", "-q", "--version", "v2", "--upscale", "1", *extra]
    return main(args)


def _depth(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype.itemsize * 8


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_scan_gives_sixteen_bit_files(release, tmp_path, fmt):
    icc = make_profile("ProPhoto RGB")
    src = _scan(tmp_path / "scan.tif", icc)
    assert read_image(src).bit_depth == 16
    assert _restore(release, src, tmp_path / "out", "-f", fmt, "--save-stage1") == 0
    for path in (tmp_path / "out" / f"scan.{fmt}", tmp_path / "out" / "stage1" / f"scan.{fmt}"):
        assert _depth(path) == 16
        assert read_image(path).icc_profile == icc


def test_bit_depth_8_and_refusals(release, tmp_path, capsys):
    src = _scan(tmp_path / "scan.png")
    assert _restore(release, src, tmp_path / "eight", "--bit-depth", "8") == 0
    assert _depth(tmp_path / "eight" / "scan.png") == 8
    assert _restore(release, src, tmp_path / "jpg", "-f", "jpg") == 0  # auto: 8 in a JPEG
    capsys.readouterr()
    code = _restore(release, src, tmp_path / "bad", "-f", "jpg", "--bit-depth", "16")
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--bit-depth 16 needs --format png or tiff" in err
    assert len(err.splitlines()) == 1
