"""Shared test fixtures: the copied golden tensors, one thread, the tiny release and its pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """Folder of small golden tensors copied from ../shared/reference."""
    return FIXTURES


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from threads, and on a busy machine two threads spin and crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny release of ``tiny_release.py``: ``(folder of checkpoints under the
    released names, its models.yaml)``, written once per test module."""
    from tiny_release import make_tiny_release

    folder = tmp_path_factory.mktemp("weights")
    return folder, make_tiny_release(folder)


@pytest.fixture(scope="module")
def pipe(release, single_thread):
    """The tiny v2.1 ``sr`` pipeline on the CPU, one per test module (tests may change it)."""
    from tiny_release import load_tiny_pipeline

    return load_tiny_pipeline(release)
