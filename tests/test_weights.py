"""The weights registry, resolution order, and the downloader against a local HTTP server."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType

import pytest

from diffbir.errors import DiffBIRError, DownloadError, WeightsNotFoundError
from diffbir.weights import registry as weights
from diffbir.weights.registry import REGISTRY, WeightFile, download, resolve

# ---------------------------------------------------------------- local server


@dataclass
class ServerState:
    """What the test server serves and what it has seen."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    cut_after: int | None = None  # drop the connection after this many body bytes
    requests: list[dict[str, str | None]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        path = self.path.lstrip("/")
        state.requests.append(
            {
                "path": path,
                "range": self.headers.get("Range"),
                "agent": self.headers.get("User-Agent"),
            }
        )
        if path.startswith("redirect/"):
            self.send_response(302)
            self.send_header("Location", "/" + path[len("redirect/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.files.get(path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and not state.ignore_range:
            start = int(wanted.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_after is not None:
            self.wfile.write(body[: state.cut_after])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class FileServer:
    """A running local server: ``url(name)`` to reach a file, ``state`` to steer it."""

    def __init__(self, httpd: ThreadingHTTPServer, state: ServerState) -> None:
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        self.state = state

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def add(self, name: str, data: bytes) -> str:
        self.state.files[name] = data
        return self.url(name)


@contextlib.contextmanager
def running_server() -> Iterator[FileServer]:
    """Serve ``ServerState.files`` on 127.0.0.1 (a free port) for the duration of the block."""
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FileServer(httpd, state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server():
    with running_server() as running:
        yield running


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests run with HF_HUB_OFFLINE=1 in CI; each test sets what it needs."""
    for var in ("DIFFBIR_WEIGHTS_DIR", "DIFFBIR_MIRROR", "HF_HUB_OFFLINE", "DIFFBIR_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def payload(n: int = 200_000, seed: int = 0) -> bytes:
    """Deterministic bytes that are not all alike (so a spliced file would be caught)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(url: str, data: bytes | None = None, name: str = "model.pth", **kw) -> WeightFile:
    known = {"sha256": sha(data), "size": len(data)} if data is not None else {}
    known.update(kw)
    return WeightFile(
        name=name,
        url=url,
        sha256=known.get("sha256"),
        size=known.get("size"),
        description="test file",
    )


# ---------------------------------------------------------------- download()


def test_full_download_is_verified_and_leaves_no_part(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data)
    path = download(file, tmp_path / "w", progress=False, chunk_size=4096)
    assert path == tmp_path / "w" / "model.pth"
    assert path.read_bytes() == data
    assert not (tmp_path / "w" / "model.pth.part").exists()
    assert len(server.state.requests) == 1
    assert server.state.requests[0]["range"] is None
    assert server.state.requests[0]["agent"].startswith("diffbir/")


def test_existing_part_is_resumed_with_a_range_request(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data)
    (tmp_path / "model.pth.part").write_bytes(data[:12_345])
    path = download(file, tmp_path, progress=False, chunk_size=4096)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.state.requests] == ["bytes=12345-"]
    assert not (tmp_path / "model.pth.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data)
    server.state.ignore_range = True
    # A wrong prefix: if it were kept and appended to, the checksum would fail.
    (tmp_path / "model.pth.part").write_bytes(b"x" * 5000)
    path = download(file, tmp_path, progress=False)
    assert server.state.requests[0]["range"] == "bytes=5000-"
    assert path.read_bytes() == data


def test_checksum_mismatch_is_refused_and_nothing_is_left(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data, sha256=sha(b"something else"))
    with pytest.raises(DownloadError, match="checksum") as info:
        download(file, tmp_path, progress=False)
    assert file.url in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_resumed_download_hashes_the_existing_part_too(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data)
    (tmp_path / "model.pth.part").write_bytes(b"\0" * 1000)  # same length, wrong bytes
    with pytest.raises(DownloadError, match="checksum"):
        download(file, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delta", [+7, -7])
def test_size_mismatch_is_refused_and_nothing_is_left(server, tmp_path, delta):
    data = payload()
    file = entry(server.add("model.pth", data), sha256=None, size=len(data) + delta)
    with pytest.raises(DownloadError, match=f"expected {len(data) + delta}"):
        download(file, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_connection_cut_mid_file_keeps_the_part_for_a_resume(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data), data)
    server.state.cut_after = 50_000
    with pytest.raises(DownloadError, match="broke off") as info:
        download(file, tmp_path, progress=False, chunk_size=4096)
    assert file.url in str(info.value)
    part = tmp_path / "model.pth.part"
    assert part.read_bytes() == data[:50_000]
    assert not (tmp_path / "model.pth").exists()

    server.state.cut_after = None
    path = download(file, tmp_path, progress=False)
    assert server.state.requests[-1]["range"] == "bytes=50000-"
    assert path.read_bytes() == data
    assert not part.exists()


def test_cut_without_known_size_or_checksum_is_still_detected(server, tmp_path):
    data = payload()
    file = entry(server.add("model.pth", data))  # no sha256, no size
    server.state.cut_after = 1000
    with pytest.raises(DownloadError, match="1000 of 200000"):
        download(file, tmp_path, progress=False)
    assert not (tmp_path / "model.pth").exists()


def test_part_longer_than_the_file_starts_over_after_416(server, tmp_path):
    data = payload(5000)
    file = entry(server.add("model.pth", data))  # size unknown: only the server can tell
    (tmp_path / "model.pth.part").write_bytes(b"y" * 6000)
    path = download(file, tmp_path, progress=False)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.state.requests] == ["bytes=6000-", None]


def test_complete_part_is_verified_without_a_request(server, tmp_path):
    data = payload()
    file = entry(server.url("model.pth"), data)  # not even served
    (tmp_path / "model.pth.part").write_bytes(data)
    assert download(file, tmp_path, progress=False).read_bytes() == data
    assert server.state.requests == []


def test_redirects_are_followed_keeping_the_range(server, tmp_path):
    data = payload()
    server.add("model.pth", data)
    file = entry(server.url("redirect/model.pth"), data)
    (tmp_path / "model.pth.part").write_bytes(data[:777])
    assert download(file, tmp_path, progress=False).read_bytes() == data
    assert [(r["path"], r["range"]) for r in server.state.requests] == [
        ("redirect/model.pth", "bytes=777-"),
        ("model.pth", "bytes=777-"),
    ]


def test_http_error_names_the_url_and_status(server, tmp_path):
    file = entry(server.url("missing.pth"), name="missing.pth")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(file, tmp_path, progress=False)
    assert file.url in str(info.value)
    assert not (tmp_path / "missing.pth").exists()


def test_unreachable_server_names_the_url_and_keeps_the_part(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    file = entry(f"http://127.0.0.1:{port}/model.pth")
    (tmp_path / "model.pth.part").write_bytes(b"abc")
    with pytest.raises(DownloadError, match=re.escape(file.url)):
        download(file, tmp_path, progress=False, timeout=5)
    assert (tmp_path / "model.pth.part").read_bytes() == b"abc"


def test_concurrent_caller_waits_for_the_lock_then_reuses_the_file(server, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    data = payload()
    file = entry(server.add("model.pth", data), data)
    done: list[Path] = []
    with open(tmp_path / "model.pth.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # stands for another process mid-download
        worker = threading.Thread(target=lambda: done.append(download(file, tmp_path)))
        worker.start()
        worker.join(timeout=0.3)
        assert worker.is_alive() and server.state.requests == []  # blocked on the lock
        (tmp_path / "model.pth").write_bytes(data)  # the "other process" finishes
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert done == [tmp_path / "model.pth"]
    assert server.state.requests == []


# ---------------------------------------------------------------- resolve()


def _registry(*files: WeightFile):
    return MappingProxyType({f.name: f for f in files})


def test_offline_error_names_file_url_and_place(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = payload()
    reg = _registry(entry(server.add("model.pth", data), data))
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFoundError) as info:
        resolve("model.pth", cache_dir=cache, registry=reg)
    message = str(info.value)
    assert "model.pth" in message
    assert server.url("model.pth") in message
    assert str(cache) in message
    assert "HF_HUB_OFFLINE=1" in message
    assert "diffbir download model.pth" in message
    assert "--weights-dir" in message
    assert "\n" not in message  # the CLI prints it as one paragraph
    assert server.state.requests == []


def test_diffbir_offline_and_download_false_also_stop_the_network(server, tmp_path, monkeypatch):
    data = payload()
    reg = _registry(entry(server.add("model.pth", data), data))
    with pytest.raises(WeightsNotFoundError, match="not allowed"):
        resolve("model.pth", cache_dir=tmp_path, download=False, registry=reg)
    monkeypatch.setenv("DIFFBIR_OFFLINE", "true")
    with pytest.raises(WeightsNotFoundError, match="DIFFBIR_OFFLINE=true"):
        resolve("model.pth", cache_dir=tmp_path, registry=reg)
    assert server.state.requests == []


def test_weights_dir_file_is_used_as_is_without_network(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reg = _registry(entry(server.url("model.pth"), payload()))
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "model.pth").write_bytes(b"a converted copy, not the released bytes")
    with pytest.warns(UserWarning, match="using it anyway"):
        found = resolve("model.pth", weights_dir=wdir, cache_dir=tmp_path / "c", registry=reg)
    assert found == wdir / "model.pth"
    assert server.state.requests == []


def test_size_differing_from_the_release_warns_but_is_used(tmp_path):
    reg = _registry(entry("https://example.invalid/model.pth", size=10))
    (tmp_path / "model.pth").write_bytes(b"123")
    with pytest.warns(UserWarning, match="has 3 bytes but the released model.pth has 10"):
        found = resolve("model.pth", weights_dir=tmp_path, cache_dir=tmp_path / "c", registry=reg)
    assert found == tmp_path / "model.pth"


def test_weights_dir_from_env_is_read_at_call_time(tmp_path, monkeypatch):
    assert weights.weights_dir_from_env() is None
    reg = _registry(entry("https://example.invalid/model.pth"))
    (tmp_path / "model.pth").write_bytes(b"x")
    monkeypatch.setenv("DIFFBIR_WEIGHTS_DIR", str(tmp_path))
    assert weights.weights_dir_from_env() == tmp_path
    assert resolve("model.pth", cache_dir=tmp_path / "c", download=False, registry=reg) == (
        tmp_path / "model.pth"
    )


def test_download_goes_to_weights_dir_when_given_else_to_cache(server, tmp_path):
    data = payload()
    reg = _registry(entry(server.add("model.pth", data), data))
    got = resolve("model.pth", cache_dir=tmp_path / "c", progress=False, registry=reg)
    assert got == tmp_path / "c" / "model.pth" and got.read_bytes() == data
    # A second call finds the cached copy: no new request.
    assert resolve("model.pth", cache_dir=tmp_path / "c", registry=reg) == got
    assert len(server.state.requests) == 1

    wdir = tmp_path / "w"
    got = resolve("model.pth", weights_dir=wdir, cache_dir=tmp_path / "c2", registry=reg)
    assert got == wdir / "model.pth" and got.read_bytes() == data


def test_mirror_env_replaces_the_host(server, tmp_path, monkeypatch):
    data = payload()
    server.add("model.pth", data)
    reg = _registry(entry("https://example.invalid/deep/path/model.pth", data))
    monkeypatch.setenv("DIFFBIR_MIRROR", server.base + "/")
    got = resolve("model.pth", cache_dir=tmp_path, progress=False, registry=reg)
    assert got.read_bytes() == data
    assert server.state.requests[0]["path"] == "model.pth"


def test_existing_path_is_returned_and_missing_path_reported(tmp_path):
    f = tmp_path / "mine.safetensors"
    f.write_bytes(b"x")
    assert resolve(f) == f
    assert resolve(str(f)) == f
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        resolve(tmp_path / "absent.pth", download=False)


def test_unknown_name_suggests_close_names():
    with pytest.raises(DiffBIRError, match="did you mean v2.pth") as info:
        resolve("v2.ph", download=False)
    assert not isinstance(info.value, WeightsNotFoundError)
    with pytest.raises(DiffBIRError, match="diffbir download"):
        weights.get("zzzzzz")


def test_default_cache_is_a_diffbir_folder_of_the_hf_cache():
    from huggingface_hub import constants

    assert weights.default_cache_dir() == Path(constants.HF_HUB_CACHE) / "diffbir"


# ---------------------------------------------------------------- registry


BRIEF_NAMES = {
    "v2-1_512-ema-pruned.ckpt",
    "sd2.1-base-zsnr-laionaes5.ckpt",
    "v1_general.pth",
    "v1_face.pth",
    "v2.pth",
    "DiffBIR_v2.1.pt",
    "general_swinir_v1.ckpt",
    "face_swinir_v1.ckpt",
    "realesrgan_s4_swinir_100k.pth",
    "BSRNet.pth",
    "scunet_color_real_psnr.pth",
    "bpe_simple_vocab_16e6.txt.gz",
    "vocab.json",
    "merges.txt",
    "face_detection_yunet_2023mar.onnx",
}


def test_registry_names_every_file_the_pipeline_needs():
    assert BRIEF_NAMES <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_entry_is_well_formed(name):
    file = REGISTRY[name]
    assert file.name == name
    assert file.url.startswith("https://")
    assert file.url.rsplit("/", 1)[1] == name
    assert file.description
    if file.sha256 is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", file.sha256)
    if file.size is not None:
        assert isinstance(file.size, int) and file.size > 0


def test_registry_and_entries_are_immutable():
    with pytest.raises(TypeError):
        REGISTRY["x"] = REGISTRY["v2.pth"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["v2.pth"].url = "https://example.invalid/"  # type: ignore[misc]


def test_known_checksums_of_the_published_files():
    # Values from the sources cited in weights.py; a typo here would break every download.
    sd = REGISTRY["v2-1_512-ema-pruned.ckpt"].sha256
    assert sd == "88ecb782561455673c4b78d05093494b9c539fc6bfc08f3a9a4a0dd7b0b10f36"
    bpe = REGISTRY["bpe_simple_vocab_16e6.txt.gz"]
    assert (bpe.sha256[:16], bpe.size) == ("924691ac288e5440", 1_356_917)


def test_resolve_many_lists_every_missing_file(tmp_path, monkeypatch):
    from diffbir.weights.registry import resolve_many

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "v2.pth").write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_many(["v2.pth", "BSRNet.pth", "v1_face.pth"], weights_dir=tmp_path)
    message = str(info.value)
    assert "2 weights files are missing" in message
    assert REGISTRY["BSRNet.pth"].url in message and REGISTRY["v1_face.pth"].url in message
    assert "--weights-dir" in message and "v2.pth " not in message
    with pytest.raises(WeightsNotFoundError, match="BSRNet.pth") as single:
        resolve_many(["v2.pth", "BSRNet.pth"], weights_dir=tmp_path)
    assert "missing:" not in str(single.value)
    assert resolve_many(["v2.pth"], weights_dir=tmp_path) == [tmp_path / "v2.pth"]
