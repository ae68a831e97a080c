"""LLaVA-1.5 captions as the v2.1 release makes them, through ``transformers``.

The release (``diffbir/utils/caption.py``) runs ``liuhaotian/llava-v1.5-7b``
with the ``llava_v1`` conversation, pads each photo to a square of the image
processor's mean colour, and decodes greedily up to 512 new tokens. Here the
``llava-hf`` conversion of the same weights runs the same steps:

- the prompt is :data:`~diffbir.captioning.prompt.LLAVA_PROMPT`, tokenized as
  the release's ``tokenizer_image_token`` does: the text before ``<image>``
  with the BOS token, then one image token per vision patch, then the text
  after ``<image>`` without special tokens (each part tokenized on its own);
- the photo is padded to a square (:func:`~diffbir.captioning.prompt.pad_to_square`)
  before the CLIP image processor (resize to 336, centre crop, normalise);
- greedy decoding (no sampling, one beam), stopping at ``</s>``; the new
  tokens are decoded without special tokens and stripped.

Every prompt has the same length, so a batch needs no padding and gives each
photo what it gets alone.
"""

from __future__ import annotations

from PIL import Image

from ..errors import DiffBIRError
from .base import ModelCaptioner
from .prompt import IMAGE_PLACEHOLDER, LLAVA_PROMPT, LLAVA_SYSTEM, mean_fill, pad_to_square

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: The release's ``max_new_tokens``.
MAX_NEW_TOKENS = 512


class LlavaCaptioner(ModelCaptioner):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``) asked the release's question."""

    name = "llava"

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        *,
        device,
        batch_size: int = 1,
        max_new_tokens: int = MAX_NEW_TOKENS,
        prompt: str = LLAVA_PROMPT,
    ) -> None:
        super().__init__(model, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.prompt = prompt
        self.fill = mean_fill(image_processor.image_mean)
        self.prompt_ids = prompt_ids(
            tokenizer, prompt, image_token_id(model.config), image_tokens(model.config)
        )

    def ask(self, images: list[Image.Image], question: str) -> list[str]:
        """The answers to ``question`` about each image, in the release's conversation
        template (its system line, ``USER: <image>\\nQUESTION ASSISTANT:``), decoded as
        captions are (``diffbir caption`` asks for long captions this way)."""
        if self.model is None:
            raise DiffBIRError("the llava captioner was closed; load it again")
        question = " ".join(question.split())
        if not question:
            raise DiffBIRError("ask llava a question: got an empty one")
        ids = prompt_ids(
            self.tokenizer,
            f"{LLAVA_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{question} ASSISTANT:",
            image_token_id(self.model.config),
            image_tokens(self.model.config),
        )
        # The question's tokens go with this call only: the captioner is not changed,
        # so other threads captioning with it meanwhile still ask the release's question.
        return self._each_batch(images, lambda batch: self._generate(batch, ids))

    def _caption_batch(self, images: list[Image.Image]) -> list[str]:
        return self._generate(images, self.prompt_ids)

    def _generate(self, images: list[Image.Image], prompt: list[int]) -> list[str]:
        import torch

        squares = [pad_to_square(image, self.fill) for image in images]
        pixels = self.image_processor(images=squares, return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        pixels = pixels.to(self.device, dtype=dtype if dtype.is_floating_point else torch.float16)
        ids = torch.tensor([prompt] * len(images), device=self.device)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=pixels,
            generation_config=greedy_config(self.tokenizer, self.max_new_tokens),
        )
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)

    def _drop_processors(self) -> None:
        self.tokenizer = None
        self.image_processor = None


def prompt_ids(tokenizer, prompt: str, image_token: int, n_image_tokens: int) -> list[int]:
    """The prompt's token ids as the release's ``tokenizer_image_token`` builds them."""
    before, sep, after = prompt.partition(IMAGE_PLACEHOLDER)
    if not sep:
        raise ValueError(f"the prompt has no {IMAGE_PLACEHOLDER}: {prompt!r}")
    head = tokenizer(before, add_special_tokens=True)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    return [*head, *([image_token] * n_image_tokens), *tail]


def image_token_id(config) -> int:
    """The id that stands for one image feature (``image_token_id``; older configs ``image_token_index``)."""
    value = getattr(config, "image_token_id", None)
    return int(value if value is not None else config.image_token_index)


def image_tokens(config) -> int:
    """How many features the vision tower gives per image: one per patch (+ CLS with ``full``)."""
    vision = config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n + 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else n


def greedy_config(tokenizer, max_new_tokens: int):
    """The release's decoding: no sampling, one beam, ``max_new_tokens``, stop at EOS."""
    # transformers loads with the first model built (seconds a bare import need not pay)
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
    )
