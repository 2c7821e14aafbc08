"""Config sections of the metering subsystem: [[buses]] and [[meters]]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config import SiteConfig, register_section
from gateway.errors import ConfigError
from gateway.meters.catalog import MeterModel


@dataclass(frozen=True)
class BusSection:
    id: str
    # Modbus RTU: serial device (USB RS-485 adapter), e.g. /dev/ttyUSB0. Modbus TCP: set `host` instead.
    port: str = ""
    host: str = ""
    tcp_port: int = 502
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    # How long a meter may take to start its answer once our request is on the wire (s). Eastron/ABB/CG answer in
    # well under 100 ms; 0.3 s leaves room for slow USB adapters without making a dead meter expensive.
    response_timeout: float = 0.3
    # Seconds between polls of each healthy meter.
    poll_interval: float = 1.0
    # Extra attempts after a failed request while the meter is healthy (each costs one response_timeout at most).
    retries: int = 1
    # A meter that failed a whole poll is left alone for backoff_min s, doubling up to backoff_max.
    backoff_min: float = 2.0
    backoff_max: float = 30.0
    # A meter without a good reading for this long is stale (its values are not used for load management).
    stale_after: float = 5.0

    def validate(self) -> str | None:
        if bool(self.port) == bool(self.host):
            return "set exactly one of port (Modbus RTU) or host (Modbus TCP)"
        if self.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
            return "baudrate must be a standard rate 1200..115200"
        if self.stopbits not in (1, 2):
            return "stopbits must be 1 or 2"
        if not 0.01 <= self.response_timeout <= 5.0:
            return "response_timeout must be 0.01..5 s"
        if self.poll_interval <= 0 or self.backoff_min <= 0 or self.backoff_max < self.backoff_min:
            return "need poll_interval > 0 and 0 < backoff_min <= backoff_max"
        if not 0 <= self.retries <= 5:
            return "retries must be 0..5"
        if self.stale_after < self.poll_interval:
            return "stale_after must be >= poll_interval"
        return None


@dataclass(frozen=True)
class MeterSection:
    id: str
    bus: str
    unit_id: int
    model: str
    # "grid": the site's connection point; "charger": measures one charger (connector_id 0) or one connector.
    role: Literal["grid", "charger"] = "charger"
    charger_id: str = ""
    connector_id: int = 0
    # Billing check: charger-reported and metered session energy may differ by max(tolerance_wh, tolerance_pct %).
    energy_tolerance_wh: float = 50.0
    energy_tolerance_pct: float = 1.0

    def validate(self) -> str | None:
        if not 1 <= self.unit_id <= 247:
            return "unit_id must be 1..247"
        if self.role == "charger" and not self.charger_id:
            return "a charger meter needs charger_id"
        if self.role == "grid" and self.charger_id:
            return "a grid meter has no charger_id"
        if self.connector_id < 0 or self.energy_tolerance_wh < 0 or self.energy_tolerance_pct < 0:
            return "connector_id and tolerances must be >= 0"
        return None


register_section("buses", BusSection, array=True)
register_section("meters", MeterSection, array=True)


def check_meters(cfg: SiteConfig, catalog: dict[str, MeterModel]) -> None:
    """Cross-section checks the generic validator cannot do (call once at start)."""
    file = str(cfg.path)
    buses: tuple[BusSection, ...] = cfg.sections.get("buses", ())
    meters: tuple[MeterSection, ...] = cfg.sections.get("meters", ())
    bus_ids = [b.id for b in buses]
    if len(set(bus_ids)) != len(bus_ids):
        raise ConfigError(file, "buses", "duplicate bus id")
    seen: set[str] = set()
    addrs: set[tuple[str, int]] = set()
    grid = 0
    for i, m in enumerate(meters):
        key = f"meters[{i}]"
        if m.id in seen:
            raise ConfigError(file, f"{key}.id", f"duplicate meter id {m.id!r}")
        seen.add(m.id)
        if m.bus not in bus_ids:
            raise ConfigError(file, f"{key}.bus", f"no [[buses]] with id {m.bus!r}")
        if (m.bus, m.unit_id) in addrs:
            raise ConfigError(file, f"{key}.unit_id", f"unit id {m.unit_id} used twice on bus {m.bus!r}")
        addrs.add((m.bus, m.unit_id))
        if m.model not in catalog:
            raise ConfigError(
                file, f"{key}.model", f"unknown meter model (catalog: {', '.join(sorted(catalog))})"
            )
        if m.role == "grid":
            grid += 1
        elif cfg.charger(m.charger_id) is None:
            raise ConfigError(file, f"{key}.charger_id", f"no [[chargers]] with id {m.charger_id!r}")
    if grid > 1:
        raise ConfigError(file, "meters", "at most one meter may have role = 'grid'")
