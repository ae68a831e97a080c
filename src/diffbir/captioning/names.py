"""The captioners on offer, described without importing torch or transformers.

``--help`` and ``diffbir download`` read :data:`CAPTIONERS`; the models are
loaded by :func:`diffbir.captioning.load_captioner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..errors import ConfigError, printable


@dataclass(frozen=True)
class CaptionerInfo:
    """What one captioner is, what it costs, and under which terms its weights come."""

    name: str
    model: str  # Hugging Face repository of the weights ("" for none)
    size: str  # on disk, as published
    license: str
    needs: str
    summary: str


CAPTIONERS = MappingProxyType(
    {
        "none": CaptionerInfo(
            name="none",
            model="",
            size="0",
            license="-",
            needs="nothing",
            summary="no caption: the positive prompt alone (the release's --captioner none)",
        ),
        "llava": CaptionerInfo(
            name="llava",
            model="llava-hf/llava-1.5-7b-hf",
            size="14.1 GB",
            license="Llama 2 Community License",
            needs="CUDA: ~15 GB of GPU memory at 16 bits, less at 8 or 4 bits (bitsandbytes); "
            "CPU: bfloat16, ~15 GB of RAM and minutes per image",
            summary="LLaVA-1.5-7B, the v2.1 release's captioner: its question, greedy decoding",
        ),
        "git": CaptionerInfo(
            name="git",
            model="microsoft/git-base-coco",
            size="708 MB",
            license="MIT",
            needs="any CPU: ~0.8 GB of RAM, a second or a few per image",
            summary="GIT-base fine-tuned on COCO captions (177M parameters): a light captioner",
        ),
    }
)

#: The v2.1 release's captioner (its default where it can run: CUDA).
RELEASE = "llava"
#: The light captioner: the default where LLaVA cannot run.
LIGHT = "git"

#: Why the release's other captioner is not on offer (README, "Captioners").
RAM_NOT_OFFERED = (
    "RAM++ (--captioner ram in the release) is not offered: it exists only in the "
    "`recognize-anything` package, which needs timm and torchvision"
)


def captioner_names() -> list[str]:
    """Every name ``--captioner`` accepts."""
    return list(CAPTIONERS)


def describe_captioners() -> str:
    """One line per captioner, for ``--help``."""
    return "\n".join(
        f"{c.name}: {c.summary}" + (f" ({c.model}, {c.size}, {c.license})" if c.model else "")
        for c in CAPTIONERS.values()
    )


def canonical(name: str) -> str:
    """``name`` checked (case and spaces ignored); ConfigError naming the choices when unknown."""
    key = name.strip().lower()
    if key in CAPTIONERS:
        return key
    if key in ("ram", "ram++", "ram_plus"):
        raise ConfigError(f"{RAM_NOT_OFFERED}; choose one of {', '.join(CAPTIONERS)}")
    raise ConfigError(
        f"unknown captioner {printable(repr(name))}; choose one of {', '.join(CAPTIONERS)}"
    )
