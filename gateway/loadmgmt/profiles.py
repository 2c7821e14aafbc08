"""OCPP 1.6 SetChargingProfile payloads (camelCase, valid per the official schema). Pure."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

# Profile ids: one TxDefaultProfile per charger, one TxProfile per connector; a new profile with the same id replaces
# the old one on the charger, so revisions never pile up.
TX_DEFAULT_PROFILE_ID = 1
TX_PROFILE_ID_BASE = 100


def ocpp_limit(amps: float) -> float:
    """Rounded down to a multiple of 0.1 A (OCPP 1.6: one fractional digit), as the float whose shortest repr has
    one decimal (6.3 goes out as `6.3`; schema checks compare it as a decimal, see gateway/ocpp/framing.py)."""
    if not math.isfinite(amps) or amps < 0:
        raise ValueError("limit must be finite and >= 0")
    return math.floor(amps * 10 + 1e-9) / 10


def _period(amps: float, number_phases: int | None) -> dict[str, Any]:
    period: dict[str, Any] = {"startPeriod": 0, "limit": ocpp_limit(amps)}
    if number_phases is not None:
        if number_phases not in (1, 2, 3):
            raise ValueError("numberPhases must be 1..3")
        period["numberPhases"] = number_phases
    return period


def iso_utc(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tx_default_profile(
    amps: float, connector_id: int = 0, number_phases: int | None = None
) -> dict[str, Any]:
    """Charger-wide fail-safe: applies to every transaction that has no TxProfile (or whose TxProfile expired).
    `number_phases`: stated for single-phase chargers (1); None leaves the OCPP default (3)."""
    return {
        "connectorId": connector_id,
        "csChargingProfiles": {
            "chargingProfileId": TX_DEFAULT_PROFILE_ID,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Relative",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [_period(amps, number_phases)],
            },
        },
    }


def tx_profile(
    connector_id: int,
    transaction_id: int,
    amps: float,
    wall_now: float,
    lease: int,
    number_phases: int | None = None,
) -> dict[str, Any]:
    """The session's current limit as a lease: an Absolute schedule starting now that lasts `lease` seconds. The
    gateway renews it well before it ends; if the gateway dies, the schedule runs out and the charger falls back to
    its TxDefaultProfile (the safe current)."""
    return {
        "connectorId": connector_id,
        "csChargingProfiles": {
            "chargingProfileId": TX_PROFILE_ID_BASE + connector_id,
            "transactionId": transaction_id,
            "stackLevel": 1,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "duration": int(lease),
                "startSchedule": iso_utc(wall_now),
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [_period(amps, number_phases)],
            },
        },
    }
