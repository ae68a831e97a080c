"""The first run: one message, before any model loads, naming everything it will download."""

from __future__ import annotations

import pytest

from diffbir.cli import main
from diffbir.weights import needs as run_files


def _no_loading(monkeypatch):
    import diffbir.jobs.batch as batch

    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(batch, "load_restorer", refuse)


def test_offline_first_run_names_every_missing_file_with_sizes(tmp_path, capsys, monkeypatch):
    _no_loading(monkeypatch)
    src = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(src)
    code = main(
        ["restore", str(src), "-o", str(tmp_path / "out"), "--weights-dir", str(tmp_path)]
        + ["--no-download", "--device", "cpu", "--captioner", "git"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "needs 4 file(s) not on this machine, about 7.5 GB in all" in err
    for name, size in [
        ("realesrgan_s4_swinir_100k.pth", "90 MB"),
        ("sd2.1-base-zsnr-laionaes5.ckpt", "5.2 GB"),
        ("DiffBIR_v2.1.pt", "1.5 GB"),
        ("git", "708 MB"),
    ]:
        line = next(line for line in err.splitlines() if line.strip().startswith(name))
        assert size in line and "https://" in line
    assert "diffbir download --for v2.1 sr --captioner git" in err
    assert "--captioner none" in err
    assert "Traceback" not in err


def test_face_whole_needs_the_detector_and_the_face_models():
    names = [n.name for n in run_files.run_needs("v2", "face-whole", captioner="none")]
    assert names == [
        "BSRNet.pth",
        "v2-1_512-ema-pruned.ckpt",
        "v2.pth",
        "face_swinir_v1.ckpt",
        "face_detection_yunet_2023mar.onnx",
    ]
    own = run_files.run_needs(
        "v2", "face-whole", captioner="none", given={"face_detector": "yunet.onnx", "sd": "x"}
    )
    assert "face_detection_yunet_2023mar.onnx" not in [n.name for n in own]
    assert "v2-1_512-ema-pruned.ckpt" not in [n.name for n in own]
    assert [n.name for n in run_files.run_needs("hypir", "sr")] == [
        "v2-1_512-ema-pruned.ckpt",
        "HYPIR_sd2.pth",
    ]


def test_nothing_is_said_when_everything_is_there(release, tmp_path, capsys):
    weights, config = release
    from PIL import Image

    src = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(src)
    code = main(
        ["restore", str(src), "-o", str(tmp_path / "out"), "--weights-dir", str(weights)]
        + ["--model-config", str(config), "--no-download", "--version", "v2", "--steps", "1"]
        + ["--min-side", "64", "--upscale", "1", "-q"]
    )
    assert code == 0
    assert "not on this machine" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("run_for", "captioner", "expected"),
    [
        (
            ["v2.1", "sr"],
            "git",
            [
                "realesrgan_s4_swinir_100k.pth",
                "sd2.1-base-zsnr-laionaes5.ckpt",
                "DiffBIR_v2.1.pt",
                "git",
            ],
        ),
        (
            ["v1", "face"],
            "none",
            ["face_swinir_v1.ckpt", "v2-1_512-ema-pruned.ckpt", "v1_face.pth"],
        ),
    ],
)
def test_download_for_fetches_exactly_what_the_run_needs(
    run_for, captioner, expected, monkeypatch, tmp_path, capsys
):
    from diffbir.weights import folders, registry

    fetched = []

    def fake(name, **kwargs):
        fetched.append(name)
        return tmp_path / name

    monkeypatch.setattr(registry, "resolve", fake)
    monkeypatch.setattr(folders, "resolve_folder", fake)
    code = main(["download", "--for", *run_for, "--captioner", captioner, "-q"])
    assert code == 0
    assert fetched == expected
    assert set(fetched) == {n.name for n in run_files.run_needs(*run_for, captioner=captioner)}


def test_download_for_is_listed_in_help_and_refuses_unknown_releases(capsys):
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    assert "--for RELEASE TASK" in capsys.readouterr().out
    assert main(["download", "--for", "v9", "sr"]) == 1
    assert "unknown version" in capsys.readouterr().err
