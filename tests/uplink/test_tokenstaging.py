"""Token lists in parts through the Downlink, staged in a real SQLite store and applied by the real AuthService."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from typing import Any

import cbor2

from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.store import Store
from gateway.uplink.downlink import Downlink
from gateway.uplink.tokenparts import Limits
from gateway.uplink.tokenstaging import TokenListStaging


def tokens(n: int, status: str = "Accepted") -> list[dict[str, Any]]:
    return [{"id": f"T{i:08X}", "status": status} for i in range(n)]


def parts_of(
    kind: str, version: int, toks: list[dict[str, Any]], n: int, uid: str = "up1", base: int | None = None
) -> list[dict[str, Any]]:
    per = -(-len(toks) // n)
    out = []
    for i in range(n):
        args: dict[str, Any] = {"kind": kind, "version": version, "update_id": uid, "part": i, "parts": n}
        args["tokens"] = toks[i * per : (i + 1) * per]
        if base is not None:
            args["base_version"] = base
        out.append(args)
    return out


def cmd(args: dict[str, Any], cid: str) -> bytes:
    return bytes(cbor2.dumps({"id": cid, "op": "token_list", "args": args}))


def listed(store: Store) -> dict[str, str]:
    def q(c: sqlite3.Connection) -> dict[str, str]:
        gen = ts.meta(c, "active_gen")
        return dict(c.execute("SELECT id, status FROM auth_list WHERE gen = ?", (gen,)).fetchall())

    return store.read(q)


def staged_rows(store: Store) -> tuple[int, int]:
    return store.read(
        lambda c: (
            c.execute("SELECT COUNT(*) FROM token_list_staging").fetchone()[0],
            c.execute("SELECT COUNT(*) FROM token_list_parts").fetchone()[0],
        )
    )


def test_full_list_in_shuffled_duplicated_parts_is_applied_exactly_once(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        dl = Downlink(None, svc, None, 5.0, 4 << 20, store=store)
        toks = tokens(12_000)
        ps = parts_of("full", 4, toks, 6)
        order = [3, 0, 5, 3, 1, 0, 4]  # duplicates (same and new command ids), out of order; part 2 last
        results = [await dl.handle(cmd(ps[i], f"c{k}")) for k, i in enumerate(order)]
        assert all(r["ok"] and r["result"]["complete"] is False for r in results), results
        assert [r["result"]["duplicate"] for r in results] == [False, False, False, True, False, True, False]
        assert results[-1]["result"]["received"] == 5
        assert staged_rows(store) == (1, 5)  # on disk, not applied yet
        assert listed(store) == {} and svc.list_version() == 0
        final = await dl.handle(cmd(ps[2], "c-last"))
        assert final["ok"] and final["result"]["version_applied"] == 4, final
        assert final["result"]["update_id"] == "up1" and final["result"]["parts"] == 6
        assert listed(store) == {t["id"]: "Accepted" for t in toks}
        assert svc.list_version() == 4 and staged_rows(store) == (0, 0)
        # a late duplicate gets the final result again and applies nothing
        late = await dl.handle(cmd(ps[0], "c-late"))
        assert late["result"] == final["result"]
        # the same command id again: the cached first result
        assert (await dl.handle(cmd(ps[3], "c0")))["result"]["part"] == 3

    asyncio.run(body())


def test_inconsistent_part_is_refused_and_changes_nothing(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        dl = Downlink(None, svc, None, 5.0, 4 << 20, store=store)
        ps = parts_of("full", 2, tokens(100), 4)
        assert (await dl.handle(cmd(ps[0], "a")))["ok"]
        wrong_count = {**ps[1], "parts": 5}
        r = await dl.handle(cmd(wrong_count, "b"))
        assert (
            r["ok"] is False
            and r["error"]["code"] == "invalid_args"
            and "inconsistent" in r["error"]["message"]
        )
        wrong_version = {**ps[1], "version": 3}
        r = await dl.handle(cmd(wrong_version, "c"))
        assert r["error"]["code"] == "invalid_args"
        changed = {**ps[0], "tokens": tokens(3, "Blocked")}
        r = await dl.handle(cmd(changed, "d"))
        assert r["error"]["code"] == "invalid_args" and "different content" in r["error"]["message"]
        partial = {k: v for k, v in ps[1].items() if k != "parts"}
        r = await dl.handle(cmd(partial, "e"))
        assert r["error"]["code"] == "invalid_args"
        assert staged_rows(store) == (1, 1) and svc.list_version() == 0
        for i, p in enumerate(ps[1:]):
            r = await dl.handle(cmd(p, f"ok{i}"))
        assert r["result"]["version_applied"] == 2 and len(listed(store)) == 100

    asyncio.run(body())


def test_bad_entry_refuses_the_whole_list_and_keeps_the_old_one(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 1, None, tokens(10, "Blocked")))[0]
        dl = Downlink(None, svc, None, 5.0, 4 << 20, store=store)
        toks = tokens(9000)
        toks[7777] = {"id": "", "status": "Accepted"}
        ps = parts_of("full", 2, toks, 3)
        for i, p in enumerate(ps):
            r = await dl.handle(cmd(p, f"p{i}"))
        assert r["ok"] is False and r["error"]["code"] == "token_list_refused", r
        assert "entry 7777" in r["error"]["message"]
        assert svc.list_version() == 1 and listed(store) == {t["id"]: "Blocked" for t in tokens(10)}
        assert staged_rows(store) == (0, 0)

    asyncio.run(body())


def test_differential_in_parts_and_early_version_refusal(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 5, None, tokens(10)))[0]
        dl = Downlink(None, svc, None, 5.0, 4 << 20, store=store)
        stale = parts_of("differential", 7, tokens(4), 2, uid="d0", base=4)
        r = await dl.handle(cmd(stale[0], "s0"))
        assert r["error"]["code"] == "token_list_refused" and "full resync" in r["error"]["message"]
        assert staged_rows(store) == (0, 0)  # refused at the first part: nothing staged
        change = [{"id": "T00000000", "remove": True}, {"id": "NEW1", "status": "Blocked"}]
        ps = parts_of("differential", 6, change, 2, uid="d1", base=5)
        await dl.handle(cmd(ps[1], "d1"))
        r = await dl.handle(cmd(ps[0], "d0"))
        assert r["result"]["version_applied"] == 6, r
        got = listed(store)
        assert "T00000000" not in got and got["NEW1"] == "Blocked" and len(got) == 10

    asyncio.run(body())


def test_staged_parts_survive_a_restart_and_idle_updates_are_abandoned(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        ps = parts_of("full", 3, tokens(500), 5)
        staging = TokenListStaging(store, svc)
        for i in (4, 1):
            ok, _ = await staging.handle_part("up1", "full", 3, None, i, 5, ps[i]["tokens"])
            assert ok
        # a new instance (gateway restart) resumes from disk
        clock = [1000.0]
        again = TokenListStaging(store, svc, limits=Limits(idle_timeout=60.0), monotonic=lambda: clock[0])
        for i, received in ((0, 3), (2, 4)):
            ok, res = await again.handle_part("up1", "full", 3, None, i, 5, ps[i]["tokens"])
            assert ok and res["received"] == received, res
        clock[0] += 61.0
        await again.sweep()  # idle past the timeout: abandoned, rows deleted
        assert staged_rows(store) == (0, 0) and again.assembly.staged is None
        ok, res = await again.handle_part("up1", "full", 3, None, 3, 5, ps[3]["tokens"])
        assert ok and res["received"] == 1  # starts over
        # a newer version replaces the staged update
        newer = parts_of("full", 4, tokens(7), 1, uid="up2")[0]
        ok, res = await again.handle_part("up2", "full", 4, None, 0, 1, newer["tokens"])
        assert ok and res["version_applied"] == 4
        assert staged_rows(store) == (0, 0) and len(listed(store)) == 7

    asyncio.run(body())


def test_parts_sent_concurrently_apply_once(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        dl = Downlink(None, svc, None, 5.0, 4 << 20, store=store)
        toks = tokens(30_000)
        ps = parts_of("full", 9, toks, 8)
        msgs = [cmd(p, f"k{i}") for i, p in enumerate(ps)] + [cmd(ps[2], "dup")]
        random.Random(3).shuffle(msgs)
        results = await asyncio.gather(*(dl.handle(m) for m in msgs))
        final = [r for r in results if "version_applied" in r.get("result", {})]
        assert all(r["ok"] for r in results) and len(final) == 1, results
        assert listed(store) == {t["id"]: "Accepted" for t in toks}

    asyncio.run(body())
