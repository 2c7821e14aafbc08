"""An electric vehicle as seen from an AC charge point: pure logic, no clock of its own.

The EV draws power only when it is plugged in, the EVSE offers at least the IEC 61851 minimum current (PWM duty
cycle), the contactor is closed and the battery is below the EV's target state of charge. Its acceptance curve is
constant power up to `taper_soc`, then a linear taper down to `taper_floor` x max power at 100 % (a real BMS's
constant-voltage phase, simplified). The caller (the simulated connector) integrates over time in small steps.

Pilot state (IEC 61851-1): 'A' not connected, 'B' connected and not requesting (no PWM offered, or full),
'C' requesting charge.
"""

from __future__ import annotations

from dataclasses import dataclass

# IEC 61851-1: a PWM duty cycle below the one for 6 A means "no charging allowed".
MIN_OFFERED_AMPS = 6.0
NOMINAL_VOLTAGE = 230.0


@dataclass(frozen=True)
class EvSpec:
    name: str = "ev"
    capacity_kwh: float = 60.0
    # On-board charger limit (AC): 11 kW three-phase is the European norm.
    max_ac_power_w: float = 11000.0
    phases: int = 3
    # Constant power below this state of charge, linear taper above it.
    taper_soc: float = 0.8
    # Power at 100 % as a fraction of max power, so a taper reaches full in finite time.
    taper_floor: float = 0.1
    # Share of the metered AC energy that ends up in the battery (charger + battery losses).
    efficiency: float = 0.9

    def __post_init__(self) -> None:
        problems = []
        if not self.capacity_kwh > 0:
            problems.append("capacity_kwh must be > 0")
        if not self.max_ac_power_w > 0:
            problems.append("max_ac_power_w must be > 0")
        if self.phases not in (1, 2, 3):
            problems.append("phases must be 1, 2 or 3")
        if not 0 < self.taper_soc <= 1:
            problems.append("taper_soc must be in (0, 1]")
        if not 0 < self.taper_floor <= 1:
            problems.append("taper_floor must be in (0, 1]")
        if not 0 < self.efficiency <= 1:
            problems.append("efficiency must be in (0, 1]")
        if problems:
            raise ValueError(f"EvSpec {self.name}: " + "; ".join(problems))


# A small catalogue so a fleet has some variety.
MODELS: tuple[EvSpec, ...] = (
    EvSpec("compact-11kW", capacity_kwh=40.0, max_ac_power_w=11000.0, phases=3),
    EvSpec("sedan-11kW", capacity_kwh=75.0, max_ac_power_w=11000.0, phases=3),
    EvSpec("van-7kW", capacity_kwh=50.0, max_ac_power_w=7400.0, phases=1),
    EvSpec("suv-22kW", capacity_kwh=90.0, max_ac_power_w=22000.0, phases=3, taper_soc=0.85),
)


class Ev:
    """State of one vehicle. `soc` is 0..1; `departure` is a simulated-clock time (seconds) or None."""

    def __init__(
        self,
        spec: EvSpec,
        soc: float,
        target_soc: float = 1.0,
        departure: float | None = None,
        id_tag: str | None = None,
    ) -> None:
        if not 0 <= soc <= 1:
            raise ValueError(f"soc must be in [0, 1], got {soc!r}")
        if not 0 < target_soc <= 1:
            raise ValueError(f"target_soc must be in (0, 1], got {target_soc!r}")
        self.spec = spec
        self.soc = float(soc)
        self.target_soc = float(target_soc)
        self.departure = departure
        self.id_tag = id_tag
        self.plugged = False
        self.battery_wh_in = 0.0  # energy stored into the battery during this visit

    @property
    def full(self) -> bool:
        return self.soc >= self.target_soc

    def wants_charge(self) -> bool:
        return self.plugged and not self.full

    def pilot_state(self, offered_amps: float) -> str:
        if not self.plugged:
            return "A"
        if self.full or offered_amps < MIN_OFFERED_AMPS:
            return "B"
        return "C"

    def acceptance_power_w(self) -> float:
        """What the battery management accepts at the present state of charge, before the EVSE's limit."""
        spec = self.spec
        if self.full:
            return 0.0
        if self.soc <= spec.taper_soc or spec.taper_soc >= 1:
            return spec.max_ac_power_w
        # linear from max power at taper_soc to taper_floor x max power at 100 %
        frac = (self.soc - spec.taper_soc) / (1.0 - spec.taper_soc)
        return spec.max_ac_power_w * (1.0 - frac * (1.0 - spec.taper_floor))

    def draw_power_w(
        self, offered_amps: float, relay_closed: bool, voltage: float = NOMINAL_VOLTAGE
    ) -> float:
        """AC power drawn from the grid right now."""
        if not relay_closed or self.pilot_state(offered_amps) != "C":
            return 0.0
        evse_limit = offered_amps * voltage * self.spec.phases
        return max(0.0, min(self.acceptance_power_w(), evse_limit))

    def absorb(self, ac_energy_wh: float) -> None:
        """Store metered AC energy into the battery (with losses), never beyond 100 %."""
        if ac_energy_wh <= 0:
            return
        stored = ac_energy_wh * self.spec.efficiency
        room = (1.0 - self.soc) * self.spec.capacity_kwh * 1000.0
        stored = min(stored, room)
        self.battery_wh_in += stored
        self.soc = min(1.0, self.soc + stored / (self.spec.capacity_kwh * 1000.0))
