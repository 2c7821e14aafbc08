"""build_session_record on a real SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway import events as ev
from gateway.errors import StoreError
from gateway.store import Store
from gateway.uplink.cdr import build_session_record, ocpi_auth_method

SIGNED_BEGIN = 'OCMF|{"FV":"1.0","RD":[{"TM":"2026-11-21T10:00:00,000+0000 S","RV":1.000,"RI":"1-b:1.8.0"}]}|{"SD":"30440220"}'
SIGNED_END = (
    'OCMF|{"FV":"1.0","RD":[{"TM":"2026-11-21T10:30:00,000+0000 S","RV":7.500}]}|{"SD":"3045022100ff"}'
)


def _tx(conn: sqlite3.Connection, stopped: bool = True, auth_method: str | None = "WHITELIST") -> int:
    cur = conn.execute(
        "INSERT INTO transactions (charger_id, connector_id, id_tag, parent_id_tag, auth_status, auth_method, "
        "meter_start, start_ts, started_at, start_key) VALUES ('CP1', 2, '04A2B3C4D5E6F7', 'PARENT1', 'Accepted', ?, "
        "1000, '2026-11-21T10:00:00Z', 1795255200.2, 'k1')",
        (auth_method,),
    )
    tx = int(cur.lastrowid or 0)

    def sample(ts: str, measurand: str, value: str, unit: str = "Wh", phase: str = "", fmt: str | None = None,
               context: str = "Sample.Periodic") -> None:  # fmt: skip
        conn.execute(
            "INSERT INTO meter_samples (charger_id, connector_id, transaction_id, charger_ts, measurand, phase, "
            "context, unit, format, value, source, received_at) VALUES ('CP1', 2, ?, ?, ?, ?, ?, ?, ?, ?, 'ocpp', 0)",
            (tx, ts, measurand, phase, context, unit, fmt, value),
        )

    sample("2026-11-21T10:00:00Z", "Energy.Active.Import.Register", SIGNED_BEGIN, "kWh", fmt="SignedData",
           context="Transaction.Begin")  # fmt: skip
    sample("2026-11-21T10:10:00Z", "Energy.Active.Import.Register", "3.5", "kWh")
    sample("2026-11-21T10:10:00Z", "Power.Active.Import", "11000", "W")
    sample("2026-11-21T10:10:00Z", "Current.Import", "15.9", "A", phase="L1")
    sample("2026-11-21T10:10:00Z", "Current.Import", "16.1", "A", phase="L2")
    sample("2026-11-21T10:20:00+00:00", "Energy.Active.Import.Register", "5500")
    sample("2026-11-21T10:20:00+00:00", "SoC", "64")
    sample("2026-11-21T10:20:00+00:00", "Energy.Active.Import.Register", "garbage", phase="L1")
    if stopped:
        sample("2026-11-21T10:30:00Z", "Energy.Active.Import.Register", SIGNED_END, "kWh", fmt="SignedData",
               context="Transaction.End")  # fmt: skip
        conn.execute(
            "UPDATE transactions SET meter_stop = 7500, stop_ts = '2026-11-21T10:30:00Z', stopped_at = 1795257000.4, "
            "stop_reason = 'EVDisconnected', state = 'stopped' WHERE id = ?",
            (tx,),
        )
    return tx


def test_complete_record(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        # as the StopTransaction handler will: build and emit inside the same write transaction
        def stop(conn: sqlite3.Connection) -> dict:  # type: ignore[type-arg]
            tx = _tx(conn)
            rec = build_session_record(conn, tx)
            ev.emit(conn, ev.SESSION_RECORD, rec, charger_id="CP1", charger_ts="2026-11-21T10:30:00Z")
            return rec

        rec = store.write_sync(stop)
    finally:
        store.close()
    assert rec["transaction_id"] == 1 and rec["charger_id"] == "CP1" and rec["connector_id"] == 2
    assert rec["start_date_time"] == "2026-11-21T10:00:00.000Z"
    assert rec["end_date_time"] == "2026-11-21T10:30:00.000Z"
    assert rec["cdr_token"] == {"uid": "04A2B3C4D5E6F7", "type": "RFID", "parent_id": "PARENT1"}
    assert rec["auth_method"] == "WHITELIST"
    assert rec["meter_start_wh"] == 1000 and rec["meter_stop_wh"] == 7500
    assert rec["total_energy_wh"] == 6500 and rec["total_energy"] == 6.5
    assert rec["total_time"] == 0.5
    assert rec["complete"] is True and rec["stop_reason"] == "EVDisconnected"
    periods = rec["charging_periods"]
    assert [p["start_date_time"] for p in periods] == [
        "2026-11-21T10:00:00.000Z", "2026-11-21T10:10:00.000Z", "2026-11-21T10:20:00.000Z"
    ]  # fmt: skip
    energy = [next(d["volume"] for d in p["dimensions"] if d["type"] == "ENERGY") for p in periods]
    assert energy == [2.5, 2.0, 2.0]  # kWh: 1000 -> 3500 -> 5500 -> 7500 Wh
    assert sum(energy) == rec["total_energy"]
    dims = {d["type"]: d["volume"] for d in periods[1]["dimensions"]}
    assert dims == {"ENERGY": 2.0, "TIME": pytest.approx(1 / 6, abs=1e-6), "POWER": 11.0, "CURRENT": 16.1}
    assert {d["type"]: d["volume"] for d in periods[2]["dimensions"]}["STATE_OF_CHARGE"] == 64.0
    # signed meter data byte for byte, in order
    assert [s["value"] for s in rec["signed_data"]] == [SIGNED_BEGIN, SIGNED_END]
    assert rec["signed_data"][1]["context"] == "Transaction.End"


def test_active_transaction_and_missing_one(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        rec = store.write_sync(lambda c: build_session_record(c, _tx(c, stopped=False, auth_method=None)))
        assert rec["complete"] is False and rec["end_date_time"] is None and rec["total_energy"] is None
        assert rec["auth_method"] is None
        assert len(rec["charging_periods"]) == 2  # start -> 10:10 -> 10:20
        with pytest.raises(StoreError):
            store.write_sync(lambda c: build_session_record(c, 999))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("stored", "ocpi"),
    [("WHITELIST", "WHITELIST"), ("auth_request", "AUTH_REQUEST"), ("COMMAND", "COMMAND"),
     ("offline_unknown", "OFFLINE_UNKNOWN"), ("local_list", "WHITELIST"), (None, None),
     ("AUTH_CACHE", "WHITELIST"), ("SESSION_TOKEN", "COMMAND")],
)  # fmt: skip
def test_auth_methods(stored: str | None, ocpi: str | None) -> None:
    assert ocpi_auth_method(stored) == ocpi
