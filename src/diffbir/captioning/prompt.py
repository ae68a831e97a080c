"""The release's caption text: LLaVA's prompt, its square padding, and how a caption joins a prompt.

Facts from the published ``diffbir/utils/caption.py`` and ``inference/loop.py``
(LLaVA-1.5, conversation template ``llava_v1``, ``image_aspect_ratio='pad'``).
Pillow only, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

#: The system line of LLaVA's ``llava_v1`` conversation template.
LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
#: The question the release asks about every input photo.
LLAVA_QUESTION = "Please give me a very short description of this image."
#: Where the image's tokens go in the prompt.
IMAGE_PLACEHOLDER = "<image>"
#: The whole prompt as the release builds it: system, ``USER: <image>\\nQUESTION``, ``ASSISTANT:``.
LLAVA_PROMPT = f"{LLAVA_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{LLAVA_QUESTION} ASSISTANT:"


def join_prompt(caption: str, positive: str) -> str:
    """``caption, positive`` as the release joins them; an empty part is left out.

    ``join_prompt("a dog", "high quality") == "a dog, high quality"``,
    ``join_prompt("", "high quality") == "high quality"``, ``join_prompt("a dog", "") == "a dog"``.
    """
    return ", ".join(text for text in (caption, positive) if text)


def mean_fill(image_mean: Sequence[float]) -> tuple[int, ...]:
    """The padding colour the release derives from an image processor's mean (0..1 → 0..255, truncated)."""
    return tuple(int(x * 255) for x in image_mean)


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """``image`` centred on a square canvas of its longer side, filled with ``fill``.

    LLaVA-1.5's ``pad`` aspect ratio: the offset of the shorter side is
    ``(long - short) // 2``; a square image is returned as it is.
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
