from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # authfakes

import gateway.auth.tokenstore  # noqa: F401  registers the auth migrations before tests/conftest.py's store opens
