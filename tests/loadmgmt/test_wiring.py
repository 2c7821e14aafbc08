"""[load] phases / phase_rotation: what the installer writes, what it is checked against, and how the LoadManager
uses it (per-phase meter readings onto site phases, numberPhases, reported currents)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gateway.loadmgmt.config  # noqa: F401  registers [load]
from gateway.config import ChargerSection, parse_config
from gateway.errors import ConfigError
from gateway.loadmgmt.config import LoadSection, check_load
from gateway.loadmgmt.service import LoadManager

Phases = tuple[float, float, float]
PASSWORD = "x" * 16


def config(load: dict[str, Any], chargers: list[dict[str, Any]] | None = None) -> Any:
    chargers = chargers or [{"id": f"CP{i}", "password": PASSWORD} for i in (1, 2, 3)]
    return parse_config(Path("/etc/chargegate/site.toml"), {"chargers": chargers, "load": load})


@pytest.mark.parametrize(
    ("load", "says"),
    [
        ({"phases": {"CP3": 2}}, ["phases.CP3 = 2", "expected 1 (single-phase) or 3"]),
        ({"phases": {"CP3": 1}}, ["phases.CP3 = 1", 'phase_rotation = { CP3 = "L1" }']),
        (
            {"phases": {"CP3": 1}, "phase_rotation": {"CP3": "RST"}},
            ["phase_rotation.CP3", "single-phase", "L2"],
        ),
        (
            {"phases": {"CP3": 3}, "phase_rotation": {"CP3": "L2"}},
            ["phase_rotation.CP3", "phases = { CP3 = 1 }"],
        ),
        ({"phase_rotation": {"CP3": "RTT"}}, ["phase_rotation.CP3 = 'RTT'", "L1", "RST", "STR", "TRS"]),
        ({"phase_rotation": {"CP3": 2}}, ["phase_rotation.CP3 = 2", "expected a string"]),
        ({"phases": {"CP3/x": 1}}, ["CP3/x", "charger/connector"]),
        ({"rotation_interval_s": 10.0}, ["rotation_interval_s", ">= 60"]),
        ({"idle_current_a": 6.0}, ["idle_current_a must be below min_current_a"]),
        ({"meter_phase_order": {"CP3": "grid"}}, ["meter_phase_order.CP3 = 'grid'", '"charger"', '"site"']),
    ],
)
def test_wiring_mistakes_are_named_with_their_fix(load: dict[str, Any], says: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        config(load)
    assert e.value.file.endswith("site.toml") and e.value.key == "load"
    for part in says:
        assert part in e.value.problem, e.value.problem


def test_cross_checks_with_the_chargers() -> None:
    cases: list[tuple[dict[str, Any], list[dict[str, Any]] | None, str, str]] = [
        # three-phase by default ([[chargers]] phases = 3): one site phase is not a rotation for it
        ({"phase_rotation": {"CP3": "L2"}}, None, "load", "also set phases = { CP3 = 1 }"),
        (
            {"phases": {"CP03": 1}, "phase_rotation": {"CP03": "L1"}},
            None,
            "load.phases.CP03",
            "CP1, CP2, CP3",
        ),
        ({"phase_rotation": {"CP1/2": "STR"}}, None, "load.phase_rotation.CP1/2", "connectors 1..1"),
        ({"meter_phase_order": {"CP9": "site"}}, None, "load.meter_phase_order.CP9", "no [[chargers]] entry"),
        (
            {},
            [{"id": "CP1", "password": PASSWORD, "phases": 1}],
            "load",
            "[[chargers]] CP1 has phases = 1: a single-phase charger needs the site phase it is connected to",
        ),
        (
            {"phases": {"CP1": 3}},
            [{"id": "CP1", "password": PASSWORD, "phases": 1}],
            "load.phases.CP1",
            "make them agree",
        ),
        (
            {"phases": {"CP1": 1}, "phase_rotation": {"CP1/1": "L2"}},
            [{"id": "CP1", "password": PASSWORD, "connectors": 2}],
            "load",
            "CP1/2",
        ),
    ]
    for load, chargers, key, says in cases:
        # the section alone is fine, the [[chargers]] it names are not: loading the file says so (check_load runs
        # as a registered cross-section check) ...
        with pytest.raises(ConfigError) as e:
            config(load, chargers)
        assert (e.value.key, e.value.file) == (key, str(Path("/etc/chargegate/site.toml").resolve()))
        assert says in e.value.problem, e.value.problem
        # ... and the LoadManager refuses it too, whoever builds it
        with pytest.raises(ConfigError):
            listed = chargers or [{"id": f"CP{i}", "password": PASSWORD} for i in (1, 2, 3)]
            LoadManager(LoadSection(**load), [ChargerSection(**c) for c in listed], Cmds(), None)


def test_wiring_resolution() -> None:
    chargers = [
        {"id": "CP1", "password": PASSWORD},
        {"id": "CP2", "password": PASSWORD, "phases": 1},
        {"id": "CP3", "password": PASSWORD, "connectors": 2},
    ]
    load = {
        "phases": {"CP3/2": 1},
        "phase_rotation": {"CP1": "str", "CP2": "L3", "CP3": "TRS", "CP3/2": "L2"},
    }
    cfg = config(load, chargers)
    check_load(cfg)
    sec: LoadSection = cfg.sections["load"]
    by = {c.id: c for c in cfg.chargers}
    assert sec.wiring(by["CP1"], "CP1", 1) == (1, 2, 0)  # charger L1 on site L2, L2 on L3, L3 on L1
    assert sec.wiring(by["CP2"], "CP2", 1) == (2,)
    assert sec.wiring(by["CP3"], "CP3", 1) == (2, 0, 1)
    assert sec.wiring(by["CP3"], "CP3", 2) == (1,)
    assert LoadSection().wiring(None, "X", 1) == (0, 1, 2)


# ---- LoadManager ------------------------------------------------------------------------------------------------
class Cmds:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def connected(self) -> list[str]:
        return ["CP1", "CP2", "CP3"]

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        self.calls.append((charger_id, payload))
        return {"status": "Accepted"}

    def period(self, cid: str) -> dict[str, Any]:
        p = [p for c, p in self.calls if c == cid][-1]
        period: dict[str, Any] = p["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
        return period


class Meters:
    def __init__(self) -> None:
        self.grid_now: Phases = (5.0, 5.0, 5.0)
        self.charger: dict[str, Phases] = {}
        self.n = 0

    def grid(self) -> tuple[Phases, float] | None:
        self.n += 1
        return self.grid_now, float(self.n)

    def session_current(self, charger_id: str, connector_id: int, at: float | None = None) -> Phases | None:
        return self.charger.get(charger_id)

    def has_meter(self, charger_id: str, connector_id: int) -> bool:
        return charger_id in self.charger

    def meter_id(self, charger_id: str, connector_id: int) -> str | None:
        return f"m{charger_id}" if charger_id in self.charger else None


def manager(
    meters: Meters | None,
    meter_order: dict[str, str] | None = None,
    clock: Callable[[], float] = lambda: 100.0,
) -> tuple[LoadManager, Cmds]:
    cfg = LoadSection(
        enabled=True,
        site_limit_a=32.0,
        building_load_hold_s=0.0,
        phases={"CP2": 1},
        phase_rotation={"CP2": "L2", "CP3": "STR"},
        meter_phase_order=meter_order or {},
    )
    chargers = [ChargerSection(id=c, password=PASSWORD) for c in ("CP1", "CP2", "CP3")]
    cmds = Cmds()
    return LoadManager(cfg, chargers, cmds, meters, clock=clock), cmds


def test_single_phase_charger_gets_its_phase_and_number_phases_1() -> None:
    async def main() -> None:
        meters = Meters()
        lm, cmds = manager(meters, {"CP3": "charger"})
        await lm.on_charger_booted("CP2")
        assert cmds.period("CP2") == {"startPeriod": 0, "limit": 6.0, "numberPhases": 1}
        await lm.on_charger_booted("CP1")
        assert "numberPhases" not in cmds.period("CP1")
        for i, cid in enumerate(("CP1", "CP2", "CP3")):
            await lm.on_transaction_started(cid, 1, 10 + i)
        # CP2 (single-phase, site L2) draws 10 A: its meter reports it on its own L1
        # CP3 (STR) has a single-phase EV drawing 8 A on its L1 = site L2
        meters.charger = {"CP1": (0.0, 0.0, 0.0), "CP2": (10.0, 0.0, 0.0), "CP3": (8.0, 0.0, 0.0)}
        meters.grid_now = (5.0, 5.0 + 10.0 + 8.0, 5.0)
        alloc = await lm.step()
        assert alloc.other_phases == (5.0, 5.0, 5.0)
        # L2 (26 A) is shared by all three; L1 and L3 only by CP1 and CP3
        assert alloc.targets == {("CP1", 1): 8.7, ("CP2", 1): 8.7, ("CP3", 1): 8.6}
        assert cmds.period("CP2") == {"startPeriod": 0, "limit": 8.7, "numberPhases": 1}
        assert "numberPhases" not in cmds.period("CP3")
        st = lm.status()
        assert st["sessions"]["CP2/1"]["phases"] == "L2"
        assert st["sessions"]["CP3/1"]["phases"] == "L2,L3,L1"
        assert st["available_phases_a"] == [26.0, 26.0, 26.0]

    asyncio.run(main())


def test_reported_max_phase_current_of_a_three_phase_charger_counts_on_its_l1_only() -> None:
    """MeterValues give the highest phase's current: on a three-phase charger it may be on any one of them, so it is
    counted where a single-phase EV draws (the charger's L1), never subtracted from phases it may not be on."""

    async def main() -> None:
        meters = Meters()  # grid meter only: the chargers are unmetered
        lm, _ = manager(meters)
        await lm.on_transaction_started("CP3", 1, 1)  # STR: its L1 is site L2
        lm.on_charger_current("CP3", 1, 12.0)
        meters.grid_now = (5.0, 17.0, 5.0)
        alloc = await lm.step()
        assert alloc.other_phases == (5.0, 5.0, 5.0)
        lm.on_charger_current("CP3", 1, (12.0, 12.0, 12.0))  # per phase: counted on each
        meters.grid_now = (17.0, 17.0, 17.0)
        alloc = await lm.step()
        assert alloc.other_phases == (5.0, 5.0, 5.0)

    asyncio.run(main())


def test_rotated_charger_meter_of_unknown_order_is_credited_only_where_both_orders_agree(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CP3 is wired STR. Its meter shows 8 A on its L1: site L2 if the meter reads the charger's phases, site L1 if it
    sits before the rotation. Without meter_phase_order neither can be proven, so the 8 A stay in the building-load
    estimate (safe); a symmetric draw is the same in both orders and is credited in full."""
    caplog.set_level(logging.INFO, logger="gateway.loadmgmt")

    async def main() -> None:
        meters = Meters()
        meters.charger = {"CP3": (8.0, 0.0, 0.0)}
        ticks = itertools.count(100)
        lm, _ = manager(
            meters, clock=lambda: float(next(ticks))
        )  # time moves on: the estimate's hold expires
        assert any(
            "CP3/1 is wired L2,L3,L1 and its meter's phase order" in r.getMessage() for r in caplog.records
        )
        await lm.on_transaction_started("CP3", 1, 1)
        meters.grid_now = (5.0, 13.0, 5.0)
        assert (await lm.step()).other_phases == (5.0, 13.0, 5.0)
        meters.charger = {"CP3": (8.0, 8.0, 8.0)}
        meters.grid_now = (13.0, 13.0, 13.0)
        for _ in range(2):  # the median of three grid samples
            await lm.step()
        assert (await lm.step()).other_phases == (5.0, 5.0, 5.0)
        # "site": the meter's L1 is the site's L1
        site_order, _ = manager(meters, {"CP3": "site"})
        await site_order.on_transaction_started("CP3", 1, 1)
        meters.charger = {"CP3": (8.0, 0.0, 0.0)}
        meters.grid_now = (13.0, 5.0, 5.0)
        assert (await site_order.step()).other_phases == (5.0, 5.0, 5.0)

    asyncio.run(main())
