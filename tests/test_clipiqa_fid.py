"""CLIP-IQA and FID of diffbir.metrics against the values recorded from pyiqa 0.1.16 on the
fixture images with deterministic stand-in weights (tests/metric_stand_ins.py;
tests/fixtures/metrics/README.md says how), plus constructed cases: FID of a set
against itself, FID rising with noise, set sizes, the TorchScript reader, the table,
CSV and JSON of a set metric, and ``diffbir eval`` comparing two unpaired folders."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from metric_stand_ins import stand_in

from diffbir.errors import CheckpointError, DiffBIRError
from diffbir.imaging.io import read_image

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
CLIP_RECORDED = json.loads((FIXTURES / "pyiqa_clipiqa.json").read_text())
FID_RECORDED = json.loads((FIXTURES / "pyiqa_fid.json").read_text())
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _image(name: str) -> torch.Tensor:
    return read_image(FIXTURES / f"{name}.png", keep_alpha=False).rgb[None]


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {f"{prefix}{k}": tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ CLIP-IQA


def clip_text_shapes(width: int = 512, layers: int = 12) -> dict[str, tuple[int, ...]]:
    """The text side of OpenAI's CLIP RN50 file (its key names)."""
    shapes = {
        "positional_embedding": (77, width),
        "text_projection": (width, 1024),
        "logit_scale": (),
        "token_embedding.weight": (49408, width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
    }
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        for name, shape in (
            ("attn.in_proj_weight", (3 * width, width)),
            ("attn.in_proj_bias", (3 * width,)),
            ("attn.out_proj.weight", (width, width)),
            ("attn.out_proj.bias", (width,)),
            ("ln_1.weight", (width,)),
            ("ln_1.bias", (width,)),
            ("mlp.c_fc.weight", (4 * width, width)),
            ("mlp.c_fc.bias", (4 * width,)),
            ("mlp.c_proj.weight", (width, 4 * width)),
            ("mlp.c_proj.bias", (width,)),
            ("ln_2.weight", (width,)),
            ("ln_2.bias", (width,)),
        ):
            shapes[b + name] = shape
    return shapes


def _prompt_tokens() -> list[int]:
    from diffbir.metrics.clipiqa import PROMPT_PAIRS
    from diffbir.models.tokenizer import load_tokenizer

    prompts = [p for pair in PROMPT_PAIRS for p in pair]
    return sorted(set(load_tokenizer()(prompts).flatten().tolist()))


@pytest.fixture(scope="module")
def clip_state():
    """The stand-in RN50 CLIP (half-precision values, as OpenAI's file): only the token
    embedding rows the prompts read are made (the others are never read)."""
    from diffbir.metrics.clipiqa import ClipResNet

    with torch.device("meta"):
        visual = ClipResNet()
    shapes = {**_shapes(visual, "visual."), **clip_text_shapes()}
    return stand_in(
        shapes, "clip-rn50", half=True, rows={"token_embedding.weight": _prompt_tokens()}
    )


@pytest.fixture(scope="module")
def clipiqa_metric(clip_state, single_thread):
    from diffbir.metrics import clipiqa
    from diffbir.metrics.evaluate import EvalOptions

    return clipiqa.build("clipiqa", EvalOptions(), torch.device("cpu"), clip_state)


def test_clipiqa_prompts_tokenise_as_pyiqa():
    from diffbir.metrics.clipiqa import PROMPT_PAIRS
    from diffbir.models.tokenizer import load_tokenizer

    prompts = [p for pair in PROMPT_PAIRS for p in pair]
    tokens = load_tokenizer()(prompts)
    assert tokens[:, :8].tolist() == CLIP_RECORDED["prompt_tokens"]


def test_clipiqa_matches_pyiqa(clipiqa_metric):
    top, bottom, left, right = CLIP_RECORDED["crop"]
    for name, want in CLIP_RECORDED["clipiqa_crop"].items():
        x = _image(name)[..., top:bottom, left:right]
        got = float(clipiqa_metric(x, None)[0])
        assert 0 < got < 1
        assert got == pytest.approx(want, rel=1e-4), name


def test_clipiqa_scores_a_batch_and_any_size(clipiqa_metric):
    x = _image("hq_a")[..., :70, :90]
    batch = torch.cat([x, x.flip(-1)])
    values = clipiqa_metric(batch, None)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert float(values[0]) == pytest.approx(float(clipiqa_metric(x, None)[0]), rel=1e-5)


def test_clip_file_is_checked_key_by_key(clip_state):
    from diffbir.metrics.clipiqa import load_clipiqa

    broken = dict(clip_state)
    del broken["visual.layer2.0.downsample.1.running_var"]
    with pytest.raises(CheckpointError, match="missing: layer2.0.downsample.1.running_var"):
        load_clipiqa(broken)
    extra = {**clip_state, "visual.proj": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="unexpected: proj"):
        load_clipiqa(extra)
    no_scale = {k: v for k, v in clip_state.items() if k != "logit_scale"}
    with pytest.raises(CheckpointError, match="missing: logit_scale"):
        load_clipiqa(no_scale)


# ------------------------------------------------------------------ TorchScript reader


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.blocks = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))

    def forward(self, x):
        return self.blocks(self.bn(self.conv(x)).mean((2, 3)))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_torchscript_tensors_read_without_running_the_archive(tmp_path):
    from diffbir.weights.torchscript import load_torchscript_tensors

    model = _Toy().eval()
    path = tmp_path / "toy.pt"
    torch.jit.trace(model, torch.rand(1, 3, 4, 4)).save(str(path))
    got = load_torchscript_tensors(path)
    want = model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_torchscript_reader_refuses_code_and_other_files(tmp_path):
    from diffbir.weights.torchscript import load_torchscript_tensors

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        archive.writestr("evil/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match="refused to load.* asks for __builtin__.print"):
        load_torchscript_tensors(path)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        load_torchscript_tensors(plain)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_torchscript_tensors(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a TorchScript archive"):
        load_torchscript_tensors(tmp_path / "junk.pt")


# ------------------------------------------------------------------ FID


@pytest.fixture(scope="module")
def inception_state():
    from diffbir.metrics.inception import FIDInceptionV3

    with torch.device("meta"):
        model = FIDInceptionV3()
    shapes = {**_shapes(model), "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    return stand_in(shapes, "fid-inception")


@pytest.fixture(scope="module")
def inception(inception_state, single_thread):
    from diffbir.metrics.inception import load_fid_inception

    return load_fid_inception(inception_state)


def _set_image(item: str) -> torch.Tensor:
    name, _, op = item.partition("|")
    x = _image(name)
    return x.flip(-1) if op == "flip" else x


@pytest.fixture(scope="module")
def features(inception):
    from diffbir.metrics.fid import inception_features

    items = {i for key in ("hq", "out") for i in FID_RECORDED["sets"][key]}
    return {i: inception_features(inception, _set_image(i)) for i in sorted(items)}


def _fid_of(features, a: str, b: str) -> float:
    from diffbir.metrics.fid import frechet_distance

    def side(key):
        return np.concatenate([features[i] for i in FID_RECORDED["sets"][key]])

    return frechet_distance(side(a), side(b))


def test_fid_matches_pyiqa(features):
    want = FID_RECORDED["fid"]["out|hq"]
    assert _fid_of(features, "out", "hq") == pytest.approx(want, rel=1e-4)


def test_fid_of_a_set_against_itself_is_zero(features):
    same = _fid_of(features, "hq", "hq")
    assert abs(same) < 1e-6 * _fid_of(features, "out", "hq")
    # pyiqa's scipy sqrtm leaves a residue of the same order
    assert abs(FID_RECORDED["fid"]["hq|hq"]) < 1e-3


def test_fid_rises_with_noise(inception, features):
    from diffbir.metrics.fid import frechet_distance, inception_features

    ref = np.concatenate([features["hq_a"], features["hq_b"]])
    values = [frechet_distance(ref, ref)]
    for sigma in (0.03, 0.12):
        noisy = []
        for seed, name in enumerate(("hq_a", "hq_b")):
            x = _image(name)
            noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(x.shape))
            noisy.append(inception_features(inception, (x + sigma * noise).clamp(0, 1).float()))
        values.append(frechet_distance(np.concatenate(noisy), ref))
    assert abs(values[0]) < 1e-9 < values[1] < values[2]


def test_frechet_distance_forms_agree_and_need_two_images():
    from diffbir.metrics import fid

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((7, 3)) + 0.5
    small = fid.frechet_distance(a, b)  # 5 x 7 > 3 x 3: the eigenvalue form
    # the same value by the singular-value form (pad the features with zero dimensions)
    wide = fid.frechet_distance(np.pad(a, ((0, 0), (0, 5))), np.pad(b, ((0, 0), (0, 5))))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    trace = np.sqrt(np.linalg.eigvalsh(root @ cb @ root)).sum()
    direct = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * trace
    assert small == pytest.approx(direct, rel=1e-10) and wide == pytest.approx(direct, rel=1e-10)
    with pytest.raises(DiffBIRError, match="at least 2 images on each side .got 1 restored"):
        fid.frechet_distance(a[:1], b)


def test_fid_refuses_sets_of_one_before_loading_weights(tmp_path):
    from diffbir.metrics import evaluate
    from diffbir.metrics.names import parse_metrics

    pairs = [evaluate.Pair("a", FIXTURES / "hq_a.png")]
    refs = [FIXTURES / "hq_a.png", FIXTURES / "hq_b.png"]
    options = evaluate.EvalOptions(weights_dir=tmp_path, download=False)
    with pytest.raises(
        DiffBIRError,
        match="fid: compares two sets and needs at least 2 images on each side: got 1 restored",
    ):
        evaluate.evaluate(pairs, parse_metrics("fid"), options, progress=False, references=refs)


def test_eval_compares_two_unpaired_folders(
    tmp_path, inception_state, features, capsys, single_thread
):
    """``diffbir eval OUT --reference HQ --metrics fid``: other names, other counts; one value
    for the set in the table, CSV and JSON, equal to pyiqa's on the same sets."""
    from diffbir.cli import main

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(inception_state, weights / INCEPTION_FILE)
    out, hq = tmp_path / "out", tmp_path / "hq"
    for folder, key in ((out, "out2"), (hq, "hq2")):
        folder.mkdir()
        for i, item in enumerate(FID_RECORDED["sets"][key]):
            (folder / f"{key}_{i}.png").write_bytes((FIXTURES / f"{item}.png").read_bytes())
    csv_path, json_path = tmp_path / "s.csv", tmp_path / "s.json"
    args = ["eval", str(out), "--reference", str(hq), "--metrics", "fid", "-q"]
    args += ["--weights-dir", str(weights), "--no-download", "--device", "cpu"]
    assert main([*args, "--csv", str(csv_path), "--json", str(json_path)]) == 0
    table = capsys.readouterr().out
    assert "set (2 vs 2)" in table and "mean" not in table
    data = json.loads(json_path.read_text())
    want = FID_RECORDED["fid"]["out2|hq2"]
    assert data["set"]["fid"] == pytest.approx(want, rel=1e-4)
    assert data["set"]["restored"] == 2 and data["set"]["reference"] == 2
    assert csv_path.read_text().splitlines()[-1].startswith("set,,,")


def test_table_csv_and_json_with_a_set_metric_beside_image_metrics(tmp_path):
    from diffbir.metrics import evaluate, report
    from diffbir.metrics.names import parse_metrics

    metrics = parse_metrics("psnr,fid")
    pairs = [evaluate.Pair(n, Path(f"{n}.png"), Path(f"hq/{n}.png")) for n in ("a", "b")]
    result = evaluate.EvalResult(metrics, pairs, [{"psnr": 30.0}, {"psnr": 32.0}])
    result.sets, result.set_counts = {"fid": 12.5}, (2, 2)
    lines = report.format_table(result).splitlines()
    assert lines[2].split() == ["a", "30.0000", "-"]
    assert lines[-2].split() == ["mean", "(2)", "31.0000", "-"]
    assert lines[-1].split() == ["set", "(2", "vs", "2)", "-", "12.5000"]
    data = report.to_json(result, {})
    assert data["mean"] == {"psnr": 31.0} and data["set"]["fid"] == 12.5
    report.write_csv(tmp_path / "r.csv", result)
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[1].endswith(",30.0,") and rows[-1] == "set,,,,12.5"
