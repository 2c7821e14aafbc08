"""Chargers that cannot be given a lower limit (offline, or refusing it), with the real LoadManager, a manual clock and
a fake ChargerCommands that models what each charger applies: its TxProfile while the lease (Absolute schedule:
startSchedule + duration, as sent) runs, then its TxDefaultProfile. EVs draw what they are offered, at once. The site
total checked is this ground truth, not what the gateway believes."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import pytest

from gateway.config import ChargerSection
from gateway.errors import ChargerNotConnected, CommandError
from gateway.loadmgmt.config import LoadSection
from gateway.loadmgmt.service import LoadManager

Phases = tuple[float, float, float]

EPOCH = 1_700_000_000.0  # wall clock = EPOCH + manual monotonic clock
EV_MAX = 32.0  # what every EV (and charger) takes without a limit
UNREACHABLE = "unreachable; its limit stays in force until its lease runs out"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Site:
    """Chargers obeying SetChargingProfile (ChargerCommands) and the site's meters (MeterSource)."""

    def __init__(self, ids: list[str], clock: Clock, building: float) -> None:
        self.ids = ids
        self.clock = clock
        self.building = building
        self.default: dict[str, float] = {}  # TxDefaultProfile limit per charger
        self.tx: dict[str, tuple[float, float, float]] = {}  # charger -> (limit, start wall, duration)
        self.offline: set[str] = set()
        self.reject: set[str] = set()  # answer Rejected to TxProfiles
        self.lose_answer: set[str] = set()  # apply TxProfiles, but the answer never arrives
        self.charging: set[str] = set()  # chargers with an EV in session (the others draw nothing)
        self.attempts: list[tuple[str, str, float]] = []  # (charger, purpose, limit), every call made

    def wall(self) -> float:
        return EPOCH + self.clock.t

    # -- ChargerCommands
    def connected(self) -> list[str]:
        return [c for c in self.ids if c not in self.offline]

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        assert action == "SetChargingProfile"
        cs = payload["csChargingProfiles"]
        sched = cs["chargingSchedule"]
        limit = float(sched["chargingSchedulePeriod"][0]["limit"])
        self.attempts.append((charger_id, cs["chargingProfilePurpose"], limit))
        if charger_id in self.offline:
            raise ChargerNotConnected(f"charger {charger_id!r} is not connected")
        if cs["chargingProfilePurpose"] == "TxDefaultProfile":
            self.default[charger_id] = limit
            return {"status": "Accepted"}
        if charger_id in self.reject:
            return {"status": "Rejected"}
        start = datetime.fromisoformat(sched["startSchedule"].replace("Z", "+00:00")).timestamp()
        self.tx[charger_id] = (limit, start, float(sched["duration"]))
        if charger_id in self.lose_answer:
            raise CommandError(f"{charger_id} did not answer SetChargingProfile within 10 s")
        return {"status": "Accepted"}

    # -- ground truth
    def offered(self, cid: str) -> float:
        tx = self.tx.get(cid)
        if tx is not None and tx[1] <= self.wall() < tx[1] + tx[2]:
            return tx[0]
        return self.default.get(cid, EV_MAX)

    def draw(self, cid: str) -> float:
        return min(EV_MAX, self.offered(cid)) if cid in self.charging else 0.0

    def total(self) -> float:
        return self.building + sum(self.draw(c) for c in self.ids)

    # -- MeterSource: a grid meter and one meter per charger, all fresh
    def grid(self) -> tuple[Phases, float] | None:
        g = self.total()
        return (g, g, g), self.clock.t

    def session_current(self, charger_id: str, connector_id: int, at: float | None = None) -> Phases | None:
        d = self.draw(charger_id)
        return (d, d, d)

    def has_meter(self, charger_id: str, connector_id: int) -> bool:
        return True

    def meter_id(self, charger_id: str, connector_id: int) -> str | None:
        return f"m{charger_id}"


def make(
    ids: list[str], cfg: LoadSection, building: float, t0: float = 1000.3
) -> tuple[LoadManager, Site, Clock]:
    clock = Clock(t0)  # not on a whole second: startSchedule is truncated, so leases end up to 1 s early
    site = Site(ids, clock, building)
    chargers = [ChargerSection(id=c, password="x" * 16) for c in ids]
    lm = LoadManager(cfg, chargers, site, site, clock=clock, wall=site.wall)
    return lm, site, clock


async def start_session(lm: LoadManager, site: Site, cid: str, transaction_id: int) -> None:
    site.charging.add(cid)
    await lm.on_transaction_started(cid, 1, transaction_id)


def to_charger(site: Site, cid: str, since: int) -> list[tuple[str, float]]:
    return [(p, lim) for c, p, lim in site.attempts[since:] if c == cid]


