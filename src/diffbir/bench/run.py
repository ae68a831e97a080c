"""``diffbir bench``'s work: make the LQ set, restore it per configuration, measure, resume.

Restoring goes through :class:`~diffbir.jobs.batch.RestoreJob` (the restore command's
own job, resuming with ``skip_existing``), measuring through
:func:`diffbir.metrics.evaluate.evaluate` (``diffbir eval``'s). The per-image time is
the restorer's own ``total`` (stage 1 to the decoded image, the device synchronised;
captioning and file writing apart); the peak memory is :class:`~.memory.PeakMemory`'s.
See :mod:`.store` for what is kept where.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from diffbir.bench.grid import BenchConfig
from diffbir.bench.memory import PeakMemory
from diffbir.bench.store import ConfigFolder, read_json, write_json
from diffbir.config.presets import get_preset
from diffbir.config.settings import RestoreOptions, RunConfig
from diffbir.errors import ConfigError, DiffBIRError, printable
from diffbir.jobs.batch import RestoreJob
from diffbir.metrics import evaluate as ev
from diffbir.metrics import report as eval_report
from diffbir.restore.factory import resolve_run


@dataclass
class BenchSetup:
    """Everything a bench needs, checked by the command before it starts."""

    hq: list[str]
    output: Path
    configs: list[BenchConfig]
    metrics: list
    eval_options: ev.EvalOptions
    lq: list[str] | None = None
    degradation: str = "codeformer"
    degradation_seed: int = 0
    size: int | None = None
    task: str = "sr"
    restore: dict = field(default_factory=dict)  # RestoreOptions fields for every config
    loader: dict = field(default_factory=dict)  # weights_dir, model_config, download, device
    device: str | None = None
    dtype: str | None = None
    progress: bool = True


@dataclass
class ConfigOutcome:
    """One configuration's row: its result.json data, or why it has none."""

    config: BenchConfig
    data: dict | None = None
    failed: str | None = None


