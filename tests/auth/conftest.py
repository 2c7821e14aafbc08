from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # authfakes

import gateway.auth.tokenstore  # noqa: F401  registers the auth migrations before tests/conftest.py's store opens


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site config with the token store's defaults and offline_policy = reject (for `authfakes.cli`)."""
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nid = "t"\ndata_dir = "data"\n[auth]\noffline_policy = "reject"\n')
    return cfg
