"""reserve_now / cancel_reservation through the Downlink: validation (nothing sent on bad args), the ReserveNow
payload, reservation ids allocated durably in a real SQLite store; the session record's reservation_id."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.store import Store
from gateway.uplink.cdr import build_session_record
from gateway.uplink.downlink import MAX_RESERVATION_S, Downlink
from tests.uplink.test_downlink import Chargers

NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def run(dl: Downlink, op: str, args: dict[str, Any], cid: str = "c1") -> dict[str, Any]:
    return asyncio.run(dl.handle(cbor2.dumps({"id": cid, "op": op, "args": args})))


def test_reserve_now_sends_reserve_now_and_allocates_ids(store: Store, tmp_path: Path) -> None:
    chargers = Chargers()
    dl = Downlink(chargers, None, None, 5.0, 1 << 20, store=store, wall=lambda: NOW)
    r = run(dl, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": "04A2B3C4", "expiry": 900}, "a")
    assert (
        r["ok"] and r["result"]["reservation_id"] == 1 and r["result"]["response"] == {"status": "Accepted"}
    )
    assert chargers.calls[-1] == (
        "CP1",
        "ReserveNow",
        {"connectorId": 1, "expiryDate": "2026-11-18T11:21:40Z", "idTag": "04A2B3C4", "reservationId": 1},
    )
    # an eMSP-chosen id is sent as given and recorded: the next allocated one is above it
    args = {"charger": "CP1", "connector": 2, "id_tag": "X", "expiry": "2026-11-18T13:00:00+01:00",
            "reservation_id": 40, "parent_id_tag": "FLEET"}  # fmt: skip
    r = run(dl, "reserve_now", args, "b")
    assert r["result"]["reservation_id"] == 40
    assert chargers.calls[-1][2] == {
        "connectorId": 2,
        "expiryDate": "2026-11-18T12:00:00Z",
        "idTag": "X",
        "parentIdTag": "FLEET",
        "reservationId": 40,
    }
    r = run(dl, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": "Y", "expiry": 60}, "c")
    assert r["result"]["reservation_id"] == 41
    # a new Downlink on the same store (a restart): a repeated command id gets its id again, a new one a new id
    dl2 = Downlink(chargers, None, None, 5.0, 1 << 20, store=store, wall=lambda: NOW)
    assert (
        run(dl2, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": "Y", "expiry": 60}, "c")[
            "result"
        ]["reservation_id"]
        == 41
    )
    assert (
        run(dl2, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": "Y", "expiry": 60}, "d")[
            "result"
        ]["reservation_id"]
        == 42
    )
    r = run(dl2, "cancel_reservation", {"charger": "CP1", "reservation_id": 42}, "e")
    assert r["ok"] and chargers.calls[-1] == ("CP1", "CancelReservation", {"reservationId": 42})


@pytest.mark.parametrize(
    "args",
    [
        {"connector": 0, "expiry": 60},  # connector 0 (any connector) is not offered
        {"connector": 1, "expiry": 0},
        {"connector": 1, "expiry": MAX_RESERVATION_S + 1},
        {"connector": 1, "expiry": 60.5},
        {"connector": 1, "expiry": True},
        {"connector": 1, "expiry": "2026-11-18T11:00:00Z"},  # in the past
        {"connector": 1, "expiry": "2026-11-20T11:00:00Z"},  # more than 24 h ahead
        {"connector": 1, "expiry": "2026-11-18T12:00:00"},  # no offset
        {"connector": 1, "expiry": "tomorrow"},
        {"connector": 1, "expiry": 60, "reservation_id": 0},
        {"connector": 1, "expiry": 60, "reservation_id": 2**31},
        {"connector": 1, "expiry": 60, "parent_id_tag": "P" * 21},
        {"connector": 1, "expiry": 60, "id_tag": "T" * 21},
        {"connector": 1, "expiry": 60, "colour": "red"},
        {"connector": 1},
    ],
)
def test_invalid_reserve_now_args_send_nothing(store: Store, args: dict[str, Any]) -> None:
    chargers = Chargers()
    dl = Downlink(chargers, None, None, 5.0, 1 << 20, store=store, wall=lambda: NOW)
    full = {"charger": "CP1", "id_tag": "04A2B3C4"} | args
    r = run(dl, "reserve_now", full)
    assert not r["ok"] and r["error"]["code"] == "invalid_args" and chargers.calls == []
    assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]) == 0
    r = run(dl, "cancel_reservation", {"charger": "CP1", "reservation_id": "7"}, "x")
    assert not r["ok"] and r["error"]["code"] == "invalid_args" and chargers.calls == []


def test_session_record_carries_the_reservation_id(store: Store) -> None:
    def op(conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
        ids = []
        for rid in (77, None):
            cur = conn.execute(
                "INSERT INTO transactions (charger_id, connector_id, id_tag, auth_status, auth_method, "
                "reservation_id, meter_start, start_ts, started_at, start_key) "
                "VALUES ('CP1', 1, 'T', 'Accepted', 'whitelist', ?, 0, '2026-11-18T11:06:40Z', ?, ?)",
                (rid, NOW, f"k{rid}"),
            )
            ids.append(int(cur.lastrowid or 0))
        return build_session_record(conn, ids[0]), build_session_record(conn, ids[1])

    with_res, without = store.write_sync(op)
    assert with_res["reservation_id"] == 77 and without["reservation_id"] is None
