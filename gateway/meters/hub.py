"""MeterHub: builds one BusPoller per [[buses]] entry, keeps the latest reading of every meter and answers, by
role, with fresh readings only (a stale meter answers None)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from gateway.config import SiteConfig
from gateway.meters.catalog import MeterModel, load_catalog
from gateway.meters.config import BusSection, MeterSection, check_meters
from gateway.meters.poller import BusPoller, PolledMeter
from gateway.meters.reading import MeterReading
from gateway.meters.scheduler import PollPolicy
from gateway.meters.transport import RtuSerialTransport, TcpTransport, Transport

Listener = Callable[[MeterReading], None]


def policy_of(bus: BusSection) -> PollPolicy:
    return PollPolicy(bus.poll_interval, bus.retries, bus.backoff_min, bus.backoff_max, bus.stale_after)


def transport_of(bus: BusSection) -> Transport:
    if bus.port:
        return RtuSerialTransport(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.response_timeout)
    return TcpTransport(bus.host, bus.tcp_port, bus.response_timeout)


class MeterHub:
    def __init__(
        self,
        buses: tuple[BusSection, ...],
        meters: tuple[MeterSection, ...],
        catalog: dict[str, MeterModel],
        clock: Callable[[], float] = time.monotonic,
        transport_factory: Callable[[BusSection], Transport] = transport_of,
    ) -> None:
        self.clock = clock
        self.meters = {m.id: m for m in meters}
        self._latest: dict[str, MeterReading] = {}
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.pollers: dict[str, BusPoller] = {}
        self._poller_of: dict[str, BusPoller] = {}
        for bus in buses:
            on_bus = [PolledMeter(m.id, m.unit_id, catalog[m.model]) for m in meters if m.bus == bus.id]
            if not on_bus:
                continue
            poller = BusPoller(
                bus.id, transport_factory(bus), on_bus, policy_of(bus), self._on_reading, clock
            )
            self.pollers[bus.id] = poller
            for pm in on_bus:
                self._poller_of[pm.id] = poller

    @classmethod
    def from_config(cls, cfg: SiteConfig, catalog_dir: Path | None = None) -> MeterHub:
        catalog = load_catalog(catalog_dir)
        check_meters(cfg, catalog)
        return cls(cfg.sections.get("buses", ()), cfg.sections.get("meters", ()), catalog)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _on_reading(self, reading: MeterReading) -> None:
        self._latest[reading.meter_id] = reading
        for listener in self._listeners:
            listener(reading)

    async def start(self) -> None:
        for bus_id, poller in self.pollers.items():
            self._tasks.append(asyncio.create_task(poller.run(), name=f"meters-bus-{bus_id}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    # ---- queries (fresh only) -------------------------------------------------------------------------------
    def is_stale(self, meter_id: str) -> bool:
        poller = self._poller_of.get(meter_id)
        return poller is None or poller.is_stale(meter_id)

    def fresh(self, meter_id: str) -> MeterReading | None:
        """The latest reading, or None when the meter is stale: stale values are never handed out as current."""
        if self.is_stale(meter_id):
            return None
        return self._latest.get(meter_id)

    def last(self, meter_id: str) -> tuple[MeterReading | None, bool]:
        """The latest reading whatever its age, and whether it is stale (for display)."""
        return self._latest.get(meter_id), self.is_stale(meter_id)

    def grid_meter_id(self) -> str | None:
        for m in self.meters.values():
            if m.role == "grid":
                return m.id
        return None

    def charger_meter_id(self, charger_id: str, connector_id: int) -> str | None:
        """The meter for this connector, else the meter for the whole charger (connector_id 0)."""
        whole = None
        for m in self.meters.values():
            if m.role == "charger" and m.charger_id == charger_id:
                if m.connector_id == connector_id:
                    return m.id
                if m.connector_id == 0:
                    whole = m.id
        return whole

    def energy_import_wh(self, meter_id: str) -> float | None:
        r = self.fresh(meter_id)
        return None if r is None else r.values.get("energy_import")

    async def op_status(self, req: dict[str, object]) -> object:
        """Control-socket op "meters.status": line counters and per-meter state, plus the latest readings."""
        now = self.clock()
        readings = {}
        for mid in self.meters:
            r, stale = self.last(mid)
            readings[mid] = (
                None if r is None else {"values": dict(r.values), "age_s": r.age(now), "stale": stale}
            )
        return {"buses": self.status(), "readings": readings}

    def status(self) -> dict[str, object]:
        now = self.clock()
        out: dict[str, object] = {}
        for bus_id, p in self.pollers.items():
            out[bus_id] = {
                "line": p.stats.as_dict(),
                "meters": {m: p.scheduler.status(m, now) for m in p.meters},
            }
        return out
