"""Shared test fixtures: paths to the copied golden tensors and temp outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """Folder of small golden tensors copied from ../shared/reference."""
    return FIXTURES
