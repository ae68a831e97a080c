"""The training loop shared by both stages, on ``accelerate``.

One process or many (``accelerate launch``: DDP on GPUs or CPUs; FSDP and DeepSpeed are
refused, see :func:`check_distributed`), mixed precision, gradient accumulation, EMA,
periodic logging / validation / checkpoints, and a resume that continues bit-for-bit: the
data order is a pure function of ``(seed, epoch)``, the position in it is saved in the
checkpoint, and every random state is checkpointed.

The data source is listed once, by the main process, into ``OUTPUT/data_list.npz``; the
other processes and a resumed run read that list (:mod:`diffbir.training.records`). Images
that cannot be read are skipped and counted (``skipped_images``), with the prompt kinds
drawn and the stage's own counts (condition noise), in the logs, the checkpoints'
``state.json`` and :attr:`TrainResult.counts`.

A stage is a :class:`Task`; :func:`train` drives it. What it feeds itself (the data
order, the per-micro-batch generators, the counts) is in :mod:`diffbir.training.batches`.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffbir.errors import ConfigError
from diffbir.training.batches import (
    ResumableBatchSampler,
    count_batch,
    endless_batches,
    reduce_counts,
    step_generator,
    to_device,
)
from diffbir.training.checkpointing import (
    find_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from diffbir.training.config import DataConfig, TrainConfig, per_process_batch
from diffbir.training.data import WorkerSeeder, dataset_from_config
from diffbir.training.ema import EMA
from diffbir.training.outputs import (
    CONFIG_FILE,
    check_output_dir,
    clear_run,
    publish,
    refuse_earlier_run,
    remove_temporaries,
    staging_dir,
    write_text_atomic,
)
from diffbir.training.records import RecordList, read_records


class Task(Protocol):
    """What a training stage provides to the loop."""

    trainable: nn.Module  # the module whose parameters train (prepared/wrapped by the loop)
    counts: dict[str, float]  # the stage's own tallies (summed over processes; *_max: max)

    def train_dataset(self, records=None) -> Dataset:
        """The training set; ``records``: the listed source (a RecordList) to use as is."""

    def checkpoint_state(self) -> dict[str, Any] | None:
        """Per-process state to keep across a restart (e.g. a degradation pool), or None."""

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned."""

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of a batch already on the device; draws randomness from ``generator``."""

    def validate(self, step: int, module: nn.Module) -> dict[str, float]:
        """Validation with the (unwrapped, possibly EMA) trainable module; metrics to log."""

    def export(self, output_dir: Path, module: nn.Module) -> list[Path]:
        """Write the trained model for ``diffbir restore`` into ``output_dir``; its entries.

        ``output_dir`` is a staging folder: the loop moves the entries into the run's folder
        with :func:`~diffbir.training.outputs.publish`, the first one (the weights) last.
        """


# ---------------------------------------------------------------------- optimizer


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or 8-bit AdamW (bitsandbytes) over ``params``."""
    o = cfg.optim
    kwargs = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if o.name == "adam":
        return torch.optim.Adam(params, **kwargs)
    try:
        import bitsandbytes as bnb  # optional (CUDA only): needed for adamw8bit alone
    except ImportError:
        raise ConfigError(
            "optim.name: adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
            "use adamw"
        ) from None
    return bnb.optim.AdamW8bit(params, **kwargs)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then constant (as the released trainings)."""
    warmup = cfg.optim.warmup_steps
    if warmup and step < warmup:
        return cfg.optim.lr * (step + 1) / warmup
    return cfg.optim.lr


# ---------------------------------------------------------------------- distribution


def check_distributed(accelerator) -> None:
    """Refuse the accelerate back-ends this loop does not support, in one line.

    Supported: one process, and DDP over GPUs or CPUs (``accelerate launch`` /
    ``torchrun``). FSDP and DeepSpeed shard the trainable module and its optimizer; EMA,
    export and resume are not built for sharded states, so they are refused up front
    rather than failing hours into a run. The trainable ControlNet (~360M parameters)
    fits with DDP on one 40 GB GPU with bf16 and gradient checkpointing.
    """
    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        name = "FSDP" if kind == DistributedType.FSDP else "DeepSpeed"
        raise ConfigError(
            f"{name} is not supported by diffbir train: use one process or DDP "
            "(accelerate config: multi-GPU or multi-CPU, no FSDP/DeepSpeed)"
        )


LIST_CACHE = "data_list.npz"


def shared_records(acc, cfg: TrainConfig, out: Path, resumed: bool):
    """The training source's listing, made once by the main process.

    A resumed run reuses ``OUTPUT/data_list.npz`` when it lists the same ``data.source``
    (so the order is the one the checkpoint's position refers to, even if files were added).
    Returns ``(records, fresh)`` on the main process and ``(None, False)`` on the others,
    which read the list after the main process has written it (:func:`load_shared_records`).
    A listing error is raised on every process.
    """
    records, fresh, message = None, False, None
    if acc.is_main_process:
        try:
            records, fresh = _main_listing(cfg.data, out / LIST_CACHE, resumed)
        except ConfigError as err:
            message = str(err)
    if acc.num_processes > 1:
        message = broadcast_object_list([message])[0]
    if message is not None:
        raise ConfigError(message)
    return records, fresh


def _main_listing(d: DataConfig, cache: Path, resumed: bool) -> tuple[RecordList, bool]:
    """The main process's ``(records, fresh)``: a resumed run's list of the same source,
    else a new listing; ConfigError when it holds no image."""
    records = None
    if resumed and d.list_cache and cache.is_file():
        records = RecordList.load(cache)
        if records.source != str(d.source):
            records = None
    fresh = records is None
    if fresh:
        records = _list_source(d)
    if not len(records):
        raise ConfigError(f"{d.source}: the dataset has no images")
    return records, fresh


def load_shared_records(acc, cfg: TrainConfig, out: Path, records):
    """The main process's listing on every process (after it was written)."""
    if records is not None:
        return records
    cache = out / LIST_CACHE
    if cfg.data.list_cache and cache.is_file():
        return RecordList.load(cache)
    return _list_source(cfg.data)


def _list_source(d: DataConfig) -> RecordList:
    """``data.source`` listed afresh."""
    return read_records(
        d.source,
        caption_column=d.caption_column,
        long_caption_column=d.long_caption_column,
        path_column=d.path_column,
        sidecar_captions=d.sidecar_captions,
    )


# ---------------------------------------------------------------------- counts

#: What the loop counts from the data: images used, unreadable images skipped, and the
#: prompt kinds drawn (dropped to "", short caption, long caption).
DATA_COUNTS = ("images", "skipped_images", "prompt_empty", "prompt_short", "prompt_long")


# ---------------------------------------------------------------------- logging


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    step: int  # the last completed step
    losses: list[float]  # the mean loss of every step this call ran
    exported: list[Path]
    checkpoints: list[Path]
    metrics: dict[str, float]
    counts: dict[str, float] = field(default_factory=dict)  # totals over all processes


def _allow_new_precision(precision: str) -> None:
    """Let one single-process program train several times with different mixed precision.

    accelerate keeps its state per process and refuses a second ``Accelerator`` with another
    precision; outside a distributed launch that state holds nothing else worth keeping.
    """
    shared = AcceleratorState._shared_state
    if not shared or shared.get("_mixed_precision") in (None, precision):
        return
    if PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def _make_accelerator(cfg: TrainConfig) -> Accelerator:
    log_with = None
    if cfg.run.tensorboard:
        try:
            import tensorboard  # noqa: F401  (optional, the "train" extra: only probed for)

            log_with = "tensorboard"
        except ImportError:
            print("diffbir: tensorboard not installed: console logs only", file=sys.stderr)
    project = ProjectConfiguration(
        project_dir=cfg.run.output_dir, logging_dir=f"{cfg.run.output_dir}/logs"
    )
    _allow_new_precision(cfg.run.mixed_precision)
    # Without CUDA, accelerate runs a torchrun/accelerate-launch job as N unrelated single
    # processes unless told to use the CPUs: then it is DDP over gloo.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=launched and not torch.cuda.is_available(),
        mixed_precision=cfg.run.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accumulation,
        log_with=log_with,
        project_config=project,
    )


