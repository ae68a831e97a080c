"""MUSIQ (diffbir.metrics.musiq): the values recorded from pyiqa on the fixture images
with deterministic stand-in weights (tests/fixtures/metrics/README.md says how), and
constructed cases (odd and tiny sizes, batches, limits)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_metrics import _tensor

from diffbir.errors import CheckpointError, DiffBIRError
from diffbir.imaging.io import read_image
from diffbir.metrics import musiq

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
RECORDED = json.loads((FIXTURES / "pyiqa_musiq.json").read_text())

pytestmark = pytest.mark.usefixtures("single_thread")


def _scale(key: str, shape: torch.Size) -> tuple[float, float]:
    """(offset, half-width) of the uniform stand-in for the tensor ``key``."""
    last = key.rsplit(".", 1)[-1]
    if ("gn" in key or "norm" in key) and last == "weight":
        return 1.0, 0.1
    if last == "bias":
        return 0.0, 0.05
    if key.endswith(("position_emb", "scale_emb", "cls")):
        return 0.0, 1.0
    if len(shape) == 4:
        return 0.0, 1.0  # standardised by the convolution anyway
    return 0.0, (3 / shape[1]) ** 0.5  # a linear layer, output variance ~ input variance


def stand_in_musiq() -> dict[str, torch.Tensor]:
    """Every tensor of MUSIQ from the counter hash of test_metrics.py, keyed as pyiqa's
    published checkpoint (and in its order)."""
    state = {}
    for key, value in musiq.MUSIQ().state_dict().items():
        offset, width = _scale(key, value.shape)
        state[key] = _tensor(f"musiq.{key}", tuple(value.shape), width) + offset
    return state


def checksum(state: dict[str, torch.Tensor]) -> float:
    """A float64 sum that tells whether two stand-in states are the same."""
    return math.fsum(float(v.abs().sum(dtype=torch.float64)) for v in state.values())


def _image(name: str) -> torch.Tensor:
    return read_image(FIXTURES / f"{name}.png", keep_alpha=False).rgb[None]


def _crop(spec: str) -> torch.Tensor:
    """``"hq_b[7:68,11:108]"``: rows 7..67 and columns 11..107 of ``hq_b``."""
    name, rest = spec.rstrip("]").split("[")
    rows, cols = (
        slice(*[int(v) if v else None for v in part.split(":")]) for part in rest.split(",")
    )
    return _image(name)[..., rows, cols]


@pytest.fixture(scope="module")
def state():
    return stand_in_musiq()


@pytest.fixture(scope="module")
def metric(state, tmp_path_factory):
    """``musiq`` as ``diffbir eval`` builds it: the registry's file name in a weights
    folder, found without downloading and loaded with ``weights_only``."""
    from diffbir.metrics.evaluate import EvalOptions, build_metrics
    from diffbir.metrics.names import METRICS

    folder = tmp_path_factory.mktemp("musiq_weights")
    torch.save(state, folder / METRICS["musiq"].weights[0])
    options = EvalOptions(weights_dir=folder, download=False)
    return build_metrics([METRICS["musiq"]], options, torch.device("cpu"))["musiq"]


#: Our scores on the recorded single images (four sizes), computed once; ``hq_b`` and
#: ``out_b_jpeg`` are checked as a batch.
_SINGLES = ("hq_a", *RECORDED["crops"])


@pytest.fixture(scope="module")
def ours(metric):
    with torch.inference_mode():
        return {k: metric(_crop(k) if "[" in k else _image(k)) for k in _SINGLES}


def test_stand_in_state_is_the_recorded_one(state):
    assert checksum(state) == pytest.approx(RECORDED["state_checksum"], rel=1e-12)


def test_matches_pyiqa(ours):
    recorded = {**RECORDED["images"], **RECORDED["crops"]}
    for key, value in ours.items():
        assert value.shape == (1,) and value.dtype == torch.float64
        assert float(value[0]) == pytest.approx(recorded[key], rel=1e-4), key


def test_batch_matches_pyiqa(metric):
    with torch.inference_mode():
        both = metric(torch.cat([_image("hq_b"), _image("out_b_jpeg")]))
    assert both.shape == (2,)
    want = [RECORDED["images"]["hq_b"], RECORDED["images"]["out_b_jpeg"]]
    assert both.tolist() == pytest.approx(want, rel=1e-4)
    assert both.tolist() == pytest.approx(RECORDED["batch"]["hq_b+out_b_jpeg"], rel=1e-4)


def test_batch_agrees_with_single_images():
    """On a small configuration of the same architecture (random weights): a batch of
    four gives each image's own score, in order."""
    torch.manual_seed(0)
    model = musiq.MUSIQ(dim=64, hidden=96, heads=2, layers=2, stem=32)
    for p in model.parameters():
        p.copy_(torch.randn_like(p) * 0.5)
    x = torch.rand(4, 3, 37, 50)
    with torch.inference_mode():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(4)])
    assert together.shape == (4,) and torch.isfinite(together).all()
    assert together.std() > 1e-3  # the images do get different scores
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_too_elongated_image_is_a_clear_error(metric):
    with pytest.raises(DiffBIRError, match=r"cannot score a 500x1 image: .* less than 448 times"):
        metric(torch.zeros(1, 3, 1, 500))
    # 447 times apart still has one pixel at the smallest scale.
    assert musiq.scale_sizes(1, 447) == [(1, 224), (1, 384)]


