"""SimHal: simulated charger hardware behind the agent's HAL, so the simulator runs the exact agent code a device runs.

Per connector: an EV (or none), a contactor, the current limit offered on the pilot (PWM), an energy meter. Physics
advance lazily on the simulated timeline: every HAL call first integrates the time since the last call, and every
change the scenario makes (plug, unplug) goes through a method that integrates up to "now" before changing state, so
the meter sees exactly the power that flowed while each state held.

Reboots: `reboot(hard)` (the agent asks, e.g. after Reset.req) and `power_cut()` (the scenario pulls the plug) set
`reboot_pending`; the fleet runner then drops the connection, calls `power_on()` and builds a new core on this
same HAL. The meters, the EVs and the storage directory survive; contactors open and the pilot stops offering current.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

from agent.hal import Hal
from firmware_sim.clock import SimClock
from firmware_sim.ev import NOMINAL_VOLTAGE, Ev
from firmware_sim.meter import EnergyMeter
from firmware_sim.storage import DirStorage

# Longest simulated interval integrated at constant power: the taper changes the EV's power with its state of
# charge, so long gaps between HAL calls are split into steps this long.
MAX_STEP_S = 5.0
# Taps queued at the card reader beyond this are dropped (a real reader has no queue at all).
MAX_PENDING_TAPS = 8
PILOT_STATES = ("A", "B", "C", "D", "E", "F")


class SimConnector:
    def __init__(
        self, connector_id: int, meter: EnergyMeter | None = None, voltage: float = NOMINAL_VOLTAGE
    ) -> None:
        self.id = connector_id
        self.meter = meter or EnergyMeter()
        self.voltage = voltage
        self.ev: Ev | None = None
        self.relay_closed = False
        self.offered_amps = 0.0
        self.locked = False
        self.fault: str | None = None
        self.relay_switches = 0

    @property
    def power_w(self) -> float:
        return self.meter.power_w

    def pilot_state(self) -> str:
        if self.fault == "pilot":
            return "E"
        if self.ev is None:
            return "A"
        return self.ev.pilot_state(self.offered_amps)

    def advance(self, dt_s: float) -> None:
        """Integrate dt_s simulated seconds at the present contactor / current-limit / EV state."""
        while dt_s > 0:
            step = min(dt_s, MAX_STEP_S)
            dt_s -= step
            ev = self.ev
            power = (
                0.0
                if ev is None or self.fault
                else ev.draw_power_w(self.offered_amps, self.relay_closed, self.voltage)
            )
            if ev is not None and power > 0:
                # do not overshoot the EV's target within one step: stop drawing once it is reached
                need_wh = (ev.target_soc - ev.soc) * ev.spec.capacity_kwh * 1000.0 / ev.spec.efficiency
                full_after = need_wh * 3600.0 / power
                if full_after < step:
                    self.meter.integrate(power, full_after)
                    ev.absorb(power * full_after / 3600.0)
                    ev.soc = max(ev.soc, ev.target_soc)
                    self.meter.integrate(0.0, step - full_after)
                    continue
            added = self.meter.integrate(power, step)
            if ev is not None:
                ev.absorb(added)
        # present power reflects the state from now on (a setter calls advance(0) after changing it)
        ev = self.ev
        self.meter.power_w = (
            0.0
            if ev is None or self.fault
            else ev.draw_power_w(self.offered_amps, self.relay_closed, self.voltage)
        )


class SimHal(Hal):
    def __init__(
        self,
        charge_point_id: str,
        connectors: int,
        storage_dir: str | os.PathLike[str],
        clock: SimClock,
        voltage: float = NOMINAL_VOLTAGE,
        on_reboot: Callable[[bool], None] | None = None,
    ) -> None:
        if connectors < 1:
            raise ValueError("a charger has at least one connector")
        self.charge_point_id = charge_point_id
        self.clock = clock
        self.connectors = {i: SimConnector(i, voltage=voltage) for i in range(1, connectors + 1)}
        self.storage = DirStorage(storage_dir)
        self.on_reboot = on_reboot
        self.reboot_pending: bool | None = None  # None, or hard (True) / soft (False)
        self.reboots = 0
        self.powered = True  # False between a power cut and power_on: the old core can switch nothing
        self._taps: collections.deque[str] = collections.deque()
        self.taps_dropped = 0
        self._last_sim = clock.sim()

    # -- physics --------------------------------------------------------------------------------------------
    def advance(self) -> None:
        now = self.clock.sim()
        dt = now - self._last_sim
        if dt > 0:
            self._last_sim = now
            for c in self.connectors.values():
                c.advance(dt)

    def connector(self, connector_id: int) -> SimConnector:
        try:
            return self.connectors[connector_id]
        except KeyError:
            raise ValueError(f"{self.charge_point_id}: no connector {connector_id!r}") from None

    # -- what the world does (scenarios) --------------------------------------------------------------------
    def plug_in(self, connector_id: int, ev: Ev) -> None:
        self.advance()
        c = self.connector(connector_id)
        if c.ev is not None:
            raise ValueError(f"{self.charge_point_id}/{connector_id}: an EV is already plugged in")
        ev.plugged = True
        c.ev = ev

    def unplug(self, connector_id: int) -> Ev | None:
        self.advance()
        c = self.connector(connector_id)
        ev = c.ev
        if ev is not None:
            ev.plugged = False
        c.ev = None
        c.meter.power_w = 0.0
        return ev

    def tap(self, id_tag: str) -> None:
        if len(self._taps) >= MAX_PENDING_TAPS:
            self.taps_dropped += 1
            return
        self._taps.append(id_tag)

    def set_fault(self, connector_id: int, code: str | None) -> None:
        self.advance()
        self.connector(connector_id).fault = code

    def power_cut(self) -> None:
        """The charger loses power (scenario): contactors drop and the pilot goes dead at once, then the runner
        restarts the agent as after a hard reboot it did not ask for."""
        self.advance()
        for c in self.connectors.values():
            if c.relay_closed:
                c.relay_switches += 1
            c.relay_closed = False
            c.offered_amps = 0.0
            c.advance(0.0)
        self.powered = False
        self._request_reboot(True)

    def power_on(self) -> None:
        """Called by the runner when the charger comes back: contactors open, no current offered, reader empty."""
        self.advance()
        for c in self.connectors.values():
            if c.relay_closed:
                c.relay_switches += 1
            c.relay_closed = False
            c.offered_amps = 0.0
            c.locked = False
            c.meter.power_w = 0.0
        self._taps.clear()
        self.reboot_pending = None
        self.powered = True
        self.reboots += 1

    def energy_wh(self, connector_id: int) -> float:
        self.advance()
        return self.connector(connector_id).meter.energy_wh

    # -- Hal --------------------------------------------------------------------------------------------------
    def ticks_ms(self) -> int:
        return int(self.clock.real() * 1000)

    def wall_time(self) -> float:
        return self.clock.wall()

    def pilot_state(self, connector_id: int) -> str:
        self.advance()
        return self.connector(connector_id).pilot_state()

    def set_relay(self, connector_id: int, closed: bool) -> None:
        self.advance()
        c = self.connector(connector_id)
        if not self.powered:
            return
        closed = bool(closed)
        if c.relay_closed != closed:
            c.relay_switches += 1
        c.relay_closed = closed
        c.advance(0.0)

    def set_current_limit(self, connector_id: int, amps: float) -> None:
        self.advance()
        c = self.connector(connector_id)
        if not self.powered:
            return
        c.offered_amps = max(0.0, float(amps))
        c.advance(0.0)

    def meter_wh(self, connector_id: int) -> int:
        self.advance()
        return self.connector(connector_id).meter.register_wh

    def meter_power_w(self, connector_id: int) -> float:
        self.advance()
        return float(self.connector(connector_id).meter.power_w)

    def lock_connector(self, connector_id: int, locked: bool) -> bool:
        self.connector(connector_id).locked = bool(locked)
        return True

    def fault_code(self, connector_id: int) -> str | None:
        fault = self.connector(connector_id).fault
        if fault is None:
            return None
        return "OtherError" if fault == "pilot" else fault

    def read_card(self) -> str | None:
        return self._taps.popleft() if self._taps else None

    def storage_read(self, name: str) -> bytes | None:
        return self.storage.read(name)

    def storage_read_into(self, name: str, offset: int, buf: bytearray | memoryview) -> int:
        return self.storage.read_into(name, offset, buf)

    def storage_write(self, name: str, data: bytes) -> None:
        self.storage.write(name, data)

    def storage_append(self, name: str, data: bytes) -> None:
        self.storage.append(name, data)

    def reboot(self, hard: bool) -> None:
        self._request_reboot(bool(hard))

    def _request_reboot(self, hard: bool) -> None:
        self.advance()
        # a hard request wins over a soft one already pending
        self.reboot_pending = hard or bool(self.reboot_pending)
        if self.on_reboot is not None:
            self.on_reboot(hard)
