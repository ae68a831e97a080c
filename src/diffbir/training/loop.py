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

A stage is a :class:`Task`; :func:`train` drives it.
"""

from __future__ import annotations

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
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from diffbir.errors import ConfigError
from diffbir.training.config import TrainConfig, per_process_batch
from diffbir.training.data import WorkerSeeder


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


# ---------------------------------------------------------------------- data order


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches of one process, fixed by ``(seed, epoch)``, resumable mid-epoch.

    Every epoch is a permutation of the dataset cut into global batches of
    ``batch_size * world_size`` (the ragged end is dropped; a dataset smaller than one
    global batch is repeated to fill it); process ``rank`` takes its slice of each.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ConfigError("the dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return max(1, self.n // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start``."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        global_batch = self.batch_size * self.world_size
        order = np.resize(perm, len(self) * global_batch)  # repeats cyclically when short
        for b in range(self.start, len(self)):
            first = b * global_batch + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


def endless_batches(
    loader: DataLoader, sampler: ResumableBatchSampler, dataset: Dataset, start: int
) -> Iterator[Any]:
    """Batches from micro-batch number ``start`` on, epoch after epoch."""
    epoch, skip = divmod(start, len(sampler))
    while True:
        sampler.set_epoch(epoch, skip)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # before iter(): workers copy the dataset then
        yield from loader
        epoch, skip = epoch + 1, 0


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


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
        import bitsandbytes as bnb
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


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device):
    """The generator of one micro-batch's draws: a pure function of where it is in the run."""
    g = torch.Generator(device if device.type == "cuda" else "cpu")
    mixed = np.random.default_rng([seed, step, rank, micro]).integers(2**62)
    return g.manual_seed(int(mixed))


# ---------------------------------------------------------------------- distribution


def check_distributed(accelerator) -> None:
    """Refuse the accelerate back-ends this loop does not support, in one line.

    Supported: one process, and DDP over GPUs or CPUs (``accelerate launch`` /
    ``torchrun``). FSDP and DeepSpeed shard the trainable module and its optimizer; EMA,
    export and resume are not built for sharded states, so they are refused up front
    rather than failing hours into a run. The trainable ControlNet (~360M parameters)
    fits with DDP on one 40 GB GPU with bf16 and gradient checkpointing.
    """
    from accelerate.utils import DistributedType

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
    from diffbir.training.records import RecordList, read_records

    records, fresh, message = None, False, None
    if acc.is_main_process:
        d = cfg.data
        cache = out / LIST_CACHE
        try:
            if resumed and d.list_cache and cache.is_file():
                records = RecordList.load(cache)
                if records.source != str(d.source):
                    records = None
            if records is None:
                records = read_records(
                    d.source,
                    caption_column=d.caption_column,
                    long_caption_column=d.long_caption_column,
                    path_column=d.path_column,
                    sidecar_captions=d.sidecar_captions,
                )
                fresh = True
            if not len(records):
                raise ConfigError(f"{d.source}: the dataset has no images")
        except ConfigError as err:
            message = str(err)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    if message is not None:
        raise ConfigError(message)
    return records, fresh


def load_shared_records(acc, cfg: TrainConfig, out: Path, records):
    """The main process's listing on every process (after it was written)."""
    if records is not None:
        return records
    from diffbir.training.records import RecordList, read_records

    cache = out / LIST_CACHE
    if cfg.data.list_cache and cache.is_file():
        return RecordList.load(cache)
    d = cfg.data
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


def count_batch(batch: dict[str, Any], counts: dict[str, float]) -> None:
    """Add one (CPU) batch to the data counts."""
    hq = batch.get("hq")
    counts["images"] += 0 if hq is None else int(hq.shape[0])
    if "skipped" in batch:
        counts["skipped_images"] += int(torch.as_tensor(batch["skipped"]).sum())
    if "prompt_kind" in batch:
        kinds = torch.as_tensor(batch["prompt_kind"])
        for value, name in enumerate(("prompt_empty", "prompt_short", "prompt_long")):
            counts[name] += int((kinds == value).sum())