# ---------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    make_task: Callable[[TrainConfig, torch.device], Task],
    *,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
) -> TrainResult:
    """Train ``make_task(cfg, device)`` for ``cfg.run.max_steps`` optimizer steps.

    ``resume``: ``"latest"`` or a checkpoint folder. Without it, an output folder that
    already holds a run is refused unless ``overwrite``, which deletes that run's files first
    (:func:`~diffbir.training.outputs.clear_run`). ``stop_after``: return after this many
    steps of this call (an interruption, for tests and time-boxed jobs). The trained model is
    exported to ``cfg.run.output_dir`` when ``max_steps`` is reached.

    Nothing is written before the output place, the checkpoint to resume, an earlier run and
    the data sources have been checked.
    """
    acc = accelerator or _make_accelerator(cfg)
    check_distributed(acc)
    run, out = cfg.run, Path(cfg.run.output_dir)
    folder, batch_size = _check_run(acc, cfg, out, resume, overwrite)
    records, fresh_list = shared_records(acc, cfg, out, resumed=folder is not None)
    task = _seeded_task(cfg, make_task, acc.device)
    _start_run_folder(acc, cfg, out, records, fresh_list, overwrite=overwrite)
    records = load_shared_records(acc, cfg, out, records)
    t = _prepare(acc, cfg, task, records, batch_size)
    if folder is not None:
        _resume(t, folder)
    if acc.log_with:
        acc.init_trackers("diffbir", config=_flat(cfg.to_dict()))
    batches = endless_batches(t.loader, t.sampler, t.dataset, start=t.position)
    result = TrainResult(step=t.step, losses=[], exported=[], checkpoints=[], metrics={})
    console = _Console(acc, progress, t.step, run.max_steps)
    first_step = t.step
    task.trainable.train()
    while t.step < run.max_steps and (stop_after is None or t.step - first_step < stop_after):
        loss, lr = _optimization_step(t, batches)
        result.losses.append(loss)
        console.tick()
        if run.log_every and t.step % run.log_every == 0:
            _log_progress(t, console, loss, lr)
        if cfg.val.every and t.step % cfg.val.every == 0:
            result.metrics = _validate_and_log(t, console)
        if run.save_every and t.step % run.save_every == 0:
            result.checkpoints.append(_save(t, out))
    console.close()
    _finish(t, out, result, console)
    return result


