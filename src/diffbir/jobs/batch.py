"""Batch restoration of files: inputs -> restorer -> atomic outputs, resumable.

:class:`RestoreJob` is what ``diffbir restore`` runs: the files' side of a run
(which inputs, which outputs, resuming, sharding) around the shared run loop of
:mod:`diffbir.jobs.loop`, with itself as the loop's sink. Before any model is
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

import csv
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffbir.config.settings import RunConfig
from diffbir.errors import DiffBIRError, printable
from diffbir.faces import image_to_tensor
from diffbir.imaging.atomic import check_writable_folder, remove_stale_temp_files
from diffbir.imaging.io import read_image, write_image
from diffbir.imaging.paths import collect_inputs, output_paths_for
from diffbir.imaging.profiles import output_profile
from diffbir.jobs.loop import RunLoop, Work, output_metadata, size_problem
from diffbir.jobs.sharding import Shard
from diffbir.restore.factory import load_restorer
from diffbir.restore.plan import MAX_OUTPUT_PIXELS
from diffbir.restore.prompts import prompt_for_file
from diffbir.restore.uncertainty import map_paths, uncertainty_map, write_maps
from diffbir.video import run as video_run
from diffbir.video.io import VIDEO_EXTENSIONS


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
    # The run's settings, resolved once (diffbir.restore.factory.resolve_run).
    config: RunConfig
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
    # Per-image prompts: a --prompts table (diffbir.restore.prompts.PromptTable) and NAME.txt
    # sidecars beside the images.
    prompt_table: object | None = None
    sidecars: bool = True
    # Clips (diffbir.video): how they are restored and written; ``frames``: input folders
    # are clips of numbered frames.
    video: object | None = None
    frames: bool = False
    # Called once the inputs and the output folder are checked, just before the models
    # load: a message to stop the run with (the files a first run lacks, offline), or None.
    before_load: Callable[[], str | None] | None = None

    def plan(self, problems: list[tuple[str, str]] | None = None) -> list[tuple[object, Path]]:
        """(input item, output path) for every input, in a stable order.

        With ``problems``, a source that gives no image is appended to it as
        ``(source, message)`` and the others are still planned; without, it raises.

        Raises:
            DiffBIRError: two inputs would write one file, or an output would overwrite
                an input (both refuse the whole run: nothing has been written yet).
        """
        sources = [s for s in self.inputs if not (self.frames and Path(s).is_dir())]
        items = collect_inputs(
            sources, recursive=self.recursive, problems=problems, extensions=self._extensions()
        )
        items = [item for item in items if not video_run.is_video(item.path)]
        # output_paths_for also refuses two inputs that would write one file.
        work = list(zip(items, output_paths_for(items, self.output, suffix=self.suffix)))
        self._refuse_overwriting_inputs(work)
        self._refuse_maps_over_outputs(work)
        return work

    def _extensions(self):
        from diffbir.imaging.paths import IMAGE_EXTENSIONS

        return IMAGE_EXTENSIONS | VIDEO_EXTENSIONS

    def clips(self) -> list[tuple[video_run.ClipSource, Path]]:
        """(clip, output) of every video input (and, with ``frames``, every input folder)."""
        from diffbir.config.settings import VideoOptions

        video = self.video or VideoOptions()
        sources = [s for s in self.inputs if not (self.frames and Path(s).is_dir())]
        found = collect_inputs(
            sources, recursive=self.recursive, problems=[], extensions=self._extensions()
        )
        clips = [video_run.ClipSource(Path(i.path)) for i in found if video_run.is_video(i.path)]
        if self.frames:
            clips += [video_run.ClipSource(Path(s), True) for s in self.inputs if Path(s).is_dir()]
        return [(c, video_run.output_for(c, self.output, video)) for c in clips]

    def _run_clips(self, pipeline, clips, summary: JobSummary) -> int:
        from diffbir.config.settings import VideoOptions

        def prompt_of(path: Path):
            config = self.config
            return prompt_for_file(
                path,
                positive=config.prompt,
                negative=config.negative_prompt,
                table=self.prompt_table,
                sidecars=self.sidecars,
            )

        return video_run.restore_clips(
            pipeline,
            self.config,
            self.video or VideoOptions(),
            clips,
            resume=self.skip_existing,
            progress=self.progress,
            report=lambda path, reason: _report(summary, path, reason),
            prompt_of=prompt_of,
            verbose=self.verbose,
        )

    def run(self, loader: dict, pipeline=None) -> JobSummary:
        """Restore every planned input. ``loader`` holds the arguments of
        :func:`~diffbir.restore.factory.load_restorer` (version, task, weights, device,
        ``compile``...); the restorer is only loaded when there is something to do,
        after the inputs and the output folder have been checked. A ready restorer
        may be passed as ``pipeline`` instead.

        Every input that cannot be used is reported in one line and counted in the
        summary's ``failed``; the others complete. A load failure ends the run with
        ``fatal`` set; Ctrl+C (or SIGTERM, which ``diffbir restore`` turns into
        ``SystemExit``) with ``interrupted`` set, in a single process."""
        started = time.time()
        if self.output.exists() and not self.output.is_dir():
            raise DiffBIRError(
                f"-o {printable(self.output)}: exists and is not a folder; name a folder"
            )
        self._refuse_uncertainty_for_clips()
        shard = Shard.current()
        summary = JobSummary()
        problems: list[tuple[str, str]] = []
        planned = self.plan(problems)
        if shard.rank == 0:
            for source, reason in problems:
                _report(summary, source, reason)
        remap: list = []  # done but for their maps, made from the samples written
        todo = self._todo(shard.take(planned), summary, remap)
        clips = []
        for clip, out in shard.take(self.clips()):
            if self.skip_existing and out.exists():
                summary.skipped += 1
            else:
                clips.append((clip, out))
        if todo or clips or remap:
            check_writable_folder(self.output)  # before minutes of model loading
        if shard.rank == 0 and planned:
            self._remove_stale_temp_files(planned, started)
        try:
            self._maps_from_samples(remap, summary)
            if (todo or clips) and pipeline is None:
                stop = self.before_load() if self.before_load is not None else None
                try:
                    if stop is not None:
                        raise DiffBIRError(stop)
                    pipeline = _load_restorer(loader, shard)
                except DiffBIRError as exc:
                    summary.fatal = str(exc)
                    todo, clips = [], []
            loop = RunLoop(
                pipeline,
                self.config,
                sink=self,
                report=lambda path, reason: _report(summary, path, reason),
                batch_size=self.batch_size,
            )
            work = [Work(Path(item.path), out) for item, out in todo]
            prompts = {}
            if todo:
                try:
                    prompts = self._prompts_of(loop, todo, summary, shard)
                    # Every prompt of the run is known now: encode them, free the text encoder.
                    pipeline.prepare_image_prompts(
                        list(prompts.values()), drop_text_encoder=not clips
                    )
                except DiffBIRError as exc:
                    summary.fatal = str(exc)
                    work = []
            self._prompts = prompts
            bar = tqdm(
                total=len(work),
                desc="restoring" if shard.world == 1 else f"restoring [{shard.rank}]",
                unit="img",
                disable=not self.progress or not work,
                position=shard.rank,
            )
            with bar:
                summary.restored += loop.run(
                    work,
                    prompts,
                    after_group=lambda group: bar.update(len(group)),
                    on_done=self._done,
                )
            summary.timings.update(loop.timings)
            if clips:
                summary.restored += self._run_clips(pipeline, clips, summary)
        except (KeyboardInterrupt, SystemExit) as stop:
            if shard.world > 1:
                raise  # the other processes stop too; no summary to gather
            summary.interrupted = 130 if isinstance(stop, KeyboardInterrupt) else _code(stop)
        total = shard.gather(summary)
        total.main_process = shard.rank == 0
        return total

    def _todo(self, planned, summary: JobSummary, remap: list | None = None) -> list:
        """The planned inputs still to restore: finished ones skipped when resuming, and
        those whose header says they cannot be restored reported. With ``remap``, inputs
        whose samples are all written but whose ``--uncertainty`` maps are not, with two
        samples or more, go there instead: their spread is made from the files."""
        todo = []
        for item, out in planned:
            if self.skip_existing and all(p.exists() for p in self.finished_paths(out)):
                summary.skipped += 1
                continue
            if (
                remap is not None
                and self.skip_existing
                and self.config.n_samples >= 2
                and all(p.exists() for p in self.sample_paths(out))
            ):
                remap.append((item, out))
                continue
            reason = size_problem(Path(item.path), self.config.upscale)
            if reason is not None:
                _report(summary, item.path, reason)
                continue
            todo.append((item, out))
        return todo

    def sample_paths(self, out: Path) -> list[Path]:
        """The files one input gives: ``out``, or ``NAME_0``, ``NAME_1``... with
        ``n_samples`` > 1 (the release's naming)."""
        n = self.config.n_samples
        if n == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]

    def finished_paths(self, out: Path) -> list[Path]:
        """The files whose presence means the input is done (resuming): its samples, and
        with ``--uncertainty`` its two map files (one per input, named after ``out``)."""
        paths = self.sample_paths(out)
        if self.config.uncertainty:
            paths += list(map_paths(out))
        return paths

    def _maps_from_samples(self, remap: list, summary: JobSummary) -> None:
        """The ``--uncertainty`` maps of inputs whose samples an earlier run wrote (the
        spread needs nothing else): read back, no model loaded, counted as skipped."""
        made = 0
        for item, out in remap:
            paths = self.sample_paths(out)
            try:
                images = [read_image(p, max_pixels=MAX_OUTPUT_PIXELS).rgb for p in paths]
                if len({tuple(image.shape) for image in images}) != 1:
                    raise DiffBIRError(
                        f"--uncertainty: its samples ({printable(paths[0].name)}...) differ in "
                        "size; remove them to restore again"
                    )
                metadata = {"software": "diffbir", "source": Path(item.path).name}
                metadata.update(self.config.metadata(), uncertainty_from="the written samples")
                write_maps(out, uncertainty_map(torch.stack(images), None), metadata)
            except DiffBIRError as exc:
                _report(summary, item.path, str(exc))
                continue
            made += 1
        summary.skipped += made
        if made and (self.progress or self.verbose):
            print(
                f"diffbir: {made} uncertainty map(s) made from the samples already written",
                file=sys.stderr,
            )

    # ---------------------------------------------------------------- internals
    def _prompts_of(self, loop: RunLoop, todo: list, summary: JobSummary, shard) -> dict:
        """Every input's prompts before the diffusion stage: its --prompts row or
        sidecar, else a caption (one pass over the images that need one, after which the
        captioner is freed)."""
        config = self.config
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
        work = [Work(Path(item.path), out) for item, out in todo if out in given]

        def bar(items):
            desc = "captioning" if shard.world == 1 else f"captioning [{shard.rank}]"
            return tqdm(
                items, desc=desc, unit="img", disable=not self.progress, position=shard.rank
            )

        def said(work: Work, prompt) -> None:
            if self.verbose:
                print(f"{printable(work.source)}: {prompt.caption!r}", file=sys.stderr)

        return loop.prompts(work, given, on_caption=said, bar=bar)

    def _done(self, work: Work, result, index: int) -> None:
        """Say what became of an input: the restorer's note, and with --verbose its times."""
        notes = result.notes
        if notes and index < len(notes) and notes[index]:
            print(f"diffbir: {printable(work.source)}: {notes[index]}", file=sys.stderr)
        if self.verbose:
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
            print(f"{printable(work.source)} -> {printable(work.key)} ({stages})", file=sys.stderr)

    def _written_paths(self, out: Path) -> list[Path]:
        """Every file the run may write for the input whose output is ``out``."""
        paths = list(self.sample_paths(out))
        if self.suffix.lower() != ".png":
            paths += [p.with_name(p.name + ".json") for p in paths]  # metadata sidecars
        if self.config.uncertainty:
            paths += list(map_paths(out))
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

    def _refuse_maps_over_outputs(self, work: list) -> None:
        """With ``--uncertainty``, refuse a run where one input's map would be another's
        output (``a.png`` beside ``a.uncertainty.png``), before anything is written."""
        if not self.config.uncertainty:
            return
        outputs = {}
        for item, out in work:
            for path in self.sample_paths(out):
                outputs[path.as_posix().lower()] = item
        for item, out in work:
            for path in map_paths(out):
                other = outputs.get(path.as_posix().lower())
                if other is not None:
                    raise DiffBIRError(
                        f"--uncertainty: the map of {printable(item.path)} would overwrite the "
                        f"restoration of {printable(other.path)} ({printable(path)}); rename one"
                    )

    def _refuse_uncertainty_for_clips(self) -> None:
        """``--uncertainty`` maps photos; a clip among the inputs refuses the run."""
        if not self.config.uncertainty:
            return
        clips = self.clips()
        if clips:
            raise DiffBIRError(
                f"--uncertainty maps photos, not video ({printable(clips[0][0].path)}): "
                "restore clips without it"
            )

    def _remove_stale_temp_files(self, work: list, started: float) -> None:
        """Remove the hidden temporary files a killed run left beside this run's outputs
        (only our own pattern, older than this run, of no live process)."""
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

    def write(self, work: Work, image, result, index: int) -> None:
        """The run loop's sink: the restored file(s) of one input, and with --save-stage1,
        --compare, --save-faces those too; a row of prompt.csv."""
        out = work.key
        n_samples = self.config.n_samples
        metadata = output_metadata(result, work.source, index)
        # Every file of this input: in its profile, at its depth, with its metadata.
        as_input = file_options(self.config, image, self.suffix, quality=self.quality)
        for sample, path in enumerate(self.sample_paths(out)):
            restored = result.image[index * n_samples + sample]
            write_image(path, restored, alpha=image.alpha, metadata=metadata, **as_input)
        if self.config.uncertainty:  # after the samples: its files mark the input done
            rows = slice(index * n_samples, (index + 1) * n_samples)
            umap = uncertainty_map(result.image[rows], result.stage1[index * n_samples])
            write_maps(out, umap, metadata)
        if self.save_stage1:
            stage1_path = self.output / "stage1" / out.relative_to(self.output)
            write_image(stage1_path, result.stage1[index * n_samples], **as_input)
        if self.compare:
            compare_path = self.output / "compare" / out.relative_to(self.output)
            first = result.image[index * n_samples]
            write_image(compare_path, side_by_side(image.rgb, first), **as_input)
        if self.save_faces:
            self._write_faces(result, index, out, as_input)
        if metadata:
            _append_prompt_csv(self.output, out, metadata)

    def _write_faces(self, result, index: int, out: Path, as_input: dict) -> None:
        """Aligned input crops and restored crops of a whole-photo result, in the
        photo's output profile with its metadata (8 bits: the crops are 8-bit)."""
        faces = result.faces
        if not faces:
            return
        relative = out.relative_to(self.output)
        for number, face in enumerate(faces[index]):
            name = relative.with_name(f"{relative.stem}_face{number:02d}{relative.suffix}")
            for kind, crop in (("cropped", face.crop), ("restored", face.restored)):
                path = self.output / "faces" / kind / name
                write_image(path, image_to_tensor(crop)[0], **{**as_input, "bit_depth": 8})


