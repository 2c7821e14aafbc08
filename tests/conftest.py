"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real SQLite store in a temporary directory (migrations registered by what the test imports)."""
    s = Store.open(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()
