"""SQLite store: WAL mode, versioned migrations, one writer thread with group commit.

Every state change goes through `Store.write(fn)`: `fn(conn)` runs inside one SQLite transaction on the writer
thread; the awaiting coroutine resumes only after COMMIT (with synchronous=FULL, after fsync). Operations that arrive
while a commit is in flight are batched into the next transaction, each inside its own SAVEPOINT so one failing
operation does not undo the others. This is how "persisted before the charger gets its answer" stays cheap at
thousands of messages per second on an SD card.

Bulk work (a token list of a million rows written in slices, an old generation deleted) goes through the bulk lane,
`Store.write_bulk(fn)` / `submit_bulk(fn)`: the writer thread runs a bulk job only when no ordinary write is waiting,
each in a transaction of its own (never in a group commit with a charger's write), so a charger's write waits at
most for the one bulk job in progress. A job submitted with `durable=False` (a slice of a larger piece of work) is
committed without an fsync of its own: it becomes durable with the next ordinary write's commit (the WAL is appended
in order and a synchronous=FULL commit syncs it up to its own frames) or at the next checkpoint. After a power cut
the latest such jobs may be missing, never half applied, and never while a later ordinary write survived; the
caller finishes its work with an ordinary write (the token list does: the new generation is made live by one).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StoreError

T = TypeVar("T")

# Most operations one group commit may carry; bounds the latency a burst adds to the first caller.
_MAX_BATCH = 256
# A bulk job waits while ordinary writes keep coming; after this many group commits in a row with a bulk job waiting,
# one bulk job runs anyway (the writer saturated by chargers must not starve a token list for ever). At a few ms per
# group commit, it delays a charger's write by at most one bulk job per this many commits.
BULK_STARVATION_COMMITS = 8

MIGRATIONS: list[str] = [
    # 1: walking skeleton
    """
    CREATE TABLE chargers (
        id TEXT PRIMARY KEY,
        vendor TEXT, model TEXT, serial TEXT, firmware TEXT,
        boot_status TEXT, diagnostics_status TEXT, firmware_status TEXT,
        first_seen REAL, last_boot REAL, last_seen REAL,
        connected INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE connector_status (
        charger_id TEXT NOT NULL, connector_id INTEGER NOT NULL,
        status TEXT NOT NULL, error_code TEXT, info TEXT, vendor_error_code TEXT,
        charger_ts TEXT, received_at REAL NOT NULL,
        PRIMARY KEY (charger_id, connector_id)
    );
    CREATE TABLE status_history (
        id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL, connector_id INTEGER NOT NULL,
        status TEXT NOT NULL, error_code TEXT, info TEXT,
        charger_ts TEXT, received_at REAL NOT NULL
    );
    CREATE INDEX status_history_by_charger ON status_history (charger_id, connector_id, id);
    -- AUTOINCREMENT: a transactionId is never reused, even after rows are deleted.
    CREATE TABLE transactions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL, connector_id INTEGER NOT NULL,
        id_tag TEXT NOT NULL, parent_id_tag TEXT,
        auth_status TEXT NOT NULL, auth_method TEXT,
        reservation_id INTEGER,
        meter_start INTEGER NOT NULL, start_ts TEXT NOT NULL, started_at REAL NOT NULL,
        meter_stop INTEGER, stop_ts TEXT, stopped_at REAL, stop_reason TEXT, stop_id_tag TEXT,
        energy_wh INTEGER,
        state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'stopped')),
        start_key TEXT NOT NULL UNIQUE
    );
    CREATE INDEX transactions_by_state ON transactions (state, charger_id);
    CREATE TABLE meter_samples (
        id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL, connector_id INTEGER NOT NULL, transaction_id INTEGER,
        charger_ts TEXT NOT NULL,
        measurand TEXT NOT NULL, phase TEXT NOT NULL DEFAULT '', location TEXT NOT NULL DEFAULT '',
        context TEXT NOT NULL DEFAULT '', unit TEXT, format TEXT,
        value TEXT NOT NULL,
        source TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    -- a resent MeterValues or StopTransaction.transactionData must not be counted twice
    CREATE UNIQUE INDEX meter_samples_dedup ON meter_samples
        (charger_id, connector_id, IFNULL(transaction_id, -1), charger_ts, measurand, phase, location, context);
    -- the uplink's transactional outbox: seq is the idempotency key, strictly increasing, never reused
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        charger_id TEXT,
        droppable INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        charger_ts TEXT,
        body BLOB NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
    """,
]


def _create_private_file(path: Path) -> None:
    """Data files are created 0600 before SQLite opens them (SQLite itself would honour the umask)."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit survives a power cut, not only a process crash.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def migrate(conn: sqlite3.Connection, migrations: list[str] = MIGRATIONS) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise StoreError(
            f"database schema version {version} is newer than this chargegate ({len(migrations)}); upgrade chargegate"
        )
    for i in range(version, len(migrations)):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(migrations[i]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise StoreError(f"migration {i + 1} failed: {e}") from e
    return len(migrations)


# Subsystems (tokens, uplink, meters, ...) keep their own ordered migration lists, versioned apart from the core's
# in the `component_versions` table, so each owns its schema without touching this file.
COMPONENT_MIGRATIONS: dict[str, list[str]] = {}


def register_migrations(component: str, migrations: list[str]) -> None:
    COMPONENT_MIGRATIONS[component] = migrations


def migrate_components(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS component_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    for component, migrations in COMPONENT_MIGRATIONS.items():
        row = conn.execute(
            "SELECT version FROM component_versions WHERE component = ?", (component,)
        ).fetchone()
        version = int(row[0]) if row else 0
        if version > len(migrations):
            raise StoreError(
                f"{component} schema version {version} is newer than this chargegate; upgrade chargegate"
            )
        for i in range(version, len(migrations)):
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(migrations[i]):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO component_versions (component, version) VALUES (?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                    (component, i + 1),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                conn.execute("ROLLBACK")
                raise StoreError(f"{component} migration {i + 1} failed: {e}") from e


def _split_sql(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _settle(future: Future[Any], ok: bool, value: Any) -> None:
    """Hand the outcome to the waiter. The waiter may have been cancelled meanwhile (its charger disconnected while
    the write was in flight): the write stands, nobody is told, and the writer thread must live on."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:
        pass


def _restore_full_sync(conn: sqlite3.Connection) -> None:
    """Back to synchronous=FULL after a bulk job. Should it fail (it does not touch the file), the connection is of
    no use for ordinary writes: closing it makes every later write fail loudly instead of committing unsynced."""
    try:
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error:
        conn.close()


class _Op:
    __slots__ = ("durable", "fn", "future")

    def __init__(
        self, fn: Callable[[sqlite3.Connection], Any], future: Future[Any], durable: bool = True
    ) -> None:
        self.fn = fn
        self.future = future
        self.durable = durable


class Store:
    """The gateway's durable state. Open with `Store.open(data_dir)`; close with `close()`."""

    FILENAME = "chargegate.db"

    def __init__(self, path: Path) -> None:
        self.path = path
        # the writer's work: ordinary writes (group committed, first served) and bulk jobs (one per transaction,
        # when no ordinary write waits); `_closing` set by close(): the writer drains both queues, then stops
        self._cond = threading.Condition(threading.Lock())
        self._normal: deque[_Op] = deque()
        self._bulk: deque[_Op] = deque()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._read_local = threading.local()
        self.commits = 0
        self.ops = 0
        self.bulk_commits = 0

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / cls.FILENAME
        _create_private_file(path)
        store = cls(path)
        try:
            store._conn = connect(path)
            migrate(store._conn)
            migrate_components(store._conn)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the store: {e}") from e
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        store._thread = threading.Thread(target=store._writer, name="store-writer", daemon=True)
        store._thread.start()
        return store

    # -- writes -----------------------------------------------------------------------------------------------
    def _enqueue(
        self, lane: deque[_Op], fn: Callable[[sqlite3.Connection], T], durable: bool = True
    ) -> Future[T]:
        fut: Future[T] = Future()
        with self._cond:
            if self._thread is None or self._closing:
                raise StoreError("store is closed")
            lane.append(_Op(fn, fut, durable))
            self._cond.notify()
        return fut

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        return self._enqueue(self._normal, fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(conn) in a write transaction; return its result once it is committed to disk."""
        return await asyncio.wrap_future(self.submit(fn))

    def write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.submit(fn).result()

    def submit_bulk(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> Future[T]:
        """Queue fn(conn) on the bulk lane (see the module docstring): it runs when no ordinary write is waiting, in
        a transaction of its own. Keep each job short (a few ms): an ordinary write that arrives meanwhile waits for
        it. `durable=False`: committed without an fsync of its own (durable with the next ordinary commit), for a
        slice of work that a later ordinary write completes."""
        return self._enqueue(self._bulk, fn, durable)

    async def write_bulk(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """submit_bulk(fn), returning fn's result once its transaction is committed."""
        return await asyncio.wrap_future(self.submit_bulk(fn, durable=durable))

    def _next(self, normal_run: int) -> tuple[list[_Op], bool, bool] | None:
        """The writer's next unit of work: (a batch of ordinary writes, False, whether a bulk job is waiting) or
        ([one bulk job], True, True); None when closing with nothing left. `normal_run`: group commits in a row
        while a bulk job waited (BULK_STARVATION_COMMITS)."""
        with self._cond:
            while not self._normal and not self._bulk and not self._closing:
                self._cond.wait()
            if self._normal and not (self._bulk and normal_run >= BULK_STARVATION_COMMITS):
                n = min(len(self._normal), _MAX_BATCH)
                return [self._normal.popleft() for _ in range(n)], False, bool(self._bulk)
            if self._bulk:
                return [self._bulk.popleft()], True, True
            return None

    def _writer(self) -> None:
        conn = self._conn
        assert conn is not None
        normal_run = 0
        while True:
            work = self._next(normal_run)
            if work is None:
                break
            batch, bulk, bulk_waiting = work
            normal_run = normal_run + 1 if bulk_waiting and not bulk else 0
            unsynced = bulk and not batch[0].durable
            results: list[tuple[_Op, bool, Any]] = []
            try:
                if unsynced:
                    # durable with the next ordinary commit (module docstring); FULL again right after
                    conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    conn.execute("SAVEPOINT op")
                    try:
                        value = op.fn(conn)
                    except BaseException as e:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((op, False, e))
                    else:
                        conn.execute("RELEASE op")
                        results.append((op, True, value))
                conn.execute("COMMIT")
                if bulk:
                    self.bulk_commits += 1
                else:
                    self.commits += 1
                    self.ops += len(batch)
            except sqlite3.Error as e:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                err = StoreError(f"commit failed: {e}")
                results = [(op, False, err) for op in batch]
            finally:
                if unsynced:
                    _restore_full_sync(conn)
            for op, ok, value in results:
                _settle(op.future, ok, value)
        conn.close()

    # -- reads ------------------------------------------------------------------------------------------------
    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on this thread's own connection (WAL readers never block the writer). For CLI, demo and
        reports; request handlers that need read-your-writes go through write()."""
        conn = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._read_local.conn = conn
        return fn(conn)

    def close(self) -> None:
        """Stop taking writes, run every write and bulk job already queued, stop the writer."""
        if self._thread is not None:
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join()
            self._thread = None
        conn = getattr(self._read_local, "conn", None)
        if conn is not None:
            conn.close()
            self._read_local.conn = None
