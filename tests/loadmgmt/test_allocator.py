from __future__ import annotations

import pytest

from gateway.loadmgmt.allocator import Allocator, AllocatorParams, SessionInput, share


def sess(
    name: str, t: float = 0.0, prio: int = 0, cap: float = 32.0, measured: float | None = None
) -> SessionInput:
    return SessionInput((name, 1), hash(name) % 1000, t, cap, prio, measured)


def test_fair_share_splits_evenly_and_respects_caps() -> None:
    s = [sess("A", 0), sess("B", 1), sess("C", 2, cap=8)]
    t = share(s, 30.0, 6.0)
    assert t[("C", 1)] == 8
    assert t[("A", 1)] == 11 and t[("B", 1)] == 11
    assert sum(t.values()) <= 30


def test_never_below_min_queue_latest_when_short() -> None:
    s = [sess("A", 0), sess("B", 1), sess("C", 2)]
    t = share(s, 13.0, 6.0)
    assert t == {("A", 1): 6.5, ("B", 1): 6.5, ("C", 1): 0.0}  # 0.1 A steps: the spare 1 A is split
    assert share(s, 5.9, 6.0) == {("A", 1): 0.0, ("B", 1): 0.0, ("C", 1): 0.0}


def test_priority_is_admitted_and_filled_first() -> None:
    s = [sess("A", 0), sess("B", 1, prio=5)]
    assert share(s, 10.0, 6.0) == {("A", 1): 0.0, ("B", 1): 10.0}
    t = share(s, 40.0, 6.0)
    assert t[("B", 1)] == 32 and t[("A", 1)] == 8


def test_tenths_of_an_amp_never_over_budget() -> None:
    for avail in (6.0, 12.9, 17.5, 31.99, 64.0, 25.05):
        s = [sess(c, i) for i, c in enumerate("ABCD")]
        t = share(s, avail, 6.0)
        assert sum(t.values()) <= avail + 1e-9
        assert all(round(v * 10) == v * 10 or abs(round(v * 10) - v * 10) < 1e-9 for v in t.values())
        assert all(v == 0 or v >= 6 for v in t.values())
        admitted = [v for v in t.values() if v > 0]
        assert max(admitted) - min(admitted) <= 0.1 + 1e-9  # even split to within one step
        assert avail - sum(t.values()) < 0.1 * len(admitted) + 1e-9  # nothing wasted beyond the rounding


def params(**kw: float) -> AllocatorParams:
    base = dict(site_limit=32.0, margin=1.0, building_reserve=16.0, hysteresis=1.0, min_change_interval=10.0)
    base.update(kw)
    return AllocatorParams(**base)  # type: ignore[arg-type]


def test_building_load_is_grid_minus_measured_ev_draw() -> None:
    a = Allocator(params())
    s = [sess("A", 0, measured=10.0), sess("B", 1, measured=5.0)]
    # grid 25 A on the worst phase = 15 A EVs + 10 A building
    r = a.allocate(s, (25.0, 20.0, 18.0), now=0.0)
    assert r.mode == "measured"
    assert r.other_load == pytest.approx(10.0)
    assert r.available == pytest.approx(21.0)
    assert sum(r.targets.values()) <= 21


def test_stale_grid_falls_back_to_static_split() -> None:
    a = Allocator(params())
    r = a.allocate([sess("A", 0), sess("B", 1)], None, now=0.0)
    assert r.mode == "fallback"
    assert r.available == pytest.approx(32 - 16 - 1)
    assert r.targets == {("A", 1): 7.5, ("B", 1): 7.5}


def test_decreases_immediate_increases_rate_limited_with_hysteresis() -> None:
    a = Allocator(params())
    s = [sess("A", 0, measured=0.0)]
    r = a.allocate(s, (5.0, 5.0, 5.0), now=0.0)
    assert [(d.limit, d.previous) for d in r.changes] == [(26.0, None)]
    a.confirm(("A", 1), 26.0, 0.0)
    # building load +10 A: decrease at once
    r = a.allocate([sess("A", 0, measured=26.0)], (41.0, 41.0, 41.0), now=1.0)
    assert [(d.limit, d.previous) for d in r.changes] == [(16.0, 26.0)]
    a.confirm(("A", 1), 16.0, 1.0)
    # load drops again: increase only after min_change_interval
    r = a.allocate([sess("A", 0, measured=16.0)], (21.0, 21.0, 21.0), now=5.0)
    assert r.changes == []
    r = a.allocate([sess("A", 0, measured=16.0)], (21.0, 21.0, 21.0), now=11.5)
    assert [d.limit for d in r.changes] == [26.0]
    a.confirm(("A", 1), 26.0, 11.5)
    # a 0.5 A wobble is not sent
    r = a.allocate([sess("A", 0, measured=26.0)], (30.5, 30.5, 30.5), now=30.0)
    assert r.changes == []


