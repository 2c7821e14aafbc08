"""Shared set-up of the agent-on-flash tests: the simulator's DirStorage counting what is written and appended,
and a charger running an offline transaction under a fake clock."""

from __future__ import annotations

from pathlib import Path

from agent.core import AgentConfig, ChargePointCore
from firmware_sim.clock import ManualTime, SimClock
from firmware_sim.ev import Ev, EvSpec
from firmware_sim.hal import SimHal
from firmware_sim.storage import DirStorage

SPEC = EvSpec("test", capacity_kwh=60.0, max_ac_power_w=11000.0, phases=3)
WALL0 = 1_795_000_000.0


class NamesWritten(DirStorage):
    """DirStorage that records the blob names it rewrote and appended to, in order."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.written: list[str] = []
        self.appended: list[str] = []

    def write(self, name: str, data: bytes) -> None:
        self.written.append(name)
        super().write(name, data)

    def append(self, name: str, data: bytes) -> None:
        self.appended.append(name)
        super().append(name, data)


def sim_hal(flash: Path) -> tuple[SimHal, ManualTime]:
    t = ManualTime()
    clock = SimClock(1.0, monotonic=t, wall=lambda: WALL0 + t.now)
    return SimHal("CP1", 1, flash, clock), t


def offline_session(flash: Path) -> tuple[ChargePointCore, SimHal, ManualTime]:
    """A charger that starts an offline transaction (unknown id allowed) and samples every 10 s."""
    hal, t = sim_hal(flash)
    core = ChargePointCore(AgentConfig("CP1"), hal)
    core.cfg.change("AllowOfflineTxForUnknownId", "true")
    core.cfg.change("MeterValueSampleInterval", "10")
    hal.plug_in(1, Ev(SPEC, soc=0.2))
    hal.tap("OFFLINE-1")
    for _ in range(3):
        core.tick()
        t.advance(1)
    assert core.status(1) == "Charging" and core.transaction_id(1) is not None
    return core, hal, t


def counted_offline_session(flash: Path, seconds: int = 60) -> tuple[ChargePointCore, NamesWritten]:
    """offline_session, then `seconds` of charging with the flash counting what is written and appended."""
    core, hal, t = offline_session(flash)
    counting = NamesWritten(flash)
    hal.storage = counting
    for _ in range(seconds):
        t.advance(1)
        core.tick()
    return core, counting
