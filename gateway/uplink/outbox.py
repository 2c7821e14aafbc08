"""The outbox drainer: publishes unsent outbox rows in seq order, marks them sent on PUBACK, keeps the backlog
inside its disk budget. Pure parts (batch splitting, thinning plan) are plain functions; `OutboxDrainer` is the
thin I/O layer over the Store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway import events as ev
from gateway.aio import within
from gateway.errors import StoreError
from gateway.store import Store, register_migrations
from gateway.uplink.contract import UPLINK_DROPPED, Encoding, OutboxRow, encode_batch

log = logging.getLogger("chargegate.uplink")

register_migrations(
    "uplink",
    [
        """
        CREATE TABLE uplink_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        """,
    ],
)

# SQLite stores a row's fixed columns and index entry next to the body; estimate for the budget.
ROW_OVERHEAD_BYTES = 64
# Per-event framing estimate used to keep a batch under batch_max_bytes before encoding it.
EVENT_FRAMING_BYTES = 16
# How often the backlog is measured against the disk budget: a SUM over the backlog is not free on an SD card.
BUDGET_CHECK_INTERVAL_S = 10.0
# Sent rows kept for diagnostics (`chargegate` reports, post-mortems); older sent rows are deleted.
SENT_ROWS_KEPT = 10_000
# Old sent rows deleted per mark beyond the number just marked (catches up after an upgrade or a thinning).
PRUNE_EXTRA_ROWS = 1000
# When the outbox is idle, how often it is polled for rows emitted by other code (cheap indexed query).
DRAIN_POLL_S = 0.1
# While draining a backlog, the loop idles this many seconds per second of drain work (fetch + encode): the drain
# uses at most 1 / (1 + ratio) of the event loop (here 2/3). Throughput stays far above need (bench/bench_uplink.py).
DRAIN_IDLE_RATIO = 0.5
# Publishes awaiting PUBACK at once: hides the broker round trip without letting a lost connection
# leave much to resend.
PUBLISH_WINDOW = 8
# Most droppable rows one thinning pass looks at.
THINNING_SCAN_ROWS = 200_000


# -- pure ---------------------------------------------------------------------------------------------------------
def split_batches(rows: list[OutboxRow], batch_max: int, batch_max_bytes: int) -> list[list[OutboxRow]]:
    """Consecutive rows grouped into batches of at most batch_max events and about batch_max_bytes
    (a single oversize event still goes out, alone)."""
    batches: list[list[OutboxRow]] = []
    cur: list[OutboxRow] = []
    size = 0
    for r in rows:
        n = len(r.body) + EVENT_FRAMING_BYTES
        if cur and (len(cur) >= batch_max or size + n > batch_max_bytes):
            batches.append(cur)
            cur, size = [], 0
        cur.append(r)
        size += n
    if cur:
        batches.append(cur)
    return batches


@dataclass(frozen=True)
class DroppableRow:
    seq: int
    stream: str  # charger id ('' when none): thinning alternates per stream
    size: int


def plan_thinning(rows: list[DroppableRow], excess_bytes: int) -> list[int]:
    """Seqs of droppable rows to delete so that at least `excess_bytes` are freed (or all that can be).

    Oldest first, every other row of each stream (the first kept), so a charger's meter history loses resolution
    evenly instead of a whole stretch of time; further passes halve again."""
    if excess_bytes <= 0:
        return []
    remaining = list(rows)
    dropped: list[int] = []
    freed = 0
    while remaining and freed < excess_bytes:
        keep: list[DroppableRow] = []
        toggle: dict[str, bool] = {}
        progressed = False
        for r in remaining:
            drop_it = toggle.get(r.stream, False)
            toggle[r.stream] = not drop_it
            if drop_it and freed < excess_bytes:
                dropped.append(r.seq)
                freed += r.size
                progressed = True
            else:
                keep.append(r)
        if not progressed:
            # one row left per stream: drop those oldest first
            for r in keep:
                if freed >= excess_bytes:
                    break
                dropped.append(r.seq)
                freed += r.size
            break
        remaining = keep
    return sorted(dropped)


# -- I/O ----------------------------------------------------------------------------------------------------------
@dataclass
class DrainerStats:
    sent_events: int = 0
    sent_batches: int = 0
    sent_bytes: int = 0
    last_ack_at: float | None = None
    dropped_events: int = 0  # persisted total
    over_budget: bool = False


def _read_state(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM uplink_state WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _add_state(conn: sqlite3.Connection, key: str, delta: int) -> None:
    conn.execute(
        "INSERT INTO uplink_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
        (key, delta),
    )


class OutboxDrainer:
    """Drains the outbox over one broker connection at a time (`drain(publish)` runs until publish fails)."""

    def __init__(
        self,
        store: Store,
        gateway_id: str,
        encoding: Encoding,
        batch_max: int,
        batch_max_bytes: int,
        budget_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.encoding: Encoding = encoding
        self.batch_max = batch_max
        self.batch_max_bytes = batch_max_bytes
        self.budget_bytes = budget_bytes
        self.clock = clock
        self.stats = DrainerStats()
        self._wake = asyncio.Event()
        self._inflight_high = 0  # highest seq handed to a publish on this connection
        self.stats.dropped_events = store.read(lambda c: _read_state(c, "dropped_events"))

    def wake(self) -> None:
        """New rows were committed: drain without waiting for the next poll."""
        self._wake.set()

    # reads run on a worker thread (store.read keeps one connection per thread)
    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self.store.read, fn)

    async def fetch(self, after_seq: int, limit: int) -> list[OutboxRow]:
        def q(conn: sqlite3.Connection) -> list[OutboxRow]:
            cur = conn.execute(
                "SELECT seq, kind, charger_id, created_at, charger_ts, body FROM outbox "
                "WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            return [OutboxRow(*row) for row in cur]

        # on the event loop's own connection, not a worker thread: building row objects holds the GIL, and a
        # second Python thread doing it makes the loop wait for the GIL (status latency). One batch is ~1 ms.
        rows: list[OutboxRow] = self.store.read(q)
        return rows

    async def mark_sent(self, first: int, last: int) -> None:
        now = self.clock()

        def w(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET sent_at = ? WHERE seq >= ? AND seq <= ? AND sent_at IS NULL",
                (now, first, last),
            )
            # keep the last SENT_ROWS_KEPT sent rows; delete older ones a bounded amount at a time, so one commit
            # never carries a huge delete (the writer is shared with every OCPP handler)
            conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ? AND sent_at IS NOT NULL "
                "ORDER BY seq LIMIT ?)",
                (last - SENT_ROWS_KEPT, 2 * (last - first + 1) + PRUNE_EXTRA_ROWS),
            )

        await self.store.write(w)

    async def drain(self, publish: Callable[[bytes], Coroutine[Any, Any, None]]) -> None:
        """Publish backlog and new rows forever; returns only by raising (publish failure, cancellation).
        Rows are marked sent strictly after their PUBACK; anything unacknowledged is re-read from the store by
        the next drain() (same seq: the eMSP de-duplicates)."""
        after = 0
        self._inflight_high = 0
        inflight: deque[tuple[asyncio.Task[None], int, int, int, int]] = deque()
        try:
            while True:
                work_started = time.perf_counter()
                rows = await self.fetch(after, self.batch_max)
                if not rows:
                    await self._settle(inflight, wait_all=True)
                    self._wake.clear()
                    try:
                        await within(self._wake.wait(), DRAIN_POLL_S)
                    except TimeoutError:
                        pass
                    continue
                for batch in split_batches(rows, self.batch_max, self.batch_max_bytes):
                    payload = encode_batch(self.gateway_id, batch, self.encoding)
                    work = time.perf_counter() - work_started
                    while len(inflight) >= PUBLISH_WINDOW:
                        await self._settle(inflight, wait_all=False)
                    task = asyncio.create_task(publish(payload))
                    inflight.append((task, batch[0].seq, batch[-1].seq, len(batch), len(payload)))
                    after = batch[-1].seq
                    self._inflight_high = after
                    # Reading and encoding are CPU work on the event loop the OCPP server shares: a backlog drain
                    # leaves the loop idle for a share of the time, so status, OCPP and commands are not starved.
                    await asyncio.sleep(work * DRAIN_IDLE_RATIO)
                    work_started = time.perf_counter()
                await self._settle(inflight, wait_all=False, block=False)
        finally:
            self._inflight_high = 0  # nothing is in flight any more: retention may consider every row
            for task, *_ in inflight:
                task.cancel()
            for task, *_ in inflight:
                try:
                    await task
                except BaseException:  # the connection is gone; these rows stay unsent
                    pass

    async def _settle(
        self,
        inflight: deque[tuple[asyncio.Task[None], int, int, int, int]],
        wait_all: bool,
        block: bool = True,
    ) -> None:
        """Mark the acknowledged prefix of the in-flight publishes as sent (one write for a run of them)."""
        if not inflight:
            return
        if block:
            if wait_all:
                await asyncio.wait([t for t, *_ in inflight])
            else:
                await asyncio.wait([inflight[0][0]])
        first = last = None
        n_events = n_batches = n_bytes = 0
        failure: BaseException | None = None
        while inflight and inflight[0][0].done():
            task, lo, hi, n, b = inflight.popleft()
            failure = task.exception() if not task.cancelled() else asyncio.CancelledError()
            if failure is not None:
                break  # the acknowledged prefix is still marked below; then the failure ends this connection
            first = lo if first is None else first
            last = hi
            n_events += n
            n_batches += 1
            n_bytes += b
        if first is not None and last is not None:
            await self.mark_sent(first, last)
            self.stats.sent_events += n_events
            self.stats.sent_batches += n_batches
            self.stats.sent_bytes += n_bytes
            self.stats.last_ack_at = self.clock()
        if failure is not None:
            raise failure

    # -- retention --------------------------------------------------------------------------------------------
    async def retention_loop(self) -> None:
        """Keep the backlog within its budget, connected or not (an outage is when the backlog grows)."""
        while True:
            try:
                await self.enforce_budget()
            except StoreError as e:
                log.error("uplink: outbox budget check failed: %s", e)
            await asyncio.sleep(BUDGET_CHECK_INTERVAL_S)

    async def enforce_budget(self) -> int:
        """Thin droppable unsent rows while the backlog exceeds the budget; returns how many were dropped.

        Measuring and choosing run on a reader (WAL readers never block the writer, so OCPP handlers waiting for
        their commit are not held up by a scan of a large backlog); only the deletes go through the writer."""
        high = self._inflight_high

        def measure(conn: sqlite3.Connection) -> tuple[int, list[DroppableRow]]:
            n, size = conn.execute(
                "SELECT COUNT(*), IFNULL(SUM(length(body)), 0) FROM outbox WHERE sent_at IS NULL"
            ).fetchone()
            excess = int(size) + int(n) * ROW_OVERHEAD_BYTES - self.budget_bytes
            if excess <= 0:
                return excess, []
            cands = [
                DroppableRow(seq, charger or "", size + ROW_OVERHEAD_BYTES)
                for seq, charger, size in conn.execute(
                    "SELECT seq, charger_id, length(body) FROM outbox "
                    "WHERE sent_at IS NULL AND droppable = 1 AND seq > ? ORDER BY seq LIMIT ?",
                    (high, THINNING_SCAN_ROWS),
                )
            ]
            return excess, cands

        excess, cands = await self._read(measure)
        if excess <= 0:
            self.stats.over_budget = False
            return 0
        drop = plan_thinning(cands, excess)
        drop_set = set(drop)
        self.stats.over_budget = sum(c.size for c in cands if c.seq in drop_set) < excess
        if not drop:
            log.warning("uplink: outbox over its disk budget and nothing left that may be dropped")
            return 0

        def w(conn: sqlite3.Connection) -> int:
            # a row sent since it was chosen is not dropped (and not counted)
            before = conn.total_changes
            conn.executemany("DELETE FROM outbox WHERE seq = ? AND sent_at IS NULL", [(s,) for s in drop])
            n = conn.total_changes - before
            if n:
                _add_state(conn, "dropped_events", n)
                ev.emit(
                    conn,
                    UPLINK_DROPPED,
                    {"count": n, "first_seq": drop[0], "last_seq": drop[-1], "reason": "disk_budget"},
                )
            return n

        dropped: int = await self.store.write(w)
        if dropped:
            self.stats.dropped_events += dropped
            log.warning("uplink: outbox over its disk budget: thinned %d periodic meter readings", dropped)
        return dropped

    async def backlog(self) -> dict[str, Any]:
        now = self.clock()

        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            n, size, oldest, first = conn.execute(
                "SELECT COUNT(*), IFNULL(SUM(length(body)), 0), MIN(created_at), MIN(seq) FROM outbox "
                "WHERE sent_at IS NULL"
            ).fetchone()
            return {
                "backlog_events": int(n),
                "backlog_bytes": int(size) + int(n) * ROW_OVERHEAD_BYTES,
                "backlog_age_s": round(now - oldest, 3) if oldest is not None else 0.0,
                "first_unsent_seq": first,
            }

        result: dict[str, Any] = await self._read(q)
        return result
