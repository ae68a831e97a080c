"""The release's Real-ESRGAN training degradation: pool, sharpened target, draws, outputs, JPEG."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffbir.degradation import ops
from diffbir.degradation.pool import TrainingPool
from diffbir.degradation.realesrgan_batch import (
    BatchPlan,
    NoiseDraw,
    RealESRGANBatchDegradation,
    RealESRGANTrainingConfig,
    RealESRGANTrainingTransform,
    ResizeDraw,
    degrade_batch,
    draw_batch_plan,
    draw_sample_kernels,
    load_realesrgan_batch,
    stack_kernels,
    usm_target,
)
from diffbir.degradation.torch_jpeg import jpeg_round_trip
from diffbir.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"

# Small images gain nothing from threads; on a busy machine two threads spin and crawl.
pytestmark = pytest.mark.usefixtures("single_thread")

# The release's values (configs/train/train_stage2_v2.1.yaml: dataset.train.params and
# batch_transform.params), written here as facts.
RELEASED_V21 = {
    "blur_kernel_size": 21,
    "kernel_list": [
        "iso",
        "aniso",
        "generalized_iso",
        "generalized_aniso",
        "plateau_iso",
        "plateau_aniso",
    ],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob": 0.1,
    "blur_sigma": [0.2, 3],
    "betag_range": [0.5, 4],
    "betap_range": [1, 2],
    "blur_kernel_size2": 21,
    "kernel_list2": [
        "iso",
        "aniso",
        "generalized_iso",
        "generalized_aniso",
        "plateau_iso",
        "plateau_aniso",
    ],
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5],
    "betag_range2": [0.5, 4],
    "betap_range2": [1, 2],
    "final_sinc_prob": 0.8,
    "use_sharpener": True,
    "queue_size": 256,
    "resize_prob": [0.2, 0.7, 0.1],
    "resize_range": [0.15, 1.5],
    "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30],
    "poisson_scale_range": [0.05, 3],
    "gray_noise_prob": 0.4,
    "jpeg_range": [30, 95],
    "stage2_scale": 4,
    "second_blur_prob": 0.8,
    "resize_prob2": [0.3, 0.4, 0.3],
    "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5,
    "noise_range2": [1, 25],
    "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4,
    "jpeg_range2": [30, 95],
}
KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)


def _within(count: int, n: int, p: float) -> bool:
    """A binomial count within 4.5 standard deviations of its mean (false alarm < 1e-5)."""
    return abs(count / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12


def _images(b=4, h=64, w=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------- config


def test_defaults_are_the_released_v21_values():
    assert RealESRGANTrainingConfig.from_mapping(RELEASED_V21) == RealESRGANTrainingConfig()


@pytest.mark.parametrize(
    "bad",
    [
        {"queue_sise": 256},
        {"sinc_prob": 1.5},
        {"kernel_prob": [0.5, 0.5]},
        {"kernel_list": ["iso", "box", "aniso", "a", "b", "c"]},
        {"resize_range": [1.2, 1.5]},
        {"jpeg_range": [30, 101]},
        {"noise_range": [5, 1]},
        {"queue_size": 25.5},
        {"use_sharpener": "yes"},
        {"blur_kernel_size": 20},
    ],
)
def test_bad_settings_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        RealESRGANTrainingConfig.from_mapping(bad)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- the pool


def _tagged(batch_index: int, b: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    ids = torch.arange(batch_index * b, (batch_index + 1) * b, dtype=torch.float32)
    lq = ids.view(b, 1, 1, 1).expand(b, 3, 5, 5).clone()
    gt = (-ids).view(b, 1, 1, 1).expand(b, 3, 10, 10).clone()
    return lq, gt, [f"id{int(i)}" for i in ids]


def test_pool_fills_then_swaps_batches_keeping_pairs_together():
    size, b, steps = 32, 4, 400
    pool = TrainingPool(size, seed=0)
    fill_steps = size // b
    counts: Counter[int] = Counter()
    delays, mixed_batches = [], 0
    for step in range(steps):
        lq, gt, txt = _tagged(step, b)
        out_lq, out_gt, out_txt = pool(lq, gt, txt)
        assert out_lq.shape == lq.shape and out_gt.shape == gt.shape and len(out_txt) == b
        ids = out_lq[:, 0, 0, 0].long().tolist()
        # image, target and caption of a sample leave the pool together
        assert out_gt[:, 0, 0, 0].long().tolist() == [-i for i in ids]
        assert out_txt == [f"id{i}" for i in ids]
        if step < fill_steps:
            assert ids == list(range(step * b, (step + 1) * b))  # filling: the batch itself
            assert not pool.full or step == fill_steps - 1
        else:
            assert pool.full
            assert all(i < step * b for i in ids) or len(set(i // b for i in ids)) > 1
            mixed_batches += len({i // b for i in ids}) > 1
            for i in ids:
                if i >= size:
                    delays.append(step - i // b)
        counts.update(ids)
    # each sample comes out at most once, those of the filling batches at most twice
    assert max(counts[i] for i in range(size, steps * b)) == 1
    assert max(counts[i] for i in range(size)) <= 2
    # every output after filling mixes samples of several earlier batches
    assert mixed_batches >= 0.95 * (steps - fill_steps)
    # a uniformly random pick leaves after a geometric delay: mean size/b, wide spread (a
    # FIFO would give exactly size/b every time)
    assert abs(np.mean(delays) - size / b) < 1.0
    assert np.std(delays) > 5.0


def test_pool_conserves_samples_and_holds_the_rest():
    size, b = 16, 4
    pool = TrainingPool(size, seed=3)
    seen: list[int] = []
    for step in range(20):
        lq, _, _ = _tagged(step, b)
        seen += pool(lq)[:, 0, 0, 0].long().tolist()
    held = pool.state_dict()["items"][0][:, 0, 0, 0].long().tolist()
    # what came out after filling plus what the pool holds is every sample exactly once
    after_fill = seen[size:]
    assert sorted(after_fill + held) == list(range(20 * b))


def test_pool_rejects_a_batch_that_does_not_divide_its_size():
    with pytest.raises(ValueError, match="multiple of the batch size"):
        TrainingPool(10, seed=0)(torch.zeros(4, 3, 2, 2))
    pool = TrainingPool(8, seed=0)
    pool(torch.zeros(4, 3, 2, 2))
    with pytest.raises(ValueError, match="expected a tensor"):
        pool(torch.zeros(4, 3, 3, 3))


def test_pool_resumes_from_its_state():
    a, b = TrainingPool(8, seed=5), TrainingPool(8, seed=99)
    for step in range(5):
        a(_tagged(step, 2)[0])
    b.load_state_dict(a.state_dict())
    for step in range(5, 12):
        x = _tagged(step, 2)[0]
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------------- sharpened target


def _usm_direct(img: np.ndarray) -> np.ndarray:
    """USM of one HWC float image, computed directly with OpenCV (radius 50 -> 51, sigma 0)."""
    k1 = cv2.getGaussianKernel(51, 0)
    k2 = k1 @ k1.T
    blur = cv2.filter2D(img, -1, k2, borderType=cv2.BORDER_REFLECT_101)
    residual = img - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float64)
    soft = cv2.filter2D(mask, -1, k2, borderType=cv2.BORDER_REFLECT_101)
    sharp = np.clip(img + 0.5 * residual, 0, 1)
    return soft * sharp + (1 - soft) * img


def test_usm_target_matches_a_direct_computation():
    hq = _images(1, 64, 72, seed=4).double()
    ours = usm_target(hq)[0].permute(1, 2, 0).numpy()
    direct = _usm_direct(hq[0].permute(1, 2, 0).numpy())
    assert np.abs(ours - direct).max() < 1e-6
    assert np.abs(ours - hq[0].permute(1, 2, 0).numpy()).max() > 0.02


def test_usm_sharpens_edges_and_leaves_flat_regions():
    hq = torch.full((1, 3, 48, 160), 0.3, dtype=torch.float64)
    hq[..., 80:] = 0.7
    out = usm_target(hq)
    # far (> 2 x 25 px) from the edge: untouched
    assert torch.allclose(out[..., :25], hq[..., :25], atol=1e-9)
    assert torch.allclose(out[..., 136:], hq[..., 136:], atol=1e-9)
    # at the edge: overshoot on both sides (darker dark side, brighter bright side)
    assert (out[..., 79] < 0.3 - 0.02).all() and (out[..., 80] > 0.7 + 0.02).all()
    assert out.min() >= 0 and out.max() <= 1


def test_the_batch_target_is_the_sharpened_hq():
    hq = _images(2, 48, 48, seed=1)
    cfg = RealESRGANTrainingConfig()
    rng = np.random.default_rng(0)
    kernels = stack_kernels([draw_sample_kernels(cfg, rng) for _ in range(2)])
    plan = draw_batch_plan(cfg, rng, 2)
    _, target = degrade_batch(hq, kernels, plan, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(target, usm_target(hq))
    _, plain = degrade_batch(hq, kernels, plan, use_sharpener=False)
    assert torch.equal(plain, hq)


# ---------------------------------------------------------------------- statistics of the draws


def test_kernel_draws_follow_the_released_ranges_and_probabilities():
    cfg, rng, n = RealESRGANTrainingConfig(), np.random.default_rng(2024), 2000
    draws = [draw_sample_kernels(cfg, rng) for _ in range(n)]
    for name, sigma in (("kernel1", (0.2, 3.0)), ("kernel2", (0.2, 1.5))):
        params = [d.params[name] for d in draws]
        sizes = Counter(p["kernel_size"] for p in params)
        assert set(sizes) == set(KERNEL_SIZES)
        assert all(_within(sizes[k], n, 1 / 8) for k in KERNEL_SIZES)
        sinc = [p for p in params if p["type"] == "sinc"]
        assert _within(len(sinc), n, 0.1)
        for p in sinc:
            lo = math.pi / 3 if p["kernel_size"] < 13 else math.pi / 5
            assert lo <= p["cutoff"] <= math.pi
        assert min(p["cutoff"] for p in sinc if p["kernel_size"] >= 13) < math.pi / 3
        mixed = [p for p in params if p["type"] != "sinc"]
        types = Counter(p["type"] for p in mixed)
        for kind, prob in zip(RELEASED_V21["kernel_list"], RELEASED_V21["kernel_prob"]):
            assert _within(types[kind], len(mixed), prob), (name, kind, types[kind])
        for p in mixed:
            assert sigma[0] <= p["sigma_x"] <= sigma[1] and sigma[0] <= p["sigma_y"] <= sigma[1]
            if "aniso" not in p["type"]:
                assert p["sigma_y"] == p["sigma_x"] and p["theta"] == 0
            else:
                assert -math.pi <= p["theta"] <= math.pi
            if p["type"].startswith("generalized"):
                assert 0.5 <= p["beta"] <= 4
            if p["type"].startswith("plateau"):
                assert 1 <= p["beta"] <= 2
        sx = np.array([p["sigma_x"] for p in mixed])
        assert abs(sx.mean() - sum(sigma) / 2) < 4.5 * (sigma[1] - sigma[0]) / math.sqrt(
            12 * len(sx)
        )
    finals = [d.params["sinc"] for d in draws]
    applied = [p for p in finals if p is not None]
    assert _within(len(applied), n, 0.8)
    assert all(math.pi / 3 <= p["cutoff"] <= math.pi for p in applied)
    for d in draws[:50]:
        for k in (d.kernel1, d.kernel2, d.sinc_kernel):
            assert k.shape == (21, 21) and k.dtype == np.float32
            assert abs(float(k.sum()) - 1) < 1e-5
        if d.params["sinc"] is None:
            assert d.sinc_kernel[10, 10] == 1 and d.sinc_kernel.sum() == 1


def test_batch_draws_follow_the_released_ranges_and_probabilities():
    cfg, rng, n, b = RealESRGANTrainingConfig(), np.random.default_rng(7), 2000, 4
    plans = [draw_batch_plan(cfg, rng, b) for _ in range(n)]
    for key, prob, span in (
        ("resize1", (0.2, 0.7, 0.1), (0.15, 1.5)),
        ("resize2", (0.3, 0.4, 0.3), (0.3, 1.2)),
    ):
        draws = [getattr(p, key) for p in plans]
        directions = Counter(d.direction for d in draws)
        for direction, p in zip(("up", "down", "keep"), prob):
            assert _within(directions[direction], n, p), (key, direction)
        modes = Counter(d.mode for d in draws)
        assert all(_within(modes[m], n, 1 / 3) for m in ("area", "bilinear", "bicubic"))
        for d in draws:
            lo, hi = {"up": (1, span[1]), "down": (span[0], 1), "keep": (1, 1)}[d.direction]
            assert lo <= d.scale <= hi
        assert (
            min(d.scale for d in draws) < span[0] + 0.05
            and max(d.scale for d in draws) > span[1] - 0.05
        )
    for key, sigma, scale in (("noise1", (1, 30), (0.05, 3)), ("noise2", (1, 25), (0.05, 2.5))):
        draws = [getattr(p, key) for p in plans]
        gaussian = [d for d in draws if d.kind == "gaussian"]
        assert _within(len(gaussian), n, 0.5)  # one kind per batch
        for d in draws:
            lo, hi = sigma if d.kind == "gaussian" else scale
            assert d.level.shape == (b,) and ((lo <= d.level) & (d.level <= hi)).all()
        gray = np.concatenate([d.gray for d in draws])
        assert _within(int(gray.sum()), gray.size, 0.4)  # gray noise per image
    for key in ("jpeg1", "jpeg2"):
        q = np.concatenate([getattr(p, key) for p in plans])
        assert ((30 <= q) & (q <= 95)).all()
        assert abs(q.mean() - 62.5) < 4.5 * 65 / math.sqrt(12 * q.size)
        assert len(np.unique(q)) > q.size // 2  # real-valued, as the release draws it
    assert _within(sum(p.blur2 for p in plans), n, 0.8)
    assert _within(sum(p.resize_sinc_first for p in plans), n, 0.5)
    assert {p.stage2_scale for p in plans} == {4.0}
    modes = Counter(p.resize_back_mode for p in plans)
    assert all(_within(modes[m], n, 1 / 3) for m in ("area", "bilinear", "bicubic"))


def test_a_stage2_scale_range_is_drawn_per_batch():
    cfg = RealESRGANTrainingConfig.from_mapping({"stage2_scale": [2, 4]})
    rng = np.random.default_rng(0)
    scales = [draw_batch_plan(cfg, rng, 1).stage2_scale for _ in range(200)]
    assert min(scales) >= 2 and max(scales) <= 4 and len(set(scales)) == 200


# ---------------------------------------------------------------------- the degraded batch


def test_output_shape_range_levels_and_determinism():
    hq = _images(4, 64, 64, seed=2)
    lq, target = RealESRGANBatchDegradation(seed=11, device="cpu")(hq)
    assert lq.shape == target.shape == hq.shape
    assert lq.dtype == torch.float32 and lq.device == hq.device
    assert lq.min() >= 0 and lq.max() <= 1
    assert torch.equal(lq * 255, (lq * 255).round())  # 8-bit levels
    assert (lq - target).abs().mean() > 0.01  # degraded
    again, _ = RealESRGANBatchDegradation(seed=11)(hq)
    other, _ = RealESRGANBatchDegradation(seed=12)(hq)
    assert torch.equal(lq, again)
    assert not torch.equal(lq, other)


def test_non_square_batches_with_kernels_from_the_data_loader():
    cfg = RealESRGANTrainingConfig()
    rng = np.random.default_rng(5)
    samples = [draw_sample_kernels(cfg, rng) for _ in range(3)]
    collated = torch.utils.data.default_collate([s.as_tensors() for s in samples])
    assert collated["kernel1"].shape == (3, 21, 21)
    degrade = RealESRGANBatchDegradation(cfg, seed=0)
    for _ in range(4):  # several plans: both orders, all resize modes
        lq, target = degrade(_images(3, 48, 80, seed=1), collated)
        assert lq.shape == target.shape == (3, 3, 48, 80)
        assert torch.isfinite(lq).all() and lq.min() >= 0 and lq.max() <= 1


def _mild_plan(b: int, resize_sinc_first: bool, quality: float, sigma: float) -> BatchPlan:
    keep = ResizeDraw("keep", 1.0, "bicubic")
    noise = NoiseDraw("gaussian", np.full(b, sigma), np.zeros(b, dtype=bool))
    q = np.full(b, quality)
    return BatchPlan(keep, noise, q, False, 1.0, keep, noise, resize_sinc_first, "bicubic", q)


def test_plan_is_applied_as_drawn():
    hq = _images(2, 32, 32, seed=8)
    delta = torch.zeros(2, 21, 21)
    delta[:, 10, 10] = 1
    kernels = {"kernel1": delta, "kernel2": delta, "sinc_kernel": delta}
    g = torch.Generator().manual_seed(0)
    mild, target = degrade_batch(hq, kernels, _mild_plan(2, True, 95.0, 0.0), generator=g)
    # identity kernels, no resize, no noise: only two JPEG passes at 95 and 8-bit rounding
    expected = ops.quantize(jpeg_round_trip(jpeg_round_trip(target, 95.0), 95.0))
    assert (mild - expected).abs().mean() < 1e-3
    strong, _ = degrade_batch(hq, kernels, _mild_plan(2, False, 30.0, 20.0), generator=g)
    assert (strong - target).abs().mean() > 2 * (mild - target).abs().mean()
    with pytest.raises(ValueError, match="drawn for 2 images"):
        degrade_batch(hq[:1], {k: v[:1] for k, v in kernels.items()}, _mild_plan(2, True, 95, 0))


def test_training_transform_pools_images_with_their_captions():
    cfg = replace(RealESRGANTrainingConfig(), queue_size=8)
    transform = RealESRGANTrainingTransform(cfg, seed=0)
    came_back = set()
    for step in range(6):
        # constant images: the USM target of a constant image is the image itself
        levels = torch.tensor([step * 4 + i for i in range(4)], dtype=torch.float32) / 40
        hq = levels.view(4, 1, 1, 1).expand(4, 3, 32, 32).contiguous()
        texts = [f"{v:.3f}" for v in levels.tolist()]
        lq, target, out_texts = transform(hq, texts=texts)
        assert lq.shape == target.shape == hq.shape
        for img, text in zip(target, out_texts):
            assert abs(img.mean().item() - float(text)) < 1e-5
            came_back.add(text)
        if step >= 2:
            assert any(float(t) * 40 < step * 4 for t in out_texts)
    assert len(came_back) > 8


def test_loop_form_draws_from_the_loop_generator_and_resumes():
    cfg = {"queue_size": 4}
    batches = [(_images(2, 32, 32, seed=s), [f"p{s}a", f"p{s}b"]) for s in range(6)]

    def run(degrade, gen, items):
        return [degrade(hq, prompts, gen) for hq, prompts in items]

    first = load_realesrgan_batch(cfg, device="cpu")
    gen = torch.Generator().manual_seed(3)
    head = run(first, gen, batches[:3])
    state, gen_state = first.state_dict(), gen.get_state()
    tail = run(first, gen, batches[3:])
    for target, lq, prompts in head + tail:
        assert target.shape == lq.shape == (2, 3, 32, 32) and len(prompts) == 2
    # prompts stay with their targets through the pool
    targets = {p: usm_target(hq[i : i + 1])[0] for hq, ps in batches for i, p in enumerate(ps)}
    for target, _, prompts in tail:
        for img, p in zip(target, prompts):
            assert torch.allclose(img, targets[p], atol=1e-6)
    # a restarted run with the saved pool and generator continues draw for draw
    resumed = load_realesrgan_batch(cfg, device="cpu")
    resumed.load_state_dict(state)
    gen2 = torch.Generator()
    gen2.set_state(gen_state)
    for (t1, l1, p1), (t2, l2, p2) in zip(tail, run(resumed, gen2, batches[3:])):
        assert torch.equal(t1, t2) and torch.equal(l1, l2) and p1 == p2
    with pytest.raises(ConfigError, match="multiple of the batch size"):
        load_realesrgan_batch({"queue_size": 5})(batches[0][0], batches[0][1], gen)


# ---------------------------------------------------------------------- JPEG on the device


def test_jpeg_matches_the_release_diffjpeg():
    data = load_file(str(FIXTURES / "diffjpeg" / "io.safetensors"))
    assert "DiffJPEG" in json.loads((FIXTURES / "diffjpeg" / "config.json").read_text())["source"]
    ours = jpeg_round_trip(data["input"], data["quality"])
    assert (ours - data["output"]).abs().max() < 1e-5


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / (a - b).pow(2).mean().item())


def test_jpeg_is_close_to_a_real_codec_and_per_image():
    # gray images: chroma is constant, so only the luma path is compared with libjpeg (the
    # release's chroma is box-averaged and repeated, libjpeg's is filtered)
    hq = _images(3, 40, 56, seed=9).mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    qualities = [30, 60, 90]
    ours = jpeg_round_trip(hq, torch.tensor(qualities, dtype=torch.float32))
    real = ops.jpeg_compress(hq, qualities)
    errors = []
    for i, q in enumerate(qualities):
        alone = jpeg_round_trip(hq[i : i + 1], q)
        assert torch.allclose(alone[0], ours[i], atol=1e-6)
        assert _psnr(ours[i], real[i]) > 38, q
        assert abs(_psnr(ours[i], hq[i]) - _psnr(real[i], hq[i])) < 1.5, q
        errors.append((ours[i] - hq[i]).abs().mean().item())
    assert errors[0] > errors[1] > errors[2] > 0
    with pytest.raises(ValueError, match="quality"):
        jpeg_round_trip(hq, 0.5)
