"""Batch restoration of files: inputs -> pipeline -> atomic outputs, resumable.

:class:`RestoreJob` is what ``diffbir restore`` runs. It collects the inputs,
skips finished outputs when resuming, reports a bad file and carries on with
the rest, and shards the work across processes when started with
``accelerate launch`` (one model per GPU, each output written once).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffbir.errors import DiffBIRError
from diffbir.presets import FACE_WHOLE


@dataclass
class JobSummary:
    """What a run did; ``failed`` lists (input, reason) pairs."""

    restored: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    main_process: bool = True  # False on the other processes of a sharded run

    def describe(self) -> str:
        parts = [f"{self.restored} restored"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return "diffbir: " + ", ".join(parts)

    def merge(self, other: JobSummary) -> None:
        self.restored += other.restored
        self.skipped += other.skipped
        self.failed.extend(other.failed)
        for key, value in other.timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value


@dataclass
class RestoreJob:
    """A set of input images restored into an output folder."""

    inputs: Sequence[str | Path]
    output: Path
    options: object  # diffbir.pipeline.RestoreOptions
    recursive: bool = False
    suffix: str = ".png"
    quality: int = 95
    skip_existing: bool = False
    save_stage1: bool = False
    compare: bool = False
    save_faces: bool = False
    batch_size: int = 1
    progress: bool = True
    verbose: bool = False

    def plan(self) -> list[tuple[object, Path]]:
        """(input item, output path) for every input, in a stable order."""
        from diffbir.imaging.paths import collect_inputs, output_paths_for

        items = collect_inputs(self.inputs, recursive=self.recursive)
        # output_paths_for also refuses two inputs that would write one file.
        return list(zip(items, output_paths_for(items, self.output, suffix=self.suffix)))

    def run(self, loader: dict, pipeline=None) -> JobSummary:
        """Restore every planned input. ``loader`` holds the arguments of
        :meth:`DiffBIRPipeline.from_preset` (plus ``compile``); the pipeline is
        only loaded when there is something to do. A ready ``pipeline`` may be
        passed instead."""
        from tqdm.auto import tqdm

        from diffbir.distributed import Shard

        shard = Shard.current()
        work = self.plan()
        summary = JobSummary()
        todo = []
        for item, out in shard.take(work):
            if self.skip_existing and all(p.exists() for p in self.sample_paths(out)):
                summary.skipped += 1
            else:
                todo.append((item, out))
        if todo and pipeline is None:
            pipeline = _load_pipeline(loader, shard)
            # A batch run uses one pair of prompts: encode them and free the text encoder.
            pipeline.prepare_prompts(self.options, drop_text_encoder=True)
        bar = tqdm(
            total=len(todo),
            desc="restoring" if shard.world == 1 else f"restoring [{shard.rank}]",
            unit="img",
            disable=not self.progress or not todo,
            position=shard.rank,
        )
        with bar:
            for group in self._batches(todo, summary):
                self._restore_group(pipeline, group, summary)
                bar.update(len(group))
        total = shard.gather(summary)
        total.main_process = shard.rank == 0
        return total

    def sample_paths(self, out: Path) -> list[Path]:
        """The files one input gives: ``out``, or ``NAME_0``, ``NAME_1``... with
        ``n_samples`` > 1 (the release's naming)."""
        n = getattr(self.options, "n_samples", 1)
        if n == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]

    # ---------------------------------------------------------------- internals
    def _batches(self, todo: list, summary: JobSummary):
        """Read images ahead and yield groups of equal size (at most batch_size)."""
        from diffbir.imaging.io import read_image

        group: list = []
        for item, out in todo:
            try:
                image = read_image(item.path)
            except DiffBIRError as exc:
                _report(summary, item.path, str(exc))
                continue
            # With several samples per input, the batch holds one input's samples.
            per_batch = self.batch_size if getattr(self.options, "n_samples", 1) == 1 else 1
            if group and (len(group) == per_batch or group[0][2].rgb.shape != image.rgb.shape):
                yield group
                group = []
            group.append((item, out, image))
        if group:
            yield group

    def _restore_group(self, pipeline, group: list, summary: JobSummary) -> None:
        from diffbir.imaging.io import write_image

        batch = torch.stack([image.rgb for _, _, image in group])
        try:
            result = pipeline(batch, self.options)
        except DiffBIRError as exc:
            for item, _, _ in group:
                _report(summary, item.path, str(exc))
            return
        except torch.cuda.OutOfMemoryError:
            for item, _, _ in group:
                _report(
                    summary,
                    item.path,
                    "out of memory: lower --max-memory or set --latent-tile/--vae-tile, "
                    "or use --dtype fp16/bf16",
                )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        for key, value in result.timings.items():
            summary.timings[key] = summary.timings.get(key, 0.0) + value
        n_samples = getattr(self.options, "n_samples", 1)
        for index, (item, out, image) in enumerate(group):
            metadata = _metadata(result, item.path, index)
            try:
                for sample, path in enumerate(self.sample_paths(out)):
                    restored = result.image[index * n_samples + sample]
                    write_image(
                        path, restored, alpha=image.alpha, quality=self.quality, metadata=metadata
                    )
                if self.save_stage1:
                    stage1_path = self.output / "stage1" / out.relative_to(self.output)
                    write_image(stage1_path, result.stage1[index * n_samples], quality=self.quality)
                if self.compare:
                    compare_path = self.output / "compare" / out.relative_to(self.output)
                    first = result.image[index * n_samples]
                    write_image(compare_path, side_by_side(image.rgb, first), quality=self.quality)
                if self.save_faces:
                    self._write_faces(result, index, out)
                if metadata:
                    _append_prompt_csv(self.output, out, metadata)
            except DiffBIRError as exc:
                _report(summary, item.path, str(exc))
                continue
            summary.restored += 1
            notes = getattr(result, "notes", None)
            if notes and notes[index]:
                print(f"diffbir: {item.path}: {notes[index]}", file=sys.stderr)
            if self.verbose:
                stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
                print(f"{item.path} -> {out} ({stages})", file=sys.stderr)

    def _write_faces(self, result, index: int, out: Path) -> None:
        """Aligned input crops and restored crops of a whole-photo result."""
        from diffbir.faces import image_to_tensor
        from diffbir.imaging.io import write_image

        faces = getattr(result, "faces", None)
        if not faces:
            return
        relative = out.relative_to(self.output)
        for number, face in enumerate(faces[index]):
            name = relative.with_name(f"{relative.stem}_face{number:02d}{relative.suffix}")
            for kind, crop in (("cropped", face.crop), ("restored", face.restored)):
                path = self.output / "faces" / kind / name
                write_image(path, image_to_tensor(crop)[0], quality=self.quality)


