"""A differential token list is staged in slices, made live by one short write and merged in slices
(tokenstore.stage_differential / activate_differential / merge_differential_chunk, AuthService._apply_differential):
decisions see the old list or the new one, never a mix -- during staging, during the merge, after a refusal and after
a SIGKILL at either point (real SQLite files, a real child process killed)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import service as service_mod
from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import parse_entry
from gateway.store import Store

REPO = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0
# A child process that does not reach its kill point within this long has hung: fail instead of waiting for ever.
CHILD_TIMEOUT_S = 60.0

BASE = [{"id": f"T{i}", "status": "Accepted"} for i in range(10)]
DIFF: list[dict[str, Any]] = [
    {"id": "T1"},  # removal
    {"id": "T2", "status": "Blocked"},
    {"id": "T3", "remove": True},
    {"id": "T4", "status": "Blocked", "chargers": ["CP2"]},
    {"id": "N1", "status": "Accepted"},
    {"id": "T5", "status": "Blocked"},
    {"id": "T6", "status": "Blocked"},
    {"id": "N2", "status": "Accepted"},
    {"id": "T5", "remove": True},  # upserted, then removed: removed
    {"id": "T6", "status": "Expired"},  # a later upsert wins
    {"id": "T7", "status": "Invalid"},
]
UNIVERSE = sorted({e["id"] for e in BASE + DIFF})
OLD = {e["id"]: "Accepted" for e in BASE}
NEW = {**{k: v for k, v in OLD.items() if k not in ("T1", "T3", "T5")}}
NEW.update(
    {"T2": "Blocked", "T4": "Blocked", "N1": "Accepted", "N2": "Accepted", "T6": "Expired", "T7": "Invalid"}
)


def view(conn: sqlite3.Connection) -> dict[str, Any]:
    """What every reader of the eMSP list sees: per-id lookups, the ordered listing, a charger's count."""
    looked = {}
    for tid in UNIVERSE:
        entries = [e for e in ts.lookup_local(conn, tid) if e.source == "local_list"]
        assert len(entries) <= 1
        if entries:
            looked[tid] = entries[0].status
    listed = {r.id: r.entries[0].status for r in ts.iter_local(conn) if r.entries[0].source == "local_list"}
    return {
        "lookup": looked,
        "listing": listed,
        "count_cp1": ts.count_for_charger(conn, "CP1", NOW),
        "count_cp2": ts.count_for_charger(conn, "CP2", NOW),
        "version": ts.meta(conn, "list_version"),
    }


OLD_VIEW = {"lookup": OLD, "listing": OLD, "count_cp1": 10, "count_cp2": 10, "version": 1}
NEW_VIEW = {"lookup": NEW, "listing": NEW, "count_cp1": 8, "count_cp2": 9, "version": 2}


