"""``diffbir download``: listing, downloading through DIFFBIR_MIRROR, and its errors."""

from __future__ import annotations

import pytest

# The local HTTP server lives with the downloader's own tests (tests/ is on sys.path).
from test_weights import payload, running_server

from diffbir.cli import main
from diffbir.weights.registry import REGISTRY


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("DIFFBIR_WEIGHTS_DIR", "DIFFBIR_MIRROR", "HF_HUB_OFFLINE", "DIFFBIR_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    with running_server() as running:
        yield running


def _rows(out: str) -> dict[str, list[str]]:
    table = out.strip().split("\n\nLicences:")[0]
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "HERE", "DESCRIPTION"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_listing_names_every_licence(capsys):
    assert main(["download"]) == 0
    licences = capsys.readouterr().out.split("\n\nLicences:")[1]
    assert "CreativeML Open RAIL++-M" in licences
    for name in REGISTRY:
        assert name in licences


def test_listing_shows_every_file_and_which_are_present(tmp_path, capsys):
    (tmp_path / "v2.pth").write_bytes(b"x")
    assert main(["download", "--weights-dir", str(tmp_path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == set(REGISTRY)
    assert rows["v2.pth"][2] == "yes"
    assert rows["scunet_color_real_psnr.pth"][1:3] == ["68.6", "MiB"]
    assert rows["v1_face.pth"][1] == "?"  # no published size


def test_listing_follows_weights_dir_env(tmp_path, capsys, monkeypatch):
    (tmp_path / "BSRNet.pth").write_bytes(b"x")
    monkeypatch.setenv("DIFFBIR_WEIGHTS_DIR", str(tmp_path))
    assert main(["download"]) == 0
    assert _rows(capsys.readouterr().out)["BSRNet.pth"][2] == "yes"


def test_download_through_mirror_into_weights_dir(server, tmp_path, capsys, monkeypatch):
    data = payload(50_000, seed=3)
    server.add("v2.pth", data)
    monkeypatch.setenv("DIFFBIR_MIRROR", server.base)
    wdir = tmp_path / "w"
    assert main(["download", "v2.pth", "--weights-dir", str(wdir)]) == 0
    assert (wdir / "v2.pth").read_bytes() == data
    assert f"v2.pth: {wdir / 'v2.pth'}" in capsys.readouterr().out
    # Present now: a second run makes no request, and --quiet prints nothing.
    assert main(["download", "v2.pth", "--weights-dir", str(wdir), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert len(server.state.requests) == 1


def test_checksum_failure_exits_1_and_leaves_nothing(server, tmp_path, capsys, monkeypatch):
    server.add("scunet_color_real_psnr.pth", b"not the released file")
    monkeypatch.setenv("DIFFBIR_MIRROR", server.base)
    code = main(["download", "scunet_color_real_psnr.pth", "--weights-dir", str(tmp_path), "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("diffbir: error: download of scunet_color_real_psnr.pth")
    assert "expected 71982841" in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_offline_exits_1_with_one_paragraph(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "DiffBIR_v2.1.pt", "--weights-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "DiffBIR_v2.1.pt" in err
    assert REGISTRY["DiffBIR_v2.1.pt"].url in err
    assert str(tmp_path) in err


def test_present_file_needs_no_network_even_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "v1_face.pth").write_bytes(b"x")
    assert main(["download", "v1_face.pth", "--weights-dir", str(tmp_path)]) == 0
    assert str(tmp_path / "v1_face.pth") in capsys.readouterr().out


def test_unknown_name_fails_before_any_download(server, tmp_path, capsys, monkeypatch):
    server.add("v2.pth", b"data")
    monkeypatch.setenv("DIFFBIR_MIRROR", server.base)
    assert main(["download", "v2.pth", "v2.ph", "--weights-dir", str(tmp_path)]) == 1
    assert "did you mean v2.pth" in capsys.readouterr().err
    assert server.state.requests == []
    assert list(tmp_path.iterdir()) == []


def test_all_fetches_every_file(server, tmp_path, monkeypatch, capsys):
    for name, file in REGISTRY.items():
        if file.sha256 is None and file.size is None:
            server.add(name, name.encode())
    for name in REGISTRY:
        if name not in server.state.files:
            (tmp_path / name).write_bytes(b"already here")
    monkeypatch.setenv("DIFFBIR_MIRROR", server.base)
    assert main(["download", "--all", "--weights-dir", str(tmp_path), "-q"]) == 0
    # The stand-ins' sizes are off: a one-line note each, not a Python warning.
    notes = capsys.readouterr().err.splitlines()
    assert notes and all(n.startswith("diffbir: note: ") for n in notes)
    assert all(n.endswith("using it anyway") for n in notes)
    for name in server.state.files:
        assert (tmp_path / name).read_bytes() == name.encode()
    assert len(server.state.requests) == len(server.state.files)


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["download", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--weights-dir", "--all", "--quiet", "DIFFBIR_WEIGHTS_DIR", "resume"):
        assert word in out
