"""The run loop that every front end shares: prompts, then read, restore, write.

``diffbir restore`` (:class:`~diffbir.jobs.batch.RestoreJob`, writing files into an
output tree) and the web UI (:func:`diffbir.ui.core.restore_uploads`, writing into
a run folder) hand a :class:`RunLoop` their inputs and a :class:`Sink`. The loop
owns what must not differ between them:

- the prompts of every input are made before the diffusion stage (given ones
  first, then one captioning pass, after which the captioner is freed);
- images are read ahead and batched by size; an unreadable one is reported;
- running out of memory (the GPU's, or the CPU allocator's) while reading,
  restoring or writing fails those images only: one line each, memory is
  released, the run goes on; so does a :class:`~diffbir.errors.DiffBIRError`.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from diffbir.config.settings import RunConfig
from diffbir.errors import DiffBIRError, ImageReadError, is_out_of_memory
from diffbir.imaging.io import DEFAULT_MAX_PIXELS, LoadedImage, read_image, read_image_size
from diffbir.restore.base import Restorer, RestoreResult
from diffbir.restore.plan import MAX_OUTPUT_PIXELS, check_output_size
from diffbir.restore.prompts import ImagePrompt


@dataclass(frozen=True)
class Work:
    """One input of a run: its file and the sink's handle for what it gives."""

    source: Path
    key: Any  # an output path (files), a number (the web UI)...


class Sink(Protocol):
    """Where a run's results go."""

    def write(self, work: Work, image: LoadedImage, result: RestoreResult, index: int) -> None:
        """Write the results of ``work`` (row ``index`` of ``result``); raise
        :class:`DiffBIRError` when it cannot be written."""
        ...


#: ``(input, reason)``: one input failed; the run goes on.
Report = Callable[[Path | str, str], None]


def cli_oom_message(exc: BaseException) -> str:
    """What ``diffbir restore`` says of an image that ran out of memory."""
    where = "GPU" if "CUDA" in str(exc) else "CPU"
    return (
        f"out of memory ({where}): lower --max-memory or set --latent-tile/--vae-tile/"
        "--cleaner-tile, lower --upscale or --batch-size, or use --dtype fp16/bf16 on a GPU"
    )


