"""Handing back a mapped checkpoint's pages after the cast (diffbir.weights.mapped)."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from diffbir.models.stage2 import _cast
from diffbir.weights import mapped
from diffbir.weights.checkpoint import load_state_dict

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise via /proc")
PAGE = mmap.PAGESIZE


def test_pages_inside_keeps_only_whole_pages():
    assert mapped.pages_inside(0, 3 * PAGE) == (0, 3 * PAGE)
    assert mapped.pages_inside(10, 3 * PAGE) == (PAGE, 2 * PAGE)  # both ends cut
    assert mapped.pages_inside(10, PAGE) is None  # no whole page


@linux
def test_cast_of_a_mapped_checkpoint_releases_pages_and_keeps_values(tmp_path):
    gen = torch.Generator().manual_seed(0)
    weights = {
        "big": torch.randn(512, 1024, generator=gen),  # 2 MiB: whole pages inside
        "small": torch.randn(7, generator=gen),
        "steps": torch.arange(5),
    }
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    sd = load_state_dict(path, mmap=True)
    ranges = mapped.file_ranges()
    assert any(lo <= sd["big"].data_ptr() < hi for lo, hi in ranges)  # really mapped

    cast = _cast(sd, torch.bfloat16)
    assert cast["big"].dtype == cast["small"].dtype == torch.bfloat16
    assert cast["steps"].dtype == torch.int64 and torch.equal(cast["steps"], weights["steps"])
    for name in ("big", "small"):
        assert torch.equal(cast[name], weights[name].to(torch.bfloat16)), name
    # The pages under a mapped tensor are released (madvise succeeded) and read back
    # from the file, unchanged.
    assert mapped.release(sd["big"], ranges)
    assert torch.equal(sd["big"], weights["big"])


@linux
def test_release_never_touches_anonymous_memory():
    tensor = torch.randn(512, 1024)
    before = tensor.clone()
    assert not mapped.release(tensor, mapped.file_ranges())
    assert torch.equal(tensor, before)  # MADV_DONTNEED would have zeroed it


def test_release_without_ranges_is_a_no_op():
    assert not mapped.release(torch.ones(4096), [])
    assert mapped.file_ranges("/nonexistent/maps") == []


def test_dropping_the_text_encoder_hands_its_memory_back(monkeypatch):
    from diffbir.models import stage2 as stage2_module

    calls = []
    monkeypatch.setattr(stage2_module.mapped, "trim_heap", lambda: calls.append(1) or True)
    model = stage2_module.Stage2Model.__new__(stage2_module.Stage2Model)
    torch.nn.Module.__init__(model)
    model.text_encoder = torch.nn.Linear(4, 4)
    model.drop_text_encoder()
    assert model.text_encoder is None and calls == [1]


def test_trim_heap_runs_anywhere():
    assert isinstance(mapped.trim_heap(), bool)  # glibc: malloc_trim; elsewhere False
