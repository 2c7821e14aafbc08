"""Service-level pieces that need no broker: token masking, authorization answer handling, disabled uplink."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cbor2

from gateway.events import StatusBus
from gateway.store import Store
from gateway.uplink import Uplink, UplinkSection
from gateway.uplink.service import mask_token


def test_mask_token() -> None:
    assert mask_token("04A2B3C4D5E6F7") == "04A2****F7"
    assert mask_token("ABC") == "***"


def test_authorizer_ignores_bad_late_and_unknown_answers(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        uplink = Uplink(UplinkSection(), store, StatusBus(), "gw")
        auth = uplink.authorizer

        async def run() -> None:
            assert not auth.reachable()
            assert await auth.authorize("04A2B3C4D5E6F7", "CP1", 5) is None  # offline: None at once
            with auth._request() as (rid, fut):
                auth.resolve(b"\xff garbage")
                auth.resolve(cbor2.dumps({"id": "other", "status": "Accepted"}))
                auth.resolve(cbor2.dumps({"id": rid, "status": "Maybe"}))
                assert not fut.done()
                auth.resolve(
                    json.dumps(
                        {"id": rid, "status": "Blocked", "expiry": True, "parent_id": "P" * 50}
                    ).encode()
                )
                answer = fut.result()
                assert answer.status == "Blocked" and answer.expiry is None and answer.parent_id is None
            assert not auth._pending

        asyncio.run(run())
    finally:
        store.close()


def test_disabled_uplink_idles_and_reports(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        uplink = Uplink(UplinkSection(enabled=False, password="hunter2-secret"), store, StatusBus(), "gw")

        async def run() -> dict:  # type: ignore[type-arg]
            task = asyncio.create_task(uplink.run())
            await asyncio.sleep(0.05)
            stats = await uplink.control_ops()["uplink.stats"]({})
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return stats

        stats = asyncio.run(run())
        assert stats["state"] == "disabled" and stats["connected"] is False and stats["backlog_events"] == 0
        assert "hunter2" not in json.dumps(stats)
    finally:
        store.close()


def test_budget_is_enforced_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    import socket

    from gateway import events as ev

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = Store.open(tmp_path)
    try:

        def fill(conn) -> None:  # type: ignore[no-untyped-def]
            for i in range(400):
                body = {
                    "connector_id": 1,
                    "values": [{"value": str(i), "context": "Sample.Periodic" + " " * 200}],
                }
                ev.emit(conn, ev.METER_READING, body, charger_id="CP1", droppable=True)
            ev.emit(conn, ev.SESSION_RECORD, {"transaction_id": 1}, charger_id="CP1")

        store.write_sync(fill)
        cfg = UplinkSection(enabled=True, port=port, outbox_budget_mb=0.05, reconnect_max=1.0)
        uplink = Uplink(cfg, store, StatusBus(), "gw")

        async def run() -> dict:  # type: ignore[type-arg]
            task = asyncio.create_task(uplink.run())
            for _ in range(300):
                if uplink.drainer.stats.dropped_events:
                    break
                await asyncio.sleep(0.01)
            stats = await uplink.stats()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            return stats

        stats = asyncio.run(run())
        assert stats["connected"] is False and stats["dropped_events"] > 0
        assert stats["backlog_bytes"] <= 0.05 * 1024 * 1024 + 1000
        kinds = store.read(
            lambda c: dict(c.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        )
        assert kinds["session.record"] == 1 and kinds["uplink.dropped"] >= 1
    finally:
        store.close()


def test_known_connector_status_is_seeded_from_the_store(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        store.write_sync(
            lambda c: c.execute(
                "INSERT INTO connector_status (charger_id, connector_id, status, error_code, info, charger_ts, "
                "received_at) VALUES ('CP1', 2, 'Faulted', 'GroundFailure', NULL, '2026-11-21T10:00:00Z', 1.5)"
            )
        )
        uplink = Uplink(UplinkSection(), store, StatusBus(), "gw")
        uplink.seed_status()
        st = uplink._status[("CP1", 2)]
        assert (st.status, st.error_code, st.received_at) == ("Faulted", "GroundFailure", 1.5)
    finally:
        store.close()
