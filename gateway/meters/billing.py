"""Session energy from a charger's own meter, and the check against what the charger reported.

The lead wires two calls into the session lifecycle, both inside the Store.write that records the transaction:
- StartTransaction: record_start(conn, transaction_id, meter_id, hub.energy_import_wh(meter_id), now)
- StopTransaction:  finish(conn, transaction_id, charger_wh=<meter_stop - meter_start, or None>,
                           meter_stop_wh=hub.energy_import_wh(meter_id), tolerance_wh=..., tolerance_pct=..., now)
  -> EnergyCheck; use `.billing_wh` as the session's energy and emit `.flagged` with the session event.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gateway.store import register_migrations

register_migrations(
    "meters",
    [
        """
        CREATE TABLE session_meter_energy (
            transaction_id INTEGER PRIMARY KEY,
            meter_id TEXT NOT NULL,
            meter_start_wh REAL,
            started_at REAL NOT NULL,
            meter_stop_wh REAL,
            metered_wh REAL,
            charger_wh REAL,
            billing_wh REAL,
            billing_source TEXT CHECK (billing_source IN ('charger', 'meter', 'none')),
            discrepancy_wh REAL,
            flagged INTEGER NOT NULL DEFAULT 0,
            checked_at REAL
        );
        CREATE INDEX session_meter_energy_flagged ON session_meter_energy (flagged) WHERE flagged = 1;
        """
    ],
)


@dataclass(frozen=True)
class EnergyCheck:
    billing_wh: float | None
    billing_source: str  # "charger" | "meter" | "none"
    metered_wh: float | None
    discrepancy_wh: float | None  # charger - meter
    flagged: bool


def check_energy(
    charger_wh: float | None,
    meter_start_wh: float | None,
    meter_stop_wh: float | None,
    tolerance_wh: float,
    tolerance_pct: float,
) -> EnergyCheck:
    """Pure. The charger's figure bills when it has one; the meter's fills in when it has none. A difference beyond
    max(tolerance_wh, tolerance_pct % of the metered energy) is flagged. A meter that went backwards (replaced,
    reset) gives no metered figure rather than a negative one."""
    metered: float | None = None
    if meter_start_wh is not None and meter_stop_wh is not None and meter_stop_wh >= meter_start_wh:
        metered = meter_stop_wh - meter_start_wh
    if charger_wh is not None and charger_wh < 0:
        charger_wh = None  # a negative session energy is a charger bug, not a bill
    if charger_wh is not None:
        billing, source = charger_wh, "charger"
    elif metered is not None:
        billing, source = metered, "meter"
    else:
        billing, source = None, "none"
    discrepancy = None if charger_wh is None or metered is None else charger_wh - metered
    flagged = discrepancy is not None and abs(discrepancy) > max(
        tolerance_wh, tolerance_pct / 100.0 * (metered or 0)
    )
    return EnergyCheck(billing, source, metered, discrepancy, flagged)


def record_start(
    conn: sqlite3.Connection, transaction_id: int, meter_id: str, meter_start_wh: float | None, now: float
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO session_meter_energy (transaction_id, meter_id, meter_start_wh, started_at) "
        "VALUES (?, ?, ?, ?)",
        (transaction_id, meter_id, meter_start_wh, now),
    )


def finish(
    conn: sqlite3.Connection,
    transaction_id: int,
    charger_wh: float | None,
    meter_stop_wh: float | None,
    tolerance_wh: float,
    tolerance_pct: float,
    now: float,
) -> EnergyCheck | None:
    """None when the session had no meter (record_start was never called for it). Idempotent on a resent stop."""
    row = conn.execute(
        "SELECT meter_start_wh, checked_at, billing_wh, billing_source, metered_wh, discrepancy_wh, flagged "
        "FROM session_meter_energy WHERE transaction_id = ?",
        (transaction_id,),
    ).fetchone()
    if row is None:
        return None
    if row[1] is not None:  # already checked: a duplicate StopTransaction changes nothing
        return EnergyCheck(row[2], row[3], row[4], row[5], bool(row[6]))
    c = check_energy(charger_wh, row[0], meter_stop_wh, tolerance_wh, tolerance_pct)
    conn.execute(
        "UPDATE session_meter_energy SET meter_stop_wh = ?, metered_wh = ?, charger_wh = ?, billing_wh = ?, "
        "billing_source = ?, discrepancy_wh = ?, flagged = ?, checked_at = ? WHERE transaction_id = ?",
        (
            meter_stop_wh,
            c.metered_wh,
            charger_wh,
            c.billing_wh,
            c.billing_source,
            c.discrepancy_wh,
            1 if c.flagged else 0,
            now,
            transaction_id,
        ),
    )
    return c