def reduce_counts(acc, local: dict[str, float]) -> dict[str, float]:
    """Totals over all processes: sums, and maxima for names ending in ``_max``."""
    keys = sorted(local)
    out: dict[str, float] = {}
    sums = [k for k in keys if not k.endswith("_max")]
    maxes = [k for k in keys if k.endswith("_max")]
    device = acc.device
    if sums:
        t = torch.tensor([float(local[k]) for k in sums], dtype=torch.float64, device=device)
        if acc.num_processes > 1:
            t = acc.reduce(t, reduction="sum")
        out |= {k: float(v) for k, v in zip(sums, t.tolist(), strict=True)}
    if maxes:
        t = torch.tensor([float(local[k]) for k in maxes], dtype=torch.float64, device=device)
        if acc.num_processes > 1:
            t = acc.gather(t[None]).amax(0)
        out |= {k: float(v) for k, v in zip(maxes, t.tolist(), strict=True)}
    return out


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
    from accelerate.state import AcceleratorState, PartialState

    shared = AcceleratorState._shared_state
    if not shared or shared.get("_mixed_precision") in (None, precision):
        return
    if PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if cfg.run.tensorboard:
        try:
            import tensorboard  # noqa: F401

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
    from diffbir.training.checkpointing import (
        find_checkpoint,
        load_checkpoint,
        prune_checkpoints,
        save_checkpoint,
    )
    from diffbir.training.ema import EMA
    from diffbir.training.outputs import (
        CONFIG_FILE,
        check_output_dir,
        clear_run,
        publish,
        refuse_earlier_run,
        remove_temporaries,
        staging_dir,
    )

    acc = accelerator or _make_accelerator(cfg)
    check_distributed(acc)
    run = cfg.run
    out = Path(run.output_dir)
    check_output_dir(out)
    accum = cfg.optim.grad_accumulation
    batch_size = per_process_batch(cfg.data, acc.num_processes, accum)
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
    records, fresh_list = shared_records(acc, cfg, out, resumed=folder is not None)

    # Same initial weights on every process; then the task's own randomness.
    torch.manual_seed(run.seed)
    np.random.seed(run.seed % 2**32)
    task = make_task(cfg, acc.device)
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
    records = load_shared_records(acc, cfg, out, records)
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

    step, position = 0, 0
    data_counts = dict.fromkeys(DATA_COUNTS, 0.0)
    task_counts = getattr(task, "counts", None)
    task_counts = {} if task_counts is None else task_counts
    offset: dict[str, float] = {}
    if folder is not None:
        info = load_checkpoint(
            acc, folder, model=task.trainable, optimizer=optimizer, ema=ema, task=task
        )
        step = int(info["step"])
        position = int(info.get("data", {}).get("micro_batches", step * accum))
        saved = info.get("data", {}).get("num_records")
        if saved is not None and saved != len(dataset):
            acc.print(
                f"diffbir: the checkpoint's data list had {saved} images, this one {len(dataset)}: "
                "the data order continues differently"
            )
        if info.get("num_processes", acc.num_processes) != acc.num_processes and (
            cfg.data.total_batch_size is None
        ):
            acc.print(
                f"diffbir: resuming a {info['num_processes']}-process run on {acc.num_processes}: "
                "the data order continues differently"
            )
        # The totals so far: counted once (on the main process), maxima everywhere.
        offset = {
            k: float(v)
            for k, v in info.get("counts", {}).items()
            if acc.is_main_process or k.endswith("_max")
        }
        acc.print(f"diffbir: resumed from {folder} at step {step}")

    def totals() -> dict[str, float]:
        local = {**data_counts, **task_counts}
        for key, value in offset.items():
            if key.endswith("_max"):
                local[key] = max(local.get(key, 0.0), value)
            else:
                local[key] = local.get(key, 0.0) + value
        return reduce_counts(acc, local)

    if acc.log_with:
        acc.init_trackers("diffbir", config=_flat(cfg.to_dict()))

    batches = endless_batches(loader, sampler, dataset, start=position)
    result = TrainResult(step=step, losses=[], exported=[], checkpoints=[], metrics={})
    bar = _progress_bar(progress and acc.is_main_process, step, run.max_steps)

    def say(message: str) -> None:
        # Through the bar, so log lines do not break its line.
        if acc.is_main_process:
            bar.write(message)

    window_start, window_steps = time.perf_counter(), 0
    first_step = step
    task.trainable.train()
    while step < run.max_steps and (stop_after is None or step - first_step < stop_after):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=acc.device)
        for micro in range(accum):
            batch = next(batches)
            count_batch(batch, data_counts)
            position += 1
            batch = to_device(batch, acc.device)
            gen = step_generator(run.seed, step, acc.process_index, micro, acc.device)
            with acc.accumulate(task.trainable):
                with acc.autocast():
                    loss = task.loss(batch, gen)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.grad_clip:
                    acc.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            total += loss.detach().float() / accum
        step += 1
        window_steps += 1
        if ema is not None:
            ema.update(acc.unwrap_model(task.trainable))
        loss_value = float(acc.reduce(total, reduction="mean"))
        result.losses.append(loss_value)
        bar.update(1)
        if run.log_every and step % run.log_every == 0:
            elapsed = time.perf_counter() - window_start
            rate = window_steps / max(elapsed, 1e-9)
            logs = {"loss": loss_value, "lr": lr, "steps_per_s": rate}
            logs["images_per_s"] = rate * batch_size * accum * acc.num_processes
            counts = totals()
            logs["skipped_images"] = counts["skipped_images"]
            say(
                f"step {step}/{run.max_steps}  loss {loss_value:.5f}  lr {lr:.2e}  "
                f"{rate:.2f} it/s  {logs['images_per_s']:.1f} img/s  "
                f"skipped {int(counts['skipped_images'])}  "
                f"ETA {_format_eta((run.max_steps - step) / rate)}"
            )
            if acc.log_with:
                acc.log(logs, step=step)
            window_start, window_steps = time.perf_counter(), 0
        if cfg.val.every and step % cfg.val.every == 0:
            metrics = _validate(acc, task, ema, step)
            result.metrics = metrics
            if metrics:
                say(f"step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if acc.log_with:
                    acc.log(metrics, step=step)
        if run.save_every and step % run.save_every == 0:
            info = {
                "batch_size": batch_size,
                "grad_accumulation": accum,
                "data": {
                    "micro_batches": position,
                    "epoch": position // len(sampler),
                    "batch": position % len(sampler),
                    "num_records": len(dataset),
                    "global_batch": batch_size * acc.num_processes,
                },
                "counts": totals(),
            }
            path = save_checkpoint(
                acc,
                out,
                step,
                model=task.trainable,
                optimizer=optimizer,
                ema=ema,
                info=info,
                task=task,
            )
            result.checkpoints.append(path)
            if acc.is_main_process:
                prune_checkpoints(out, run.keep_last)
    bar.close()
    result.step = step
    result.counts = totals()
    if result.counts.get("skipped_images"):
        say(f"diffbir: {int(result.counts['skipped_images'])} unreadable training image(s) skipped")
    if step >= run.max_steps:
        acc.wait_for_everyone()
        if acc.is_main_process:
            staged = task.export(staging_dir(out), _final_module(acc, task, ema))
            result.exported = publish(staged, out)
            for path in result.exported:
                acc.print(f"diffbir: wrote {path}")
    if acc.log_with:
        acc.end_training()
    return result


def _final_module(acc, task: Task, ema) -> nn.Module:
    """The unwrapped trainable module, with the EMA weights when EMA is on (a copy)."""
    module = acc.unwrap_model(task.trainable)
    if ema is None:
        return module
    import copy

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
    from tqdm.auto import tqdm

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
    import yaml

    from diffbir.training.outputs import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_source(cfg: TrainConfig, source: str | None) -> None:
    """Raise the data set's one-line error now if ``source`` lists no usable image."""
    from diffbir.training.data import dataset_from_config

    dataset_from_config(cfg.data, source, train=False, seed=cfg.run.seed, prompts=False)
