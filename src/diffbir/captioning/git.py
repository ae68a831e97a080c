"""GIT-base fine-tuned on COCO (``microsoft/git-base-coco``): a light CPU captioner.

GIT is a CLIP ViT-B/16 image encoder (224x224) feeding a 6-layer text
decoder; a caption is generated from the BOS token (``[CLS]``) alone, as the
model card's example does. The photo goes through the checkpoint's own CLIP
image processor (shortest side to 224, centre crop), decoding is greedy and
stops at ``[SEP]``.
"""

from __future__ import annotations

from PIL import Image

from .base import ModelCaptioner

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

#: Room for a COCO-style caption (they are 10 to 20 tokens); the model card's example uses 50.
MAX_NEW_TOKENS = 50


class GitCaptioner(ModelCaptioner):
    """``GitForCausalLM`` captioning from its BOS token."""

    name = "git"

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        *,
        device,
        batch_size: int = 8,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> None:
        super().__init__(model, device=device, batch_size=batch_size, max_new_tokens=max_new_tokens)
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    def _caption_batch(self, images: list[Image.Image]) -> list[str]:
        import torch

        # transformers loads with the first model built (seconds a bare import need not pay)
        from transformers import GenerationConfig

        config = self.model.config
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=next(self.model.parameters()).dtype)
        ids = torch.full((len(images), 1), config.bos_token_id, device=self.device)
        out = self.model.generate(
            input_ids=ids,
            pixel_values=pixels,
            generation_config=GenerationConfig(
                do_sample=False,
                num_beams=1,
                max_new_tokens=self.max_new_tokens,
                bos_token_id=config.bos_token_id,
                eos_token_id=config.eos_token_id,
                pad_token_id=config.pad_token_id,
            ),
        )
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)

    def _drop_processors(self) -> None:
        self.tokenizer = None
        self.image_processor = None
