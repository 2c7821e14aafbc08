"""A new session must not be paused at 0 A because the grid meter sees its draw before its own meter does, and a
session queued at 0 A only for a moment resumes promptly (but one paused repeatedly waits min_change_interval)."""

from __future__ import annotations

from gateway.loadmgmt.allocator import (
    PAUSE_MEMORY_S,
    RESUME_DELAY_S,
    RESUME_WAITS_S,
    START_CREDIT_MAX_S,
    Allocator,
    AllocatorParams,
    SessionInput,
)

BUILDING = 12.0  # A on every phase


def params(**kw: float) -> AllocatorParams:
    """The allocator's defaults (margin 1 A, min_change_interval 10 s, ...) on a 40 A site with a 3 s hold."""
    return AllocatorParams(**{"site_limit": 40.0, "other_load_hold": 3.0, **kw})


def sess(name: str, started: float, amps: float, read_at: float | None = None) -> SessionInput:
    """A three-phase session with a meter of its own that read `amps` on each phase (at `read_at`: for the
    reader; the allocator does not need it)."""
    return SessionInput(
        (name, 1),
        ord(name[0]),
        started,
        32.0,
        measured=(amps, amps, amps),
        metered=True,
        meter=name,
    )


def steady(a: Allocator, until: float, amps: float = 10.0) -> None:
    """Sessions A and B draw `amps` each (their limits confirmed) with the building at BUILDING A."""
    t = 0.0
    while t <= until:
        s = [sess("A", -100.0, amps, t), sess("B", -100.0, amps, t)]
        r = a.allocate(s, (BUILDING + 2 * amps,) * 3, now=t, grid_time=t)
        for d in r.changes:
            a.confirm(d.key, d.limit, t)
        t += 0.5


def test_new_session_drawing_its_fallback_before_its_meter_reads_is_admitted() -> None:
    # A and B have 16.5 A each; their EVs draw 8 A. Site: 36 A, room 36 - 1 - 12 = 23 A: three sessions fit at 6 A.
    a = Allocator(params(site_limit=36.0))
    steady(a, 19.5, amps=8.0)
    old = [sess("A", -100.0, 8.0, 19.9), sess("B", -100.0, 8.0, 19.9)]
    # C's charger closes its relay at 19.9 (it starts the transaction before the gateway has its
    # StartTransaction): its EV draws its TxDefaultProfile current, 6 A, in the grid sample at 20.0, before the
    # gateway knows of the session; the session C is known from 20.2.
    r = a.allocate(old, (BUILDING + 22.0,) * 3, now=20.0, grid_time=20.0)
    for d in r.changes:
        a.confirm(d.key, d.limit, 20.0)
    # at 20.5 C's own meter (last read at 20.1, before its start) shows 0 A, the grid again shows its 6 A
    t = 20.5
    s = [sess("A", -100.0, 8.0, 20.4), sess("B", -100.0, 8.0, 20.4), sess("C", 20.2, 0.0, 20.1)]
    r = a.allocate(s, (BUILDING + 22.0,) * 3, now=t, grid_time=t)
    first = [d.limit for d in r.changes if d.key == ("C", 1)]
    assert first and first[0] >= 6.0, r  # before the fix: 0 A (queued), the building estimate 18 A
    assert ("C", 1) not in r.waiting
    assert r.other_load is not None and abs(r.other_load - BUILDING) < 1e-6
    assert sum(r.targets.values()) <= 36.0 - 1.0 - BUILDING + 1e-6  # the limits fit (every phase alike)
    for d in r.changes:
        a.confirm(d.key, d.limit, t)
    # once C's meter shows its draw, nothing is credited any more (the limit in force less its reading is 0)
    for t in (21.0, 21.5, 22.0):
        s = [sess("A", -100.0, 7.0, t - 0.1), sess("B", -100.0, 7.0, t - 0.1), sess("C", 20.2, 6.0, t - 0.1)]
        r = a.allocate(s, (BUILDING + 20.0,) * 3, now=t, grid_time=t)
    assert r.other_load is not None and abs(r.other_load - BUILDING) < 1e-6
    assert r.targets[("C", 1)] >= 6.0


def test_no_credit_when_the_grid_did_not_rise() -> None:
    """The new session's meter shows nothing and the grid shows no new draw (its EV has not started): nothing is
    credited, so the building-load estimate cannot drop below what it was (no current released)."""
    a = Allocator(params())
    steady(a, 20.0)
    s = [sess("A", -100.0, 10.0, 20.4), sess("B", -100.0, 10.0, 20.4), sess("C", 20.2, 0.0, 20.1)]
    r = a.allocate(s, (BUILDING + 20.0,) * 3, now=20.5, grid_time=20.5)
    assert r.other_load is not None and abs(r.other_load - BUILDING) < 1e-6