def test_offline_charger_keeps_its_limit_and_the_site_stays_within_its_limit() -> None:
    """10.5 A each on a 48 A site; CP1 goes offline (its 120 s lease keeps it at 10.5 A) and the building load steps
    from 5 to 15 A. The others must make room for CP1's 10.5 A until its lease has run out, then for its 6 A."""
    ids = ["CP1", "CP2", "CP3", "CP4"]
    limit = 48.0
    cfg = LoadSection(
        enabled=True,
        site_limit_a=limit,
        safe_current_a=6.0,
        building_reserve_a=16.0,
        min_change_interval_s=2.0,
        profile_lease_s=120,
        building_load_hold_s=1.0,
    )
    lm, site, clock = make(ids, cfg, building=5.0)

    async def main() -> None:
        async def rounds(n: int) -> None:
            for _ in range(n):
                await lm.step()
                offered = {c: site.offered(c) for c in ids}
                assert site.total() <= limit, (
                    f"t={clock.t}: site {site.total()} A > {limit} A, offered {offered}"
                )
                clock.t += 0.5

        for cid in ids:
            await lm.on_charger_booted(cid)
        for i, cid in enumerate(ids):
            await start_session(lm, site, cid, i + 1)
        await rounds(20)
        assert {c: site.offered(c) for c in ids} == {c: 10.5 for c in ids}  # (48 - 1 - 5) / 4

        site.offline.add("CP1")  # its network drops: its last TxProfile stays in force until the lease ends
        site.building = 15.0  # and the building load steps up at the same moment
        t_off, n_off = clock.t, len(site.attempts)
        await rounds(1)
        # CP1 still applies 10.5 A: the others share 48 - 1 margin - 15 - 10.5 = 21.5 A (0.1 A steps, first in line
        # first)
        assert site.offered("CP1") == 10.5
        assert [site.offered(c) for c in ids[1:]] == [7.2, 7.2, 7.1]
        assert lm.last is not None and lm.last.held == {("CP1", 1): 10.5}
        await rounds(int(130 / 0.5))  # past the end of CP1's lease
        assert site.offered("CP1") == 6.0  # its TxDefaultProfile
        # ... and the others got the room it left: 48 - 1 - 15 - 6 = 26 A
        assert sum(site.offered(c) for c in ids[1:]) == pytest.approx(26.0)
        assert to_charger(site, "CP1", n_off) == []  # nothing was tried on the offline charger
        assert clock.t - t_off > cfg.profile_lease_s

        site.offline.discard("CP1")  # reconnects (and boots)
        await lm.on_charger_booted("CP1")
        await rounds(20)
        assert {c: site.offered(c) for c in ids} == {c: 8.0 for c in ids}  # (48 - 1 - 15) / 4

    asyncio.run(main())


def test_no_increase_in_a_round_where_a_decrease_failed() -> None:
    """CP1 has the whole site (26 A) when CP2's session starts; CP1 rejects its decrease to 13 A. CP2 must not be
    raised to 13 A in that round (site 5 + 26 + 13 = 44 > 32 A), nor later while CP1's 26 A are still in force."""
    ids = ["CP1", "CP2"]
    limit = 32.0
    cfg = LoadSection(enabled=True, site_limit_a=limit, safe_current_a=6.0, min_change_interval_s=10.0)
    lm, site, clock = make(ids, cfg, building=5.0)

    async def main() -> None:
        for cid in ids:
            await lm.on_charger_booted(cid)
        await start_session(lm, site, "CP1", 1)
        for _ in range(3):
            await lm.step()
            clock.t += 1
        assert site.offered("CP1") == 26.0 and site.total() == 31.0

        site.reject.add("CP1")
        await start_session(lm, site, "CP2", 2)  # its EV starts on the charger's TxDefaultProfile (6 A)
        n = len(site.attempts)
        await lm.step()
        assert to_charger(site, "CP1", n) == [("TxProfile", 13.0)]  # the decrease was tried ... and failed
        assert to_charger(site, "CP2", n) == []  # so no increase went out
        assert site.offered("CP1") == 26.0
        # CP1 keeps refusing: it is asked again, and CP2 is sized around CP1's 26 A (queued at 0 A)
        for _ in range(5):
            clock.t += 1
            n = len(site.attempts)
            await lm.step()
            assert ("TxProfile", 13.0) in to_charger(site, "CP1", n)
            assert all(lim <= limit - 1 - 5 - 26 for _p, lim in to_charger(site, "CP2", n))
            assert site.total() <= limit
        assert site.offered("CP2") == 0.0

        site.reject.clear()  # CP1 accepts its decrease: CP2 gets its share after the rate limit
        for _ in range(15):
            clock.t += 1
            await lm.step()
            assert site.total() <= limit
        assert (site.offered("CP1"), site.offered("CP2")) == (13.0, 13.0)

    asyncio.run(main())


