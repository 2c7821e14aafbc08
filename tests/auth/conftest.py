from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # authfakes

import gateway.auth.tokenstore  # noqa: F401  registers the auth migrations before Store.open
from gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()