def resolve_configs(setup: BenchSetup, upscale: float, device_type: str) -> list[RunConfig]:
    """Each configuration's RunConfig, resolved as ``diffbir restore`` resolves one: a
    release that does not take an option (``guidance`` with ``hypir``) is one line."""
    runs = []
    for config in setup.configs:
        preset = get_preset(config.version, setup.task)
        base = {**setup.restore, "upscale": upscale}
        values = {k: v for k, v in base.items() if v is not None and preset.takes(k)}
        values.update(config.options())
        try:
            options = RestoreOptions(**values)
            runs.append(
                resolve_run(
                    config.version, setup.task, options, device_type=device_type, dtype=setup.dtype
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"config {printable(config.text)!r} ({config.name}): {exc}") from None
    return runs


def make_lq(setup: BenchSetup) -> tuple[list[str], list[str]]:
    """(LQ sources, reference sources): ``--lq`` against HQ, or the LQ set made here by
    ``diffbir degrade`` (its own command, resumable) against the pipeline's HQ."""
    if setup.lq is not None:
        try:
            ev.pair_files(setup.lq, setup.hq)
        except DiffBIRError as exc:
            message = str(exc).replace("restored image", "LQ image")
            raise DiffBIRError(f"--lq: {message}") from None
        return list(setup.lq), list(setup.hq)
    from diffbir.cli import degrade

    data = setup.output / "data"
    recipe = {
        "pipeline": setup.degradation,
        "seed": setup.degradation_seed,
        "size": setup.size,
        "hq": [str(Path(p).resolve()) for p in setup.hq],
    }
    kept = read_json(data / "degradation.json")
    if kept is not None and kept != recipe:
        raise DiffBIRError(
            f"{printable(data)} holds an LQ set made otherwise ({printable(kept)}); "
            "remove it or choose another -o"
        )
    parser = argparse.ArgumentParser(prog="diffbir")
    degrade.register(parser.add_subparsers())
    argv = ["degrade", *setup.hq, "-o", str(data), "--pipeline", setup.degradation]
    argv += ["--seed", str(setup.degradation_seed), "--save-hq", "--device", "cpu"]
    if setup.size is not None:
        argv += ["--size", str(setup.size)]
    if not setup.progress:
        argv.append("-q")
    args = parser.parse_args(argv)
    write_json(data / "degradation.json", recipe)
    if args.handler(args) != 0:
        raise DiffBIRError("the LQ set could not be made for every HQ image (see above)")
    return [str(data / "lq")], [str(data / "hq")]


def default_upscale(setup: BenchSetup, lq: list[str], reference: list[str]) -> float:
    """1 for the LQ set made here (degrade resizes it back); with ``--lq`` the ratio of
    the first pair's widths (x4 for a x4 set)."""
    if setup.lq is None:
        return 1.0
    from diffbir.imaging.io import read_image_size

    pair = ev.pair_files(lq, reference)[0]
    return read_image_size(pair.reference)[1] / read_image_size(pair.restored)[1]


@dataclass
class _TimedJob(RestoreJob):
    """The restore job, recording each image's time and peak memory as it is written."""

    record: dict = field(default_factory=dict)
    folder: ConfigFolder | None = None
    memory: PeakMemory | None = None

    def write(self, work, image, result, index: int) -> None:
        super().write(work, image, result, index)
        name = Path(work.key).relative_to(self.output).with_suffix("").as_posix()
        images = max(1, result.image.shape[0] // self.config.n_samples)
        total = result.timings.get("total", math.nan) / images
        self.record.setdefault("seconds", {})[name] = total
        self.record.setdefault("peak_memory", {})[name] = self.memory.read()
        self.record["memory_kind"] = self.memory.kind
        write_json(self.folder.timings, self.record)
        self.memory.reset()


def _restore(setup, config: BenchConfig, run: RunConfig, lq: list[str], folder: ConfigFolder):
    """Restore what is not done yet; returns (summary, restored this time)."""
    memory = PeakMemory(setup.device or "cpu")
    record = read_json(folder.timings) or {}
    job = _TimedJob(
        inputs=lq,
        output=folder.images,
        config=run,
        skip_existing=True,
        progress=setup.progress,
        record=record,
        folder=folder,
        memory=memory,
    )
    timed = set(record.get("seconds", {}))
    for _item, out in job.plan([]):
        name = out.relative_to(folder.images).with_suffix("").as_posix()
        if out.exists() and name not in timed:
            out.unlink()  # written just before a kill, its time unknown: redo it
    loader = dict(
        version=run.version,
        task=setup.task,
        sd=None,
        controlnet=None,
        lora=None,
        cleaner=None,
        dtype=run.dtype,
        progress=setup.progress,
        compile=False,
        offload=False,
        **setup.loader,
    )
    memory.reset()
    summary = job.run(loader)
    gc.collect()
    if memory.cuda:
        import torch

        torch.cuda.empty_cache()
    return summary, record


def _measure(setup, folder: ConfigFolder, reference: list[str]):
    pairs = ev.pair_files([str(folder.images)], reference)
    ev.check_sizes(pairs, setup.eval_options)
    result = ev.evaluate(
        pairs, setup.metrics, setup.eval_options, device=setup.device, progress=setup.progress
    )
    return eval_report.to_json(result, eval_settings(setup.eval_options))


def eval_settings(options: ev.EvalOptions) -> dict:
    """What ``diffbir eval --json`` records of its options."""
    return {
        "crop_border": options.crop_border,
        "y_channel": options.y_channel,
        "resize_to": options.resize_to,
    }


def summarise(timings: dict, names: list[str]) -> dict:
    """Seconds per image (mean) and peak memory per image (the largest) of ``names``."""
    seconds = [timings.get("seconds", {}).get(n) for n in names]
    memory = [timings.get("peak_memory", {}).get(n) for n in names]
    seconds = [s for s in seconds if s is not None]
    memory = [m for m in memory if m is not None]
    return {
        "seconds_per_image": math.fsum(seconds) / len(seconds) if seconds else math.nan,
        "peak_memory_bytes": max(memory) if memory else None,
        "memory_kind": timings.get("memory_kind"),
    }


def run_config(setup, config, run, lq, reference, say) -> ConfigOutcome:
    """One configuration: restore (resuming), then measure unless already measured."""
    folder = ConfigFolder(setup.output, config.name)
    settings = {k: v for k, v in run.as_dict().items() if k != "progress"}
    settings["lq"] = [str(Path(p).resolve()) for p in lq]
    folder.check_settings(settings)
    summary, timings = _restore(setup, config, run, lq, folder)
    if summary.interrupted is not None:
        raise KeyboardInterrupt
    if summary.fatal is not None:
        return ConfigOutcome(config, failed=summary.fatal)
    if summary.failed:
        return ConfigOutcome(config, failed=f"{len(summary.failed)} image(s) failed (see above)")
    names = [m.name for m in setup.metrics]
    kept = read_json(folder.result)
    wanted_eval = eval_settings(setup.eval_options)
    if (
        kept is not None
        and summary.restored == 0
        and list(kept["eval"]["metrics"]) == names
        and kept["eval"]["options"] == wanted_eval
    ):
        say(f"{config.name}: done before, kept")
        return ConfigOutcome(config, data=kept)
    measured = _measure(setup, folder, reference)
    data = {
        "name": config.name,
        "label": config.label(),
        "spec": config.text,
        "version": config.version,
        "model": config.model,
        "values": dict(config.values),
        "guidance_scale": run.guidance_scale if "guidance_scale" not in run.unused else None,
        "settings": settings,
        **summarise(timings, [image["name"] for image in measured["images"]]),
        "timings": timings,
        "eval": measured,
    }
    write_json(folder.result, data)
    return ConfigOutcome(config, data=read_json(folder.result))


def run_bench(setup: BenchSetup, *, device_type: str) -> list[ConfigOutcome]:
    """Every configuration, resolved first (one line for a bad one), then run in order."""
    from diffbir.weights.registry import resolve_many

    def say(text: str) -> None:
        if setup.progress:
            print(f"diffbir bench: {text}", file=sys.stderr)

    if setup.output.exists() and not setup.output.is_dir():
        raise ConfigError(f"-o {printable(setup.output)}: exists and is not a folder")
    if not setup.lq:
        upscale0 = setup.restore.get("upscale") or 1.0
        resolve_configs(setup, upscale0, device_type)  # before the LQ set is made
    # The metrics' weights before any restoring: a missing file is named at once.
    resolve_many(
        ev.required_weights(setup.metrics),
        weights_dir=setup.eval_options.weights_dir,
        download=setup.eval_options.download,
    )
    lq, reference = make_lq(setup)
    upscale = setup.restore.get("upscale") or default_upscale(setup, lq, reference)
    runs = resolve_configs(setup, upscale, device_type)
    outcomes = []
    for number, (config, run) in enumerate(zip(setup.configs, runs), 1):
        say(f"[{number}/{len(runs)}] {config.name}")
        outcome = run_config(setup, config, run, lq, reference, say)
        if outcome.failed:
            print(f"diffbir bench: {config.name}: {outcome.failed}", file=sys.stderr)
        outcomes.append(outcome)
    return outcomes