def side_by_side(lq: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """The input (nearest-upscaled to the result's height) left of the result."""
    h = restored.shape[-2]
    scale = h / lq.shape[-2]
    width = max(1, round(lq.shape[-1] * scale))
    left = torch.nn.functional.interpolate(lq[None].float(), size=(h, width), mode="nearest")[0]
    return torch.cat([left, restored.float().cpu()], dim=-1)


def _metadata(result, source: Path, index: int) -> dict[str, str] | None:
    """How an output was made (release, sampler, steps, prompts, seed...), or None."""
    config = getattr(result, "config", None)
    if config is None:
        return None
    data = {"software": "diffbir", "source": Path(source).name}
    data.update(config.metadata())
    return data


def _append_prompt_csv(output: Path, out: Path, metadata: dict[str, str]) -> None:
    """One row per input in OUT/prompt.csv (file_name, pos_prompt, neg_prompt), as the
    release writes it. The file is locked while a row is appended, so the processes of
    a sharded run write one header and never interleave."""
    import csv
    import io

    path = output / "prompt.csv"
    name = str(out.relative_to(output).with_suffix(""))
    try:
        with open(path, "a+", encoding="utf-8", newline="") as f:
            _lock(f)
            f.seek(0, io.SEEK_END)
            writer = csv.writer(f, lineterminator="\n")
            if f.tell() == 0:
                writer.writerow(["file_name", "pos_prompt", "neg_prompt"])
            writer.writerow([name, metadata.get("prompt", ""), metadata.get("negative_prompt", "")])
            f.flush()
    except OSError as exc:
        raise DiffBIRError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _lock(f) -> None:
    """An exclusive advisory lock on ``f`` until it is closed (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _report(summary: JobSummary, path: Path, reason: str) -> None:
    summary.failed.append((str(path), reason))
    print(
        f"diffbir: skipped {reason}"
        if str(path) in reason
        else f"diffbir: skipped {path}: {reason}",
        file=sys.stderr,
    )


def _load_pipeline(loader: dict, shard):
    from diffbir.pipeline import DiffBIRPipeline

    loader = dict(loader)
    compile_model = loader.pop("compile", False)
    if shard.world > 1 and loader.get("device") is None:
        loader["device"] = shard.device
    if loader.get("task") == FACE_WHOLE:
        from diffbir.whole_photo import WholePhotoPipeline

        pipeline = WholePhotoPipeline.from_preset(**loader)
    else:
        pipeline = DiffBIRPipeline.from_preset(**loader)
    if compile_model:
        pipeline.compile()
    return pipeline
