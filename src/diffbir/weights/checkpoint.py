"""Safe loading of weights files and strict, readable key checks.

Pickled checkpoints (``.pth``, ``.ckpt``, ``.pt``, ``.bin``) load with
``torch.load(weights_only=True)``, which refuses any pickle that would run
code; ``.safetensors`` files load through safetensors. Released files wrap
their tensors in different ways (``{"state_dict": ...}``, ``{"params": ...}``,
keys prefixed ``module.``): :func:`load_state_dict` removes those wrappers so
converters see one flat mapping of names to tensors.

With ``mmap=True`` a pickle's tensors are views of the file mapped into
memory (copy-on-write, the file is never written) rather than copies read
into the process: a loader that casts each tensor to half precision then
never holds the file's float32 tensors in its own memory, only the page
cache the kernel can drop. (safetensors' own loader maps its files always.)
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffbir.errors import CheckpointError, printable

StateDict = dict[str, torch.Tensor]

# Wrapper keys seen in released checkpoints, in order of preference.
_WRAPPERS = ("state_dict", "params", "params_ema", "model", "module")
# Suffixes of the weights files a folder may hold (named in the error for a folder).
_WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
# The longest part of a library's error message quoted in ours.
_DETAIL_LIMIT = 200


def load_state_dict(
    source: str | PathLike | Mapping,
    *,
    device: str | torch.device = "cpu",
    mmap: bool = False,
) -> StateDict:
    """Return the flat ``name -> tensor`` mapping held by a file or a loaded object.

    ``source`` is a path (safetensors or a PyTorch pickle) or an already loaded
    mapping. Wrappers are unwrapped and a leading ``module.`` is stripped from
    every key. ``mmap``: map a pickle instead of reading it, for CPU loads (one
    in the pre-1.6, non-zip format is read as usual). Raises
    :class:`CheckpointError` for a missing file, a file that is not a
    checkpoint, or a pickle that would need arbitrary code to load.
    """
    if isinstance(source, Mapping):
        return _flatten(source, "<state dict>")
    path = Path(source)
    shown = printable(path)
    if path.is_dir():
        raise CheckpointError(f"{shown}: is a folder, not a weights file{_folder_hint(path)}")
    if not path.is_file():
        raise CheckpointError(f"{shown}: no such weights file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{shown}: the file is empty, not a checkpoint")
    if path.suffix == ".safetensors":
        try:
            raw = load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{shown}: not a readable safetensors file ({_first_line(exc, with_type=False)})"
            ) from None
    else:
        raw = _torch_load(path, device, mmap=mmap and torch.device(device).type == "cpu")
    return _flatten(raw, shown)


def _folder_hint(folder: Path) -> str:
    try:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in _WEIGHTS_SUFFIXES)
    except OSError:
        return ""
    if not found:
        return " (it holds no weights file)"
    return f"; pass the weights file in it: {_preview([printable(n) for n in found], 3)}"


def _torch_load(path: Path, device: str | torch.device, *, mmap: bool = False) -> object:
    shown = printable(path)
    if mmap and not _is_zip(path):
        mmap = False  # only the zip format (torch.save since PyTorch 1.6) can be mapped
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        # The weights-only unpickler names a GLOBAL when the pickle wants to import
        # something (a function, a class); anything else is bytes it cannot parse.
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"{shown}: refused to load: the pickle asks for code beyond plain tensors "
                f"and containers, which could run arbitrary commands ({detail})"
            ) from None
        raise CheckpointError(
            f"{shown}: not a PyTorch checkpoint, or a damaged one ({detail})"
        ) from None
    except Exception as exc:
        # A damaged or foreign file can make the unpickler raise nearly anything
        # (KeyError, IndexError, struct.error, RuntimeError from the zip reader...).
        raise CheckpointError(
            f"{shown}: not a PyTorch checkpoint or truncated ({_first_line(exc)})"
        ) from None


def _is_zip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _unpickler_detail(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for key in ("GLOBAL", "Unsupported"):
        found = next((line for line in lines if key in line), None)
        if found:
            return _shorten(found)
    useful = [line for line in lines if not line.startswith("Check the documentation")]
    return _shorten(useful[-1] if useful else "unreadable pickle")


def _first_line(exc: BaseException, *, with_type: bool = True) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    first = _shorten(text[0])
    return f"{type(exc).__name__}: {first}" if with_type else first


def _shorten(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """``text`` on one line, cut after a sentence (or, failing that, a word and "...").

    Library messages can run long; quoting a part must not stop mid-sentence.
    """
    text = printable(" ".join(text.split()))
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    if end >= limit // 3:  # whole sentences only
        return head[: end + 1]
    cut = head.rfind(" ")
    return (head[:cut] if cut >= limit // 3 else head).rstrip(" ,;:") + "..."


def _flatten(obj: object, origin: str) -> StateDict:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{origin}: expected a mapping of tensors, found {type(obj).__name__}"
        )
    # Unwrap {"state_dict": {...}, "epoch": 3}-style containers until tensors show.
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = [printable(k) for k in obj]
            raise CheckpointError(f"{origin}: holds no tensors (keys: {_preview(keys)})")
        obj = inner
    out: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        if name.startswith("module."):
            name = name[len("module.") :]
        out[name] = value
    return out


def _preview(names: list[str], limit: int = 8) -> str:
    """``a, b, c`` or, past ``limit`` names, ``a, b, c and 123 more``."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def check_keys(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str = "model",
) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the expected keys and shapes.

    The message lists missing keys, unexpected keys and shape mismatches,
    a few of each, so a wrong architecture or config is easy to recognise.
    """
    missing = [printable(k) for k in expected if k not in state_dict]
    unexpected = [printable(k) for k in state_dict if k not in expected]
    wrong = [
        f"{printable(k)}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    lines = [f"the weights do not fit the {what}:"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            lines.append(f"  {len(items)} {label}: {_preview(items, 6)}")
    raise CheckpointError("\n".join(lines))


def load_into(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str | None = None
) -> torch.nn.Module:
    """Strictly load ``state_dict`` into ``module`` after a readable key check.

    Works for modules built on the meta device too (tensors are assigned).
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_keys(expected, state_dict, what=what or type(module).__name__)
    on_meta = any(p.is_meta for p in module.parameters())
    module.load_state_dict(dict(state_dict), strict=True, assign=on_meta)
    return module
