"""What every captioner offers: ``caption(images) -> list[str]``, ``name``, ``close()``."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence

from PIL import Image

from ..errors import DiffBIRError

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.


class Captioner:
    """Turns photos into short English captions.

    ``caption`` takes RGB (or any mode, converted) PIL images and returns one
    stripped string per image, in order; a captioner may run several images
    at once, and the result never depends on how they were grouped.
    ``close()`` drops the weights (a closed captioner refuses to caption);
    ``with load_captioner(...) as c:`` closes on exit.
    """

    name: str = ""

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the weights. Safe to call twice."""

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NoCaptioner(Captioner):
    """``--captioner none``: every caption is empty, so the prompt is the positive prompt."""

    name = "none"

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return ["" for _ in images]


class ModelCaptioner(Captioner):
    """A captioner backed by a ``transformers`` model on one device.

    Subclasses implement :meth:`_caption_batch`; this class splits the input
    into batches of ``batch_size`` and frees the model on :meth:`close`.
    """

    def __init__(self, model, *, device, batch_size: int, max_new_tokens: int) -> None:
        import torch

        if batch_size < 1:
            raise DiffBIRError(f"captioner batch size must be at least 1, not {batch_size}")
        if max_new_tokens < 1:
            raise DiffBIRError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return self._each_batch(images, self._caption_batch)

    def _each_batch(self, images: Sequence[Image.Image], run) -> list[str]:
        """``run(batch)`` over RGB batches of at most ``batch_size`` images, texts stripped."""
        import torch

        if self.model is None:
            raise DiffBIRError(f"the {self.name} captioner was closed; load it again")
        rgb = [image.convert("RGB") for image in images]
        out: list[str] = []
        with torch.inference_mode():
            for batch in _chunks(rgb, self.batch_size):
                out.extend(text.strip() for text in run(batch))
        return out

    def _caption_batch(self, images: list[Image.Image]) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        if self.model is None:
            return
        self.model = None
        self._drop_processors()
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _drop_processors(self) -> None:
        """Let go of tokenizers and image processors too (subclasses)."""


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
