"""Safe loading of weights files, unwrapping, and strict key checks with readable diffs."""

from __future__ import annotations

import builtins
import os
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from diffbir.errors import CheckpointError
from diffbir.weights.checkpoint import check_keys, load_into, load_state_dict

# torch notes that a protocol-4 pickle is unusual; the refusal is what is under test.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "norm.running_mean": torch.randn(4, generator=g),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize("suffix", [".pth", ".ckpt", ".pt", ".bin"])
def test_torch_pickle_round_trip(tmp_path, suffix):
    sd = tensors()
    path = tmp_path / f"w{suffix}"
    torch.save(sd, path)
    assert_same(load_state_dict(path), sd)


def test_safetensors_round_trip(tmp_path):
    sd = tensors()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    assert_same(load_state_dict(str(path)), sd)


def _mapped_from(tensor: torch.Tensor, path) -> bool:
    """Whether the tensor's memory lies in a mapping of ``path`` (Linux's /proc/self/maps)."""
    address = tensor.data_ptr()
    target = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(n, 16) for n in fields[0].split("-"))
            if start <= address < end:
                return len(fields) == 6 and fields[5].strip() == target
    return False


linux_maps = pytest.mark.skipif(
    not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps"
)


@linux_maps
@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3}])
def test_mmap_maps_a_zip_pickle(tmp_path, wrap):
    sd = tensors() | {"step": torch.tensor(7), "half": torch.randn(5).half()}
    path = tmp_path / "w.ckpt"
    torch.save(wrap(sd), path)
    loaded = load_state_dict(path, mmap=True)
    assert_same(loaded, sd)
    assert all(_mapped_from(t, path) for t in loaded.values())
    # Copy-on-write: writing a loaded tensor leaves the file as it was.
    loaded["conv.bias"].zero_()
    assert_same(load_state_dict(path), sd)
    assert not any(_mapped_from(t, path) for t in load_state_dict(path).values())


@linux_maps
def test_mmap_reads_a_legacy_pickle(tmp_path):
    sd = tensors()
    path = tmp_path / "w.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    loaded = load_state_dict(path, mmap=True)
    assert_same(loaded, sd)
    assert not any(_mapped_from(t, path) for t in loaded.values())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 100},
        lambda sd: {"params": sd},
        lambda sd: {"params_ema": sd, "meta": {"iter": 5}},
        lambda sd: {"state_dict": {"model": sd}},
    ],
    ids=["state_dict", "params", "params_ema", "nested"],
)
def test_wrappers_are_removed(tmp_path, wrap):
    sd = tensors()
    path = tmp_path / "w.pth"
    torch.save(wrap(sd), path)
    assert_same(load_state_dict(path), sd)


def test_data_parallel_prefix_is_stripped(tmp_path):
    sd = tensors()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    assert_same(load_state_dict(path), sd)
    # Only a leading "module." goes: inner occurrences are real names.
    inner = {"body.module.weight": torch.zeros(1)}
    assert list(load_state_dict(inner)) == ["body.module.weight"]


def test_loaded_mapping_is_accepted_and_non_tensors_dropped():
    sd = tensors()
    out = load_state_dict({**sd, "step": 7, "note": "x"})
    assert_same(out, sd)


# ---------------------------------------------------------------- bad files


def _bad_files(tmp_path):
    (tmp_path / "text.pth").write_text("this is a README, not weights\n")
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "random_pickle.ckpt").write_bytes(b"\x80\x02" + os.urandom(512))
    (tmp_path / "zip_like.pt").write_bytes(b"PK\x03\x04" + os.urandom(512))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
    (tmp_path / "text.safetensors").write_text("hello")
    torch.save(torch.zeros(3), tmp_path / "bare_tensor.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pth")
    full = tmp_path / "truncated.pth"
    torch.save(tensors(), full)
    full.write_bytes(full.read_bytes()[:300])
    return sorted(p for p in tmp_path.iterdir())


