"""CSMS handlers against a real SQLite store: what is persisted, what is answered, resends, events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway import events
from gateway.auth.service import AuthService
from gateway.config import parse_config
from gateway.csms import ConnectionState, Csms, CsmsHooks
from gateway.events import StatusBus
from gateway.store import Store

TAG = "04A2B3C4"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path: Path):
    cfg = parse_config(
        tmp_path / "site.toml",
        {
            "ocpp": {"boot_status": "Pending", "pending_retry_interval": 10},
            "auth": {"allow": [TAG]},
            "chargers": [
                {"id": "CP1", "password": "0123456789abcdef", "connectors": 2},
                {"id": "CP2", "password": "0123456789abcdef", "boot_status": "Accepted"},
            ],
        },
    )
    store = Store.open(tmp_path / "data")
    clock = Clock()
    bus = StatusBus()
    statuses: list = []
    bus.subscribe_status(statuses.append)
    booted: list[str] = []
    hooks = CsmsHooks()

    async def on_boot(cid: str) -> None:
        booted.append(cid)

    hooks.charger_booted.append(on_boot)
    auth = AuthService(store, cfg.auth)
    csms = Csms(cfg, store, bus, auth, hooks, clock=clock)
    loop = asyncio.new_event_loop()
    _loop.append(loop)
    loop.run_until_complete(auth.start())  # stores the config's allow-list as manual tokens
    yield csms, store, clock, statuses, booted
    loop.run_until_complete(auth.close())
    loop.close()
    _loop.clear()
    store.close()


_loop: list[asyncio.AbstractEventLoop] = []


def run(coro):
    return _loop[0].run_until_complete(coro)


def outbox(store: Store) -> list[tuple[str, dict]]:
    return store.read(
        lambda c: [
            (r["kind"], events.decode_body(r["body"])) for r in c.execute("SELECT * FROM outbox ORDER BY seq")
        ]
    )


BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}


def test_pending_then_accepted_after_the_retry_interval(env):
    csms, store, clock, _, booted = env
    st = ConnectionState("CP1")
    r1 = run(csms.handle(st, "BootNotification", BOOT))
    assert r1.payload["status"] == "Pending" and r1.payload["interval"] == 10 and not r1.after
    clock.t += 2
    assert run(csms.handle(st, "BootNotification", BOOT)).payload["status"] == "Pending"
    clock.t += 10
    r3 = run(csms.handle(st, "BootNotification", BOOT))
    assert r3.payload["status"] == "Accepted" and r3.payload["interval"] == 300
    for after in r3.after:
        run(after())
    assert booted == ["CP1"]
    # the per-charger override answers Accepted at once
    assert run(csms.handle(ConnectionState("CP2"), "BootNotification", BOOT)).payload["status"] == "Accepted"
    row = store.read(
        lambda c: c.execute("SELECT vendor, boot_status FROM chargers WHERE id='CP1'").fetchone()
    )
    assert tuple(row) == ("V", "Accepted")


def test_session_is_persisted_once_and_resends_get_the_same_answers(env):
    csms, store, _clock, statuses, _ = env
    st = ConnectionState("CP1")
    run(
        csms.handle(
            st, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"}
        )
    )
    assert statuses[-1].status == "Preparing"
    start = {"connectorId": 1, "idTag": TAG, "meterStart": 500, "timestamp": "2026-11-21T10:00:00Z"}
    a = run(csms.handle(st, "StartTransaction", start)).payload
    b = run(csms.handle(st, "StartTransaction", start)).payload
    assert a == b and a["idTagInfo"]["status"] == "Accepted"
    tx = a["transactionId"]
    mv = {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [
            {"timestamp": "2026-11-21T10:01:00Z", "sampledValue": [{"value": "900", "unit": "Wh"}]}
        ],
    }
    run(csms.handle(st, "MeterValues", mv))
    run(csms.handle(st, "MeterValues", mv))
    stop = {
        "transactionId": tx,
        "meterStop": 2500,
        "timestamp": "2026-11-21T10:30:00Z",
        "reason": "Local",
        "idTag": TAG,
        "transactionData": [
            {
                "timestamp": "2026-11-21T10:30:00Z",
                "sampledValue": [{"value": "2500", "context": "Transaction.End"}],
            }
        ],
    }
    s1 = run(csms.handle(st, "StopTransaction", stop))
    s2 = run(csms.handle(st, "StopTransaction", stop))
    assert s1.payload == s2.payload == {"idTagInfo": {"status": "Accepted"}}
    row = store.read(lambda c: c.execute("SELECT state, energy_wh, meter_stop FROM transactions").fetchall())
    assert [tuple(r) for r in row] == [("stopped", 2000, 2500)]
    assert store.read(lambda c: c.execute("SELECT count(*) FROM meter_samples").fetchone()[0]) == 2
    kinds = [k for k, _ in outbox(store)]
    assert kinds.count(events.SESSION_STARTED) == 1
    assert kinds.count(events.METER_READING) == 1
    assert kinds.count(events.SESSION_STOPPED) == 1 and kinds.count(events.SESSION_RECORD) == 1
    assert store.read(lambda c: c.execute("SELECT count(*) FROM status_history").fetchone()[0]) == 1


def test_unknown_tag_is_recorded_with_its_status(env):
    csms, store, _clock, _, _ = env
    st = ConnectionState("CP1")
    assert run(csms.handle(st, "Authorize", {"idTag": "FFFF"})).payload == {
        "idTagInfo": {"status": "Invalid"}
    }
    r = run(
        csms.handle(
            st,
            "StartTransaction",
            {"connectorId": 2, "idTag": "FFFF", "meterStart": 0, "timestamp": "2026-11-21T10:00:00Z"},
        )
    )
    assert r.payload["idTagInfo"]["status"] == "Invalid"
    assert store.read(lambda c: c.execute("SELECT auth_status FROM transactions").fetchone()[0]) == "Invalid"


def test_transaction_ids_are_unique_and_a_stop_for_another_chargers_tx_is_an_orphan(env):
    csms, store, _clock, _, _ = env
    ids = set()
    for i in range(5):
        st = ConnectionState("CP1")
        ids.add(
            run(
                csms.handle(
                    st,
                    "StartTransaction",
                    {"connectorId": 1, "idTag": TAG, "meterStart": i, "timestamp": f"2026-11-21T10:0{i}:00Z"},
                )
            ).payload["transactionId"]
        )
    assert len(ids) == 5
    other = ConnectionState("CP2")
    r = run(
        csms.handle(
            other,
            "StopTransaction",
            {"transactionId": min(ids), "meterStop": 9, "timestamp": "2026-11-21T11:00:00Z"},
        )
    )
    assert r.payload == {} and not r.after
    assert (
        store.read(
            lambda c: c.execute("SELECT count(*) FROM transactions WHERE state='stopped'").fetchone()[0]
        )
        == 0
    )


def test_faults_emit_an_event_and_other_messages_are_answered(env):
    csms, store, _clock, _, _ = env
    st = ConnectionState("CP1")
    run(
        csms.handle(
            st, "StatusNotification", {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted"}
        )
    )
    assert [k for k, _ in outbox(store)] == [events.CHARGER_FAULT]
    assert run(csms.handle(st, "DataTransfer", {"vendorId": "acme"})).payload == {"status": "UnknownVendorId"}
    assert run(csms.handle(st, "DiagnosticsStatusNotification", {"status": "Uploaded"})).payload == {}
    assert run(csms.handle(st, "FirmwareStatusNotification", {"status": "Installed"})).payload == {}
    assert "currentTime" in run(csms.handle(st, "Heartbeat", {})).payload
