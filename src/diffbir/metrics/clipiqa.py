"""CLIP-IQA (Wang, Chan and Loy, "Exploring CLIP for Assessing the Look and Feel of
Images", AAAI 2023), as pyiqa's default ``clipiqa`` computes it.

* Backbone: OpenAI's CLIP RN50, the published ``RN50.pt`` (MIT). Its image tower is
  CLIP's modified ResNet-50, written here in plain torch (:class:`ClipResNet`):
  a three-convolution stem with an average pooling, bottlenecks whose strided
  convolutions are average poolings followed by stride-1 convolutions, and an
  attention pooling (32 heads; the query is the mean of the feature grid's tokens)
  projecting to 1024 dimensions. pyiqa's default runs that pooling *without* its
  positional embedding (``pos_embedding=False``), so images of any size go in as
  they are, unresized.
* Text side: five antonym pairs of prompts, fixed ("Good image" / "bad image",
  "Sharp image" / "blurry image", "sharp edges" / "blurry edges", "High resolution
  image" / "low resolution image", "Noise-free image" / "noisy image"). Their
  features come from CLIP's text transformer (12 blocks, width 512, QuickGELU,
  causal mask; the end-of-text token's output after the final LayerNorm, times
  ``text_projection``), computed once when the metric is built, with the project's
  CLIP tokenizer and a transformers ``CLIPTextModel`` holding the same file's text
  weights; only the ten feature vectors are kept.
* Score: the image in [0, 1] normalised with CLIP's mean and std; cosine
  similarities to the ten prompts times ``exp(logit_scale)``; a softmax within
  each pair; the mean over the pairs of the positive prompt's probability (0..1,
  higher is better).

The published file is a TorchScript archive (half-precision tensors); it is read by
:func:`diffbir.weights.torchscript.load_torchscript_tensors`, which unpickles only
tensors, and checked key by key against the model. Tensors load in float32.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffbir.weights.checkpoint import StateDict, check_keys, load_into, load_state_dict

PROMPT_PAIRS = (
    ("Good image", "bad image"),
    ("Sharp image", "blurry image"),
    ("sharp edges", "blurry edges"),
    ("High resolution image", "low resolution image"),
    ("Noise-free image", "noisy image"),
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: RN50's shape: blocks per stage, stem width, output dimension, attention heads.
RN50_LAYERS = (3, 4, 6, 3)
RN50_WIDTH = 64
RN50_EMBED = 1024
RN50_HEADS = 32
#: The text transformer of every CLIP RN/ViT-B model.
TEXT_CFG = {"width": 512, "heads": 8, "layers": 12, "context_length": 77, "vocab_size": 49408}
#: Entries of OpenAI's files that are settings, not weights.
_SETTINGS = ("input_resolution", "context_length", "vocab_size")
_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
_TEXT_TOP = ("positional_embedding", "text_projection", "logit_scale")


class Bottleneck(nn.Module):
    """CLIP's bottleneck: 1x1, 3x3, (average pooling when strided), 1x1 expanding 4x."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            # Keys "downsample.0" (conv) and "downsample.1" (norm), as published; the
            # pooling in front ("-1") has no weights.
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
            )
            self.down_pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        identity = x if self.downsample is None else self.downsample(self.down_pool(x))
        return F.relu(out + identity)


class AttentionPool(nn.Module):
    """Multi-head attention of the grid's mean token over itself and the grid's tokens;
    only that first token's output is CLIP's image feature. ``positional_embedding``
    is loaded (it is part of the file) but, as in pyiqa's default, not added."""

    def __init__(self, tokens: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        h, d = self.heads, c // self.heads
        q = self.q_proj(tokens[:, :1]).view(n, 1, h, d).transpose(1, 2)
        k = self.k_proj(tokens).view(n, -1, h, d).transpose(1, 2)
        v = self.v_proj(tokens).view(n, -1, h, d).transpose(1, 2)
        weights = (q @ k.transpose(-1, -2) * d**-0.5).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, c)
        return self.c_proj(out)