def test_scale_sizes_keep_the_aspect_ratio():
    assert musiq.scale_sizes(192, 256) == [(168, 224), (288, 384)]
    assert musiq.scale_sizes(7, 5) == [(224, 160), (384, 274)]
    # Python's rounding, as pyiqa's: 21 * 224 / 192 is 24.5 (to even), 21 * 2 = 42.
    assert musiq.scale_sizes(192, 21) == [(224, 24), (384, 42)]


def test_hashed_positions():
    assert musiq.hashed_positions(1, 1).tolist() == [0]
    assert musiq.hashed_positions(2, 3).tolist() == [0, 3, 6, 50, 53, 56]
    assert musiq.hashed_positions(10, 10).tolist() == list(range(100))
    many = musiq.hashed_positions(20, 30)
    assert many.shape == (600,) and many.max() == 99 and many.unique().numel() == 100


def test_patches_pad_odd_sizes_evenly_with_the_extra_pixel_last():
    x = torch.ones(1, 3, 33, 65)
    cut, where = musiq.patches(x)
    assert cut.shape == (1, 6, 3, 32, 32) and where.tolist() == [0, 3, 6, 50, 53, 56]
    # 31 padded rows: 15 above, 16 below; 31 padded columns: 15 left, 16 right.
    assert cut[0, 0, :, :15].abs().sum() == 0 and cut[0, 0, :, 15:, 15:].min() == 1
    assert cut[0, 3, :, 16:].abs().sum() == 0 and cut[0, 5, :, :16, 16:].abs().sum() == 0
    assert cut.sum() == x.sum()
    # Patches go row by row and keep each patch's channels, rows, columns in place.
    y = torch.arange(2 * 64 * 96, dtype=torch.float32).view(1, 2, 64, 96)
    cut, _ = musiq.patches(y)
    assert torch.equal(cut[0, 4], y[0, :, 32:, 32:64])


def test_same_padding_is_tensorflows():
    x = torch.ones(1, 1, 32, 16)
    assert musiq.same_pad(x, 7, 2)[0, 0].sum(1).nonzero().flatten()[[0, -1]].tolist() == [2, 33]
    assert musiq.same_pad(torch.ones(1, 1, 16, 16), 3, 2).shape[-2:] == (17, 17)
    assert musiq.same_pad(x, 1, 1) is x


def test_checkpoint_layout_loads_strictly(state):
    model = musiq.load_musiq(state)
    assert model.transformer_encoder.posembed_input.position_emb.shape == (1, 100, 384)
    assert len(model.transformer_encoder.transformer) == 14
    broken = dict(state)
    del broken["transformer_encoder.cls"]
    with pytest.raises(CheckpointError, match="missing: transformer_encoder.cls"):
        musiq.load_musiq(broken)


def test_registered_as_a_no_reference_metric():
    from diffbir.metrics.names import METRICS
    from diffbir.weights.registry import REGISTRY

    info = METRICS["musiq"]
    assert (info.family, info.reference, info.lower_better) == ("musiq", False, False)
    file = REGISTRY[info.weights[0]]
    assert file.name == "musiq_koniq_ckpt-e95806b9.pth" and file.url.endswith(file.name)
