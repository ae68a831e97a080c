"""Captioner speed on this machine: random weights in the published shapes.

Two parts:

* ``candidates``: the light captioners considered for ``--captioner`` (GIT-base
  COCO, BLIP-base captioning, Florence-2-base, SmolVLM-256M), each built from
  its ``transformers`` config class with the published architecture sizes
  below, its image processor (PIL backend: no torchvision) on a 768x512 photo,
  then greedy decoding of exactly ``--tokens`` new tokens (best of
  ``--repeat`` warm runs; LLaVA runs once).
* ``captioners``: the offered ones through ``diffbir.captioning`` at the
  release's settings: ``git`` saved to a temporary folder and loaded with
  ``load_captioner`` (load time), ``llava`` (LLaVA-1.5-7B, bfloat16 on CPU,
  ~15 GB of RAM; only with ``--llava``) built in memory and wrapped in
  ``LlavaCaptioner`` (the 7B model is not saved, so no load time). A
  word-level stand-in tokenizer of the full vocabulary is used; end of text
  is made unreachable so each caption is exactly ``--tokens`` tokens long.

    python benchmarks/bench_captioners.py [--part candidates|captioners|all]
        [--tokens 20] [--repeat 2] [--llava] [--device cpu|cuda]

Timings do not depend on the weights' values; caption quality cannot be
measured with random weights.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import best_of
from PIL import Image

# Published architecture sizes (each repository's config.json).
GIT_BASE_COCO = dict(  # microsoft/git-base-coco: CLIP ViT-B/16 at 224, 6-layer BERT decoder
    vision=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    ),
    text=dict(
        vocab_size=30522,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=6,
        num_attention_heads=12,
        max_position_embeddings=1024,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    ),
)
BLIP_BASE = dict(  # Salesforce/blip-image-captioning-base: ViT-B/16 at 384, 12-layer BERT decoder
    vision=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=384,
        patch_size=16,
    ),
    text=dict(
        vocab_size=30524,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=512,
    ),
)
FLORENCE2_BASE = dict(  # Florence-2-base: DaViT at 768, BART-base encoder-decoder (6+6)
    vision=dict(
        embed_dim=(128, 256, 512, 1024),
        depths=(1, 1, 9, 1),
        num_heads=(4, 8, 16, 32),
        num_groups=(4, 8, 16, 32),
        window_size=12,
        projection_dim=768,
    ),
    text=dict(
        vocab_size=51290,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1024,
    ),
    image_tokens=577,
)
SMOLVLM_256M = dict(  # HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512, SmolLM2-135M
    vision=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=512,
        patch_size=16,
    ),
    text=dict(
        model_type="llama",
        vocab_size=49280,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    scale_factor=4,
)
LLAVA_15_7B = dict(  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336, Vicuna-7B (Llama 2)
    vision=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    ),
    text=dict(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32001,
    ),
    image_token_id=32000,
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8))


def _generate(model, tokens: int, **inputs):
    with torch.inference_mode():
        return model.generate(
            **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1
        )


# ------------------------------------------------------------------ candidates


def candidate_git():
    import transformers as T

    cfg = T.GitConfig(vision_config=GIT_BASE_COCO["vision"], **GIT_BASE_COCO["text"])
    model = T.GitForCausalLM(cfg).eval()
    proc = T.CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )

    def inputs(image):
        pixels = proc(images=[image], return_tensors="pt")["pixel_values"]
        return dict(pixel_values=pixels, input_ids=torch.tensor([[101]]))

    return model, inputs


def candidate_blip():
    import transformers as T

    cfg = T.BlipConfig(vision_config=BLIP_BASE["vision"], text_config=BLIP_BASE["text"])
    model = T.BlipForConditionalGeneration(cfg).eval()
    proc = T.BlipImageProcessor(size={"height": 384, "width": 384})

    def inputs(image):
        pixels = proc(images=[image], return_tensors="pt")["pixel_values"]
        # BLIP's generate puts its BOS first and drops the last token ([SEP]).
        return dict(pixel_values=pixels, input_ids=torch.tensor([[101, 102]]))

    return model, inputs


def candidate_florence2():
    import transformers as T

    spec = FLORENCE2_BASE
    cfg = T.Florence2Config(
        vision_config=T.Florence2VisionConfig(**spec["vision"]),
        text_config=T.BartConfig(**spec["text"]),
        image_token_id=spec["text"]["vocab_size"] - 1,
    )
    model = T.Florence2ForConditionalGeneration(cfg).eval()
    proc = T.CLIPImageProcessor(
        size={"height": 768, "width": 768},
        do_center_crop=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    # "<CAPTION>" becomes "What does the image describe?": about 8 text tokens.
    text = [cfg.image_token_id] * spec["image_tokens"] + [0, 2264, 473, 5, 2274, 6190, 116, 2]

    def inputs(image):
        pixels = proc(images=[image], return_tensors="pt")["pixel_values"]
        return dict(pixel_values=pixels, input_ids=torch.tensor([text]))

    return model, inputs


def candidate_smolvlm():
    import transformers as T

    spec = SMOLVLM_256M
    image_token = 49190
    cfg = T.SmolVLMConfig(
        vision_config=spec["vision"],
        text_config=spec["text"],
        scale_factor=spec["scale_factor"],
        image_token_id=image_token,
    )
    model = T.SmolVLMForConditionalGeneration(cfg).eval()
    # One 512x512 view (no splitting into tiles): 64 image tokens, the fastest setting.
    proc = T.SmolVLMImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": 512},
        max_image_size={"longest_edge": 512},
    )

    def inputs(image):
        enc = proc(images=[[image]], return_tensors="pt")
        n = 64 * enc["pixel_values"].shape[1]
        ids = [1] * 12 + [image_token] * n + [1] * 16  # chat template and question
        return dict(
            pixel_values=enc["pixel_values"],
            pixel_attention_mask=enc["pixel_attention_mask"],
            input_ids=torch.tensor([ids]),
        )

    return model, inputs


CANDIDATES = {
    "git (GIT-base COCO)": candidate_git,
    "blip (BLIP-base captioning)": candidate_blip,
    "florence2 (Florence-2-base)": candidate_florence2,
    "smolvlm (SmolVLM-256M)": candidate_smolvlm,
}


def bench_candidates(tokens: int, repeat: int) -> list[tuple]:
    rows = []
    for label, build in CANDIDATES.items():
        rows.append(_bench_candidate(label, build, photo(), tokens, repeat))
        print(" | ".join(rows[-1]), flush=True)
        gc.collect()
    return rows


def _bench_candidate(label, build, image, tokens: int, repeat: int) -> tuple:
    torch.manual_seed(0)
    start = time.perf_counter()
    model, make_inputs = build()
    built = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters()) / 1e6
    inputs = make_inputs(image)
    pre = best_of(lambda: make_inputs(image), repeat)
    _generate(model, 1, **inputs)  # warm-up
    first = best_of(lambda: _generate(model, 1, **inputs), repeat)
    full = best_of(lambda: _generate(model, tokens, **inputs), repeat)
    return (label, f"{params:.0f}M", f"{built:.1f}", f"{pre:.3f}", f"{first:.2f}", f"{full:.2f}")


# ------------------------------------------------------------------ offered captioners


def word_tokenizer(vocab_size: int, specials: dict[int, str]):
    """A whitespace/punctuation word-level stand-in of ``vocab_size`` tokens (prompt length
    close to a real subword tokenizer's for English)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    for index, token in specials.items():
        vocab.pop(f"w{index}")
        vocab[token] = index
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=specials[0])


