"""The models' lifetime: which models each stage needs on the device, and the captioner.

A restorer wires its stages; what is on the device when, and when the captioner
is loaded and freed, is decided here, as data where it can be:

- :data:`OFFLOAD_SEQUENCE` and :data:`STAGE_MODELS` declare the order in which
  a run uses its models and which of them each stage needs (as diffusers'
  ``model_cpu_offload_seq``); :class:`Offload` moves them accordingly when idle
  models wait in CPU memory (``--offload``).
- :class:`CaptionerSlot` holds the run's captioner: loaded on first use in the
  captioning phase, kept for the next images, freed before the diffusion phase
  (by the run loop, or here when the device's memory is short).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from diffbir.captioning import load_captioner
from diffbir.errors import ConfigError

#: The models of a DiffBIR run, in the order a run first uses them.
OFFLOAD_SEQUENCE = ("cleaner", "text_encoder", "vae", "unet", "controlnet")

#: The models each stage needs on the device.
STAGE_MODELS: dict[str, tuple[str, ...]] = {
    "stage1": ("cleaner",),
    "prompts": ("text_encoder",),
    "encode": ("vae",),
    "sample": ("unet", "controlnet"),
    # pixel-space guidance decodes the estimate at every step
    "sample_pixel_guidance": ("unet", "controlnet", "vae"),
    "decode": ("vae",),
}

#: Below this much free memory on the device, the captioner is freed before the diffusion
#: stage (and loaded again for the next call that needs it).
CAPTIONER_HEADROOM = 8 * 2**30


class Offload:
    """Where idle models wait, and the moves that put a stage's models on the device.

    ``models(name)`` gives the module of a part of :data:`OFFLOAD_SEQUENCE` (or None
    when the restorer has none, e.g. a freed text encoder)."""

    def __init__(
        self, device: torch.device, models: Callable[[str], torch.nn.Module | None]
    ) -> None:
        self.device = device
        self._models = models
        self.to: torch.device | None = None  # None: everything stays on the device

    def enable(self, to: str | torch.device = "cpu") -> None:
        """Keep every model in ``to``'s memory; each stage moves its own to the device."""
        self.to = torch.device(to)
        for module in self._present(OFFLOAD_SEQUENCE):
            module.to(self.to)

    def _present(self, names) -> list[torch.nn.Module]:
        found = [self._models(name) for name in names]
        return [module for module in found if module is not None]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """With offloading, the models of stage ``name`` on the device for the block."""
        if self.to is None or self.to == self.device:
            yield
            return
        modules = self._present(STAGE_MODELS[name])
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to(self.to)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class PromptEmbeddings:
    """Each prompt's text embedding, computed once (the text encoder on the device for
    the ``prompts`` stage only) and kept for every later image of the run.

    ``encode(prompts) -> [B, 77, D]`` is the model's own (``encode_prompt``);
    ``text_encoder()`` tells whether the encoder is still there."""

    def __init__(self, encode, text_encoder, offload: Offload, dtype: torch.dtype) -> None:
        self._encode = encode
        self._text_encoder = text_encoder
        self._offload = offload
        self._dtype = dtype
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def known(self) -> frozenset[str]:
        """The prompts already encoded."""
        return frozenset(self._cache)

    def __call__(self, prompt: str) -> torch.Tensor:
        """The ``[1, 77, D]`` embedding of ``prompt``."""
        if prompt not in self._cache:
            if self._text_encoder() is None:
                raise ConfigError(
                    "the text encoder was freed after the prompts were encoded; "
                    f"cannot encode the new prompt {prompt[:40]!r}"
                )
            with torch.no_grad(), self._offload.stage("prompts"):
                emb = self._encode([prompt])
            self._cache[prompt] = emb.to(self._offload.device, self._dtype)
        return self._cache[prompt]

    def rows(self, groups, prompts: list[str]) -> torch.Tensor:
        """The embeddings of a batch: each group's prompt for its rows
        (``groups``: ``(rows, stream)`` pairs)."""
        return torch.cat(
            [self(p).expand(rows, -1, -1) for (rows, _), p in zip(groups, prompts, strict=True)]
        )


class CaptionerSlot:
    """The run's captioner: loaded on first use, kept while the same one is asked for."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.weights_dir: Path | None = None
        self.download = True
        self._captioner = None
        self._key: tuple[str, int] | None = None

    @property
    def loaded(self) -> bool:
        return self._captioner is not None

    def get(self, name: str, bits: int, *, progress: bool = False):
        """The captioner ``name`` at ``bits`` (``None`` for ``none``), loading it (and
        freeing another) when needed; see :mod:`diffbir.captioning`."""
        if name == "none":
            return None
        key = (name, bits)
        if self._captioner is None or self._key != key:
            # The captioners' libraries are heavy: loaded with the first captioner only.

            self.free()
            self._captioner = load_captioner(
                name,
                device=self.device,
                bits=bits,
                weights_dir=self.weights_dir,
                offline=None if self.download else True,
                progress=progress,
            )
            self._key = key
        return self._captioner

    def free(self) -> None:
        """Free the captioner's weights (before the diffusion stage, where memory is short)."""
        if self._captioner is not None:
            self._captioner.close()
            self._captioner = None
            self._key = None

    def free_if_memory_is_short(self) -> None:
        """Free the captioner when the device has less than :data:`CAPTIONER_HEADROOM` free."""
        if self._captioner is not None and memory_is_short(self.device):
            self.free()


def memory_is_short(device: torch.device) -> bool:
    """Whether ``device`` has less than :data:`CAPTIONER_HEADROOM` free."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free < CAPTIONER_HEADROOM
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 < CAPTIONER_HEADROOM
    except OSError:
        pass
    return True  # unknown: free it
