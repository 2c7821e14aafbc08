"""gateway.aio.within: a cancellation that arrives as the awaited thing completes is never lost (it is with
asyncio.wait_for on Python 3.11, which hung a CI run in a meter bus's stop())."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.aio import within

Waiter = Callable[[Awaitable[Any], float], Awaitable[Any]]
# How long a cancelled reader gets to end (it ends in the same loop iteration when the cancellation is kept).
END_S = 1.0


async def _cancel_as_data_arrives(waiter: Waiter, settle_steps: int) -> bool:
    """A reader loops on `waiter(queue.get(), 10)`; an item arrives, the loop runs `settle_steps` iterations, then
    the reader is cancelled, as a bus's stop() does. Returns whether the reader ended."""
    q: asyncio.Queue[int] = asyncio.Queue()

    async def reader() -> None:
        while True:
            await waiter(q.get(), 10.0)

    task = asyncio.create_task(reader())
    for _ in range(3):
        await asyncio.sleep(0)  # the reader is waiting on the queue
    q.put_nowait(1)
    for _ in range(settle_steps):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=END_S)
    if not done:
        task.cancel()  # a lost cancellation: end it for good before the loop closes
        await asyncio.wait({task}, timeout=END_S)
    return task in done


def _ended(waiter: Waiter) -> list[bool]:
    return [asyncio.run(_cancel_as_data_arrives(waiter, k)) for k in range(6)]


def test_within_never_loses_a_cancellation() -> None:
    assert _ended(within) == [True] * 6


def test_the_scenario_catches_wait_for_losing_one_on_python_3_11() -> None:
    # the same scenario with asyncio.wait_for: on 3.11 the reader goes on as if never cancelled at some
    # interleaving (what within() is for); 3.12 reimplemented wait_for on asyncio.timeout and keeps it
    ended = _ended(asyncio.wait_for)
    if sys.version_info < (3, 12):
        assert not all(ended), ended
    else:
        assert all(ended), ended


def test_within_times_out_and_returns_results() -> None:
    async def go() -> None:
        assert await within(asyncio.sleep(0, "x"), 1.0) == "x"
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(10), 0.01)
        assert await within(asyncio.sleep(0, 5), None) == 5

    asyncio.run(go())
