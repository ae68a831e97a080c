"""`diffbir bench`: the configuration grammar, a 2-image bench end to end with the tiny
release, resuming, agreement with `diffbir eval`, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffbir.bench.grid import parse_configs
from diffbir.cli import main
from diffbir.errors import ConfigError

CONFIGS = "v2.1:steps=1:guidance=0/0.5"
NAMES = ["v2.1_steps1_guidance0", "v2.1_steps1_guidance0.5"]


def test_configs_expand_into_a_named_grid():
    configs = parse_configs(["v2/v2.1:guidance=0/0.5:steps=4", "hypir,diffbir", "hypir"])
    names = [c.name for c in configs]
    assert names == [
        "v2_steps4_guidance0",
        "v2_steps4_guidance0.5",
        "v2.1_steps4_guidance0",
        "v2.1_steps4_guidance0.5",
        "hypir",
        "v2.1",
    ]
    assert configs[1].options() == {"steps": 4, "guidance_scale": 0.5}
    assert configs[1].label() == "v2 steps=4 guidance=0.5"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("v3", "unknown release or model 'v3'"),
        ("v2.1:stepz=4", "'stepz=4' is not KEY=VALUE"),
        ("v2.1:steps=ten", "steps='ten' is not a whole number"),
        ("v2.1:steps=1:steps=2", "steps is given twice"),
        ("v2.1,,hypir", "an empty configuration"),
    ],
)
def test_bad_configs_are_one_line(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_configs([spec])


def _hq(folder, n=2, size=96):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        data = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(data).save(folder / f"img{i}.png")
    return folder


def _args(release, hq, out, *extra):
    weights, config = release
    args = ["bench", str(hq), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--no-download", "--min-side", "64"]
    return [*args, "--captioner", "none", "--metrics", "psnr,ssim,niqe", "-q", *extra]


@pytest.fixture(scope="module")
def bench(release, single_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    hq = _hq(root / "hq")
    out = root / "B"
    assert main(_args(release, hq, out, "--configs", CONFIGS)) == 0
    return hq, out


def test_the_report_has_a_row_per_config_and_png_plots(bench):
    _, out = bench
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == NAMES
    assert "| config | psnr ↑ | ssim ↑ | niqe ↓ | s / image | peak memory / image |" in report
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c not in ("", "-") for c in cells)
        assert cells[-2].endswith("MiB") and float(cells[-3]) > 0 and cells[-1] == "2"
    for name in ("fidelity_realness.png", "quality_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_the_numbers_are_what_diffbir_eval_gives(bench, tmp_path):
    _, out = bench
    for name in NAMES:
        data = json.loads((out / name / "result.json").read_text())
        path = tmp_path / f"{name}.json"
        args = ["eval", str(out / name / "images"), "--reference", str(out / "data" / "hq")]
        assert main([*args, "--metrics", "psnr,ssim,niqe", "-q", "--json", str(path)]) == 0
        evaluated = json.loads(path.read_text())
        assert data["eval"]["mean"] == evaluated["mean"]
        ours = [{k: v for k, v in i.items() if k not in ("restored", "reference")} for i in data["eval"]["images"]]  # fmt: skip
        theirs = [{k: v for k, v in i.items() if k not in ("restored", "reference")} for i in evaluated["images"]]  # fmt: skip
        assert ours == theirs
        assert set(data["timings"]["seconds"]) == {"img0", "img1"}
        assert data["seconds_per_image"] > 0 and data["peak_memory_bytes"] > 0
    a, b = (json.loads((out / n / "result.json").read_text()) for n in NAMES)
    assert a["guidance_scale"] == 0 and b["guidance_scale"] == 0.5


def test_a_rerun_skips_what_is_done_and_adds_a_config(bench, release, capsys):
    hq, out = bench
    files = [out / n / "images" / "img0.png" for n in NAMES] + [
        out / n / "result.json" for n in NAMES
    ]
    files.append(out / "data" / "lq" / "img0.png")
    before = [f.stat().st_mtime_ns for f in files]
    (out / NAMES[1] / "images" / "img1.png").unlink()  # as if killed before it
    capsys.readouterr()
    assert main(_args(release, hq, out, "--config", CONFIGS, "--no-plots")) == 0
    assert [f.stat().st_mtime_ns for f in files[:1]] == before[:1]
    assert files[2].stat().st_mtime_ns == before[2]  # kept: nothing new in it
    assert files[3].stat().st_mtime_ns != before[3]  # re-measured with its new image
    assert files[4].stat().st_mtime_ns == before[4]
    assert (out / NAMES[1] / "images" / "img1.png").is_file()


def test_settings_changed_under_a_folder_are_refused(bench, release, capsys):
    hq, out = bench
    assert main(_args(release, hq, out, "--configs", CONFIGS, "--seed", "5")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "was made with other settings (seed differ)" in err[-1]


@pytest.mark.parametrize(
    "configs, message",
    [
        ("hypir:guidance=0.5", "guidance scale (--guidance-scale): not used by --model hypir"),
        ("v9:steps=2", "unknown release or model 'v9'"),
        ("v2.1:sampler=nope", "nope"),
    ],
)
def test_a_bad_config_is_one_line_before_any_work(release, tmp_path, capsys, configs, message):
    hq = _hq(tmp_path / "hq", n=1)
    out = tmp_path / "B"
    assert main(_args(release, hq, out, "--configs", configs)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("diffbir: error:")
    assert not out.exists()


def test_missing_metric_weights_are_named_before_restoring(release, tmp_path, capsys):
    hq = _hq(tmp_path / "hq", n=1)
    out = tmp_path / "B"
    args = _args(release, hq, out, "--configs", "v2.1", "--metrics", "psnr,lpips")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err
    assert not (out / "data").exists()


def test_given_lq_images_give_the_same_results(bench, release, tmp_path):
    _, out = bench
    other = tmp_path / "B2"
    args = _args(release, out / "data" / "hq", other, "--configs", "v2.1:steps=1:guidance=0")
    assert main([*args, "--lq", str(out / "data" / "lq"), "--no-plots"]) == 0
    ours = json.loads((other / NAMES[0] / "result.json").read_text())
    before = json.loads((out / NAMES[0] / "result.json").read_text())
    assert ours["eval"]["mean"] == before["eval"]["mean"]
    assert ours["settings"]["upscale"] == 1.0


def test_ctrl_c_leaves_nothing_half_written(release, single_thread, tmp_path, monkeypatch):
    from diffbir.jobs.batch import RestoreJob

    def stop(self, *args):
        raise KeyboardInterrupt

    hq = _hq(tmp_path / "hq", n=1)
    out = tmp_path / "B"
    monkeypatch.setattr(RestoreJob, "write", stop)
    assert main(_args(release, hq, out, "--configs", "v2.1:steps=1")) == 130
    folder = out / "v2.1_steps1"
    assert not (folder / "result.json").exists() and not (out / "report.md").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(_args(release, hq, out, "--configs", "v2.1:steps=1", "--no-plots")) == 0
    assert (folder / "result.json").is_file() and (folder / "images" / "img0.png").is_file()


def test_the_report_reads_set_metrics_like_fid():
    """FID is one value per configuration (``eval.set``), not a per-image mean: the table
    and the time plot's axis find it there."""
    from types import SimpleNamespace

    from diffbir.bench.report import table
    from diffbir.metrics.names import parse_metrics

    metrics = parse_metrics("psnr,fid")
    data = {
        "eval": {
            "metrics": {"psnr": {}, "fid": {}},
            "mean": {"psnr": 24.5},
            "set": {"fid": 61.25, "restored": 2, "reference": 2},
            "count": 2,
        },
        "seconds_per_image": 1.5,
        "peak_memory_bytes": None,
    }
    outcome = SimpleNamespace(config=SimpleNamespace(name="v2.1"), data=data, failed=None)
    row = table([outcome], metrics).splitlines()[-1]
    assert "24.5" in row and "61.25" in row
