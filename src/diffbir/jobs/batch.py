"""Batch restoration of files: inputs -> pipeline -> atomic outputs, resumable.

:class:`RestoreJob` is what ``diffbir restore`` runs. Before any model is
loaded it collects the inputs (a missing path, an empty folder, a broken link,
an unreadable file or a result above :data:`~diffbir.restore.plan.MAX_OUTPUT_PIXELS`
is reported in one line and skipped), refuses a run that would overwrite one of
its inputs, checks that the output folder can be written, and removes the
temporary files a killed earlier run left there. It then skips finished outputs
when resuming, reports a file that fails (running out of memory included) and
carries on with the rest, and shards the work across processes when started
with ``accelerate launch`` (one model per GPU, each output written once).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffbir.config.presets import FACE_WHOLE
from diffbir.errors import DiffBIRError, ImageReadError, is_out_of_memory, printable


@dataclass
class JobSummary:
    """What a run did; ``failed`` lists (input, reason) pairs."""

    restored: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    main_process: bool = True  # False on the other processes of a sharded run
    fatal: str | None = None  # why the run stopped early (the models could not load), if so
    interrupted: int | None = None  # the exit status of a run stopped by Ctrl+C or SIGTERM

    def describe(self) -> str:
        parts = [f"{self.restored} restored"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (already done)")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.fatal is not None:
            parts.append("stopped: the models could not be loaded")
        if self.interrupted is not None:
            parts.append("interrupted")
        return "diffbir: " + ", ".join(parts)

    @property
    def ok(self) -> bool:
        """Nothing failed, nothing stopped the run."""
        return not self.failed and self.fatal is None and self.interrupted is None

    def merge(self, other: JobSummary) -> None:
        self.restored += other.restored
        self.skipped += other.skipped
        self.failed.extend(other.failed)
        self.fatal = self.fatal or other.fatal
        self.interrupted = self.interrupted or other.interrupted
        for key, value in other.timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value


@dataclass
class RestoreJob:
    """A set of input images restored into an output folder."""

    inputs: Sequence[str | Path]
    output: Path
    options: object  # diffbir.restore.pipeline.RestoreOptions
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
    # The output factor, to refuse results above diffbir.restore.plan.MAX_OUTPUT_PIXELS before
    # any model loads (None: options.upscale; when that is None too, the pipeline checks).
    upscale: float | None = None
    # Per-image prompts: a --prompts table (diffbir.restore.prompts.PromptTable) and NAME.txt
    # sidecars beside the images.
    prompt_table: object | None = None
    sidecars: bool = True

    def plan(self, problems: list[tuple[str, str]] | None = None) -> list[tuple[object, Path]]:
        """(input item, output path) for every input, in a stable order.

        With ``problems``, a source that gives no image is appended to it as
        ``(source, message)`` and the others are still planned; without, it raises.

        Raises:
            DiffBIRError: two inputs would write one file, or an output would overwrite
                an input (both refuse the whole run: nothing has been written yet).
        """
        from diffbir.imaging.paths import collect_inputs, output_paths_for

        items = collect_inputs(self.inputs, recursive=self.recursive, problems=problems)
        # output_paths_for also refuses two inputs that would write one file.
        work = list(zip(items, output_paths_for(items, self.output, suffix=self.suffix)))
        self._refuse_overwriting_inputs(work)
        return work

    def run(self, loader: dict, pipeline=None) -> JobSummary:
        """Restore every planned input. ``loader`` holds the arguments of
        :meth:`DiffBIRPipeline.from_preset` (plus ``compile``); the pipeline is
        only loaded when there is something to do, after the inputs and the
        output folder have been checked. A ready ``pipeline`` may be passed instead.

        Every input that cannot be used is reported in one line and counted in the
        summary's ``failed``; the others complete. A load failure ends the run with
        ``fatal`` set; Ctrl+C (or SIGTERM, which ``diffbir restore`` turns into
        ``SystemExit``) with ``interrupted`` set, in a single process."""
        from tqdm.auto import tqdm

        from diffbir.jobs.sharding import Shard

        started = time.time()
        if self.output.exists() and not self.output.is_dir():
            raise DiffBIRError(
                f"-o {printable(self.output)}: exists and is not a folder; name a folder"
            )
        shard = Shard.current()
        summary = JobSummary()
        problems: list[tuple[str, str]] = []
        work = self.plan(problems)
        if shard.rank == 0:
            for source, reason in problems:
                _report(summary, source, reason)
        todo = []
        for item, out in shard.take(work):
            if self.skip_existing and all(p.exists() for p in self.sample_paths(out)):
                summary.skipped += 1
                continue
            reason = self._size_problem(item)
            if reason is not None:
                _report(summary, item.path, reason)
                continue
            todo.append((item, out))
        if todo:
            from diffbir.imaging.io import check_writable_folder

            check_writable_folder(self.output)  # before minutes of model loading
        if shard.rank == 0 and work:
            self._remove_stale_temp_files(work, started)
        self._prompts: dict[Path, object] = {}
        try:
            if todo and pipeline is None:
                try:
                    pipeline = _load_pipeline(loader, shard)
                except DiffBIRError as exc:
                    summary.fatal = str(exc)
                    todo = []
            if todo:
                try:
                    todo = self._describe(pipeline, todo, summary, shard)
                    # Every prompt of the run is known now: encode them, free the text encoder.
                    pipeline.prepare_image_prompts(
                        list(self._prompts.values()), drop_text_encoder=True
                    )
                except DiffBIRError as exc:
                    summary.fatal = str(exc)
                    todo = []
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
        except (KeyboardInterrupt, SystemExit) as stop:
            if shard.world > 1:
                raise  # the other processes stop too; no summary to gather
            summary.interrupted = 130 if isinstance(stop, KeyboardInterrupt) else _code(stop)
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
    def _describe(self, pipeline, todo: list, summary: JobSummary, shard) -> list:
        """Find every input's prompts before the diffusion stage: its --prompts row or
        sidecar, else a caption (one pass over the images that need one, after which the
        captioner is freed). Returns the inputs still to restore."""
        from tqdm.auto import tqdm

        from diffbir.imaging.io import read_image
        from diffbir.restore.prompts import prompt_for_file

        config = pipeline.resolve(self.options)
        given = {}
        for item, out in todo:
            try:
                given[out] = prompt_for_file(
                    Path(item.path),
                    positive=config.prompt,
                    negative=config.negative_prompt,
                    table=self.prompt_table,
                    relative=getattr(item, "relative", None),
                    sidecars=self.sidecars,
                )
            except DiffBIRError as exc:
                _report(summary, item.path, str(exc))
        todo = [(item, out) for item, out in todo if out in given]
        needs_model = config.captioner != "none" and (
            config.tile_captions == "each" or any(g is None for g in given.values())
        )
        if not needs_model:
            kept = []
            for item, out in todo:
                if config.tile_captions != "off":
                    self._prompts[out] = _plain(given[out], config)
                else:  # the tiles' prompts need the image's size only
                    try:
                        blank = _size_only(item.path)
                    except DiffBIRError as exc:
                        _report(summary, item.path, str(exc))
                        continue
                    self._prompts[out] = pipeline.image_prompts(blank, self.options, [given[out]])[
                        0
                    ]
                kept.append((item, out))
            return kept
        kept = []
        bar = tqdm(
            todo,
            desc="captioning" if shard.world == 1 else f"captioning [{shard.rank}]",
            unit="img",
            disable=not self.progress,
            position=shard.rank,
        )
        for item, out in bar:
            try:
                image = read_image(item.path)
            except ImageReadError as exc:
                _report(summary, item.path, str(exc))
                continue
            # A captioner that cannot load is another DiffBIRError: it ends the run.
            self._prompts[out] = pipeline.image_prompts(
                image.rgb[None], self.options, [given[out]]
            )[0]
            kept.append((item, out))
            if self.verbose:
                caption = self._prompts[out].caption
                print(f"{printable(item.path)}: {caption!r}", file=sys.stderr)
        pipeline.free_captioner()  # before the diffusion stage
        _free_memory()
        return kept

    def _written_paths(self, out: Path) -> list[Path]:
        """Every file the run may write for the input whose output is ``out``."""
        paths = list(self.sample_paths(out))
        if self.suffix.lower() != ".png":
            paths += [p.with_name(p.name + ".json") for p in paths]  # metadata sidecars
        relative = out.relative_to(self.output)
        if self.save_stage1:
            paths.append(self.output / "stage1" / relative)
        if self.compare:
            paths.append(self.output / "compare" / relative)
        return paths

    def _refuse_overwriting_inputs(self, work: list) -> None:
        """Refuse, before anything is written, a run whose output folder is one of its
        input folders or whose outputs include one of its input files."""
        out_dir = _real(self.output)
        for source in self.inputs:
            if Path(source).is_dir() and _real(Path(source)) == out_dir:
                raise DiffBIRError(
                    f"-o {printable(self.output)} is an input folder: the restorations "
                    "would overwrite or mix with the originals; choose another output folder"
                )
        inputs = {_real(item.path): item.path for item, _ in work}
        csv = _real(self.output / "prompt.csv")
        if csv in inputs:
            raise DiffBIRError(
                f"{printable(inputs[csv])} is an input and would be overwritten by the run's "
                "prompt.csv; choose another output folder"
            )
        for _, out in work:
            for path in self._written_paths(out):
                source = inputs.get(_real(path))
                if source is None:
                    continue
                what = "its restoration" if path == out else printable(path)
                raise DiffBIRError(
                    f"-o {printable(self.output)}: {what} would overwrite the input "
                    f"{printable(source)}; choose an output folder that holds no input"
                )

    def _size_problem(self, item) -> str | None:
        """Why ``item`` cannot be restored, found from its header alone (unreadable, or a
        result above the output limit), or None."""
        from diffbir.imaging.io import read_image_size
        from diffbir.restore.plan import MAX_OUTPUT_PIXELS, check_output_size

        try:
            size = read_image_size(item.path)
            upscale = self.upscale if self.upscale is not None else self.options.upscale
            if upscale is not None:
                check_output_size(size, upscale, max_pixels=MAX_OUTPUT_PIXELS)
        except DiffBIRError as exc:
            return str(exc)
        return None

    def _remove_stale_temp_files(self, work: list, started: float) -> None:
        """Remove the hidden temporary files a killed run left beside this run's outputs
        (only our own pattern, older than this run, of no live process)."""
        from diffbir.imaging.io import remove_stale_temp_files

        folders: set[Path] = set()
        for _, out in work:
            folders.update(path.parent for path in self._written_paths(out))
        if self.save_faces:
            faces = self.output / "faces"
            for kind in ("cropped", "restored"):
                folders.update(
                    faces / kind / out.relative_to(self.output).parent for _, out in work
                )
        removed = []
        for folder in sorted(folders):
            removed += remove_stale_temp_files(folder, before=started)
        if removed and self.verbose:
            print(
                f"diffbir: removed {len(removed)} temporary file(s) left by a killed run",
                file=sys.stderr,
            )

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
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                _report(summary, item.path, _oom_message(exc))
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
        out_of_memory = None
        try:
            batch = torch.stack([image.rgb for _, _, image in group])
            prompts = [self._prompts[out] for _, out, _ in group]
            result = pipeline(batch, self.options, prompts)
        except DiffBIRError as exc:
            for item, _, _ in group:
                _report(summary, item.path, str(exc))
            return
        except Exception as exc:
            # Out of memory on these images (CUDA's, or the CPU allocator's / MemoryError):
            # one line each, and the rest of the batch goes on.
            if not is_out_of_memory(exc):
                raise
            out_of_memory = _oom_message(exc)
        if out_of_memory is not None:
            _free_memory()  # outside the handler, so the failed frames are gone
            for item, _, _ in group:
                _report(summary, item.path, out_of_memory)
            return
        for key, value in result.timings.items():
            summary.timings[key] = summary.timings.get(key, 0.0) + value
        for index, (item, out, image) in enumerate(group):
            try:
                self._write_outputs(result, index, out, image, item.path)
            except DiffBIRError as exc:
                _report(summary, item.path, str(exc))
                continue
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                _report(summary, item.path, _oom_message(exc))
                continue
            summary.restored += 1
            notes = getattr(result, "notes", None)
            if notes and index < len(notes) and notes[index]:
                print(f"diffbir: {printable(item.path)}: {notes[index]}", file=sys.stderr)
            if self.verbose:
                stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
                print(f"{printable(item.path)} -> {printable(out)} ({stages})", file=sys.stderr)

    def _write_outputs(self, result, index: int, out: Path, image, source: Path) -> None:
        from diffbir.imaging.io import write_image

        n_samples = getattr(self.options, "n_samples", 1)
        metadata = _metadata(result, source, index)
        for sample, path in enumerate(self.sample_paths(out)):
            restored = result.image[index * n_samples + sample]
            write_image(path, restored, alpha=image.alpha, quality=self.quality, metadata=metadata)
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
    """How an output was made (release, sampler, steps, prompts, caption, seed...), or None."""
    import json

    config = getattr(result, "config", None)
    if config is None:
        return None
    data = {"software": "diffbir", "source": Path(source).name}
    data.update(config.metadata())
    prompts = getattr(result, "prompts", None)
    if prompts and index < len(prompts):
        prompt = prompts[index]
        data.update(
            prompt=prompt.prompt,
            negative_prompt=prompt.negative_prompt,
            caption=prompt.caption,
            prompt_source=prompt.source,
        )
        if prompt.tiles:
            data["tile_prompts"] = json.dumps(
                [{"region": [round(v, 4) for v in r], "prompt": p} for r, p in prompt.tiles]
            )
    return data


def _append_prompt_csv(output: Path, out: Path, metadata: dict[str, str]) -> None:
    """One row per input in OUT/prompt.csv (file_name, pos_prompt, neg_prompt as the
    release writes it, then the caption that went into pos_prompt). The file is locked
    while a row is appended, so the processes of a sharded run write one header and
    never interleave. It can be given back with ``--prompts`` to reuse the prompts."""
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
                writer.writerow(["file_name", "pos_prompt", "neg_prompt", "caption"])
            writer.writerow(
                [
                    name,
                    metadata.get("prompt", ""),
                    metadata.get("negative_prompt", ""),
                    metadata.get("caption", ""),
                ]
            )
            f.flush()
    except OSError as exc:
        raise DiffBIRError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _plain(given, config):
    """``given`` or, when None, the run's prompts."""
    from diffbir.restore.prompts import ImagePrompt

    return given if given is not None else ImagePrompt(config.prompt, config.negative_prompt)


