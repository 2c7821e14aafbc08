"""Logging helpers: token masking and quiet repeats."""

from __future__ import annotations

import logging
import time


def mask_token(token: str | None) -> str:
    """Show enough of an idTag to tell cards apart in a log, never the whole UID: 04A2****F7."""
    if not token:
        return "-"
    if len(token) <= 4:
        return "*" * len(token)
    return f"{token[:4]}****{token[-2:]}"


class RepeatFilter:
    """First occurrence of a key at the asked level, repeats within `window` seconds at DEBUG."""

    def __init__(self, logger: logging.Logger, window: float = 60.0, max_keys: int = 256) -> None:
        self._log = logger
        self._window = window
        self._max = max_keys
        self._seen: dict[str, float] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self._window:
            self._log.debug(msg, *args)
            return
        if len(self._seen) >= self._max:
            self._seen.clear()
        self._seen[key] = now
        self._log.log(level, msg, *args)
