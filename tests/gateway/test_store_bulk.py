"""The store's bulk lane (Store.submit_bulk / write_bulk) on real SQLite files: ordinary writes go first and never
share a commit with a bulk job, bulk work still completes (also while ordinary writes never stop coming), failures
reach the caller and leave nothing behind, and the writer thread lives on. No timing: the writer is held on a
threading.Event while work is queued, so the order is decided, not raced."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.store import BULK_STARVATION_COMMITS, Store

Log = list[
    tuple[str, int]
]  # (label, the store's commit count when the job ran): equal counts = one transaction


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    s.write_sync(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (label TEXT NOT NULL)"))
    yield s
    s.close()


def job(store: Store, log: Log, label: str) -> Callable[[sqlite3.Connection], str]:
    def fn(conn: sqlite3.Connection) -> str:
        log.append((label, store.commits + store.bulk_commits))
        conn.execute("INSERT INTO t (label) VALUES (?)", (label,))
        return label

    return fn


def hold_writer(store: Store) -> tuple[threading.Event, Future[None]]:
    """An ordinary write that blocks the writer thread until the event is set (work queued meanwhile waits)."""
    started, release = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        started.set()
        assert release.wait(30)

    fut = store.submit(blocker)
    assert started.wait(30)
    return release, fut


def labels(store: Store) -> list[str]:
    return store.read(lambda c: [r[0] for r in c.execute("SELECT label FROM t ORDER BY rowid")])


def test_an_ordinary_write_queued_after_bulk_work_commits_first_and_alone(store: Store) -> None:
    log: Log = []
    release, held = hold_writer(store)
    bulk = [store.submit_bulk(job(store, log, f"bulk{i}"), durable=False) for i in range(3)]
    normal = [store.submit(job(store, log, f"normal{i}")) for i in range(2)]
    release.set()
    assert [f.result(30) for f in bulk + normal] == ["bulk0", "bulk1", "bulk2", "normal0", "normal1"]
    held.result(30)
    order = [label for label, _ in log]
    assert order == ["normal0", "normal1", "bulk0", "bulk1", "bulk2"]
    # the two ordinary writes: one group commit; every bulk job: a transaction of its own
    commit_of = dict(log)
    assert commit_of["normal0"] == commit_of["normal1"]
    assert len({commit_of[f"bulk{i}"] for i in range(3)} | {commit_of["normal0"]}) == 4
    assert store.bulk_commits == 3
    assert labels(store) == order


def test_bulk_work_completes_while_ordinary_writes_never_stop(store: Store) -> None:
    """Each ordinary write queues the next one before it ends: the ordinary queue is never empty. The bulk job
    still runs, after at most BULK_STARVATION_COMMITS group commits."""
    log: Log = []
    chain = 4 * BULK_STARVATION_COMMITS
    done: list[Future[None]] = []

    def link(i: int) -> Callable[[sqlite3.Connection], None]:
        def fn(conn: sqlite3.Connection) -> None:
            job(store, log, f"n{i}")(conn)
            if i + 1 < chain:
                done.append(store.submit(link(i + 1)))

        return fn

    release, held = hold_writer(store)
    bulk = store.submit_bulk(job(store, log, "bulk"))
    done.append(store.submit(link(0)))
    release.set()
    assert bulk.result(30) == "bulk"
    held.result(30)
    while len(done) < chain:  # the chain is still being queued by the writer
        done[-1].result(30)
    for f in done:
        f.result(30)
    order = [label for label, _ in log]
    assert len(order) == chain + 1
    assert 0 < order.index("bulk") <= BULK_STARVATION_COMMITS


def test_a_failing_bulk_job_reaches_its_caller_and_leaves_nothing(store: Store) -> None:
    log: Log = []

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (label) VALUES ('half')")
        raise ValueError("bad slice")

    def broken_sql(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async def main() -> list[object]:
        return await asyncio.gather(
            store.write_bulk(bad, durable=False),
            store.write_bulk(broken_sql),
            store.write_bulk(job(store, log, "after")),
            store.write(job(store, log, "ordinary")),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert isinstance(results[0], ValueError) and str(results[0]) == "bad slice"
    assert isinstance(results[1], sqlite3.OperationalError)
    assert results[2:] == ["after", "ordinary"]
    assert sorted(labels(store)) == ["after", "ordinary"]  # the failed jobs left no row
    # the writer lives on, back on synchronous=FULL for ordinary writes
    assert store.write_sync(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2


def test_an_unsynced_bulk_job_leaves_ordinary_writes_fully_synced(store: Store) -> None:
    def sync_level(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    assert store.write_sync(sync_level) == 2  # FULL
    assert (
        store.submit_bulk(sync_level, durable=False).result(30) == 1
    )  # NORMAL: durable with the next commit
    assert store.submit_bulk(sync_level).result(30) == 2
    assert store.write_sync(sync_level) == 2


def test_close_runs_queued_bulk_work_then_refuses_more(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    store.write_sync(lambda c: c.execute("CREATE TABLE t (label TEXT NOT NULL)"))
    log: Log = []
    release, held = hold_writer(store)
    bulk = store.submit_bulk(job(store, log, "queued"))
    closer = threading.Thread(target=store.close)
    closer.start()
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert bulk.result(0) == "queued" and held.result(0) is None
    with pytest.raises(StoreError, match="closed"):
        store.submit_bulk(job(store, log, "late"))
    with pytest.raises(StoreError, match="closed"):
        store.submit(job(store, log, "late"))
    reopened = Store.open(tmp_path)
    try:
        assert labels(reopened) == ["queued"]
    finally:
        reopened.close()