def _size_only(path: Path) -> torch.Tensor:
    """A blank [1,3,H,W] of the image's size (one stored value): planning tiles needs
    nothing else."""
    from diffbir.imaging.io import read_image_size

    h, w = read_image_size(path)
    return torch.zeros(1, 3, 1, 1).expand(1, 3, h, w)


def _lock(f) -> None:
    """An exclusive advisory lock on ``f`` until it is closed (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _report(summary: JobSummary, path: Path | str, reason: str) -> None:
    """Count ``path`` as failed and say why, on one line that names it once."""
    shown = printable(path)
    reason = " ".join(str(reason).split())
    # Messages that start with the file (read errors name it, sources name themselves)
    # are not prefixed with it again.
    for prefix in (shown, printable(Path(path).name)):
        if reason.startswith(prefix + ": "):
            reason = reason[len(prefix) + 2 :]
            break
    summary.failed.append((str(path), reason))
    print(f"diffbir: skipped {shown}: {reason}", file=sys.stderr)


def _oom_message(exc: BaseException) -> str:
    where = "GPU" if "CUDA" in str(exc) else "CPU"
    return (
        f"out of memory ({where}): lower --max-memory or set --latent-tile/--vae-tile/"
        "--cleaner-tile, lower --upscale or --batch-size, or use --dtype fp16/bf16 on a GPU"
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _real(path: Path) -> Path:
    """``path`` with links and ``..`` resolved (it need not exist), for comparing places."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _code(stop: SystemExit) -> int:
    return stop.code if isinstance(stop.code, int) else 1


def _load_pipeline(loader: dict, shard):
    from diffbir.restore.pipeline import DiffBIRPipeline

    loader = dict(loader)
    # True, or the keyword arguments of DiffBIRPipeline.compile (backend, mode).
    compile_model = loader.pop("compile", False)
    if shard.world > 1 and loader.get("device") is None:
        loader["device"] = shard.device
    if loader.get("task") == FACE_WHOLE:
        from diffbir.restore.whole_photo import WholePhotoPipeline

        pipeline = WholePhotoPipeline.from_preset(**loader)
    else:
        pipeline = DiffBIRPipeline.from_preset(**loader)
    if compile_model:
        pipeline.compile(**(compile_model if isinstance(compile_model, dict) else {}))
    return pipeline