def file_options(config: RunConfig, image, suffix: str, *, quality: int) -> dict:
    """:func:`write_image`'s arguments for the files of one input: the ICC profile
    (``--output-profile``), the bit depth (``--bit-depth``) and the metadata carried
    (none with ``--strip-metadata``; GPS only with ``--keep-gps``)."""
    carry = None
    if not config.strip_metadata and not image.metadata.empty:
        carry = image.metadata if config.keep_gps else image.metadata.without_gps()
    return dict(
        quality=quality,
        icc_profile=output_profile(image.icc_profile, config.output_profile),
        bit_depth=config.output_bit_depth(image.bit_depth, suffix),
        carry=carry,
    )


def side_by_side(lq: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """The input (nearest-upscaled to the result's height) left of the result."""
    h = restored.shape[-2]
    scale = h / lq.shape[-2]
    width = max(1, round(lq.shape[-1] * scale))
    left = torch.nn.functional.interpolate(lq[None].float(), size=(h, width), mode="nearest")[0]
    return torch.cat([left, restored.float().cpu()], dim=-1)


def _append_prompt_csv(output: Path, out: Path, metadata: dict[str, str]) -> None:
    """One row per input in OUT/prompt.csv (file_name, pos_prompt, neg_prompt as the
    release writes it, then the caption that went into pos_prompt). The file is locked
    while a row is appended, so the processes of a sharded run write one header and
    never interleave. It can be given back with ``--prompts`` to reuse the prompts."""
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


def _real(path: Path) -> Path:
    """``path`` with links and ``..`` resolved (it need not exist), for comparing places."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def _code(stop: SystemExit) -> int:
    return stop.code if isinstance(stop.code, int) else 1


def _load_restorer(loader: dict, shard):
    loader = dict(loader)
    if shard.world > 1 and loader.get("device") is None:
        loader["device"] = shard.device  # one model per GPU
    return load_restorer(**loader)
