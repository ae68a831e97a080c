"""MANIQA against pyiqa 0.1.16's ``maniqa`` (recorded with the stand-in weights of
``maniqa_stand_in.py``; see fixtures/metrics/README.md), plus its crops and loading.

The ViT-B/8 costs seconds per 224x224 crop on two cores, so the network runs on four
crops in all (one on each of two fixture images, two on a third); the crop positions
and the enlarging of small images are checked without it, on every recorded size and
count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from maniqa_stand_in import stand_in_maniqa

from diffbir.errors import CheckpointError, DiffBIRError
from diffbir.imaging.io import read_image
from diffbir.metrics import maniqa

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
RECORDED = json.loads((FIXTURES / "pyiqa_maniqa.json").read_text())
_BUFFERS = ("relative_position_index", "attn_mask")


def _image(name: str) -> torch.Tensor:
    return read_image(FIXTURES / f"{name}.png", keep_alpha=False).rgb[None]


@pytest.fixture(scope="module")
def state(single_thread):
    """The stand-in weights under the names :class:`maniqa.MANIQA` loads."""
    shell = maniqa.MANIQA().state_dict()
    keep = {k: v for k, v in shell.items() if k.endswith(_BUFFERS)}
    return stand_in_maniqa({k: tuple(v.shape) for k, v in shell.items()}, keep)


@pytest.fixture(scope="module")
def model(state):
    return maniqa.load_maniqa(state, crops=1)


def test_one_crop_per_image_matches_pyiqa(model):
    # The fixtures' shorter sides (192, 200) are under 224: enlarged first, as pyiqa does.
    pair = torch.cat([_image("hq_a"), _image("out_a_noise")])  # a batch of two
    with torch.inference_mode():
        got = model(pair).tolist()
    for value, name in zip(got, ("hq_a", "out_a_noise")):
        assert value == pytest.approx(RECORDED["crops1"][name], rel=1e-4)
        assert math.isfinite(value) and value >= 0  # a weighted mean of ReLU scores
    # The stand-in weights are not degenerate: the noisy copy scores apart.
    assert abs(got[0] - got[1]) > 1e-3


def test_crops_are_pooled_patch_by_patch_as_pyiqa_does(model):
    # hq_b (250x200) enlarged to 281x225; crops at (0, 0) and (0, 57), pooled together.
    assert maniqa.crop_boxes(225, 281, 2) == [(0, 0), (0, 57)]
    with torch.inference_mode():
        got = float(model(_image("hq_b"), crops=2)[0])
    assert got == pytest.approx(RECORDED["crops2"]["hq_b"], rel=1e-4)
    assert abs(got - RECORDED["crops1"]["hq_a"]) > 1e-3


@pytest.mark.parametrize("key", sorted(RECORDED["crop_boxes"]))
def test_crop_positions_match_pyiqa(key):
    size, crops = key.split("/")
    h, w = (int(v) for v in size.split("x"))
    want = [tuple(box) for box in RECORDED["crop_boxes"][key]]
    assert maniqa.crop_boxes(h, w, int(crops)) == want


def test_default_crops_are_a_four_by_five_grid():
    boxes = maniqa.crop_boxes(481, 333)  # odd sizes: steps (481-224)//4 = 64, 109//4 = 27
    assert len(boxes) == maniqa.CROPS == 20
    assert sorted({r for r, _ in boxes}) == [0, 64, 128, 192]
    assert sorted({c for _, c in boxes}) == [0, 27, 54, 81, 108]
    with pytest.raises(ValueError, match="no 224x224 crop"):
        maniqa.crop_boxes(223, 500)


@pytest.mark.parametrize("name", sorted(RECORDED["crop_stats3"]))
def test_images_are_enlarged_and_cropped_as_pyiqa_does(name):
    # Three small images (61x37, 256x192, 250x224: enlarged) and a 384x256 one (not).
    rec = RECORDED["crop_stats3"][name]
    if "stack" in rec:
        x = torch.cat([_image(n) for n in rec["stack"]], dim=2)
    else:
        r, c, h, w = rec["crop"]
        x = _image(name.split("_")[0] + "_" + name.split("_")[1])[..., r : r + h, c : c + w]
    crops = maniqa.normalised_crops(x, 3).reshape(-1, 3, 224, 224).double()
    assert list(crops.shape) == rec["shape"]
    assert float(crops.mean()) == pytest.approx(rec["mean"], abs=1e-6)
    assert float(crops.std()) == pytest.approx(rec["std"], abs=1e-6)
    samples = crops[:, :, ::37, ::41].flatten()[:60]
    assert torch.allclose(samples, torch.tensor(rec["samples"], dtype=torch.float64), atol=1e-6)


def test_non_rgb_input_is_refused_in_one_line():
    with pytest.raises(DiffBIRError, match=r"RGB images \[N, 3, H, W\], got \(1, 1, 240, 240\)"):
        maniqa.normalised_crops(torch.zeros(1, 1, 240, 240))


def test_published_layout_loads_strictly(state, model):
    # pyiqa's file also holds tensors the forward pass never reads, some under "module.".
    extra = {
        "vit.blocks.10.attn.qkv.weight": torch.zeros(2304, 768),
        "vit.blocks.11.mlp.fc2.bias": torch.zeros(768),
        "vit.norm.weight": torch.ones(768),
        "vit.head.weight": torch.zeros(1000, 768),
        "swintransformer1.downsample.weight": torch.zeros(768, 768, 3, 3),
        "swintransformer2.downsample.bias": torch.zeros(384),
    }
    published = {f"module.{k}": v for k, v in {**state, **extra}.items()}
    assert set(maniqa.used_state(published)) == set(state)
    assert set(model.state_dict()) == set(state)
    missing = {k: v for k, v in state.items() if k != "fc_score.3.bias"}
    with pytest.raises(CheckpointError, match="1 missing: fc_score.3.bias"):
        maniqa.load_maniqa(missing)


def test_registered_as_a_no_reference_metric():
    from diffbir.metrics.evaluate import required_weights
    from diffbir.metrics.names import METRICS, parse_metrics
    from diffbir.weights.registry import REGISTRY

    info = METRICS["maniqa"]
    assert (info.family, info.reference, info.lower_better) == ("maniqa", False, False)
    assert required_weights(parse_metrics("maniqa,niqe")) == ["ckpt_koniq10k.pt"]
    entry = REGISTRY["ckpt_koniq10k.pt"]
    assert entry.url.endswith("/chaofengc/IQA-PyTorch-Weights/resolve/main/ckpt_koniq10k.pt")
