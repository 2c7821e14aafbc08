"""Metered session energy: the CSMS asks this, inside its StartTransaction / StopTransaction write, to note the
connector meter's register and to cross-check the charger's figure at the end (gateway/meters/billing.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.meters import billing
from gateway.meters.hub import MeterHub


class SessionMeters:
    def __init__(self, hub: MeterHub) -> None:
        self.hub = hub

    def on_start(
        self, conn: sqlite3.Connection, tx_id: int, charger_id: str, connector_id: int, now: float
    ) -> None:
        meter_id = self.hub.charger_meter_id(charger_id, connector_id)
        if meter_id is not None:
            billing.record_start(conn, tx_id, meter_id, self.hub.energy_import_wh(meter_id), now)

    def on_stop(
        self,
        conn: sqlite3.Connection,
        tx_id: int,
        charger_id: str,
        connector_id: int,
        charger_wh: float | None,
        now: float,
    ) -> dict[str, Any] | None:
        """Billing fields for the session events, or None when no meter watches this connector."""
        meter_id = self.hub.charger_meter_id(charger_id, connector_id)
        if meter_id is None:
            return None
        m = self.hub.meters[meter_id]
        check = billing.finish(
            conn,
            tx_id,
            charger_wh,
            self.hub.energy_import_wh(meter_id),
            m.energy_tolerance_wh,
            m.energy_tolerance_pct,
            now,
        )
        if check is None:
            return None
        return {
            "billing_wh": check.billing_wh,
            "billing_source": check.billing_source,
            "metered_wh": check.metered_wh,
            "discrepancy_wh": check.discrepancy_wh,
            "energy_flagged": check.flagged,
        }