@dataclass
class _Training:
    """What the steps of one :func:`train` call share; ``step`` and ``position`` advance."""

    acc: Accelerator
    cfg: TrainConfig
    task: Task
    dataset: Dataset
    sampler: ResumableBatchSampler
    loader: DataLoader
    batch_size: int  # per process and micro-batch
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    counts: _Counts
    step: int = 0  # optimizer steps done
    position: int = 0  # micro-batches drawn from the data order


class _Counts:
    """The run's tallies: the data's, the task's and, after a resume, the earlier run's."""

    def __init__(self, acc, task: Task) -> None:
        self.acc = acc
        self.data = dict.fromkeys(DATA_COUNTS, 0.0)
        task_counts = getattr(task, "counts", None)
        self.task = {} if task_counts is None else task_counts
        self.offset: dict[str, float] = {}

    def resume(self, saved: dict[str, float]) -> None:
        """Start from a checkpoint's totals: counted once (on the main process), maxima
        everywhere."""
        main = self.acc.is_main_process
        self.offset = {k: float(v) for k, v in saved.items() if main or k.endswith("_max")}

    def totals(self) -> dict[str, float]:
        """Totals over all processes and both runs (call on every process)."""
        local = {**self.data, **self.task}
        for key, value in self.offset.items():
            if key.endswith("_max"):
                local[key] = max(local.get(key, 0.0), value)
            else:
                local[key] = local.get(key, 0.0) + value
        return reduce_counts(self.acc, local)


class _Console:
    """The progress bar and the log lines (main process only), and the speed between lines."""

    def __init__(self, acc, enabled: bool, start: int, total: int) -> None:
        self.acc = acc
        self.bar = _progress_bar(enabled and acc.is_main_process, start, total)
        self.restart_window()

    def say(self, message: str) -> None:
        # Through the bar, so log lines do not break its line.
        if self.acc.is_main_process:
            self.bar.write(message)

    def tick(self) -> None:
        self.window_steps += 1
        self.bar.update(1)

    def steps_per_second(self) -> float:
        """The speed since the last :meth:`restart_window`."""
        return self.window_steps / max(time.perf_counter() - self.window_start, 1e-9)

    def restart_window(self) -> None:
        self.window_start, self.window_steps = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()


# -- the steps, in the order train() runs them


