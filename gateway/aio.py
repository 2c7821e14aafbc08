"""asyncio helpers shared by the gateway and the simulator.

`within(aw, timeout)` replaces `asyncio.wait_for` everywhere here. On Python 3.11 `wait_for` loses a cancellation
that arrives while the awaited thing completes in the same loop iteration (CPython gh-86296, fixed in 3.12): the
task goes on as if never cancelled, and whoever cancelled it and awaits it (every `stop()`) waits for ever. A CI
run hung 300 s in a meter bus's stop() that way (its serial read got its bytes as it was cancelled). `within`
awaits in the caller's own task under `asyncio.timeout`, which tells its own timeout from a cancellation from
outside and never swallows the latter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, raising TimeoutError (and cancelling it) if it takes longer than `timeout` s (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await aw