def bench_git(device, tokens: int, repeat: int) -> tuple:
    import transformers as T

    from diffbir.captioning import load_captioner

    spec = dict(GIT_BASE_COCO["text"], eos_token_id=GIT_BASE_COCO["text"]["vocab_size"])
    cfg = T.GitConfig(vision_config=GIT_BASE_COCO["vision"], **spec)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        T.GitForCausalLM(cfg).save_pretrained(folder)
        word_tokenizer(
            30522, {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]"}
        ).save_pretrained(folder)
        T.CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ).save_pretrained(folder)
        start = time.perf_counter()
        captioner = load_captioner("git", device=device, path=folder, max_new_tokens=tokens)
        load = time.perf_counter() - start
    image = photo()
    captioner.caption([image])
    one = best_of(lambda: captioner.caption([image]), repeat)
    four = best_of(lambda: captioner.caption([image] * 4), repeat) / 4
    dtype = str(next(captioner.model.parameters()).dtype).replace("torch.", "")
    captioner.close()
    return ("git", str(device), dtype, f"{load:.1f}", f"{one:.2f}", f"{four:.2f}")


def bench_llava(device, tokens: int, repeat: int) -> tuple:
    import transformers as T

    from diffbir.captioning.llava import LlavaCaptioner

    spec = LLAVA_15_7B
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(**spec["vision"]),
        text_config=T.LlamaConfig(**spec["text"]),
        image_token_id=spec["image_token_id"],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    start = time.perf_counter()
    with torch.device(device):  # built in its dtype: fp32 first would need 28 GB
        model = T.LlavaForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    built = time.perf_counter() - start
    # EOS outside the vocabulary: never generated, so every caption has `tokens` tokens.
    vocab = spec["text"]["vocab_size"]
    tokenizer = word_tokenizer(vocab + 1, {0: "<unk>", 1: "<s>", 2: "<pad0>", vocab: "</s>"})
    tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tokenizer.pad_token_id = spec["text"]["pad_token_id"]
    proc = T.CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=list(CLIP_MEAN),
    )
    captioner = LlavaCaptioner(model, tokenizer, proc, device=device, max_new_tokens=tokens)
    print(f"llava: built in {built:.0f} s, prompt {len(captioner.prompt_ids)} tokens", flush=True)
    image = photo()
    one = best_of(lambda: captioner.caption([image]), repeat)
    captioner.close()
    return ("llava", str(device), str(dtype).replace("torch.", ""), "-", f"{one:.2f}", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("candidates", "captioners", "all"), default="all")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--llava", action="store_true", help="also LLaVA-1.5-7B (~15 GB)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if args.part in ("candidates", "all"):
        print(f"\ncandidate | params | build s | preprocess s | 1 token s | {args.tokens} tokens s")
        bench_candidates(args.tokens, args.repeat)
    if args.part in ("captioners", "all"):
        print(
            f"\ncaptioner | device | dtype | load s | s/image (1) | s/image (batch 4); {args.tokens} tokens"
        )
        print(" | ".join(bench_git(device, args.tokens, args.repeat)), flush=True)
        if args.llava:
            print(" | ".join(bench_llava(device, args.tokens, 1)), flush=True)


if __name__ == "__main__":
    main()
