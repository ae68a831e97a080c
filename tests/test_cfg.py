"""Classifier-free guidance: one batched call, the combination, the cosine rescale."""

from __future__ import annotations

import math

import pytest
import torch

from diffbir.diffusion.cfg import classifier_free_guidance, cosine_rescaled_scale
from diffbir.errors import ConfigError


class RecordingModel:
    """out = x * w(context) + t/1000; records every call's batch and context."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context):
        self.calls.append((x.shape[0], context))
        ctx = context["c_txt"] if isinstance(context, dict) else context
        w = ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return x * w + (t.float() / 1000).view(-1, 1, 1, 1)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=g)
    t = torch.full((2,), 500, dtype=torch.long)
    cond = torch.randn(2, 5, 8, generator=g)
    uncond = torch.randn(2, 5, 8, generator=g)
    return x, t, cond, uncond


def test_one_batched_call_and_the_combination():
    x, t, cond, uncond = _inputs()
    model = RecordingModel()
    fn = classifier_free_guidance(model, cond, uncond, 4.5)
    out = fn(x, t)
    assert len(model.calls) == 1 and model.calls[0][0] == 4
    assert torch.equal(model.calls[0][1], torch.cat([cond, uncond]))
    ref_model = RecordingModel()
    c, u = ref_model(x, t, cond), ref_model(x, t, uncond)
    assert torch.allclose(out, u + 4.5 * (c - u), atol=1e-6)


def test_scale_one_is_a_single_conditional_call():
    x, t, cond, uncond = _inputs()
    model = RecordingModel()
    out = classifier_free_guidance(model, cond, uncond, 1.0)(x, t)
    assert len(model.calls) == 1 and model.calls[0][0] == 2
    assert model.calls[0][1] is cond
    assert torch.equal(out, RecordingModel()(x, t, cond))
    model = RecordingModel()
    classifier_free_guidance(model, cond, None, 7.0)(x, t)
    assert len(model.calls) == 1 and model.calls[0][0] == 2


def test_dict_contexts_are_concatenated_per_key():
    x, t, cond, uncond = _inputs()
    c_img = torch.randn(2, 4, 3, 3)
    model = RecordingModel()
    fn = classifier_free_guidance(
        model, {"c_txt": cond, "c_img": c_img}, {"c_txt": uncond, "c_img": c_img}, 3.0
    )
    out = fn(x, t)
    seen = model.calls[0][1]
    assert torch.equal(seen["c_txt"], torch.cat([cond, uncond]))
    assert torch.equal(seen["c_img"], torch.cat([c_img, c_img]))
    c, u = RecordingModel()(x, t, cond), RecordingModel()(x, t, uncond)
    assert torch.allclose(out, u + 3.0 * (c - u), atol=1e-6)
    with pytest.raises(ConfigError, match="same keys"):
        classifier_free_guidance(model, {"a": cond}, {"b": uncond}, 2.0)


def test_cosine_rescale_formula():
    # the v2.1 release: 1 + s (1 - cos(pi ((1000 - t) / 1000) ** 5)) / 2
    assert cosine_rescaled_scale(6.0, 999) == pytest.approx(1.0, abs=1e-9)
    assert cosine_rescaled_scale(6.0, 0) == pytest.approx(7.0)
    mid = 1 + 6.0 * (1 - math.cos(math.pi * 0.5**5)) / 2
    assert cosine_rescaled_scale(6.0, 500) == pytest.approx(mid)
    assert cosine_rescaled_scale(1.0, 0) == 1.0 and cosine_rescaled_scale(0.5, 0) == 0.5
    values = [cosine_rescaled_scale(4.0, t) for t in range(999, -1, -111)]
    assert values == sorted(values)


def test_cosine_rescale_is_applied_per_step():
    x, _, cond, uncond = _inputs()
    for t_value in (900, 100):
        t = torch.full((2,), t_value, dtype=torch.long)
        out = classifier_free_guidance(RecordingModel(), cond, uncond, 5.0, rescale="cosine")(x, t)
        c, u = RecordingModel()(x, t, cond), RecordingModel()(x, t, uncond)
        s = cosine_rescaled_scale(5.0, t_value)
        assert torch.allclose(out, u + s * (c - u), atol=1e-6)
    with pytest.raises(ConfigError, match="rescale"):
        classifier_free_guidance(RecordingModel(), cond, uncond, 5.0, rescale="linear")