def test_decreases_come_before_increases() -> None:
    a = Allocator(params(site_limit=40.0))
    a.confirm(("A", 1), 30.0, 0.0)
    a.confirm(("B", 1), 6.0, 0.0)
    s = [sess("A", 0, measured=30.0), sess("B", 1, measured=6.0)]
    r = a.allocate(s, (36.0, 36.0, 36.0), now=100.0)
    assert [d.key[0] for d in r.changes] == ["A", "B"]
    assert r.changes[0].limit < 30 and r.changes[1].limit > 6


def test_overdraw_flagged_after_grace_once() -> None:
    a = Allocator(params(overdraw_tolerance=2.0, overdraw_grace=15.0))
    a.confirm(("A", 1), 10.0, 0.0)
    over = [sess("A", 0, measured=16.0)]
    assert a.allocate(over, (20.0, 20.0, 20.0), now=20.0).overdraws == []
    flagged = a.allocate(over, (20.0, 20.0, 20.0), now=36.0).overdraws
    assert [(o.limit, o.measured) for o in flagged] == [(10.0, 16.0)]
    assert a.allocate(over, (20.0, 20.0, 20.0), now=40.0).overdraws == []  # once
    # within tolerance: never
    b = Allocator(params())
    b.confirm(("A", 1), 10.0, 0.0)
    assert b.allocate([sess("A", 0, measured=11.5)], (20.0,) * 3, 100.0).overdraws == []