def test_unreachable_charger_is_logged_once_per_disconnect_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = ["CP1", "CP2"]
    lm, site, clock = make(ids, LoadSection(enabled=True, profile_lease_s=30), building=5.0)
    caplog.set_level(logging.DEBUG, logger="gateway.loadmgmt")

    def unreachable_logs() -> list[logging.LogRecord]:
        return [r for r in caplog.records if UNREACHABLE in r.getMessage()]

    async def main() -> None:
        await start_session(lm, site, "CP1", 1)
        await start_session(lm, site, "CP2", 2)
        await lm.step()
        site.offline.add("CP1")
        sends, n = lm.sends, len(site.attempts)
        for _ in range(40):  # 20 s: changes and lease renewals (every 10 s) would be due
            clock.t += 0.5
            await lm.step()
        assert to_charger(site, "CP1", n) == []
        assert lm.sends - sends == len(to_charger(site, "CP2", n))  # only sends that were made count
        assert [(r.levelno, r.getMessage()) for r in unreachable_logs()] == [
            (logging.INFO, f"load: charger CP1 {UNREACHABLE}")
        ]
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

        site.offline.discard("CP1")
        await lm.on_charger_booted("CP1")
        clock.t += 0.5
        await lm.step()
        assert any(c == "CP1" and p == "TxProfile" for c, p, _ in site.attempts)
        assert any("charger CP1 reachable again" in r.getMessage() for r in caplog.records)

        site.offline.add("CP1")  # a second disconnect is logged again, once
        for _ in range(10):
            clock.t += 0.5
            await lm.step()
        assert len(unreachable_logs()) == 2
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

    asyncio.run(main())


def test_refusing_charger_is_warned_about_once_until_it_accepts(caplog: pytest.LogCaptureFixture) -> None:
    lm, site, clock = make(["CP1"], LoadSection(enabled=True), building=5.0)
    caplog.set_level(logging.INFO, logger="gateway.loadmgmt")
    site.reject.add("CP1")

    async def main() -> None:
        await start_session(lm, site, "CP1", 1)
        for _ in range(10):
            await lm.step()
            clock.t += 0.5
        assert len([c for c, p, _ in site.attempts if c == "CP1"]) == 10  # still retried every round
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "CP1 answered SetChargingProfile with Rejected" in warnings[0]
        site.reject.clear()
        await lm.step()
        assert any("CP1 accepts charging profiles again" in r.getMessage() for r in caplog.records)

    asyncio.run(main())


def test_boot_wakes_the_loop_so_the_session_limit_goes_out_after_a_reconnect() -> None:
    lm, site, _clock = make(["CP1"], LoadSection(enabled=True, control_interval_s=60.0), building=5.0)

    async def main() -> None:
        site.offline.add("CP1")
        await lm.start()
        try:
            await start_session(lm, site, "CP1", 1)  # wakes a round: CP1 is offline, nothing goes out
            for _ in range(100):
                if lm.last is not None:
                    break
                await asyncio.sleep(0.01)
            assert lm.last is not None and "CP1" not in site.tx
            site.offline.discard("CP1")
            await lm.on_charger_booted("CP1")
            for _ in range(100):  # well before the next 60 s control interval
                if "CP1" in site.tx:
                    break
                await asyncio.sleep(0.01)
            assert site.default == {"CP1": 6.0}
            assert "CP1" in site.tx and site.tx["CP1"][0] == 26.0
        finally:
            await lm.stop()

    asyncio.run(main())


def test_an_unanswered_increase_counts_as_in_force() -> None:
    """CP1's increase to 26 A lands but its answer is lost, then CP1 goes offline: a new session elsewhere must be
    sized around CP1's 26 A, not its last confirmed 13 A."""
    ids = ["CP1", "CP2"]
    limit = 32.0
    cfg = LoadSection(enabled=True, site_limit_a=limit, safe_current_a=6.0, min_change_interval_s=2.0)
    lm, site, clock = make(ids, cfg, building=5.0)

    async def main() -> None:
        for cid in ids:
            await lm.on_charger_booted(cid)
        await start_session(lm, site, "CP1", 1)
        await start_session(lm, site, "CP2", 2)
        for _ in range(3):
            await lm.step()
            clock.t += 1
        assert (site.offered("CP1"), site.offered("CP2")) == (13.0, 13.0)
        site.lose_answer.add("CP1")
        site.charging.discard("CP2")
        await lm.on_transaction_stopped("CP2", 1, 2)
        for _ in range(3):
            await lm.step()
            clock.t += 1
        assert site.offered("CP1") == 26.0 and lm.allocator.sent_limit(("CP1", 1)) == 13.0
        site.offline.add("CP1")
        await start_session(lm, site, "CP2", 3)  # starts on its TxDefaultProfile (6 A) until the first round
        for _ in range(10):
            await lm.step()
            assert site.total() <= limit, {c: site.offered(c) for c in ids}
            clock.t += 1
        assert site.offered("CP2") == 0.0  # queued: CP1's 26 A leave less than 6 A

    asyncio.run(main())
