"""The final session record, shaped after the OCPI 2.2.1 CDR (docs/uplink.md, `session.record`).

`build_session_record(conn, transaction_id)` reads the core tables only (transactions, meter_samples); the
StopTransaction handler calls it inside its write transaction and emits the result:
    events.emit(conn, events.SESSION_RECORD, build_session_record(conn, tx_id), charger_id=...)
Signed meter values (format 'SignedData') are copied into `signed_data` exactly as received.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from typing import Any

from gateway.errors import StoreError
from gateway.uplink.contract import canonical_charger_ts, format_ms

ENERGY_REGISTER = "Energy.Active.Import.Register"

# transactions.auth_method as stored by authorization -> OCPI AuthMethod (+ chargegate's OFFLINE_UNKNOWN)
_AUTH_METHODS = {
    "whitelist": "WHITELIST",
    "operator_override": "WHITELIST",
    "local_list": "WHITELIST",
    "cache": "WHITELIST",
    "auth_cache": "WHITELIST",
    "session_token": "COMMAND",
    "auth_request": "AUTH_REQUEST",
    "emsp": "AUTH_REQUEST",
    "online": "AUTH_REQUEST",
    "command": "COMMAND",
    "remote_start": "COMMAND",
    "offline_unknown": "OFFLINE_UNKNOWN",
    "unknown": "OFFLINE_UNKNOWN",
}


def ocpi_auth_method(stored: str | None) -> str | None:
    if stored is None:
        return None
    return _AUTH_METHODS.get(stored.lower(), stored.upper())


def _wh(value: str, unit: str | None) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    if not math.isfinite(v):
        return None
    if unit == "kWh":
        return v * 1000.0
    if unit in (None, "", "Wh"):
        return v
    return None


def _num(value: str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _ms(ts: str | None) -> int | None:
    return canonical_charger_ts(ts)[1]


def _ts_text(ts: str | None) -> str | None:
    return canonical_charger_ts(ts)[0]


def build_session_record(conn: sqlite3.Connection, transaction_id: int) -> dict[str, Any]:
    """The CDR-shaped record of one transaction (complete once the transaction is stopped)."""
    conn_rf = conn.row_factory
    conn.row_factory = sqlite3.Row
    try:
        tx = conn.execute("SELECT * FROM transactions WHERE id = ?", (transaction_id,)).fetchone()
        if tx is None:
            raise StoreError(f"no transaction {transaction_id}")
        samples = conn.execute(
            "SELECT charger_ts, measurand, phase, location, context, unit, format, value FROM meter_samples "
            "WHERE transaction_id = ? AND charger_id = ? ORDER BY id",
            (transaction_id, tx["charger_id"]),
        ).fetchall()
    finally:
        conn.row_factory = conn_rf

    start_ms = _ms(tx["start_ts"])
    stop_ms = _ms(tx["stop_ts"])
    meter_start = int(tx["meter_start"])
    meter_stop = tx["meter_stop"]
    energy_wh = tx["energy_wh"]
    if energy_wh is None and meter_stop is not None:
        energy_wh = int(meter_stop) - meter_start

    # group the raw numeric samples by their (parsed) charger timestamp
    groups: dict[int, list[sqlite3.Row]] = {}
    signed: list[dict[str, Any]] = []
    for s in samples:
        if s["format"] == "SignedData":
            signed.append(
                {
                    "charger_ts": s["charger_ts"],
                    "measurand": s["measurand"],
                    "context": s["context"] or None,
                    "phase": s["phase"] or None,
                    "location": s["location"] or None,
                    "unit": s["unit"],
                    "value": s["value"],  # byte for byte as the charger sent it
                }
            )
            continue
        ms = _ms(s["charger_ts"])
        if ms is not None:
            groups.setdefault(ms, []).append(s)

    # energy register timeline: start, periodic samples, stop
    points: list[tuple[int, float]] = []
    if start_ms is not None:
        points.append((start_ms, float(meter_start)))
    for ms in sorted(groups):
        if (start_ms is not None and ms <= start_ms) or (stop_ms is not None and ms >= stop_ms):
            continue
        regs = [
            _wh(s["value"], s["unit"])
            for s in groups[ms]
            if s["measurand"] == ENERGY_REGISTER and not s["phase"] and s["location"] in ("", "Outlet")
        ]
        reg = next((r for r in regs if r is not None), None)
        if reg is not None:
            points.append((ms, reg))
    if stop_ms is not None and meter_stop is not None:
        points.append((stop_ms, float(meter_stop)))

    periods: list[dict[str, Any]] = []
    for (t0, e0), (t1, e1) in itertools.pairwise(points):
        dims: list[dict[str, Any]] = [
            {"type": "ENERGY", "volume": round(max(0.0, e1 - e0) / 1000.0, 4)},
            {"type": "TIME", "volume": round(max(0, t1 - t0) / 3_600_000.0, 6)},
        ]
        dims.extend(_instant_dimensions(groups.get(t0, [])))
        periods.append({"start_date_time": format_ms(t0), "dimensions": dims})

    total_time = (
        round((stop_ms - start_ms) / 3_600_000.0, 6) if start_ms is not None and stop_ms is not None else None
    )
    return {
        "transaction_id": int(tx["id"]),
        "charger_id": tx["charger_id"],
        "connector_id": int(tx["connector_id"]),
        "start_date_time": _ts_text(tx["start_ts"]),
        "end_date_time": _ts_text(tx["stop_ts"]),
        "gateway_started_ms": round(tx["started_at"] * 1000),
        "gateway_stopped_ms": round(tx["stopped_at"] * 1000) if tx["stopped_at"] is not None else None,
        "cdr_token": {"uid": tx["id_tag"], "type": "RFID", "parent_id": tx["parent_id_tag"]},
        "auth_method": ocpi_auth_method(tx["auth_method"]),
        "gateway_auth_method": tx["auth_method"],  # the gateway's own finer value (e.g. AUTH_CACHE)
        "auth_status": tx["auth_status"],
        # the OCPP reservationId the charger's StartTransaction carried (OCPI's CDR has no field for it)
        "reservation_id": tx["reservation_id"],
        "meter_start_wh": meter_start,
        "meter_stop_wh": int(meter_stop) if meter_stop is not None else None,
        "total_energy_wh": int(energy_wh) if energy_wh is not None else None,
        "total_energy": round(energy_wh / 1000.0, 4) if energy_wh is not None else None,  # kWh, as OCPI
        "total_time": total_time,  # hours, as OCPI
        "stop_reason": tx["stop_reason"],
        "stop_id_tag": tx["stop_id_tag"],
        "complete": tx["state"] == "stopped",
        "charging_periods": periods,
        "signed_data": signed,
    }


def _instant_dimensions(group: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """POWER (kW), CURRENT (A, highest phase) and STATE_OF_CHARGE (%) sampled at a period's start."""
    power: float | None = None
    current: float | None = None
    soc: float | None = None
    for s in group:
        v = _num(s["value"])
        if v is None:
            continue
        m = s["measurand"]
        if m == "Power.Active.Import" and (not s["phase"] or power is None):
            power = v / 1000.0 if s["unit"] in (None, "", "W") else v if s["unit"] == "kW" else power
        elif m == "Current.Import":
            current = v if current is None else max(current, v)
        elif m == "SoC":
            soc = v
    out: list[dict[str, Any]] = []
    if power is not None:
        out.append({"type": "POWER", "volume": round(power, 3)})
    if current is not None:
        out.append({"type": "CURRENT", "volume": round(current, 2)})
    if soc is not None:
        out.append({"type": "STATE_OF_CHARGE", "volume": round(soc, 1)})
    return out