def test_site_limit_change_and_bad_values() -> None:
    a = Allocator(params())
    a.set_site_limit(63.0)
    assert a.allocate([sess("A")], (0.0, 0.0, 0.0), 0.0).available == pytest.approx(62.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            a.set_site_limit(bad)
    assert a.params.site_limit == 63.0


def test_building_load_estimate_holds_its_peak() -> None:
    # grid and charger meters are read at different moments: a transient underestimate must not release current
    a = Allocator(params(other_load_hold=5.0))
    s = [sess("A", 0, measured=10.0)]
    assert a.allocate(s, (25.0, 25.0, 25.0), now=0.0).other_load == pytest.approx(15.0)
    # the charger meter still shows 10 A but the EV already stopped: raw estimate 5 A -> held at 15 A
    r = a.allocate(s, (15.0, 15.0, 15.0), now=1.0)
    assert r.other_load == pytest.approx(15.0)
    assert r.available == pytest.approx(16.0)
    # after the hold window the lower estimate is used
    assert a.allocate(s, (15.0, 15.0, 15.0), now=6.5).other_load == pytest.approx(5.0)


def test_metered_session_without_reading_forces_fallback() -> None:
    a = Allocator(params())
    s = [SessionInput(("A", 1), 1, 0.0, 32.0, 0, None, metered=True), sess("B", 1, measured=6.0)]
    r = a.allocate(s, (29.0, 29.0, 29.0), now=0.0)
    assert r.mode == "fallback" and r.available == pytest.approx(15.0)


def test_one_sample_glitch_does_not_queue_sessions_but_an_overload_acts_at_once() -> None:
    a = Allocator(params(other_load_hold=1.0))
    for key in "AB":
        a.confirm((key, 1), 13.0, 0.0)
    s = [sess("A", 0, measured=13.0), sess("B", 1, measured=13.0)]
    for i in range(3):
        assert a.allocate(s, (31.0, 31.0, 31.0), now=10.0 + i, grid_time=10.0 + i).changes == []
    # one grid sample disagrees with a charger meter read earlier (B's meter still shows 7 A): no reaction
    lagging = [sess("A", 0, measured=13.0), sess("B", 1, measured=7.0)]
    assert a.allocate(lagging, (31.0, 31.0, 31.0), now=13.0, grid_time=13.0).changes == []
    # ... re-used sample (same grid_time) adds no evidence
    assert a.allocate(s, (31.0, 31.0, 31.0), now=13.1, grid_time=13.0).changes == []
    # the grid shows the site over its limit: decrease at once
    r = a.allocate(s, (40.0, 40.0, 40.0), now=14.0, grid_time=14.0)
    assert r.changes and all(d.limit < 13.0 for d in r.changes)


def at(name: str, t: float, measured: float, reachable: bool = True) -> SessionInput:
    return SessionInput((name, 1), hash(name) % 1000, t, 32.0, 0, measured, metered=True, reachable=reachable)


def test_unreachable_session_keeps_its_limit_while_its_lease_runs_then_the_fallback() -> None:
    # 48 A site, building 15 A; A's charger is offline with 11 A confirmed (lease 120 s from t=0): the others share
    # 48 - 1 - 15 - 11 = 21 A, not 32 A as if A's lower limit had landed
    a = Allocator(params(site_limit=48.0, lease=120.0, fallback_current=6.0, other_load_hold=0.0))
    for name, amps in (("A", 11.0), ("B", 11.0), ("C", 10.0), ("D", 10.0)):
        a.confirm((name, 1), amps, 0.0)
    s = [at("A", 0, 11.0, reachable=False), at("B", 1, 11.0), at("C", 2, 10.0), at("D", 3, 10.0)]
    grid = (15.0 + 42.0,) * 3
    r = a.allocate(s, grid, now=10.0)
    assert r.other_load == pytest.approx(15.0)
    assert r.held == {("A", 1): 11.0} and r.targets[("A", 1)] == 11.0
    assert sum(v for k, v in r.targets.items() if k != ("A", 1)) <= r.available - 11.0
    assert sum(r.targets.values()) <= r.available
    assert [d.key[0] for d in r.changes] == ["B", "C", "D"]  # nothing for the unreachable one
    assert [(d.limit, d.decrease) for d in r.changes] == [(7.0, True)] * 3
    # around the end of its lease (startSchedule truncation, clock skew): the higher of lease and fallback
    assert a.in_force(("A", 1), 119.0) == 11.0
    # once the lease has surely run out the charger applies its TxDefaultProfile: 6 A held
    later = [at("A", 0, 6.0, reachable=False), at("B", 1, 7.0), at("C", 2, 7.0), at("D", 3, 7.0)]
    r = a.allocate(later, (15.0 + 27.0,) * 3, now=123.0)
    assert r.held == {("A", 1): 6.0}
    assert sum(v for k, v in r.targets.items() if k != ("A", 1)) == 26.0
    # a session with nothing confirmed runs on the charger's TxDefaultProfile
    assert a.in_force(("E", 1), 0.0) == 6.0


def test_queued_unreachable_session_counts_its_fallback_once_its_lease_may_have_ended() -> None:
    a = Allocator(params(lease=60.0, fallback_current=6.0))
    a.confirm(("A", 1), 0.0, 0.0, sent_at=0.0)
    assert a.in_force(("A", 1), 57.0) == 0.0
    assert a.in_force(("A", 1), 58.5) == 6.0  # the lease may already have ended (1 s truncation + tick)
    assert a.in_force(("A", 1), 63.0) == 6.0
    assert not a.lease_running(("A", 1), 58.5)


def test_failed_decrease_is_counted_at_the_old_limit_until_one_lands() -> None:
    a = Allocator(params(site_limit=32.0, min_change_interval=0.0, other_load_hold=0.0))
    a.confirm(("A", 1), 26.0, 0.0)
    a.confirm(("B", 1), 0.0, 0.0)
    s = [at("A", 0, 26.0), at("B", 1, 0.0)]
    # a fresh look says 13/13 ...
    r = a.allocate(s, (31.0,) * 3, now=1.0)
    assert r.targets == {("A", 1): 13.0, ("B", 1): 13.0}
    # ... but A's decrease did not land: A is asked again, B is sized around A's 26 A still in force
    a.refused(("A", 1))
    r = a.allocate(s, (31.0,) * 3, now=2.0)
    assert r.held == {("A", 1): 26.0}
    assert r.targets == {("A", 1): 13.0, ("B", 1): 0.0}
    assert [(d.key[0], d.limit) for d in r.changes] == [("A", 13.0)]
    a.confirm(("A", 1), 13.0, 3.0)
    r = a.allocate([at("A", 0, 13.0), at("B", 1, 0.0)], (18.0,) * 3, now=4.0)
    assert r.held == {} and r.targets == {("A", 1): 13.0, ("B", 1): 13.0}
    assert [(d.key[0], d.limit, d.decrease) for d in r.changes] == [("B", 13.0, False)]


def test_unanswered_send_counts_as_in_force_until_a_later_one_is_confirmed() -> None:
    a = Allocator(params(lease=120.0, fallback_current=6.0))
    a.confirm(("A", 1), 13.0, 0.0)
    a.unconfirmed(
        ("A", 1), 26.0, sent_at=5.0
    )  # an increase went out, the answer was lost: it may have landed
    assert a.in_force(("A", 1), 6.0) == 26.0
    r = a.allocate([at("A", 0, 26.0, reachable=False), at("B", 1, 0.0)], (31.0,) * 3, now=6.0)
    assert r.held == {("A", 1): 26.0} and r.targets[("B", 1)] == 0.0
    # reachable again and its share is the confirmed 13 A: still re-sent, as a decrease (it may be at 26 A)
    r = a.allocate([at("A", 0, 26.0), at("B", 1, 0.0)], (31.0,) * 3, now=6.5)
    assert r.targets[("A", 1)] == 13.0
    d = r.changes[0]
    assert (d.key[0], d.limit, d.previous, d.decrease) == ("A", 13.0, 13.0, True)
    assert a.in_force(("A", 1), 200.0) == 6.0  # both leases over: the TxDefaultProfile
    a.confirm(("A", 1), 13.0, 7.0, sent_at=6.5)  # a later confirmed profile replaces it on the charger
    assert a.in_force(("A", 1), 8.0) == 13.0
