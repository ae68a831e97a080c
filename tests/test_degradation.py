"""Degradation ops, pipelines and configs: behaviour and the statistics of the draws."""

from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.degradation import kernels as K
from diffbir.degradation import ops
from diffbir.degradation.config import ConfigError, parse_config
from diffbir.degradation.pipelines import PRESETS, DegradationPipeline, load_pipeline

# IJG's standard luminance quantisation table (row-major), which libjpeg scales by quality.
_LUMA_Q = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip


def _ijg_table(quality: int) -> list[int]:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(255, max(1, (v * scale + 50) // 100)) for v in _LUMA_Q]


def _within(frac: float, p: float, n: int) -> bool:
    return abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def _image(b=1, h=40, w=56, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# ----------------------------------------------------------------------------- ops


@pytest.mark.parametrize("size", [5, 21])  # direct convolution and the FFT path
def test_filter2d_matches_opencv(size):
    x = _image()
    kernel = K.gaussian_kernel(size, 2.0, 1.2, 0.4)
    got = ops.filter2d(x, kernel)[0].permute(1, 2, 0).numpy()
    ref = cv2.filter2D(x[0].permute(1, 2, 0).numpy(), -1, kernel.astype(np.float32))
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_filter2d_per_sample_kernels_and_identity():
    x = _image(b=2)
    kernels = np.stack([K.delta_kernel(7), K.gaussian_kernel(7, 1.5)])
    out = ops.filter2d(x, kernels)
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)
    assert (out[1] - x[1]).abs().max() > 0.05
    with pytest.raises(ValueError, match="kernels must be"):
        ops.filter2d(x, np.ones((3, 5, 5)))


def test_resize_matches_opencv_bilinear_and_area():
    x = _image(h=48, w=64)
    arr = x[0].permute(1, 2, 0).numpy()
    got = ops.resize(x, (20, 27), "bilinear")[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(arr, (27, 20), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    got = ops.resize(x, (24, 32), "area")[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(arr, (32, 24), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert ops.resize(x, (96, 128), "bicubic").shape == (1, 3, 96, 128)
    with pytest.raises(ValueError, match="unknown resize mode"):
        ops.resize(x, (8, 8), "lanczos")


def test_gaussian_noise_has_the_drawn_std_and_gray_is_shared():
    flat = torch.full((2, 3, 128, 128), 0.5)
    g = torch.Generator().manual_seed(0)
    out = ops.add_gaussian_noise(flat, [5.0, 15.0], [False, True], generator=g)
    noise = (out - 0.5) * 255
    assert noise[0].std().item() == pytest.approx(5.0, rel=0.03)
    assert noise[1].std().item() == pytest.approx(15.0, rel=0.03)
    assert abs(noise.mean().item()) < 0.2
    # colour noise: independent channels; gray noise: one field for all three
    assert abs(np.corrcoef(noise[0, 0].flatten(), noise[0, 1].flatten())[0, 1]) < 0.05
    torch.testing.assert_close(noise[1, 0], noise[1, 2])


def test_poisson_noise_variance_follows_the_signal():
    # all 256 levels present -> 256 "photons" per unit: var = v / 256 * scale^2
    levels = torch.arange(256, dtype=torch.float32) / 255
    img = levels.repeat(3, 64, 1).unsqueeze(0)  # [1, 3, 64, 256]
    g = torch.Generator().manual_seed(1)
    out = ops.add_poisson_noise(img, 2.0, False, generator=g, clip=False)
    noise = out - img
    expected = (img.mean() / 256 * 4).item()
    assert noise.pow(2).mean().item() == pytest.approx(expected, rel=0.05)
    gray = ops.add_poisson_noise(img, 1.0, True, generator=g, clip=False) - img
    torch.testing.assert_close(gray[0, 0], gray[0, 1])


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_is_encoded_at_the_given_quality(quality):
    data = ops.jpeg_encode(_image()[0], quality)
    assert list(Image.open(io.BytesIO(data)).quantization[0]) == _ijg_table(quality)


def test_jpeg_compress_round_trips_each_image_at_its_quality():
    x = _image(b=3)
    out = ops.jpeg_compress(x, [40, None, 90])
    torch.testing.assert_close(out[0], ops.jpeg_decode(ops.jpeg_encode(x[0], 40)))
    torch.testing.assert_close(out[1], x[1])
    assert (out[0] - x[0]).abs().mean() > (out[2] - x[2]).abs().mean() > 0
    with pytest.raises(ValueError, match="quality"):
        ops.jpeg_encode(x[0], 101)


def test_usm_sharpen_boosts_edges_only():
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(ops.usm_sharpen(flat), flat)
    edge = flat.clone()
    edge[..., 16:] = 0.7
    sharp = ops.usm_sharpen(edge, radius=9)
    assert sharp.min() >= 0 and sharp.max() <= 1
    # overshoot on both sides of the edge, flat far away
    assert sharp[0, 0, 0, 15] < 0.3 - 0.01 and sharp[0, 0, 0, 16] > 0.7 + 0.01
    assert sharp[0, 0, 0, 0] == pytest.approx(0.3, abs=1e-6)


# ----------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("name", PRESETS)
def test_presets_give_hq_sized_lq_in_range_and_are_deterministic(name):
    pipe = load_pipeline(name)
    hq = _image(b=2, h=64, w=96)
    for seed in range(3):
        a = pipe(hq, seed)
        b = pipe(hq, np.random.default_rng(seed))
        assert a.lq.shape == hq.shape and a.hq.shape == hq.shape
        assert a.lq.min() >= 0 and a.lq.max() <= 1
        torch.testing.assert_close(a.lq, b.lq, atol=0, rtol=0)
    assert not torch.equal(pipe(hq, 0).lq, pipe(hq, 1).lq)


def test_low_resolution_output_keeps_the_drawn_size():
    pipe = load_pipeline("codeformer")
    res = pipe(_image(h=120, w=120), 5, resize_back=False)
    size = next(r["size"] for r in res.params if r["stage"] == "resize")
    assert tuple(res.lq.shape[-2:]) == size
    res = load_pipeline("realesrgan")(_image(h=64, w=96), 5, resize_back=False)
    assert tuple(res.lq.shape[-2:]) == (16, 24)  # 1/4 of the HQ, as the preset says


def test_realesrgan_sharpens_the_target_and_quantizes():
    hq = _image(h=64, w=64)
    res = load_pipeline("realesrgan")(hq, 0)
    assert not torch.equal(res.hq, hq)
    torch.testing.assert_close(res.hq, ops.usm_sharpen(hq))
    torch.testing.assert_close(res.lq * 255, (res.lq * 255).round(), atol=1e-4, rtol=0)


def test_pipeline_noise_matches_the_drawn_sigma():
    pipe = DegradationPipeline({"stages": [{"noise": {"gaussian_sigma": [2, 20]}}]})
    flat = torch.full((4, 3, 96, 96), 0.5)
    res = pipe(flat, 11)
    for i, p in enumerate(res.params[0]["params"]):
        assert 2 <= p["sigma"] <= 20
        std = ((res.lq[i] - 0.5) * 255).std().item()
        assert std == pytest.approx(p["sigma"], rel=0.04)


def test_pipeline_jpeg_uses_the_drawn_quality():
    pipe = DegradationPipeline({"stages": [{"jpeg": {"quality": [20, 90]}}]})
    hq = _image(b=3)
    res = pipe(hq, 3)
    for i, q in enumerate(res.params[0]["quality"]):
        assert 20 <= q <= 90
        torch.testing.assert_close(res.lq[i], ops.jpeg_decode(ops.jpeg_encode(hq[i], q)))
        other = ops.jpeg_decode(ops.jpeg_encode(hq[i], q + 5 if q < 85 else q - 5))
        assert not torch.equal(res.lq[i], other)


def _flatten(plan):
    for rec in plan:
        if rec["stage"] == "random_order":
            for group in rec["groups"]:
                yield from _flatten(group)
        else:
            yield rec


def test_codeformer_draws_stay_in_range_and_proportion():
    pipe = load_pipeline("codeformer")
    rng = np.random.default_rng(0)
    n = 1500
    plans = [pipe.sample(rng, 1, (512, 512)) for _ in range(n)]
    types = [p[0]["params"][0]["type"] for p in plans]
    assert _within(types.count("iso") / n, 0.5, n)
    for blur, resize, noise, jpeg in plans:
        prm = blur["params"][0]
        assert 0.1 <= prm["sigma_x"] <= 12 and 0.1 <= prm["sigma_y"] <= 12
        assert -math.pi <= prm["theta"] <= math.pi and prm["kernel_size"] == 41
        assert 1 / 12 <= resize["scale"] <= 1 and resize["mode"] == "bilinear"
        assert resize["size"][0] == int(512 // resize["factor"])
        assert 0 <= noise["params"][0]["sigma"] <= 15 and not noise["params"][0]["gray"]
        assert 30 <= jpeg["quality"][0] <= 100
    sigmas = [p[2]["params"][0]["sigma"] for p in plans]
    assert np.mean(sigmas) == pytest.approx(7.5, abs=0.5)  # uniform over [0, 15]
    qualities = [p[3]["quality"][0] for p in plans]
    assert min(qualities) == 30 and max(qualities) == 100  # both ends reachable


def test_codeformer_face_v1_ranges():
    pipe = load_pipeline("codeformer_face_v1")
    rng = np.random.default_rng(2)
    plans = [pipe.sample(rng, 1, (512, 512)) for _ in range(800)]
    factors = [p[1]["factor"] for p in plans]
    assert 0.8 <= min(factors) < 1.0 and 7.0 < max(factors) <= 8  # upsamples too
    assert all(p[1]["direction"] == "up" for p in plans if p[1]["factor"] < 1)
    assert all(p[0]["params"][0]["sigma_x"] <= 10 for p in plans)
    assert max(p[2]["params"][0]["sigma"] for p in plans) <= 20
    assert min(p[3]["quality"][0] for p in plans) >= 60


def test_realesrgan_draws_stay_in_range_and_proportion():
    pipe = load_pipeline("realesrgan")
    rng = np.random.default_rng(1)
    n = 1000
    plans = [pipe.sample(rng, 1, (256, 256)) for _ in range(n)]
    blur1 = [p[0]["params"][0] for p in plans]
    kinds = [b["type"] for b in blur1]
    assert _within(kinds.count("sinc") / n, 0.1, n)
    assert _within(kinds.count("iso") / n, 0.9 * 0.45, n)
    assert _within(kinds.count("aniso") / n, 0.9 * 0.25, n)
    for b in blur1:
        assert b["kernel_size"] in range(7, 22, 2)
        if b["type"] == "sinc":
            lo = math.pi / 3 if b["kernel_size"] < 13 else math.pi / 5
            assert lo <= b["cutoff"] <= math.pi
        else:
            assert 0.2 <= b["sigma_x"] <= 3
    assert all(p[0]["kernels"].shape == (1, 21, 21) for p in plans[:20])
    second_blur = [p[4]["params"][0] for p in plans]
    assert _within(sum(b is not None for b in second_blur) / n, 0.8, n)
    assert all(b["sigma_x"] <= 1.5 for b in second_blur if b and b["type"] != "sinc")
    directions = [p[1]["direction"] for p in plans]
    for d, prob in zip(("up", "down", "keep"), (0.2, 0.7, 0.1)):
        assert _within(directions.count(d) / n, prob, n)
    for p in plans:
        r1 = p[1]
        lo, hi = {"up": (1, 1.5), "down": (0.15, 1), "keep": (1, 1)}[r1["direction"]]
        assert lo <= r1["scale"] <= hi and r1["mode"] in ("area", "bilinear", "bicubic")
        r2 = p[5]
        lo, hi = {"up": (1, 1.2), "down": (0.3, 1), "keep": (1, 1)}[r2["direction"]]
        assert lo <= r2["scale"] <= hi and r2["size"][0] == int(64 * r2["scale"])
    noise = [p[2]["params"][0] for p in plans]
    assert _within(sum(x["type"] == "gaussian" for x in noise) / n, 0.5, n)
    assert _within(sum(x["gray"] for x in noise) / n, 0.4, n)
    assert all(1 <= x["sigma"] <= 30 for x in noise if x["type"] == "gaussian")
    assert all(0.05 <= x["scale"] <= 3 for x in noise if x["type"] == "poisson")
    orders = [p[7]["order"] for p in plans]
    assert _within(sum(o == [0, 1] for o in orders) / n, 0.5, n)
    final_sinc = [p[7]["groups"][0][1]["params"][0] for p in plans]
    assert _within(sum(s is not None for s in final_sinc) / n, 0.8, n)
    assert all(math.pi / 3 <= s["cutoff"] <= math.pi for s in final_sinc if s)
    qualities = [r["quality"][0] for p in plans for r in _flatten(p) if r["stage"] == "jpeg"]
    assert len(qualities) == 2 * n and min(qualities) >= 30 and max(qualities) <= 95


# ----------------------------------------------------------------------------- configs


def test_custom_toml_pipeline(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'resize_back = "bilinear"\n'
        '[[stages]]\nblur = { kernel_size = 9, sigma_x = [1, 2], kernel_list = ["aniso"], '
        'rotation = ["-pi/2", "pi/2"] }\n'
        "[[stages]]\nresize = { downsample = [2, 2] }\n"
        "[[stages]]\njpeg = { quality = [50, 50] }\n"
    )
    pipe = load_pipeline(path)
    assert pipe.name == "mine"
    res = pipe(_image(h=32, w=32), 0)
    assert res.lq.shape == (1, 3, 32, 32)
    assert res.params[1]["size"] == (16, 16) and res.params[2]["quality"] == [50]
    assert abs(res.params[0]["params"][0]["theta"]) <= math.pi / 2


def test_yaml_example_config_loads():
    root = Path(__file__).resolve().parents[1] / "configs" / "degradation"
    paths = sorted(root.glob("*.yaml"))
    assert paths
    for path in paths:
        pipe = load_pipeline(path)
        assert pipe.name == path.stem and pipe(_image(), 0).lq.shape == (1, 3, 40, 56)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"stages": [{"smear": {}}]}, r"stages\[0\]: unknown stage type 'smear'"),
        ({"stages": [{"jpeg": {"quality": [90, 30]}}]}, r"stages\[0\]\.jpeg\.quality: low"),
        ({"stages": [{"jpeg": {"quality": [0, 30]}}]}, r"quality: must be integers in 1\.\.100"),
        ({"stages": [{"noise": {"sigma": [1, 2]}}]}, r"stages\[0\]\.noise: unknown field"),
        ({"stages": [{"blur": {"kernel_size": 8, "sigma_x": [1, 2]}}]}, "odd"),
        ({"stages": [{"blur": {"kernel_size": 7}}]}, "missing required field 'sigma_x'"),
        ({"stages": [{"resize": {"modes": ["lanczos"]}}]}, "unknown value 'lanczos'"),
        ({"stages": [{"noise": {"gaussian_sigma": "x"}}]}, r"gaussian_sigma: expected a range"),
        (
            {"stages": [{"blur": {"kernel_size": 7, "sigma_x": [1, 2], "probability": 2}}]},
            r"\[0, 1\]",
        ),
        ({"stages": []}, "non-empty list"),
        ({"steps": []}, "unknown field"),
    ],
)
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="give a preset"):
        load_pipeline("bsrgan")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [blur: {kernel_size: 7, sigma_x: [1, 2]}\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_pipeline(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("stages:\n  - jpeg: {quality: [5, 1]}\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: stages\[0\]\.jpeg\.quality"):
        load_pipeline(wrong)
