"""A connector's energy meter: integrates AC power over (simulated) time into a monotonic Wh register."""

from __future__ import annotations


class EnergyMeter:
    def __init__(self, start_wh: float = 0.0) -> None:
        if start_wh < 0:
            raise ValueError("a meter register starts at >= 0 Wh")
        self._energy_wh = float(start_wh)
        self.power_w = 0.0

    @property
    def energy_wh(self) -> float:
        """Exact integrated energy (float)."""
        return self._energy_wh

    @property
    def register_wh(self) -> int:
        """What the meter displays: whole Wh, truncated, so it never runs ahead of the energy delivered."""
        return int(self._energy_wh)

    def integrate(self, power_w: float, dt_s: float) -> float:
        """Add power_w held for dt_s seconds; returns the Wh added. Negative power (export) is not metered here."""
        if dt_s < 0:
            raise ValueError("dt must be >= 0")
        self.power_w = max(0.0, power_w)
        added = self.power_w * dt_s / 3600.0
        self._energy_wh += added
        return added

    def snapshot(self) -> dict[str, float]:
        return {"energy_wh": self._energy_wh}

    @classmethod
    def restore(cls, snap: dict[str, float]) -> EnergyMeter:
        return cls(float(snap.get("energy_wh", 0.0)))
