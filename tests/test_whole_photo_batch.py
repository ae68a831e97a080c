"""Whole-photo runs restore a photo's faces in batches, each as if it were alone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from tiny_release import FIXTURES, make_tiny_release

from diffbir.config.settings import RestoreOptions
from diffbir.errors import ConfigError


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory, single_thread):
    from diffbir.restore.whole_photo import WholePhotoPipeline

    folder = tmp_path_factory.mktemp("weights")
    config = make_tiny_release(folder)
    shutil.copy(
        FIXTURES / "faces" / "tiny_yunet.onnx", folder / "face_detection_yunet_2023mar.onnx"
    )
    made = {}
    for batch in (1, 3):
        made[batch] = WholePhotoPipeline.from_preset(
            "v2",
            weights_dir=folder,
            model_config=config,
            download=False,
            progress=False,
            device="cpu",
            min_face_size=0,
            face_batch=batch,
        )
    return made


@pytest.mark.slow
def test_faces_in_batches_match_faces_one_by_one(pipelines, monkeypatch):
    # The stand-in detector fires on bright 8x8 cells: three white blocks, three "faces".
    photo = torch.zeros(1, 3, 48, 64)
    for top, left in ((8, 8), (8, 40), (32, 24)):
        photo[..., top : top + 8, left : left + 8] = 1.0
    options = RestoreOptions(steps=2, seed=3, upscale=1, min_side=64)
    calls = []

    def count(pipeline):
        original = pipeline.restore

        def counting(lq, options=None, prompts=None):
            calls.append(lq.shape[0])
            return original(lq, options, prompts)

        monkeypatch.setattr(pipeline, "restore", counting)

    count(pipelines[3].face)
    count(pipelines[1].face)
    batched = pipelines[3](photo, options)
    assert len(batched.faces[0]) == 3
    assert calls == [3]  # one pass of the face pipeline for the photo's three faces
    calls.clear()
    single = pipelines[1](photo, options)
    assert calls == [1, 1, 1]
    for a, b in zip(batched.faces[0], single.faces[0]):
        assert np.abs(a.restored - b.restored).max() <= 1.5 / 255
    assert (batched.image - single.image).abs().max() <= 1.5 / 255


def test_face_batch_must_be_positive(pipelines):
    from diffbir.restore.whole_photo import WholePhotoPipeline

    p = pipelines[1]
    with pytest.raises(ConfigError, match="face batch"):
        WholePhotoPipeline(p.face, p.background, p.detector, face_batch=0)
