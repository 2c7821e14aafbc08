"""Outbox drainer on a real SQLite store: order, mark-sent only after PUBACK, batching, disk budget thinning."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
import pytest

from gateway import events as ev
from gateway.store import Store
from gateway.uplink.contract import OutboxRow, decode_batch
from gateway.uplink.outbox import DroppableRow, OutboxDrainer, plan_thinning, split_batches


def test_split_batches_by_count_and_bytes() -> None:
    rows = [OutboxRow(i, "k", None, 0.0, None, b"x" * 100) for i in range(1, 11)]
    assert [len(b) for b in split_batches(rows, 4, 10_000)] == [4, 4, 2]
    assert [len(b) for b in split_batches(rows, 100, 350)] == [3, 3, 3, 1]
    big = [OutboxRow(1, "k", None, 0.0, None, b"x" * 5000), *rows[1:3]]
    assert [len(b) for b in split_batches(big, 100, 1000)] == [1, 2]  # an oversize event goes alone
    assert [r.seq for b in split_batches(rows, 3, 10_000) for r in b] == list(range(1, 11))


def test_thinning_drops_every_other_row_per_stream_oldest_first() -> None:
    rows = [DroppableRow(i, "A" if i % 2 else "B", 100) for i in range(1, 21)]
    # A: 1,3,5,...  B: 2,4,6,... -> the second of each stream first
    assert plan_thinning(rows, 250) == [3, 4, 7]
    everything = plan_thinning(rows, 10**9)
    assert everything == list(range(1, 21))
    assert plan_thinning(rows, 0) == []
    assert plan_thinning([], 100) == []


def test_thinning_second_pass_halves_again() -> None:
    rows = [DroppableRow(i, "A", 10) for i in range(1, 9)]
    first = plan_thinning(rows, 40)  # one pass frees exactly 40
    assert first == [2, 4, 6, 8]
    assert plan_thinning(rows, 60) == [2, 3, 4, 6, 7, 8]


def _fill(store: Store, n_meter: int, n_records: int) -> None:
    def w(conn) -> None:  # type: ignore[no-untyped-def]
        for i in range(n_meter):
            body = {"connector_id": 1, "transaction_id": 7, "values": [{"value": str(1000 + i)}]}
            ev.emit(conn, ev.METER_READING, body, charger_id="CP1", charger_ts="2026-11-21T10:00:00Z",
                    droppable=True)  # fmt: skip
            if n_records and i % (n_meter // n_records or 1) == 0:
                ev.emit(conn, ev.SESSION_RECORD, {"transaction_id": i, "pad": "x" * 200}, charger_id="CP1")

    store.write_sync(w)


def _unsent(store: Store) -> list[int]:
    return store.read(
        lambda c: [r[0] for r in c.execute("SELECT seq FROM outbox WHERE sent_at IS NULL ORDER BY seq")]
    )


async def _drain_until(drainer: OutboxDrainer, publish, cond) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(drainer.drain(publish))
    try:
        for _ in range(500):
            if cond() or task.done():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        try:
            await task
        except BaseException:
            pass


def test_drains_in_order_and_marks_sent_after_ack(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        _fill(store, 1234, 0)
        drainer = OutboxDrainer(store, "gw", "cbor", 100, 65536, 10**9)
        got: list[int] = []

        async def publish(payload: bytes) -> None:
            # while this publish is awaiting its PUBACK, none of its rows may be marked sent
            seqs = [e["seq"] for e in decode_batch(payload)]
            assert set(seqs) <= set(_unsent(store))
            await asyncio.sleep(0)
            got.extend(seqs)

        asyncio.run(_drain_until(drainer, publish, lambda: not _unsent(store)))
        assert got == list(range(1, 1235))
        assert _unsent(store) == []
        assert drainer.stats.sent_events == 1234 and drainer.stats.sent_batches == 13
    finally:
        store.close()


def test_failed_publish_leaves_rows_unsent_and_resends_same_seqs(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        _fill(store, 50, 0)
        drainer = OutboxDrainer(store, "gw", "cbor", 10, 65536, 10**9)
        attempts: list[list[int]] = []

        async def flaky(payload: bytes) -> None:
            seqs = [e["seq"] for e in decode_batch(payload)]
            attempts.append(seqs)
            if seqs[0] == 21:
                raise ConnectionError("broker gone")

        async def run() -> None:
            with pytest.raises(ConnectionError):
                await drainer.drain(flaky)

        asyncio.run(run())
        unsent = _unsent(store)
        assert unsent[0] == 21 and set(range(1, 21)).isdisjoint(unsent)  # 1..20 acknowledged, 21.. not

        resent: list[int] = []

        async def ok(payload: bytes) -> None:
            resent.extend(e["seq"] for e in decode_batch(payload))

        asyncio.run(_drain_until(drainer, ok, lambda: not _unsent(store)))
        assert resent == list(range(21, 51))
    finally:
        store.close()


def test_budget_thins_meter_readings_never_records(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        _fill(store, 2000, 20)
        records_before = store.read(
            lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'session.record'").fetchone()[0]
        )
        size = store.read(
            lambda c: c.execute("SELECT SUM(length(body)) + COUNT(*) * 64 FROM outbox").fetchone()[0]
        )
        drainer = OutboxDrainer(store, "gw", "cbor", 100, 65536, budget_bytes=size // 2)
        dropped = asyncio.run(drainer.enforce_budget())
        assert dropped > 0
        kinds = store.read(
            lambda c: dict(c.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        )
        assert kinds["session.record"] == records_before
        assert kinds["meter.reading"] == 2000 - dropped
        assert kinds["uplink.dropped"] == 1
        body = store.read(
            lambda c: c.execute("SELECT body FROM outbox WHERE kind = 'uplink.dropped'").fetchone()[0]
        )
        note = cbor2.loads(body)
        assert note["count"] == dropped and note["reason"] == "disk_budget"
        assert drainer.stats.dropped_events == dropped
        # the total survives a restart
        assert OutboxDrainer(store, "gw", "cbor", 100, 65536, size).stats.dropped_events == dropped
        back = asyncio.run(drainer.backlog())
        assert back["backlog_bytes"] <= size // 2 + 300
    finally:
        store.close()


def test_budget_with_only_undroppable_rows_drops_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        store.write_sync(lambda c: [ev.emit(c, ev.AUTH_DECISION, {"pad": "y" * 500}) for _ in range(100)])
        drainer = OutboxDrainer(store, "gw", "cbor", 100, 65536, budget_bytes=1000)
        assert asyncio.run(drainer.enforce_budget()) == 0
        assert drainer.stats.over_budget
        assert len(_unsent(store)) == 100
    finally:
        store.close()


def test_old_sent_rows_are_pruned_in_bounded_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.uplink.outbox as outbox

    monkeypatch.setattr(outbox, "SENT_ROWS_KEPT", 100)
    store = Store.open(tmp_path)
    try:
        _fill(store, 1000, 0)
        drainer = OutboxDrainer(store, "gw", "cbor", 50, 65536, 10**9)

        async def ok(payload: bytes) -> None:
            pass

        asyncio.run(_drain_until(drainer, ok, lambda: not _unsent(store)))
        seqs = store.read(lambda c: [r[0] for r in c.execute("SELECT seq FROM outbox ORDER BY seq")])
        assert seqs == list(range(901, 1001))  # the last 100 sent rows are kept
    finally:
        store.close()
