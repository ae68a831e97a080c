"""Captions of the input photo, joined to the positive prompt as the v2.1 release does.

Importing this package loads neither torch nor transformers: :data:`CAPTIONERS`
(names, models, sizes, licences) serves ``--help``; :func:`load_captioner`
imports the model code when it is called.

    with load_captioner("git", device="cpu") as captioner:
        captions = captioner.caption([image])
    prompt = join_prompt(captions[0], "high quality")
"""

from .base import Captioner, NoCaptioner
from .loading import BITS, check_bits, load_captioner
from .names import (
    CAPTIONERS,
    RAM_NOT_OFFERED,
    CaptionerInfo,
    canonical,
    captioner_names,
    describe_captioners,
)
from .prompt import LLAVA_PROMPT, LLAVA_QUESTION, LLAVA_SYSTEM, join_prompt, pad_to_square

__all__ = [
    "BITS",
    "CAPTIONERS",
    "LLAVA_PROMPT",
    "LLAVA_QUESTION",
    "LLAVA_SYSTEM",
    "RAM_NOT_OFFERED",
    "Captioner",
    "CaptionerInfo",
    "NoCaptioner",
    "canonical",
    "captioner_names",
    "check_bits",
    "describe_captioners",
    "join_prompt",
    "load_captioner",
    "pad_to_square",
]
