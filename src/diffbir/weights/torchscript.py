"""The tensors of a TorchScript archive, read without running any of it.

Some metric weights are published only as TorchScript archives (OpenAI's CLIP
files, ``RN50.pt``). ``torch.load(weights_only=True)`` refuses those, and
``torch.jit.load`` would compile and keep the archive's code. This reader opens the
zip, unpickles ``<archive>/data.pkl`` with an unpickler that knows only tensors,
plain containers and empty stand-ins for the archive's module classes (their code
under ``code/`` is never read), and returns the module tree's tensors as a flat
``name -> tensor`` mapping with the names ``state_dict()`` would give
(``visual.layer1.0.conv1.weight``).
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from os import PathLike
from pathlib import Path

import torch

from diffbir.errors import CheckpointError, printable

# Storage classes a TorchScript pickle names, and the dtype each one holds.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptModule:
    """An empty stand-in for one of the archive's ``__torch__`` classes: it keeps the
    attributes the pickle gives it and nothing else."""

    def __setstate__(self, state) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _same(value, *_ignored):
    return value


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, shown: str) -> None:
        super().__init__(file)
        self._archive, self._prefix, self._shown = archive, prefix, shown

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptModule
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)  # only named in the storages' records
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
            return _same
        raise CheckpointError(
            f"{self._shown}: refused to load: the TorchScript archive's pickle asks for "
            f"{printable(module)}.{printable(name)}, beyond plain tensors and containers"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._shown}: an unknown record in the TorchScript pickle")
        _, kind, key, _location, numel = pid[:5]
        if not isinstance(kind, _StorageType):
            raise CheckpointError(f"{self._shown}: a storage of unknown type in the archive")
        dtype = kind.dtype
        data = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
        flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if flat.numel() != numel:
            raise CheckpointError(f"{self._shown}: storage {printable(key)} is truncated")
        return flat


def _collect(obj, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[f"{prefix}{name}"] = value.clone()
        elif isinstance(value, _ScriptModule):
            _collect(value, f"{prefix}{name}.", out, seen)


def load_torchscript_tensors(path: str | PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript archive at ``path``, by their
    ``state_dict`` names. Raises :class:`CheckpointError` in one line for a missing
    file, a file that is not a TorchScript archive, or a pickle that asks for code."""
    path = Path(path)
    shown = printable(path)
    if not path.is_file():
        raise CheckpointError(f"{shown}: no such weights file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{shown}: not a TorchScript archive ({exc})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        has_code = any("/code/" in n for n in archive.namelist())
        if len(pickles) != 1 or not has_code:
            raise CheckpointError(
                f"{shown}: not a TorchScript archive (no <name>/data.pkl with its code/)"
            )
        prefix = pickles[0][: -len("data.pkl")]
        order = (
            archive.read(f"{prefix}byteorder")
            if f"{prefix}byteorder" in archive.namelist()
            else b"little"
        )
        if order.strip() not in (b"", b"little"):
            raise CheckpointError(f"{shown}: a big-endian TorchScript archive is not supported")
        try:
            with archive.open(pickles[0]) as f:
                root = _Unpickler(f, archive, prefix, shown).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"{shown}: a damaged TorchScript archive ({type(exc).__name__}: {exc})"
            ) from None
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set())
    if not out:
        raise CheckpointError(f"{shown}: the TorchScript archive holds no tensors")
    return out
