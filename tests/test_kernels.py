"""Blur kernels: goldens from the published implementation, geometry, and random draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from diffbir.degradation import kernels as K

FIXTURES = Path(__file__).parent / "fixtures" / "kernels"


@pytest.fixture(scope="module")
def golden():
    folder = FIXTURES
    cases = json.loads((folder / "config.json").read_text())["config"]["cases"]
    return cases, load_file(str(folder / "io.safetensors"))


@pytest.mark.parametrize("i", range(4))
def test_shaped_kernels_match_golden(golden, i):
    cases, ref = golden
    c = cases[i]
    size, sx, sy, theta, beta = (c[k] for k in ("kernel_size", "sig_x", "sig_y", "theta", "beta"))
    got = {
        "gaussian": K.gaussian_kernel(size, sx, sy, theta),
        "generalized": K.generalized_gaussian_kernel(size, sx, sy, theta, beta),
        "plateau": K.plateau_kernel(size, sx, sy, theta, beta),
    }
    for name, kernel in got.items():
        expected = ref[f"{name}_{i}"]
        assert kernel.shape == expected.shape
        np.testing.assert_allclose(kernel, expected, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("i", range(3))
def test_sinc_kernel_matches_golden(golden, i):
    cases, ref = golden
    c = cases[4 + i]
    kernel = K.sinc_kernel(c["sinc_cutoff"], c["kernel_size"], pad_to=c["pad_to"])
    np.testing.assert_allclose(kernel, ref[f"sinc_{i}"], rtol=0, atol=1e-6)


def test_kernels_sum_to_one_and_rotate():
    k0 = K.gaussian_kernel(15, 3.0, 1.0, 0.0)
    k90 = K.gaussian_kernel(15, 3.0, 1.0, math.pi / 2)
    assert k0.sum() == pytest.approx(1.0)
    # wide along x at theta=0, wide along y after a quarter turn
    assert k0[7, 0] > k0[0, 7]
    np.testing.assert_allclose(k90, k0.T, atol=1e-12)
    iso = K.gaussian_kernel(11, 2.0)
    np.testing.assert_allclose(iso, iso.T, atol=1e-15)
    np.testing.assert_allclose(iso, iso[::-1], atol=1e-15)
    # beta = 1 generalized Gaussian is the Gaussian
    np.testing.assert_allclose(
        K.generalized_gaussian_kernel(11, 2.0, 1.5, 0.3, 1.0), K.gaussian_kernel(11, 2.0, 1.5, 0.3)
    )


def test_sinc_padding_and_delta():
    k = K.sinc_kernel(math.pi / 2, 7, pad_to=13)
    assert k.shape == (13, 13)
    assert np.all(k[:3] == 0) and np.all(k[:, -3:] == 0)
    assert k.sum() == pytest.approx(1.0)
    d = K.delta_kernel(5)
    assert d.sum() == 1 and d[2, 2] == 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="odd"):
        K.gaussian_kernel(8, 1.0)
    with pytest.raises(ValueError, match="positive"):
        K.gaussian_kernel(7, 0.0)
    with pytest.raises(ValueError, match="cutoff"):
        K.sinc_kernel(4.0, 7)
    with pytest.raises(ValueError, match="unknown kernel type"):
        K.random_mixed_kernel(np.random.default_rng(0), ["box"], [1.0])


def _within(frac: float, p: float, n: int) -> bool:
    return abs(frac - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_random_mixed_kernel_proportions_and_ranges():
    rng = np.random.default_rng(123)
    types = list(K.KERNEL_TYPES)
    probs = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    n = 3000
    draws = [
        K.random_mixed_kernel(
            rng, types, probs, 7, (0.2, 3.0), (0.5, 1.5), (-1.0, 1.0), (0.5, 4), (1, 2)
        )
        for _ in range(n)
    ]
    for t, p in zip(types, probs):
        frac = sum(d[1]["type"] == t for d in draws) / n
        assert _within(frac, p, n), (t, frac, p)
    for kernel, prm in draws:
        assert kernel.shape == (7, 7) and kernel.sum() == pytest.approx(1.0)
        assert 0.2 <= prm["sigma_x"] <= 3.0
        if prm["type"].endswith("aniso"):
            assert 0.5 <= prm["sigma_y"] <= 1.5 and -1.0 <= prm["theta"] <= 1.0
        else:
            assert prm["sigma_y"] == prm["sigma_x"] and prm["theta"] == 0.0
        if prm["type"].startswith("generalized"):
            assert 0.5 <= prm["beta"] <= 4
        elif prm["type"].startswith("plateau"):
            assert 1 <= prm["beta"] <= 2
        else:
            assert prm["beta"] is None
    betas = [d[1]["beta"] for d in draws if d[1]["type"].startswith("generalized")]
    below = sum(b < 1 for b in betas) / len(betas)
    assert _within(below, 0.5, len(betas))


def test_random_mixed_kernel_is_reproducible():
    a = K.random_mixed_kernel(np.random.default_rng(7), ["iso", "aniso"], [0.5, 0.5], 21)
    b = K.random_mixed_kernel(np.random.default_rng(7), ["iso", "aniso"], [0.5, 0.5], 21)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
