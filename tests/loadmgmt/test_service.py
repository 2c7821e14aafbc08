"""LoadManager glue with a fake ChargerCommands (unit test of the async wiring, not of OCPP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import ChargerSection
from gateway.errors import ChargerNotConnected
from gateway.loadmgmt.config import LoadSection
from gateway.loadmgmt.service import LoadManager

Phases = tuple[float, float, float]


class FakeCommands:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.offline: set[str] = set()

    def connected(self) -> list[str]:
        return [c.id for c in CHARGERS if c.id not in self.offline]

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        if charger_id in self.offline:
            raise ChargerNotConnected(charger_id)
        self.calls.append((charger_id, action, payload))
        return {"status": "Accepted"}


class FakeMeters:
    def __init__(self) -> None:
        self.grid_now: Phases | None = (0.0, 0.0, 0.0)
        self.ev: dict[tuple[str, int], float] = {}

    def grid(self) -> tuple[Phases, float] | None:
        self.samples += 1  # every round sees a new grid sample
        return None if self.grid_now is None else (self.grid_now, float(self.samples))

    samples = 0

    def session_current(self, charger_id: str, connector_id: int, at: float | None = None) -> Phases | None:
        amps = self.ev.get((charger_id, connector_id))  # EVs here draw the same on all three phases
        return None if amps is None else (amps, amps, amps)

    def has_meter(self, charger_id: str, connector_id: int) -> bool:
        return (charger_id, connector_id) in self.metered

    def meter_id(self, charger_id: str, connector_id: int) -> str | None:
        return f"m-{charger_id}-{connector_id}" if (charger_id, connector_id) in self.ev else None

    metered: set[tuple[str, int]] = set()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


CHARGERS = [ChargerSection(id=f"CP{i}", password="x" * 16) for i in (1, 2)]


def limits(cmds: FakeCommands) -> list[tuple[str, float]]:
    out = []
    for cid, _action, p in cmds.calls:
        cs = p["csChargingProfiles"]
        out.append(
            (
                f"{cid}:{cs['chargingProfilePurpose']}",
                cs["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"],
            )
        )
    return out


def make(cfg: LoadSection | None = None) -> tuple[LoadManager, FakeCommands, FakeMeters, Clock]:
    cmds, meters, clock = FakeCommands(), FakeMeters(), Clock()
    lm = LoadManager(cfg or LoadSection(enabled=True, site_limit_a=32.0), CHARGERS, cmds, meters, clock=clock)
    return lm, cmds, meters, clock


def test_boot_sends_safe_tx_default_profile() -> None:
    async def main() -> None:
        lm, cmds, _, _ = make()
        await lm.on_charger_booted("CP1")
        assert limits(cmds) == [("CP1:TxDefaultProfile", 6.0)]
        assert cmds.calls[0][2]["connectorId"] == 0
        await lm.stop()

    asyncio.run(main())


def test_sessions_share_and_follow_building_load() -> None:
    async def main() -> None:
        lm, cmds, meters, clock = make()
        await lm.on_transaction_started("CP1", 1, 11)
        await lm.on_transaction_started("CP2", 1, 12)
        meters.grid_now = (5.0, 5.0, 5.0)
        await lm.step()
        assert sorted(limits(cmds)) == [("CP1:TxProfile", 13.0), ("CP2:TxProfile", 13.0)]
        # EVs draw their limits, building load steps up by 10 A -> both reduced at once
        meters.ev = {("CP1", 1): 13.0, ("CP2", 1): 13.0}
        meters.grid_now = (41.0, 41.0, 41.0)
        cmds.calls.clear()
        clock.t += 1
        await lm.step()
        assert sorted(limits(cmds)) == [("CP1:TxProfile", 8.0), ("CP2:TxProfile", 8.0)]
        # stop one session: the other gets the room after the rate limit
        await lm.on_transaction_stopped("CP2", 1, 12)
        meters.ev = {("CP1", 1): 8.0}
        meters.grid_now = (23.0, 23.0, 23.0)
        cmds.calls.clear()
        clock.t += 11
        await lm.step()
        assert limits(cmds) == [("CP1:TxProfile", 16.0)]
        assert lm.status()["sessions"]["CP1/1"]["limit_a"] == 16.0

    asyncio.run(main())


def test_grid_meter_stale_falls_back_and_limit_change_applies() -> None:
    async def main() -> None:
        lm, cmds, meters, clock = make()
        await lm.on_transaction_started("CP1", 1, 11)
        meters.grid_now = None
        alloc = await lm.step()
        assert alloc.mode == "fallback"
        assert limits(cmds) == [("CP1:TxProfile", 15.0)]  # 32 - 16 reserve - 1 margin
        cmds.calls.clear()
        lm.set_site_limit(20.0)
        clock.t += 1
        await lm.step()
        assert limits(cmds) == [("CP1:TxProfile", 0.0)]  # 20 - 16 - 1 < 6 A: queued
        for bad in (-5, "16", float("nan"), True):
            with pytest.raises(ValueError):
                lm.set_site_limit(bad)  # type: ignore[arg-type]

    asyncio.run(main())


def test_offline_charger_is_retried_next_round_and_lease_is_renewed() -> None:
    async def main() -> None:
        lm, cmds, meters, clock = make(LoadSection(enabled=True, profile_lease_s=60))
        await lm.on_transaction_started("CP1", 1, 11)
        cmds.offline.add("CP1")
        await lm.step()
        assert cmds.calls == [] and lm.allocator.sent_limit(("CP1", 1)) is None
        cmds.offline.clear()
        clock.t += 1
        await lm.step()
        assert limits(cmds) == [("CP1:TxProfile", 31.0)]
        meters.ev = {("CP1", 1): 31.0}
        meters.grid_now = (31.0, 31.0, 31.0)
        cmds.calls.clear()
        clock.t += 5
        await lm.step()
        assert cmds.calls == []  # nothing changed, lease still fresh
        clock.t += 16
        await lm.step()
        assert limits(cmds) == [("CP1:TxProfile", 31.0)]  # renewed after a third of the lease

    asyncio.run(main())


def test_run_loop_reacts_to_meter_readings() -> None:
    async def main() -> None:
        lm, cmds, _meters, _clock = make(LoadSection(enabled=True, control_interval_s=60))
        await lm.start()
        await lm.on_transaction_started("CP1", 1, 11)
        for _ in range(100):
            if cmds.calls:
                break
            await asyncio.sleep(0.01)
        assert limits(cmds) == [("CP1:TxProfile", 31.0)]
        await lm.stop()

    asyncio.run(main())


def test_charger_ignoring_its_limit_is_flagged() -> None:
    async def main() -> None:
        flagged = []
        cmds, meters, clock = FakeCommands(), FakeMeters(), Clock()
        cfg = LoadSection(enabled=True, overdraw_grace_s=15.0, overdraw_tolerance_a=2.0)
        lm = LoadManager(cfg, CHARGERS, cmds, meters, clock=clock, on_overdraw=flagged.append)
        await lm.on_transaction_started("CP1", 1, 11)
        await lm.on_transaction_started("CP2", 1, 12)
        meters.grid_now = (20.0, 20.0, 20.0)
        await lm.step()
        sent = lm.allocator.sent_limit(("CP1", 1))
        assert sent is not None
        for _ in range(20):
            over = (lm.allocator.sent_limit(("CP1", 1)) or 0) + 10
            meters.ev = {("CP1", 1): over, ("CP2", 1): 0.0}  # CP1 ignores its limit
            meters.grid_now = (5 + over, 5 + over, 5 + over)
            clock.t += 1
            await lm.step()
        assert [(o.key, o.transaction_id) for o in flagged] == [(("CP1", 1), 11)]
        assert lm.status()["overdraws"][0]["charger_id"] == "CP1"

    asyncio.run(main())


def test_control_op_set_site_limit() -> None:
    from gateway.errors import CommandError

    async def main() -> None:
        lm, _cmds, _meters, _clock = make()
        assert await lm.op_set_site_limit({"amps": 25}) == {"site_limit_a": 25.0}
        with pytest.raises(CommandError):
            await lm.op_set_site_limit({"amps": "lots"})
        assert lm.allocator.params.site_limit == 25.0
        assert (await lm.op_status({}))["site_limit_a"] == 25.0

    asyncio.run(main())