def test_non_checkpoints_raise_a_one_line_checkpoint_error(tmp_path):
    files = _bad_files(tmp_path)
    assert len(files) == 10
    for path in files:
        with pytest.raises(CheckpointError) as info:
            load_state_dict(path)
        message = str(info.value)
        assert str(path) in message, path
        assert "\n" not in message, path
        # Only a pickle that names code to import is called dangerous.
        assert "arbitrary" not in message, (path, message)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_state_dict(tmp_path / "absent.pth")


def test_specific_messages(tmp_path):
    _bad_files(tmp_path)
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="expected a mapping of tensors, found Tensor"):
        load_state_dict(tmp_path / "bare_tensor.pth")
    with pytest.raises(CheckpointError, match="holds no tensors .keys: epoch, lr"):
        load_state_dict(tmp_path / "no_tensors.pth")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict(tmp_path / "random.safetensors")


# ---------------------------------------------------------------- malicious pickles


class _CreatesFile:
    """Unpickling this opens ``target`` for writing, creating it: harmless but observable."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (builtins.open, (self.target, "w"))


class _RunsShell:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    # Guards the tests below: the trap really fires under plain pickle.
    target = tmp_path / "fired"
    pickle.loads(pickle.dumps(_CreatesFile(str(target)), protocol=2)).close()
    assert target.exists()


@pytest.mark.parametrize("payload", [_CreatesFile, _RunsShell])
def test_malicious_torch_save_is_refused_without_running(tmp_path, payload):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "extra": payload(str(target))}, path)
    with pytest.raises(CheckpointError, match="refused to load.*GLOBAL") as info:
        load_state_dict(path)
    assert "\n" not in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_plain_pickle_is_refused_without_running(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _CreatesFile(str(target))}}, f, protocol=protocol)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not target.exists()


# ---------------------------------------------------------------- key checks


def test_check_keys_passes_on_exact_match():
    check_keys({"a": (2, 3), "b": torch.Size([4])}, {"a": torch.zeros(2, 3), "b": torch.zeros(4)})


def test_check_keys_lists_missing_unexpected_and_wrong_shapes():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    got = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "d": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        check_keys(expected, got, what="stage-1 SwinIR")
    message = str(info.value)
    assert "do not fit the stage-1 SwinIR" in message
    assert "1 missing: c" in message
    assert "1 unexpected: d" in message
    assert "1 wrong shape: a: checkpoint (3, 2) vs model (2, 3)" in message
    listed = message.split("\n", 1)[1]
    assert not re.search(r"\bb\b", listed)  # the key that fits is not reported


def test_check_keys_shortens_long_lists():
    expected = {f"layer{i}.weight": (1,) for i in range(20)}
    with pytest.raises(CheckpointError, match=r"20 missing: layer0.weight, .* and 14 more$"):
        check_keys(expected, {})


def test_load_into_mismatch_names_keys_and_leaves_module_untouched():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {"weight": torch.zeros(2, 3), "bias_typo": torch.zeros(3)}
    with pytest.raises(CheckpointError) as info:
        load_into(model, bad)
    message = str(info.value)
    assert "Linear" in message
    assert "missing: bias" in message
    assert "unexpected: bias_typo" in message
    assert "weight: checkpoint (2, 3) vs model (3, 2)" in message
    assert_same(model.state_dict(), before)


def test_load_into_regular_module():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    assert load_into(target, source.state_dict()) is target
    assert_same(target.state_dict(), source.state_dict())


def test_load_into_meta_module_materialises_weights():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    source[1].running_mean.normal_()
    with torch.device("meta"):
        target = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    assert all(p.is_meta for p in target.parameters())
    load_into(target, source.state_dict(), what="tiny net")
    assert not any(t.is_meta for t in target.state_dict().values())
    assert_same(target.state_dict(), source.state_dict())
    x = torch.randn(5, 4)
    assert torch.equal(target(x), source(x))


def test_load_into_meta_module_still_checks_keys():
    with torch.device("meta"):
        target = nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match="missing: bias"):
        load_into(target, {"weight": torch.zeros(3, 4)})