def _check_run(acc, cfg: TrainConfig, out: Path, resume: str | None, overwrite: bool):
    """Everything that can refuse the run before it writes: ``(checkpoint folder or None,
    per-process batch size)``."""
    check_output_dir(out)
    batch_size = per_process_batch(cfg.data, acc.num_processes, cfg.optim.grad_accumulation)
    folder = find_checkpoint(out, resume) if resume is not None else None
    if folder is None and not overwrite:
        refuse_earlier_run(out)
    if folder is not None and overwrite and _inside(folder, out):
        raise ConfigError(
            f"--overwrite would delete {folder}, the checkpoint --resume continues from: "
            "give one of the two"
        )
    if cfg.val.every and cfg.val.source is not None:
        _check_source(cfg, cfg.val.source)
    return folder, batch_size


def _seeded_task(cfg: TrainConfig, make_task, device: torch.device) -> Task:
    """The task, with the same initial weights on every process; then its own randomness."""
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed % 2**32)
    return make_task(cfg, device)


def _start_run_folder(acc, cfg: TrainConfig, out: Path, records, fresh_list: bool, *, overwrite):
    """The run's folder, its config and the data list (main process; the others wait)."""
    # Everything is checked (on every process, before any of them writes): now write.
    acc.wait_for_everyone()
    if acc.is_main_process:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        _write_config(cfg, out / CONFIG_FILE)
        if cfg.data.list_cache and (fresh_list or not (out / LIST_CACHE).is_file()):
            records.save(out / LIST_CACHE)
    acc.wait_for_everyone()


def _prepare(acc, cfg: TrainConfig, task: Task, records, batch_size: int) -> _Training:
    """The data loader, the optimizer (model and optimizer prepared by accelerate), the EMA."""
    run = cfg.run
    dataset = task.train_dataset(records)
    sampler = ResumableBatchSampler(
        len(dataset),
        batch_size,
        seed=run.seed,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=acc.device.type == "cuda",
        worker_init_fn=WorkerSeeder(run.seed, acc.process_index),
    )
    params = [p for p in task.trainable.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    task.trainable, optimizer = acc.prepare(task.trainable, optimizer)
    ema = EMA(acc.unwrap_model(task.trainable), run.ema_decay) if run.ema_decay else None
    return _Training(
        acc=acc,
        cfg=cfg,
        task=task,
        dataset=dataset,
        sampler=sampler,
        loader=loader,
        batch_size=batch_size,
        params=params,
        optimizer=optimizer,
        ema=ema,
        counts=_Counts(acc, task),
    )


def _resume(t: _Training, folder: Path) -> None:
    """Continue from the checkpoint ``folder``: weights, optimizer, EMA, task state, random
    states, the position in the data order and the counts so far."""
    acc = t.acc
    info = load_checkpoint(
        acc, folder, model=t.task.trainable, optimizer=t.optimizer, ema=t.ema, task=t.task
    )
    data = info.get("data", {})
    t.step = int(info["step"])
    t.position = int(data.get("micro_batches", t.step * t.cfg.optim.grad_accumulation))
    saved = data.get("num_records")
    if saved is not None and saved != len(t.dataset):
        acc.print(
            f"diffbir: the checkpoint's data list had {saved} images, this one {len(t.dataset)}: "
            "the data order continues differently"
        )
    if info.get("num_processes", acc.num_processes) != acc.num_processes and (
        t.cfg.data.total_batch_size is None
    ):
        acc.print(
            f"diffbir: resuming a {info['num_processes']}-process run on {acc.num_processes}: "
            "the data order continues differently"
        )
    t.counts.resume(info.get("counts", {}))
    acc.print(f"diffbir: resumed from {folder} at step {t.step}")


def _optimization_step(t: _Training, batches: Iterator[Any]) -> tuple[float, float]:
    """One optimizer step over ``grad_accumulation`` micro-batches (and the EMA's update);
    ``(mean loss over all processes, learning rate)``."""
    acc, cfg, trainable = t.acc, t.cfg, t.task.trainable
    accum = cfg.optim.grad_accumulation
    lr = lr_at(t.step, cfg)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=acc.device)
    for micro in range(accum):
        batch = next(batches)
        count_batch(batch, t.counts.data)
        t.position += 1
        batch = to_device(batch, acc.device)
        gen = step_generator(cfg.run.seed, t.step, acc.process_index, micro, acc.device)
        with acc.accumulate(trainable):
            with acc.autocast():
                loss = t.task.loss(batch, gen)
            acc.backward(loss)
            if acc.sync_gradients and cfg.optim.grad_clip:
                acc.clip_grad_norm_(t.params, cfg.optim.grad_clip)
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
        total += loss.detach().float() / accum
    t.step += 1
    if t.ema is not None:
        t.ema.update(acc.unwrap_model(trainable))
    return float(acc.reduce(total, reduction="mean")), lr


