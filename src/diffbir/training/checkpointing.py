"""Training checkpoints: save, find, prune and restore everything a bit-exact resume needs.

A checkpoint is a folder ``<output_dir>/checkpoints/step_00001000/`` holding

* ``model.safetensors``: the trainable module's state dict (for stage 1 the published key
  layout, loadable by ``load_cleaner``), and ``ema.safetensors`` with EMA;
* ``optimizer.pt``: the optimizer state (tensors and plain values, read with
  ``weights_only=True``);
* ``rng_<rank>.pt``: the torch (CPU and CUDA), NumPy and Python random states of each process;
* ``task_<rank>.pt``: the stage's own per-process state when it has one (the training pool
  of a batched degradation);
* ``state.json``: the step, the data position (micro-batches consumed, epoch, batch in it,
  size of the data list) and the run's counts (images, skipped images, prompt kinds...).

A checkpoint appears whole or not at all: its files are written into the sibling
``step_N.tmp``, flushed to disk (files and folder), and the folder is renamed to ``step_N``
(an existing ``step_N`` is first renamed to ``step_N.old``, deleted after). Only names
``step_<digits>`` holding ``state.json`` count as checkpoints, so the ``.tmp``/``.old``
folders of a killed save are never resumed from; the next run removes them
(:func:`diffbir.training.outputs.remove_temporaries`). FSDP and DeepSpeed (sharded states)
are refused before training starts (:func:`diffbir.training.loop.check_distributed`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from diffbir.errors import CheckpointError
from diffbir.training.outputs import CHECKPOINTS, fsync_dir, fsync_tree
from diffbir.weights.checkpoint import load_into, load_state_dict

_NAME = re.compile(r"step_(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(output_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, folder)``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = _NAME.fullmatch(entry.name)
            if m and (entry / "state.json").is_file():
                found.append((int(m.group(1)), entry))
    return sorted(found)


def find_checkpoint(output_dir: str | Path, resume: str) -> Path:
    """``resume`` is ``"latest"`` (the newest checkpoint of the run) or a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume latest: no checkpoint in {Path(output_dir) / CHECKPOINTS}"
            )
        return found[-1][1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint (no state.json)")
    try:
        int(json.loads((path / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"--resume {resume}: state.json is unreadable") from None
    return path


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted folders."""
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - keep_last)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def rng_state() -> dict[str, Any]:
    """This process's random states, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema=None,
    info: dict[str, Any] | None = None,
    task=None,
) -> Path:
    """Write the checkpoint of ``step`` (call on every process)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    extra = task.checkpoint_state() if hasattr(task, "checkpoint_state") else None
    if extra is not None:
        torch.save(extra, tmp / f"task_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process:
        if ema is not None:
            save_file(ema.state_dict(), tmp / "ema.safetensors")
        record = {"step": step, "num_processes": accelerator.num_processes, **(info or {})}
        (tmp / "state.json").write_text(json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(tmp)
        aside = final.with_name(final.name + ".old")
        if final.exists():  # the same step saved again (a resume from an earlier checkpoint)
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        tmp.rename(final)
        fsync_dir(final.parent)
        shutil.rmtree(aside, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _torch_file(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise CheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0]})") from None


def load_checkpoint(
    accelerator,
    folder: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema=None,
    task=None,
) -> dict[str, Any]:
    """Restore a checkpoint into the prepared ``model``/``optimizer`` (and ``task``'s own
    state, when it saved one); returns ``state.json``."""
    folder = Path(folder)
    info = json.loads((folder / "state.json").read_text())
    load_into(accelerator.unwrap_model(model), load_state_dict(folder / "model.safetensors"))
    optimizer.load_state_dict(_torch_file(folder / "optimizer.pt"))
    if ema is not None:
        ema_file = folder / "ema.safetensors"
        if not ema_file.is_file():
            raise CheckpointError(f"{folder}: saved without EMA, but run.ema_decay is set")
        ema.load_state_dict(load_state_dict(ema_file))
    task_file = folder / f"task_{accelerator.process_index}.pt"
    if task_file.is_file() and hasattr(task, "load_checkpoint_state"):
        task.load_checkpoint_state(_torch_file(task_file))
    rng_file = folder / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(_torch_file(rng_file))
    return info