class ClipResNet(nn.Module):
    """CLIP's modified ResNet image tower (RN50 by default), keys as OpenAI's ``visual.*``."""

    def __init__(
        self,
        layers: tuple[int, ...] = RN50_LAYERS,
        width: int = RN50_WIDTH,
        embed_dim: int = RN50_EMBED,
        heads: int = RN50_HEADS,
        resolution: int = 224,
    ) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        inplanes = width
        for index, blocks in enumerate(layers):
            planes = width * 2**index
            stage = [Bottleneck(inplanes, planes, 1 if index == 0 else 2)]
            stage += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes * 4
        grid = resolution // 32
        self.attnpool = AttentionPool(grid * grid + 1, width * 32, heads, embed_dim)
        self.stages = len(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = F.avg_pool2d(x, 2)
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.attnpool(x)


def _text_config() -> dict:
    from diffbir.models.text_encoder import text_config_from_open_clip

    return text_config_from_open_clip(TEXT_CFG, RN50_EMBED, "last", quick_gelu=True)


def text_features(state: StateDict, prompts: list[str]) -> torch.Tensor:
    """CLIP's text features of ``prompts`` ``[P, 1024]`` from an OpenAI CLIP state dict."""
    from diffbir.models.text_encoder import build_text_encoder, convert_text_state_dict
    from diffbir.models.tokenizer import load_tokenizer

    config = _text_config()
    from accelerate import init_empty_weights

    # No random initialisation (every weight comes from the file); buffers stay real,
    # since the non-persistent position ids are in no state dict.
    with init_empty_weights(include_buffers=False):
        encoder = build_text_encoder(config)
    text = {
        f"model.{k}": v
        for k, v in state.items()
        if k.startswith(_TEXT_PREFIXES) or k == "positional_embedding"
    }
    converted = convert_text_state_dict(text, config, target_keys=encoder.state_dict().keys())
    load_into(encoder, converted, what="CLIP text transformer")
    encoder.eval()
    tokens = load_tokenizer()(prompts, context_length=TEXT_CFG["context_length"])
    with torch.inference_mode():
        hidden = encoder(input_ids=tokens).last_hidden_state
        eot = hidden[torch.arange(len(prompts)), tokens.argmax(dim=-1)]
        return (eot @ state["text_projection"]).clone()


class CLIPIQA(nn.Module):
    """CLIP-IQA on a CLIP image tower and the prompts' fixed text features."""

    def __init__(self, visual: ClipResNet, prompt_features: torch.Tensor, logit_scale) -> None:
        super().__init__()
        self.visual = visual
        prompts = prompt_features / prompt_features.norm(dim=-1, keepdim=True)
        self.register_buffer("prompts", prompts, persistent=False)
        self.register_buffer("scale", torch.as_tensor(logit_scale).exp(), persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The score of each image of ``x`` (in [0, 1]), ``[N]``."""
        features = self.visual((x - self.mean) / self.std)
        features = features / features.norm(dim=-1, keepdim=True)
        logits = self.scale * features @ self.prompts.T
        probs = logits.view(len(x), -1, 2).softmax(dim=-1)
        return probs[..., 0].mean(dim=1)


def read_clip_file(source) -> StateDict:
    """OpenAI's CLIP file (a TorchScript archive) or a plain state dict/mapping, in float32."""
    from diffbir.weights.torchscript import load_torchscript_tensors

    if not isinstance(source, Mapping) and _is_torchscript(Path(source)):
        state = load_torchscript_tensors(source)
    else:
        state = load_state_dict(source)
    return {
        k: v if not v.is_floating_point() else v.float()
        for k, v in state.items()
        if k not in _SETTINGS
    }


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n for n in archive.namelist())


def load_clipiqa(source) -> CLIPIQA:
    """CLIP-IQA from OpenAI's ``RN50.pt`` (or a mapping with its keys), strictly checked."""
    state = read_clip_file(source)
    with torch.device("meta"):
        visual = ClipResNet()
    image = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    load_into(visual, image, what="CLIP RN50 image tower")
    text = _TEXT_PREFIXES + _TEXT_TOP
    others = sorted(k for k in state if not k.startswith(("visual.", *text)) and k not in text)
    missing = [k for k in _TEXT_TOP if k not in state]
    if others or missing:
        check_keys({k: () for k in missing}, {k: state[k] for k in others}, what="CLIP RN50")
    prompts = [p for pair in PROMPT_PAIRS for p in pair]
    return CLIPIQA(visual, text_features(state, prompts), state["logit_scale"])


def build(name: str, options, device: torch.device, *files):
    """The callable ``(x, ref) -> values`` of ``clipiqa`` (no reference), from ``RN50.pt``."""
    del name, options
    model = load_clipiqa(*files).to(device)

    def metric(x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        del ref
        return model(x.float()).double()

    return metric