def _log_progress(t: _Training, console: _Console, loss: float, lr: float) -> None:
    """The periodic log line and tracker values: loss, learning rate, speed, skipped images."""
    acc, run = t.acc, t.cfg.run
    rate = console.steps_per_second()
    images_per_s = rate * t.batch_size * t.cfg.optim.grad_accumulation * acc.num_processes
    skipped = t.counts.totals()["skipped_images"]
    console.say(
        f"step {t.step}/{run.max_steps}  loss {loss:.5f}  lr {lr:.2e}  "
        f"{rate:.2f} it/s  {images_per_s:.1f} img/s  "
        f"skipped {int(skipped)}  "
        f"ETA {_format_eta((run.max_steps - t.step) / rate)}"
    )
    if acc.log_with:
        logs = {"loss": loss, "lr": lr, "steps_per_s": rate, "images_per_s": images_per_s}
        acc.log(logs | {"skipped_images": skipped}, step=t.step)
    console.restart_window()


def _validate_and_log(t: _Training, console: _Console) -> dict[str, float]:
    """The task's validation (main process, the others wait), logged; its metrics."""
    metrics = _validate(t.acc, t.task, t.ema, t.step)
    if metrics:
        console.say(f"step {t.step}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if t.acc.log_with:
            t.acc.log(metrics, step=t.step)
    return metrics


def _save(t: _Training, out: Path) -> Path:
    """A checkpoint of this step (every process writes its part); older ones pruned."""
    acc, accum, per_epoch = t.acc, t.cfg.optim.grad_accumulation, len(t.sampler)
    info = {
        "batch_size": t.batch_size,
        "grad_accumulation": accum,
        "data": {
            "micro_batches": t.position,
            "epoch": t.position // per_epoch,
            "batch": t.position % per_epoch,
            "num_records": len(t.dataset),
            "global_batch": t.batch_size * acc.num_processes,
        },
        "counts": t.counts.totals(),
    }
    model, optimizer, ema, task = t.task.trainable, t.optimizer, t.ema, t.task
    path = save_checkpoint(
        acc, out, t.step, model=model, optimizer=optimizer, ema=ema, info=info, task=task
    )
    if acc.is_main_process:
        prune_checkpoints(out, t.cfg.run.keep_last)
    return path


def _finish(t: _Training, out: Path, result: TrainResult, console: _Console) -> None:
    """The call's totals into ``result``; at ``max_steps``, the export (main process)."""
    acc = t.acc
    result.step = t.step
    result.counts = t.counts.totals()
    if result.counts.get("skipped_images"):
        skipped = int(result.counts["skipped_images"])
        console.say(f"diffbir: {skipped} unreadable training image(s) skipped")
    if t.step >= t.cfg.run.max_steps:
        acc.wait_for_everyone()
        if acc.is_main_process:
            staged = t.task.export(staging_dir(out), _final_module(acc, t.task, t.ema))
            result.exported = publish(staged, out)
            for path in result.exported:
                acc.print(f"diffbir: wrote {path}")
    if acc.log_with:
        acc.end_training()


# -- helpers


def _final_module(acc, task: Task, ema) -> nn.Module:
    """The unwrapped trainable module, with the EMA weights when EMA is on (a copy)."""
    module = acc.unwrap_model(task.trainable)
    if ema is None:
        return module
    averaged = copy.deepcopy(module)
    ema.copy_to(averaged)
    return averaged


def _validate(acc, task: Task, ema, step: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if acc.is_main_process:
        module = _final_module(acc, task, ema)
        was_training = module.training
        module.eval()
        with torch.no_grad():
            metrics = task.validate(step, module)
        module.train(was_training)
    acc.wait_for_everyone()
    return metrics


def _progress_bar(enabled: bool, start: int, total: int):
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat scalars (what trackers accept)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flat(value, name + ".")
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _write_config(cfg: TrainConfig, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_source(cfg: TrainConfig, source: str | None) -> None:
    """Raise the data set's one-line error now if ``source`` lists no usable image."""
    dataset_from_config(cfg.data, source, train=False, seed=cfg.run.seed, prompts=False)
