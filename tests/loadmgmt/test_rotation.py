"""Queue rotation and idle sessions yielding their place, on the pure allocator with an injected clock.

`Site` is a ground-truth model: every limit the allocator decides is applied at once (the charger accepts, decreases
before increases), each EV draws min(limit, what it wants) on the phases it uses, the grid meter is the building's
load plus those draws. Every step checks the grid on every phase against the site limit."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.config import ChargerSection
from gateway.loadmgmt.allocator import Allocation, Allocator, AllocatorParams, SessionInput
from gateway.loadmgmt.config import LoadSection
from gateway.loadmgmt.service import LoadManager

L1, L2, L3 = 0, 1, 2
THREE = (L1, L2, L3)
LIMIT = 32.0
STEP_S = 5.0
HOUR_S = 3600.0


@dataclass
class Ev:
    name: str
    wiring: tuple[int, ...] = THREE  # site phase of each charger phase
    ev_phases: int = 3  # phases the EV itself charges on (from the charger's L1)
    wants: float = 32.0  # A it would take; 0 = full
    prio: int = 0
    arrived: float = 0.0
    cap: float = 32.0


@dataclass
class Site:
    evs: list[Ev]
    building: tuple[float, float, float]
    params: AllocatorParams
    allocator: Allocator = field(init=False)
    limit: dict[str, float] = field(default_factory=dict)  # what each charger applies
    charged_s: dict[str, float] = field(default_factory=dict)
    stints: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (from, to) charging
    peaks: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.allocator = Allocator(self.params)

    def key(self, ev: Ev) -> tuple[str, int]:
        return (ev.name, 1)

    def draw(self, ev: Ev) -> tuple[float, ...]:
        """Per charger phase."""
        amps = min(self.limit.get(ev.name, self.params.fallback_current), ev.wants, ev.cap)
        amps = amps if amps >= 6.0 else 0.0  # below 6 A the pilot signals a pause
        used = 1 if len(ev.wiring) == 1 else ev.ev_phases
        return tuple(amps if i < used else 0.0 for i in range(len(ev.wiring)))

    def grid(self) -> tuple[float, float, float]:
        g = list(self.building)
        for ev in self.evs:
            for i, amps in enumerate(self.draw(ev)):
                g[ev.wiring[i]] += amps
        return (g[0], g[1], g[2])

    def step(self, now: float) -> Allocation:
        inputs = [
            SessionInput(
                self.key(ev),
                i + 1,
                ev.arrived,
                ev.cap,
                ev.prio,
                self.draw(ev),
                metered=True,
                phases=ev.wiring,
                meter=f"m{ev.name}",
            )
            for i, ev in enumerate(self.evs)
        ]
        r = self.allocator.allocate(inputs, self.grid(), now, grid_time=now)
        for d in r.changes:  # decreases come first in the list
            self.limit[d.key[0]] = d.limit
            self.allocator.confirm(d.key, d.limit, now)
        g = self.grid()
        self.peaks.append(max(g))
        assert all(x <= LIMIT + 1e-9 for x in g), (now, g, self.limit)
        for ev in self.evs:
            charging = any(a > 0 for a in self.draw(ev))
            st = self.stints.setdefault(ev.name, [])
            if charging:
                self.charged_s[ev.name] = self.charged_s.get(ev.name, 0.0) + STEP_S
                if st and st[-1][1] == now:
                    st[-1] = (st[-1][0], now + STEP_S)
                else:
                    st.append((now, now + STEP_S))
        return r

    def run(self, until: float, start: float = 0.0) -> list[Allocation]:
        out = []
        t = start
        while t < until:
            out.append(self.step(t))
            t += STEP_S
        return out


def params(**kw: float) -> AllocatorParams:
    base = dict(
        site_limit=LIMIT,
        margin=1.0,
        building_reserve=16.0,
        other_load_hold=0.0,
        min_change_interval=10.0,
        rotation_interval=900.0,
        idle_current=1.0,
        idle_yield=120.0,
    )
    base.update(kw)
    return AllocatorParams(**base)  # type: ignore[arg-type]


def test_five_sessions_three_places_everyone_charges_within_the_hour() -> None:
    # 32 - 1 margin - 11 building = 20 A on every phase: three sessions at >= 6 A, two wait
    evs = [Ev(n, arrived=float(i)) for i, n in enumerate("ABCDE")]
    site = Site(evs, (11.0, 11.0, 11.0), params())
    rounds = site.run(HOUR_S)
    assert max(site.peaks) <= LIMIT
    for ev in evs:
        assert site.charged_s.get(ev.name, 0.0) >= 1800.0, site.charged_s  # half of the hour at least
    assert sum(site.charged_s.values()) >= 3 * HOUR_S - 3 * STEP_S  # three places used all the time
    # never rotated more often than the interval: every stint that ended before the hour lasted >= 900 s
    for name, stints in site.stints.items():
        for start, end in stints:
            if end < HOUR_S:
                assert end - start >= 900.0, (name, stints)
    # and nobody waited more than two intervals in a row
    for name, stints in site.stints.items():
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(stints)]
        first_wait = stints[0][0]
        assert max([first_wait, *gaps]) <= 2 * 900.0 + STEP_S, (name, stints)
    rotations = [rot for r in rounds for rot in r.rotations]
    assert rotations and all(len(rot.paused) == 1 for rot in rotations)


def test_rotation_interval_zero_keeps_the_first_three() -> None:
    evs = [Ev(n, arrived=float(i)) for i, n in enumerate("ABCDE")]
    site = Site(evs, (11.0, 11.0, 11.0), params(rotation_interval=0.0))
    site.run(HOUR_S)
    assert set(site.charged_s) == {"A", "B", "C"}


def test_no_rotation_across_priorities() -> None:
    evs = [Ev("H1", prio=1, arrived=2.0), Ev("H2", prio=1, arrived=3.0), Ev("L", prio=0, arrived=0.0)]
    site = Site(evs, (14.0, 14.0, 14.0), params())  # 17 A: two places
    rounds = site.run(HOUR_S)
    assert "L" not in site.charged_s  # the lower tier waits all hour; H1/H2 are never paused for it
    assert site.charged_s["H1"] == HOUR_S and site.charged_s["H2"] == HOUR_S
    assert not any(r.rotations for r in rounds)


def test_mixed_phase_site_rotates_single_phase_sessions_within_their_phase() -> None:
    """Three single-phase chargers on L2, one on L3 and a three-phase one; 14 A free on L1/L2: on L2 only two of the
    four sessions using it fit at a time, so those four take turns (half the hour each); Q, alone with T on L3,
    never waits and is never paused; no phase is ever over."""
    evs = [
        Ev("T", THREE, arrived=0.0),
        Ev("P1", (L2,), 1, arrived=1.0),
        Ev("P2", (L2,), 1, arrived=2.0),
        Ev("P3", (L2,), 1, arrived=3.0),
        Ev("Q", (L3,), 1, arrived=4.0),
    ]
    site = Site(evs, (17.0, 17.0, 5.0), params())  # 14 A free on L1/L2, 26 A on L3
    rounds = site.run(HOUR_S)
    for name in ("T", "P1", "P2", "P3"):
        assert site.charged_s.get(name, 0.0) >= 1800.0, site.charged_s
    assert site.charged_s["Q"] == HOUR_S  # alone on its phase with T: never waits
    assert all(r.targets[("Q", 1)] >= 6.0 for r in rounds)
    paused = {k[0] for r in rounds for rot in r.rotations for k in rot.paused}
    assert paused == {"T", "P1", "P2", "P3"}


def test_rotation_that_would_pause_someone_else_does_not_happen() -> None:
    """W (three-phase) waits for L1; pausing S1 (on L1, charged long) would let W in, but W's 6 A on L3 would push
    out S3, who has charged only briefly: no rotation until S3 has had its interval too."""
    evs = [Ev("S1", (L1,), 1, arrived=0.0), Ev("S3", (L3,), 1, arrived=600.0), Ev("W", THREE, arrived=1.0)]
    # free: L1 7 A (S1 alone), L2 20 A, L3 8 A (S3 alone)
    site = Site([evs[0], evs[2]], (24.0, 11.0, 23.0), params())
    site.run(600.0)
    site.evs.append(evs[1])
    rounds = site.run(1700.0, start=600.0)
    first = next((i for i, r in enumerate(rounds) if r.rotations), None)
    assert first is not None
    t_first = 600.0 + first * STEP_S
    assert t_first >= 600.0 + 900.0  # not at 900 s (S1's interval), only once S3 has charged 900 s too
    rot = rounds[first].rotations[0]
    assert rot.resumed == ("W", 1) and set(rot.paused) == {("S1", 1), ("S3", 1)}


def test_finished_ev_yields_its_place_at_once_and_gets_it_back_when_it_draws() -> None:
    a, b, c = Ev("A", arrived=0.0), Ev("B", arrived=1.0), Ev("C", arrived=2.0)
    site = Site([a, b, c], (17.0, 17.0, 17.0), params())  # 14 A: two places
    site.run(300.0)
    assert "C" not in site.charged_s
    a.wants = 0.0  # A's battery is full: it draws nothing
    rounds = site.run(300.0 + 200.0, start=300.0)
    yielded_at = next(300.0 + i * STEP_S for i, r in enumerate(rounds) if r.yielded)
    assert 300.0 + 120.0 <= yielded_at <= 300.0 + 120.0 + 2 * STEP_S  # idle_yield_s, not the 900 s rotation
    assert site.limit["A"] == 0.0 and site.limit["C"] > 6.0
    assert site.allocator.parked(("A", 1))
    # B's session ends: there is room again; A is admitted last, at the minimum (it draws nothing anyway)
    site.evs.remove(b)
    site.allocator.forget(("B", 1))
    site.run(600.0, start=500.0)
    assert site.limit["A"] == 6.0 and site.limit["C"] == 14.0 - 6.0
    # the car wants to charge again (departure timer, balancing): it is no longer parked and gets its share
    a.wants = 32.0
    site.run(700.0, start=600.0)
    assert not site.allocator.parked(("A", 1))
    assert site.limit["A"] == 7.0 and site.limit["C"] == 7.0


def test_an_idle_session_keeps_its_place_when_nobody_waits() -> None:
    a, b = Ev("A", wants=0.0), Ev("B", arrived=1.0)
    site = Site([a, b], (5.0, 5.0, 5.0), params())
    rounds = site.run(600.0)
    assert not any(r.yielded for r in rounds) and not site.allocator.parked(("A", 1))
    assert site.limit["A"] == 13.0


def test_three_phase_charger_with_a_single_phase_ev_over_an_hour() -> None:
    """EVs that charge on one phase of a three-phase charger: what they draw is counted on that phase only, what
    they may draw (their limit) on all three. The grid never exceeds the limit on any phase."""
    evs = [Ev(n, THREE, ev_phases=1, arrived=float(i)) for i, n in enumerate("ABCD")]
    evs.append(Ev("E", (L2, L3, L1), ev_phases=1, arrived=4.0))  # rotated: its EV draws on site L2
    site = Site(evs, (9.0, 15.0, 3.0), params())
    site.run(HOUR_S)
    for ev in evs:
        assert site.charged_s.get(ev.name, 0.0) >= 900.0, site.charged_s


def test_load_manager_rotates_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    """Through the LoadManager: [load] rotation_interval_s reaches the allocator; the pause goes out as a 0 A
    TxProfile before the waiting session's limit, and both are logged at INFO."""
    caplog.set_level(logging.INFO, logger="gateway.loadmgmt")
    ids = ["CP1", "CP2", "CP3"]

    class Chargers:
        def __init__(self) -> None:
            self.limit: dict[str, float] = {}
            self.sent: list[tuple[str, float]] = []
            self.t = 0.0

        def connected(self) -> list[str]:
            return ids

        async def call(
            self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
        ) -> dict[str, Any]:
            cs = payload["csChargingProfiles"]
            amps = float(cs["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])
            if cs["chargingProfilePurpose"] == "TxProfile":
                self.limit[charger_id] = amps
                self.sent.append((charger_id, amps))
            return {"status": "Accepted"}

        # MeterSource: EVs draw their limit on all three phases; building 14 A -> 17 A free: two places
        def draw(self, cid: str) -> float:
            amps = self.limit.get(cid, 6.0)
            return amps if amps >= 6.0 else 0.0

        def grid(self) -> tuple[tuple[float, float, float], float]:
            g = 14.0 + sum(self.draw(c) for c in ids)
            return (g, g, g), self.t

        def session_current(
            self, charger_id: str, connector_id: int, at: float | None = None
        ) -> tuple[float, float, float]:
            d = self.draw(charger_id)
            return (d, d, d)

        def has_meter(self, charger_id: str, connector_id: int) -> bool:
            return True

        def meter_id(self, charger_id: str, connector_id: int) -> str | None:
            return f"m{charger_id}"

    site = Chargers()
    cfg = LoadSection(
        enabled=True,
        site_limit_a=LIMIT,
        rotation_interval_s=60.0,
        building_load_hold_s=0.0,
        profile_lease_s=600,
    )
    chargers = [ChargerSection(id=c, password="x" * 16) for c in ids]
    lm = LoadManager(cfg, chargers, site, site, clock=lambda: site.t, wall=lambda: 1_700_000_000.0 + site.t)

    async def main() -> None:
        for i, cid in enumerate(ids):
            await lm.on_transaction_started(cid, 1, i + 1)
            site.t += 1.0
        while site.t < 59.0:
            await lm.step()
            site.t += 1.0
        assert site.limit == {"CP1": 8.5, "CP2": 8.5, "CP3": 0.0}
        n = len(site.sent)
        while site.t < 66.0:
            await lm.step()
            site.t += 1.0
        assert site.sent[n:] == [("CP1", 0.0), ("CP3", 8.5)]  # the pause first, then the turn
        assert lm.status()["sessions"]["CP1/1"]["waiting"] is True

    asyncio.run(main())
    assert any("rotation: CP1/1 pauses, CP3/1 charges" in r.getMessage() for r in caplog.records)
