"""The SQLite store: migrations, private files, group commit, failure isolation, restart durability."""

import asyncio
import os
import sqlite3
import stat

import pytest

from gateway import events
from gateway.errors import StoreError
from gateway.store import MIGRATIONS, Store, migrate


def test_open_creates_private_files_and_wal(tmp_path):
    store = Store.open(tmp_path / "d")
    try:
        db = tmp_path / "d" / "chargegate.db"
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
        mode = store.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
        assert store.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)
    finally:
        store.close()


def test_newer_schema_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        migrate(conn)


def test_concurrent_writes_are_group_committed_and_isolated(tmp_path):
    store = Store.open(tmp_path)

    def good(i):
        return lambda c: events.emit(c, "t", {"i": i})

    def bad(c):
        events.emit(c, "t", {"i": "bad"})
        raise ValueError("boom")

    async def main():
        ops = [store.write(good(i)) for i in range(50)] + [store.write(bad)] + [store.write(good(50))]
        return await asyncio.gather(*ops, return_exceptions=True)

    results = asyncio.run(main())
    try:
        assert isinstance(results[50], ValueError)
        seqs = [r for r in results if isinstance(r, int)]
        assert len(seqs) == 51 and seqs == sorted(seqs)
        # the failing op's event was rolled back, the others committed
        bodies = store.read(
            lambda c: [events.decode_body(r[0]) for r in c.execute("SELECT body FROM outbox")]
        )
        assert {"i": "bad"} not in bodies and len(bodies) == 51
        assert store.commits < 52  # batched
    finally:
        store.close()


def test_transaction_ids_survive_reopen(tmp_path):
    def insert(c):
        return c.execute(
            "INSERT INTO transactions (charger_id, connector_id, id_tag, auth_status, meter_start, start_ts, "
            "started_at, start_key) VALUES ('CP', 1, 'T', 'Accepted', 0, 'ts', 0, hex(randomblob(8)))"
        ).lastrowid

    s = Store.open(tmp_path)
    first = s.write_sync(insert)
    s.write_sync(lambda c: c.execute("DELETE FROM transactions"))
    s.close()
    s = Store.open(tmp_path)
    try:
        assert s.write_sync(insert) > first
    finally:
        s.close()


def test_a_cancelled_waiter_does_not_kill_the_writer(tmp_path):
    """A charger that disconnects while its write is in flight cancels the handler awaiting it; the writer thread
    must keep serving everyone else."""
    import threading

    store = Store.open(tmp_path)
    gate = threading.Event()

    def slow(c):
        gate.wait(5)
        return events.emit(c, "slow", {})

    async def main():
        task = asyncio.ensure_future(store.write(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(store.write(lambda c: events.emit(c, "after", {})), 5)

    try:
        seq = asyncio.run(main())
        kinds = store.read(lambda c: [r[0] for r in c.execute("SELECT kind FROM outbox ORDER BY seq")])
        assert kinds == ["slow", "after"] and seq == 2  # the cancelled write still stands
    finally:
        store.close()