def test_no_credit_for_a_real_building_rise_beyond_the_fallback() -> None:
    """The building rises by 10 A as C starts: at most C's fallback current (6 A) is explained away."""
    a = Allocator(params())
    steady(a, 20.0)
    s = [sess("A", -100.0, 10.0, 20.4), sess("B", -100.0, 10.0, 20.4), sess("C", 20.2, 0.0, 20.1)]
    r = a.allocate(s, (BUILDING + 10.0 + 20.0,) * 3, now=20.5, grid_time=20.5)
    assert r.other_load is not None and r.other_load >= BUILDING + 10.0 - 6.0 - 1e-6


def test_credit_is_the_limit_in_force_less_what_its_meter_shows() -> None:
    """C draws its 6 A; its meter shows 4 A of them so far: the 2 A it does not show are credited, and a building
    rise of 6 A at the same time is building load (the estimate is 12 + 6 A, not less)."""
    a = Allocator(params(other_load_hold=0.0))
    steady(a, 20.0)
    for t in (20.5, 21.0, 21.5):
        s = [sess("A", -100.0, 10.0), sess("B", -100.0, 10.0), sess("C", 20.2, 4.0)]
        r = a.allocate(s, (BUILDING + 20.0 + 6.0 + 6.0,) * 3, now=t, grid_time=t)
    assert r.other_load is not None and abs(r.other_load - (BUILDING + 6.0)) < 1e-6


def test_no_credit_too_long_after_the_start_or_without_a_level_from_before_it() -> None:
    a = Allocator(params(other_load_hold=1.0))
    steady(a, 26.0)
    old = [sess("A", -100.0, 10.0), sess("B", -100.0, 10.0)]
    for t in (26.5, 27.0, 27.5):  # three samples: more than the median filters
        # C started longer than START_CREDIT_MAX_S ago: a rise its meter does not show is building load
        assert t - 20.2 > START_CREDIT_MAX_S
        r = a.allocate([*old, sess("C", 20.2, 0.0)], (BUILDING + 26.0,) * 3, now=t, grid_time=t)
    assert r.other_load is not None and r.other_load >= BUILDING + 6.0 - 1e-6
    # a fresh allocator (the gateway just started, C started before its first estimate): no credit
    b = Allocator(params())
    for t in (0.5, 1.0, 1.5):
        r = b.allocate([*old, sess("C", 0.2, 0.0)], (BUILDING + 26.0,) * 3, now=t, grid_time=t)
    assert r.other_load is not None and r.other_load >= BUILDING + 6.0 - 1e-6


# ---- resuming from 0 A --------------------------------------------------------------------------------------------
def two_sessions_on_a_tight_site(a: Allocator, t: float, building: float) -> list[float]:
    """Three grid samples just before and at `t` (so the median filter passes the building load), the limits
    confirmed at once; returns the limits in force."""
    for at in (t - 0.02, t - 0.01, t):
        s = [sess("A", -101.0, 0.0, at), sess("B", -100.0, 0.0, at)]  # long running: no start credit
        r = a.allocate(s, (building,) * 3, now=at, grid_time=at)
        for d in r.changes:
            a.confirm(d.key, d.limit, at)
    return [a.sent_limit(("A", 1)) or 0.0, a.sent_limit(("B", 1)) or 0.0]


def test_a_session_queued_for_a_moment_resumes_after_the_resume_delay() -> None:
    a = Allocator(params(other_load_hold=0.0, site_limit=32.0))
    assert two_sessions_on_a_tight_site(a, 0.1, 12.0) == [9.5, 9.5]
    # the building rises: only one fits (32 - 1 - 20 = 11), B is queued (A's increase waits min_change_interval)
    assert two_sessions_on_a_tight_site(a, 1.0, 20.0) == [9.5, 0.0]
    assert RESUME_DELAY_S < 10.0
    # room again: B resumes once RESUME_DELAY_S has passed since its pause, not min_change_interval (10 s)
    limits = two_sessions_on_a_tight_site(a, 1.0 + RESUME_DELAY_S / 2, 12.0)
    assert limits[1] == 0.0
    limits = two_sessions_on_a_tight_site(a, 1.0 + RESUME_DELAY_S, 12.0)
    assert limits[1] > 0.0
    # paused again soon after: each further pause within PAUSE_MEMORY_S makes it wait longer (no contactor cycling)
    t = 1.0 + RESUME_DELAY_S + 0.5
    for waits in (*RESUME_WAITS_S[1:], RESUME_WAITS_S[-1]):
        assert two_sessions_on_a_tight_site(a, t, 20.0)[1] == 0.0
        pause = t
        assert two_sessions_on_a_tight_site(a, pause + RESUME_DELAY_S, 12.0)[1] == 0.0
        assert two_sessions_on_a_tight_site(a, pause + waits - 0.1, 12.0)[1] == 0.0
        assert two_sessions_on_a_tight_site(a, pause + waits, 12.0)[1] > 0.0
        t = pause + waits + 0.5
    # pauses older than PAUSE_MEMORY_S are forgotten: a short queueing costs RESUME_DELAY_S again
    t += PAUSE_MEMORY_S + 1.0
    assert two_sessions_on_a_tight_site(a, t, 20.0)[1] == 0.0
    assert two_sessions_on_a_tight_site(a, t + RESUME_DELAY_S, 12.0)[1] > 0.0
