"""AuthService.apply_token_list_parts: a list read chunk by chunk (staged parts) goes the same checked path."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from gateway.auth import tokenstore as ts
from gateway.auth.service import LIST_CHUNK, AuthService
from gateway.auth.settings import AuthSection
from gateway.store import Store


def tokens(start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": f"P{i:07d}", "status": "Accepted"} for i in range(start, start + n)]


async def chunks(*sizes: int, bad_at: int | None = None) -> AsyncIterator[list[dict[str, Any]]]:
    start = 0
    for n in sizes:
        part = tokens(start, n)
        if bad_at is not None and start <= bad_at < start + n:
            part[bad_at - start] = {"id": "P1", "status": "Maybe"}
        start += n
        yield part


def listed(conn: sqlite3.Connection) -> list[str]:
    gen = ts.meta(conn, "active_gen")
    return [r[0] for r in conn.execute("SELECT id FROM auth_list WHERE gen = ? ORDER BY id", (gen,))]


def test_parts_of_uneven_sizes_make_one_full_list(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        sizes = (LIST_CHUNK + 7, 3, 2 * LIST_CHUNK + 1, 0, 11)
        ok, msg = await svc.apply_token_list_parts("full", 3, None, chunks(*sizes), sum(sizes))
        assert ok, msg
        assert f"{sum(sizes)} entries" in msg
        assert store.read(listed) == [t["id"] for t in tokens(0, sum(sizes))]
        assert svc.list_version() == 3

    asyncio.run(body())


def test_a_bad_entry_in_a_later_part_refuses_everything(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 1, None, tokens(0, 5)))[0]
        sizes = (LIST_CHUNK, LIST_CHUNK, 100)
        ok, msg = await svc.apply_token_list_parts(
            "full", 2, None, chunks(*sizes, bad_at=LIST_CHUNK * 2 + 42), 0
        )
        assert not ok and f"entry {LIST_CHUNK * 2 + 42}" in msg, msg
        assert store.read(listed) == [t["id"] for t in tokens(0, 5)] and svc.list_version() == 1
        # the partial generation is gone: only the live one remains
        assert store.read(ts.stale_generations) == []

    asyncio.run(body())


def test_a_differential_in_parts_is_capped_and_checked(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 1, None, tokens(0, 5)))[0]
        ok, msg = await svc.apply_token_list_parts("differential", 3, 2, chunks(1), 1)
        assert not ok and "full resync" in msg
        ok, msg = await svc.apply_token_list_parts("differential", 2, 1, chunks(3, 4), 7)
        assert ok, msg
        assert store.read(listed) == [t["id"] for t in tokens(0, 7)]

    asyncio.run(body())
