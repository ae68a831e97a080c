"""Tiny random captioning models, saved as the published folders are laid out.

Built with transformers' own config classes (no download): a byte-level
tokenizer with BOS/EOS/PAD and ``<image>``, a tiny LLaVA (CLIP vision tower +
Llama) and a tiny GIT. :func:`tiny_release.make_tiny_release` puts a GIT
folder among the tiny weights, so v2.1 runs on CPU caption with it by default.
"""

from __future__ import annotations

import torch

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]  # ids 0..4


def byte_tokenizer():
    """A byte-level tokenizer (every string round-trips) with BOS/EOS/PAD and ``<image>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({ch: len(SPECIALS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    wrapped.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return wrapped


VOCAB = len(SPECIALS) + 256


def save_tiny_llava(folder, *, image_size=28, patch=14):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=16,
        initializer_range=0.2,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.2,
    )
    # A wide initialisation, so that random captions depend on the image.
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=4,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    # The llava-hf processor: CLIP at the tower's size (336 for the real model).
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(folder)
    return folder


def save_tiny_git(folder, *, bin_weights=False):
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM

    torch.manual_seed(0)
    config = GitConfig(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
            initializer_range=0.2,
        ),
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.2,
    )
    model = GitForCausalLM(config).eval()
    model.save_pretrained(folder)
    if bin_weights:  # the published repository has a pickle, not safetensors
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    byte_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return folder
