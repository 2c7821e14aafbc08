"""A simulated site for load-management tests: chargers that obey OCPP charging profiles, behind a ChargerCommands
implementation, with EVs that follow a new limit after a response delay.

This is a model of a well-behaved charger, used where the real gateway + agents are not wired yet; it implements
the OCPP 1.6 rules the gateway relies on: a TxProfile (Absolute, startSchedule + duration) overrides the charger's
TxDefaultProfile while it runs; when it runs out the charger falls back to the TxDefaultProfile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Phases = tuple[float, float, float]


@dataclass
class SimCharger:
    id: str
    ev_max: float = 32.0  # what the EV would take
    response_delay: float = 1.0  # s until the EV follows a new limit (IEC 61851 allows up to 5 s)
    ignores_limits: bool = False
    default_limit: float | None = None
    tx: tuple[float, float, float] | None = None  # (limit, start wall, duration)
    charging: bool = False
    _changes: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, effective limit)

    def effective_limit(self, wall: float) -> float:
        if self.tx is not None:
            limit, start, duration = self.tx
            if start <= wall < start + duration:
                return limit
        return self.default_limit if self.default_limit is not None else self.ev_max

    def note(self, mono: float, wall: float) -> None:
        lim = self.effective_limit(wall)
        if not self._changes or self._changes[-1][1] != lim:
            self._changes.append((mono, lim))

    def draw(self, mono: float, wall: float) -> float:
        if not self.charging:
            return 0.0
        self.note(mono, wall)
        if self.ignores_limits:
            return self.ev_max
        limit = self.ev_max if self.default_limit is None else self.default_limit
        for t, lim in self._changes:
            if t <= mono - self.response_delay:
                limit = lim
        return min(self.ev_max, limit)


class SimChargerCommands:
    """ChargerCommands over SimChargers: SetChargingProfile only (what load management sends)."""

    def __init__(
        self,
        chargers: list[SimCharger],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.chargers = {c.id: c for c in chargers}
        self.clock = clock
        self.wall = wall
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        self.online = True

    def connected(self) -> list[str]:
        return list(self.chargers) if self.online else []

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        from gateway.errors import ChargerNotConnected, CommandError

        c = self.chargers.get(charger_id)
        if c is None or not self.online:
            raise ChargerNotConnected(charger_id)
        if action != "SetChargingProfile":
            raise CommandError(f"{action} not simulated")
        self.calls.append((self.clock(), charger_id, payload))
        cs = payload["csChargingProfiles"]
        sched = cs["chargingSchedule"]
        limit = float(sched["chargingSchedulePeriod"][0]["limit"])
        if cs["chargingProfilePurpose"] == "TxDefaultProfile":
            c.default_limit = limit
        elif cs["chargingProfilePurpose"] == "TxProfile":
            start = datetime.fromisoformat(sched["startSchedule"].replace("Z", "+00:00")).timestamp()
            c.tx = (limit, start, float(sched.get("duration", 1e9)))
        c.note(self.clock(), self.wall())
        return {"status": "Accepted"}

    def draws(self) -> dict[str, Phases]:
        mono, wall = self.clock(), self.wall()
        out: dict[str, Phases] = {}
        for c in self.chargers.values():
            i = c.draw(mono, wall)
            out[c.id] = (i, i, i)
        return out