def staged_rows(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM auth_list_delta").fetchone()[0])


def make(store: Store) -> AuthService:
    return AuthService(store, AuthSection(), wall=lambda: NOW)


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 3 entries / 2 merged rows: the 11-entry differential takes several staging and merge jobs."""
    monkeypatch.setattr(service_mod, "LIST_CHUNK", 3)
    monkeypatch.setattr(service_mod, "MERGE_CHUNK", 2)


def test_every_merge_step_answers_like_the_new_list(store: Store) -> None:
    store.write_sync(lambda c: ts.insert_list_json(c, 1, 1, ts.list_rows_json(parse_entry(e) for e in BASE)))
    store.write_sync(lambda c: ts.set_meta(c, "list_version", 1))
    assert store.read(view) == OLD_VIEW
    specs = [parse_entry(e, allow_remove=True) for e in DIFF]
    for i in range(0, len(specs), 4):
        d = ts.differential_json(specs[i : i + 4])
        store.write_sync(functools.partial(ts.stage_differential, version=2, diff=d))
        assert store.read(view) == OLD_VIEW  # staged, not live
    store.write_sync(lambda c: ts.activate_differential(c, 2, 1))
    steps = 0
    while True:
        assert store.read(view) == NEW_VIEW
        if not store.write_sync(lambda c: ts.merge_differential_chunk(c, 2)):
            break
        steps += 1
    assert steps >= 4 and store.read(staged_rows) == 0
    assert store.read(lambda c: ts.meta(c, "delta_live")) == 0
    gen = store.read(lambda c: ts.meta(c, "active_gen"))
    rows = store.read(lambda c: dict(c.execute("SELECT id, status FROM auth_list WHERE gen = ?", (gen,))))
    assert rows == NEW


def test_decisions_during_staging_see_the_old_list(
    store: Store, small_slices: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = threading.Event()
    release = threading.Event()
    real = ts.activate_differential

    def gated(conn: sqlite3.Connection, version: int, base_version: int | None) -> int:
        staged.set()
        assert release.wait(CHILD_TIMEOUT_S)
        return real(conn, version, base_version)

    monkeypatch.setattr(ts, "activate_differential", gated)

    async def body() -> None:
        svc = make(store)
        changes: list[int] = []
        svc.add_list_listener(lambda: changes.append(store.read(lambda c: ts.meta(c, "revision"))))
        assert (await svc.apply_token_list("full", 1, None, BASE))[0]
        rev = store.read(lambda c: ts.meta(c, "revision"))
        task = asyncio.create_task(svc.apply_token_list("differential", 2, 1, DIFF))
        assert await asyncio.to_thread(staged.wait, CHILD_TIMEOUT_S)
        # every slice is staged (the activation is waiting), yet nothing of it is live
        assert store.read(staged_rows) == len({e["id"] for e in DIFF})  # one row per id
        assert store.read(view) == OLD_VIEW
        assert store.read(lambda c: ts.meta(c, "revision")) == rev
        for tid, want in (("T1", "Accepted"), ("T2", "Accepted"), ("N1", "Invalid")):
            d = await svc.decide("CP1", tid, purpose="authorize")
            assert d.status == want, (tid, d)
        release.set()
        ok, msg = await task
        assert ok, msg
        assert store.read(view) == NEW_VIEW
        assert store.read(staged_rows) == 0
        assert store.read(lambda c: ts.meta(c, "revision")) == rev + 1 and changes[-1] == rev + 1
        assert store.read(lambda c: ts.changes_since(c, rev)) == sorted({e["id"] for e in DIFF})
        for tid, want in (("T1", "Invalid"), ("T2", "Blocked"), ("N1", "Accepted"), ("T6", "Expired")):
            d = await svc.decide("CP1", tid, purpose="authorize")
            assert d.status == want, (tid, d)

    try:
        asyncio.run(body())
    finally:
        release.set()  # a failed assertion must not leave the store's writer waiting


def test_a_refused_differential_leaves_no_trace(store: Store, small_slices: None) -> None:
    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 1, None, BASE))[0]
        before = store.read(view)
        rev = store.read(lambda c: ts.meta(c, "revision"))
        bad = [*DIFF, {"id": "X1", "status": "Maybe"}]  # index 11: several slices are staged before it
        ok, msg = await svc.apply_token_list("differential", 2, 1, bad)
        assert not ok and "entry 11" in msg and "nothing changed" in msg
        assert store.read(staged_rows) == 0
        assert store.read(view) == before == OLD_VIEW
        assert store.read(lambda c: ts.meta(c, "revision")) == rev
        # the same version applies cleanly afterwards
        ok, msg = await svc.apply_token_list("differential", 2, 1, DIFF)
        assert ok, msg
        assert store.read(view) == NEW_VIEW

    asyncio.run(body())


def test_a_full_list_drops_a_staged_differential(store: Store) -> None:
    """Staged rows left behind (another process killed while staging) never leak into a later list."""

    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 1, None, BASE))[0]
        d = ts.differential_json([parse_entry(e, allow_remove=True) for e in DIFF])
        store.write_sync(lambda c: ts.stage_differential(c, 3, d))
        assert (await svc.apply_token_list("full", 2, None, BASE[:2]))[0]
        assert store.read(staged_rows) == 0
        ok, msg = await svc.apply_token_list("differential", 3, 2, [{"id": "T0"}])
        assert ok, msg
        assert store.read(lambda c: {r.id for r in ts.iter_local(c)}) == {"T1"}

    asyncio.run(body())


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from gateway.auth import service as service_mod, tokenstore as ts
    from gateway.auth.service import AuthService
    from gateway.auth.settings import AuthSection
    from gateway.store import Store
    import json

    where, data_dir = sys.argv[1], Path(sys.argv[2])
    base, diff = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    service_mod.LIST_CHUNK = 3
    service_mod.MERGE_CHUNK = 2
    real_activate, real_merge = ts.activate_differential, ts.merge_differential_chunk
    merges = 0

    def activate(conn, version, base_version):
        if where == "staged":
            print("KILLME", flush=True)
            signal.pause()
        return real_activate(conn, version, base_version)

    def merge(conn, limit):
        global merges
        merges += 1 if ts.meta(conn, "delta_live") else 0
        if where == "merging" and merges == 3:  # two merge jobs committed, the third in progress
            print("KILLME", flush=True)
            signal.pause()
        return real_merge(conn, limit)

    ts.activate_differential, ts.merge_differential_chunk = activate, merge

    async def main():
        store = Store.open(data_dir)
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 1, None, base))[0]
        await svc.apply_token_list("differential", 2, 1, diff)
        print("NOT KILLED", flush=True)

    asyncio.run(main())
    """
)


def run_child_until_killed(where: str, data_dir: Path) -> None:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, where, str(data_dir), json.dumps(BASE), json.dumps(DIFF)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        timer = threading.Timer(CHILD_TIMEOUT_S, proc.kill)
        timer.start()
        assert proc.stdout is not None
        line = proc.stdout.readline()
        timer.cancel()
        assert line.strip() == "KILLME", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_between_staging_and_activation_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_child_until_killed("staged", data)
    store = Store.open(data)
    try:
        assert store.read(staged_rows) > 0  # killed after staging: the rows are there, not live
        assert store.read(view) == OLD_VIEW

        async def body() -> None:
            svc = make(store)
            await svc.start()
            try:
                assert store.read(staged_rows) == 0  # start() deleted the staging
                assert store.read(view) == OLD_VIEW
                ok, msg = await svc.apply_token_list("differential", 2, 1, DIFF)
                assert ok, msg
                assert store.read(view) == NEW_VIEW
            finally:
                await svc.close()

        asyncio.run(body())
    finally:
        store.close()


def test_sigkill_during_the_merge_leaves_the_new_list_live(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_child_until_killed("merging", data)
    store = Store.open(data)
    try:
        gen = store.read(lambda c: ts.meta(c, "active_gen"))
        moved = store.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM auth_list WHERE gen = ? AND list_version = 2", (gen,)
            ).fetchone()
        )[0]
        assert moved > 0 and store.read(staged_rows) > 0  # half merged
        assert store.read(view) == NEW_VIEW

        async def body() -> None:
            svc = make(store)
            await svc.start()
            try:
                assert store.read(staged_rows) == 0 and store.read(lambda c: ts.meta(c, "delta_live")) == 0
                assert store.read(view) == NEW_VIEW
                rows = store.read(
                    lambda c: dict(c.execute("SELECT id, status FROM auth_list WHERE gen = ?", (gen,)))
                )
                assert rows == NEW
            finally:
                await svc.close()

        asyncio.run(body())
    finally:
        store.close()
