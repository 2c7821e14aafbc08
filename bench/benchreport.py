"""What every benchmark does with its result: one JSON object on stdout and, with --out, in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], out: str | Path | None, indent: int = 2) -> None:
    text = json.dumps(report, indent=indent)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
