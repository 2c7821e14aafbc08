"""The gateway's profiles on the agent's real smart-charging code (agent/smartcharging.py): the TxProfile lease
overrides the TxDefaultProfile while it runs and, once the gateway stops renewing it (gateway dead), the charger
falls back to the safe TxDefaultProfile current by itself."""

from __future__ import annotations

from types import SimpleNamespace

from agent.smartcharging import SmartCharging
from gateway.loadmgmt.profiles import tx_default_profile, tx_profile


class MemHal:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def storage_read(self, name: str) -> bytes | None:
        return self.files.get(name)

    def storage_write(self, name: str, data: bytes) -> None:
        self.files[name] = data


def test_lease_expiry_falls_back_to_safe_default() -> None:
    now = 1_763_700_000.0
    sc = SmartCharging(MemHal(), SimpleNamespace(voltage_v=230.0, phases=3))
    tx = {"id": 4321, "local": 1, "start_wall": now - 100}
    default = tx_default_profile(6.0)
    assert sc.set_profile(default["connectorId"], default["csChargingProfiles"], None, now) == "Accepted"
    assert sc.limit_amps(1, now, tx) == 6.0
    lease = tx_profile(1, 4321, 20.0, now, 60)
    assert sc.set_profile(lease["connectorId"], lease["csChargingProfiles"], tx, now) == "Accepted"
    assert sc.limit_amps(1, now + 1, tx) == 20.0
    assert sc.limit_amps(1, now + 59, tx) == 20.0
    assert sc.limit_amps(1, now + 61, tx) == 6.0  # not renewed: back to the fail-safe
    # a renewal replaces the lease (same profile id), it does not stack up
    renewed = tx_profile(1, 4321, 12.0, now + 40, 60)
    assert sc.set_profile(1, renewed["csChargingProfiles"], tx, now + 40) == "Accepted"
    assert sc.limit_amps(1, now + 61, tx) == 12.0
    assert sum(1 for e in sc.entries if e["p"]["chargingProfilePurpose"] == "TxProfile") == 1
    # a TxProfile for another transaction is refused
    other = tx_profile(1, 999, 30.0, now, 60)
    assert sc.set_profile(1, other["csChargingProfiles"], tx, now) == "Rejected"


def test_decimal_limits_and_number_phases_are_applied_as_sent() -> None:
    """0.1 A resolution: the agent takes the limit as a number (no rounding of its own); numberPhases (sent for
    single-phase chargers) is accepted and does not change an ampere limit. Below 6 A it pauses (IEC 61851)."""
    now = 1_763_700_000.0
    sc = SmartCharging(MemHal(), SimpleNamespace(voltage_v=230.0, phases=1))
    tx = {"id": 7, "local": 1, "start_wall": now - 10}
    default = tx_default_profile(6.0, 0, 1)
    assert sc.set_profile(0, default["csChargingProfiles"], None, now) == "Accepted"
    for amps, applied in ((6.3, 6.3), (13.79, 13.7), (21.4, 21.4), (5.9, 0.0)):
        lease = tx_profile(1, 7, amps, now, 60, number_phases=1)
        assert sc.set_profile(1, lease["csChargingProfiles"], tx, now) == "Accepted"
        assert sc.limit_amps(1, now + 1, tx) == applied
    # and what the agent persisted reads back the same after a restart
    again = SmartCharging(sc._hal, SimpleNamespace(voltage_v=230.0, phases=1))
    assert again.limit_amps(1, now + 1, tx) == 0.0
    assert again.entries[-1]["p"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 5.9
