"""``load_captioner``: a captioner by name, its weights from the registry, never the network offline."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

from diffbir.weights import folders as weights_folders
from diffbir.weights import registry as weights

from ..errors import CheckpointError, ConfigError, WeightsNotFoundError, printable
from .base import Captioner, NoCaptioner
from .names import canonical

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: ``--captioner-bits`` values (the release's ``--llava_bit``).
BITS = (16, 8, 4)


def load_captioner(
    name: str,
    *,
    device,
    dtype=None,
    bits: int = 16,
    weights_dir: str | PathLike | None = None,
    path: str | PathLike | None = None,
    offline: bool | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> Captioner:
    """Load the captioner ``name`` (``none``, ``llava``, ``git``) onto ``device``.

    - ``dtype``: the weights' dtype; default fp16 on CUDA, on CPU bfloat16 for
      ``llava`` (fp32 would need 28 GB) and fp32 for ``git``.
    - ``bits``: 16, or 8 / 4 for ``llava`` through ``bitsandbytes`` (CUDA only,
      the release's ``--llava_bit``); anything else is refused before loading.
    - ``path``: a model folder to use instead of the registry's (a
      ``save_pretrained`` folder or a download of the repository).
    - ``weights_dir``: looked in (and downloaded into) before the cache, as
      for every weights file; ``offline`` (default: ``HF_HUB_OFFLINE`` /
      ``DIFFBIR_OFFLINE``) forbids downloading. Loading always uses local files
      only.
    - ``batch_size``, ``max_new_tokens``: default to each model's (the release's
      512 new tokens for ``llava``); smaller values are for tests and benchmarks.

    Raises :class:`ConfigError` for an unknown name or bits that cannot run
    here, :class:`WeightsNotFoundError` (one line) when the model is absent and
    may not be fetched, :class:`CheckpointError` when the folder does not load.
    """
    name = canonical(name)
    check_bits(name, bits, device)
    if name == "none":
        return NoCaptioner()
    folder = _model_folder(
        name, path=path, weights_dir=weights_dir, offline=offline, progress=progress
    )
    options = {}
    if batch_size is not None:
        options["batch_size"] = batch_size
    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    import torch

    device = torch.device(device)
    dtype = _default_dtype(name, device) if dtype is None else dtype
    with _progress_bars(progress):
        if name == "llava":
            return _load_llava(folder, device=device, dtype=dtype, bits=bits, **options)
        return _load_git(folder, device=device, dtype=dtype, **options)


@contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """transformers' own loading bars off for the block when ``shown`` is False (-q),
    then as they were."""
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers.utils import logging as hf_logging

    if shown or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def check_bits(name: str, bits: int, device) -> None:
    """Refuse, in one line, bits that ``name`` cannot run with on ``device``."""
    if bits not in BITS:
        raise ConfigError(f"--captioner-bits must be one of 16, 8, 4, not {bits}")
    if bits == 16:
        return
    if name != "llava":
        raise ConfigError(f"--captioner-bits {bits} applies to --captioner llava only, not {name}")
    kind = str(device).split(":")[0]
    if kind != "cuda":
        raise ConfigError(
            f"--captioner-bits {bits} needs CUDA and the bitsandbytes package, and this run is "
            f"on {kind}: use --captioner-bits 16, or --captioner git or none"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"--captioner-bits {bits} needs the bitsandbytes package (pip install bitsandbytes) "
            "on CUDA; or use --captioner-bits 16"
        )


def _default_dtype(name: str, device):
    import torch

    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if name == "llava" else torch.float32


def _model_folder(name, *, path, weights_dir, offline, progress) -> Path:

    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsNotFoundError(
                f"{printable(folder)} is not a model folder (no config.json) for the {name} "
                f"captioner; run `diffbir download {name}`, or use --captioner none."
            )
        return folder
    if offline is None:
        offline = weights.offline_from_env() is not None
    return weights_folders.resolve_folder(
        name, weights_dir=weights_dir, download=not offline, progress=progress
    )


def _quantization(bits: int):
    """The release's llava builder settings: 8-bit, or 4-bit NF4 with double quantization."""
    import torch

    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.float16,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4",
    )


def _load_llava(folder: Path, *, device, dtype, bits: int, **options) -> Captioner:
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from .llava import LlavaCaptioner

    kwargs = {"local_files_only": True, "dtype": dtype}
    if bits != 16:
        kwargs["quantization_config"] = _quantization(bits)
        kwargs["device_map"] = {"": device.index or 0}
    with _as_checkpoint_error(folder, "llava"):
        model = LlavaForConditionalGeneration.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = _clip_image_processor(folder)
    if bits == 16:
        model = model.to(device)
    return LlavaCaptioner(model.eval(), tokenizer, image_processor, device=device, **options)


def _load_git(folder: Path, *, device, dtype, **options) -> Captioner:
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import AutoTokenizer, GitForCausalLM

    from .git import GitCaptioner

    with _as_checkpoint_error(folder, "git"):
        model = GitForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = _clip_image_processor(folder)
    return GitCaptioner(
        model.to(device).eval(), tokenizer, image_processor, device=device, **options
    )


def _clip_image_processor(folder: Path):
    """Both checkpoints name ``CLIPImageProcessor``: load its Pillow implementation, which
    needs no torchvision (and is what the release's transformers ran), without the
    fallback warning ``AutoImageProcessor`` prints when torchvision is absent."""
    # transformers loads with the first model built (seconds a bare import need not pay)
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(folder, local_files_only=True)


class _as_checkpoint_error:
    """Turn what ``from_pretrained`` raises on a broken folder into one line."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or not isinstance(exc, (OSError, ValueError, KeyError, RuntimeError)):
            return False
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"the {self.name} captioner's folder {printable(self.folder)} does not load: "
            f"{printable(first)}; run `diffbir download {self.name}` again, or use --captioner none"
        ) from None