def free_memory() -> None:
    """Give back what a failed or finished stage held (Python's cycles, CUDA's cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def size_problem(
    path: Path,
    upscale: float,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
    knob: str = "--upscale",
) -> str | None:
    """Why ``path`` cannot be restored at ``upscale``, found from its header alone (it is
    unreadable, holds more than ``max_pixels``, or its result would be above
    ``max_output_pixels``: ``knob`` names the setting to lower), or None."""
    try:
        size = read_image_size(path, max_pixels=max_pixels)
        check_output_size(size, upscale, max_pixels=max_output_pixels, knob=knob)
    except DiffBIRError as exc:
        return str(exc)
    return None


@dataclass
class RunLoop:
    """One run of ``restorer`` with the resolved ``config`` over inputs, into ``sink``."""

    restorer: Restorer
    config: RunConfig
    sink: Sink
    report: Report
    batch_size: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS  # inputs above it are refused when read
    oom_message: Callable[[BaseException], str] = cli_oom_message
    timings: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- prompts
    def prompts(
        self,
        work: Sequence[Work],
        given: dict[Any, ImagePrompt | None],
        *,
        on_caption: Callable[[Work, ImagePrompt], None] | None = None,
        bar: Callable[[Sequence[Work]], Any] = iter,
        free_captioner: bool = True,
    ) -> dict[Any, ImagePrompt]:
        """Every input's prompts, by key, before the diffusion stage: its ``given`` one,
        else the run's (captioner ``none``), else a caption joined to the run's prompt
        (one pass over the images that need one, through ``bar``; then the captioner is
        freed unless told). With tiled sampling the latent tiles' prompts are made too.
        An input that cannot be read is reported and left out."""
        config = self.config
        needs_model = config.captioner != "none" and (
            config.tile_captions == "each" or any(given.get(w.key) is None for w in work)
        )
        made: dict[Any, ImagePrompt] = {}
        if not needs_model:
            for item in work:
                prompt = given.get(item.key)
                if config.tile_captions != "off":
                    made[item.key] = prompt or ImagePrompt(config.prompt, config.negative_prompt)
                    continue
                try:  # the tiles' prompts need the image's size only
                    blank = _size_only(item.source)
                except DiffBIRError as exc:
                    self.report(item.source, str(exc))
                    continue
                made[item.key] = self.restorer.image_prompts(blank, config, [prompt])[0]
            return made
        for item in bar(work):
            try:
                image = read_image(item.source, max_pixels=self.max_pixels)
            except ImageReadError as exc:
                self.report(item.source, str(exc))
                continue
            # A captioner that cannot load is another DiffBIRError: it ends the run.
            prompt = self.restorer.image_prompts(image.rgb[None], config, [given.get(item.key)])
            made[item.key] = prompt[0]
            if on_caption is not None:
                on_caption(item, prompt[0])
        if free_captioner:
            self.restorer.free_captioner()  # before the diffusion stage
            free_memory()
        return made

    # ---------------------------------------------------------------- restore
    def run(
        self,
        work: Sequence[Work],
        prompts: dict[Any, ImagePrompt],
        *,
        before_group: Callable[[list[Work]], None] | None = None,
        after_group: Callable[[list[Work]], None] | None = None,
        on_done: Callable[[Work, RestoreResult, int], None] | None = None,
    ) -> int:
        """Restore ``work`` (each input with ``prompts[key]``) and write every result
        into the sink; returns how many inputs were restored. ``before_group(works)`` and
        ``after_group(works)`` are called around each batch, ``on_done(work, result,
        index)`` after each write."""
        restored = 0
        for group in self._groups([w for w in work if w.key in prompts]):
            if before_group is not None:
                before_group([w for w, _ in group])
            restored += self._restore_group(group, prompts, on_done)
            if after_group is not None:
                after_group([w for w, _ in group])
        return restored

    def _groups(self, work: list[Work]) -> Iterator[list[tuple[Work, LoadedImage]]]:
        """Read images ahead and yield groups of equal size (at most ``batch_size``; one
        input's samples per group with ``n_samples`` > 1)."""
        per_batch = self.batch_size if self.config.n_samples == 1 else 1
        group: list[tuple[Work, LoadedImage]] = []
        for item in work:
            image = self._guarded(item, lambda it=item: self._read(it))
            if image is None:
                continue
            if group and (len(group) == per_batch or group[0][1].rgb.shape != image.rgb.shape):
                yield group
                group = []
            group.append((item, image))
        if group:
            yield group

    def _read(self, item: Work) -> LoadedImage:
        return read_image(item.source, max_pixels=self.max_pixels)

    def _restore_group(self, group, prompts, on_done) -> int:
        works = [w for w, _ in group]
        failure = None
        try:
            batch = torch.stack([image.rgb for _, image in group])
            result = self.restorer.restore(batch, self.config, [prompts[w.key] for w in works])
        except DiffBIRError as exc:
            failure = str(exc)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure = self.oom_message(exc)
        if failure is not None:
            free_memory()  # outside the handler, so the failed frames are gone
            for item in works:
                self.report(item.source, failure)
            return 0
        for key, value in result.timings.items():
            self.timings[key] = self.timings.get(key, 0.0) + value
        restored = 0
        for index, (item, image) in enumerate(group):

            def write(item=item, image=image, index=index) -> bool:
                self.sink.write(item, image, result, index)
                return True

            if self._guarded(item, write) is None:
                continue
            restored += 1
            if on_done is not None:
                on_done(item, result, index)
        return restored

    def _guarded(self, item: Work, action: Callable[[], Any]) -> Any:
        """``action()``, or None after reporting ``item`` when it raised a
        :class:`DiffBIRError` or ran out of memory."""
        failure, out_of_memory = None, False
        try:
            return action()
        except DiffBIRError as exc:
            failure = str(exc)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure, out_of_memory = self.oom_message(exc), True
        if out_of_memory:
            free_memory()  # outside the handler, so the failed frames are gone
        self.report(item.source, failure)
        return None


def output_metadata(result, source: Path, index: int) -> dict[str, str] | None:
    """How an output was made (release, sampler, steps, prompts, caption, seed...), or None."""
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


def _size_only(path: Path) -> torch.Tensor:
    """A blank [1,3,H,W] of the image's size (one stored value): planning tiles needs
    nothing else."""
    h, w = read_image_size(path)
    return torch.zeros(1, 3, 1, 1).expand(1, 3, h, w)
