"""Per-phase accounting of the pure allocator: mixed single/three-phase sites, rotated wiring, EVs that load fewer
phases than their charger has, and limits in 0.1 A steps that never sum above any phase's budget."""

from __future__ import annotations

import random

import pytest

from gateway.loadmgmt.allocator import (
    PHASE_MISMATCH_S,
    Allocator,
    AllocatorParams,
    SessionInput,
    share,
    used_phases,
)

L1, L2, L3 = 0, 1, 2
THREE = (L1, L2, L3)
STR = (L2, L3, L1)  # OCPP rotation "STR": the charger's L1 on site L2, its L2 on L3, its L3 on L1


def params(**kw: float) -> AllocatorParams:
    base = dict(site_limit=32.0, margin=1.0, building_reserve=16.0, other_load_hold=0.0)
    base.update(kw)
    return AllocatorParams(**base)  # type: ignore[arg-type]


def s(
    name: str,
    phases: tuple[int, ...] = THREE,
    measured: float | tuple[float, ...] | None = None,
    t: float = 0.0,
    cap: float = 32.0,
    prio: int = 0,
    meter: str | None = None,
) -> SessionInput:
    return SessionInput(
        (name, 1),
        abs(hash(name)) % 1000,
        t,
        cap,
        prio,
        measured,
        metered=measured is not None,
        phases=phases,
        meter=meter if meter is not None else (f"m{name}" if measured is not None else None),
    )


def per_phase(sessions: list[SessionInput], targets: dict[tuple[str, int], float]) -> list[float]:
    load = [0.0, 0.0, 0.0]
    for x in sessions:
        for ph in used_phases(x):
            load[ph] += targets[x.key]
    return load


def test_three_single_phase_chargers_each_get_their_phase() -> None:
    # 26 A free on each phase: one single-phase charger per phase gets all of it (the tightest-phase model gave
    # the three of them 26 A together)
    sessions = [s("A", (L1,), 0.0, 0), s("B", (L2,), 0.0, 1), s("C", (L3,), 0.0, 2)]
    r = Allocator(params()).allocate(sessions, (5.0, 5.0, 5.0), now=0.0)
    assert r.available_phases == (26.0, 26.0, 26.0)
    assert r.targets == {("A", 1): 26.0, ("B", 1): 26.0, ("C", 1): 26.0}


def test_single_phase_session_shares_only_its_phase_with_a_three_phase_one() -> None:
    # building 5 A on L1/L3, 10 A on L2: L2 has 21 A for the three-phase session T and the single-phase one on L2
    sessions = [s("T", THREE, (0.0, 0.0, 0.0), 0), s("P", (L2,), (0.0,), 1), s("Q", (L3,), (0.0,), 2)]
    r = Allocator(params()).allocate(sessions, (5.0, 10.0, 5.0), now=0.0)
    assert r.available_phases == (26.0, 21.0, 26.0)
    assert r.targets[("T", 1)] == 10.5 and r.targets[("P", 1)] == 10.5  # L2 split evenly
    assert r.targets[("Q", 1)] == 15.5  # L3: what T leaves
    assert per_phase(sessions, r.targets) == [10.5, 21.0, 26.0]


def test_building_load_per_phase_with_rotated_wiring() -> None:
    # a three-phase charger wired STR whose single-phase EV draws 16 A on the charger's L1, i.e. on site L2
    a = Allocator(params())
    ev = s("R", STR, (16.0, 0.0, 0.0))
    r = a.allocate([ev], (5.0, 21.0, 7.0), now=0.0)
    assert r.other_phases == (5.0, 5.0, 7.0)
    # it may get an EV that uses all three phases at any time: its limit is budgeted on every phase
    assert r.targets[("R", 1)] == 24.0  # L3: 32 - 1 - 7


def test_meter_of_unknown_phase_order_is_credited_only_where_all_candidates_agree() -> None:
    # STR charger, its meter before or after the rotation: 16 A on "L1" is site L2 or site L1
    both = SessionInput(
        ("R", 1), 1, 0.0, 32.0, 0, (16.0, 2.0, 2.0), True, phases=STR, meter_phases=(STR, THREE)
    )
    r = Allocator(params()).allocate([both], (7.0, 23.0, 7.0), now=0.0)
    # 2 A on every phase in either reading: credited; the single-phase 14 A on top is not (stays building load)
    assert r.other_phases == (5.0, 21.0, 5.0)


def test_ev_on_one_phase_of_a_three_phase_charger_is_not_subtracted_where_it_draws_nothing() -> None:
    """The old model took the EV's max-phase current off every phase: with the building's load on L2 and the EV
    on L1 it saw 4 A of building load where there are 20 A, and gave away 16 A that were not free."""
    a = Allocator(params())
    ev = s("E", THREE, (16.0, 0.0, 0.0))
    r = a.allocate([ev], (16.0, 20.0, 0.0), now=0.0)
    assert r.other_phases == (0.0, 20.0, 0.0)
    assert r.targets[("E", 1)] == 11.0  # 32 - 1 - 20 on L2
    # a number (the charger's own report of one current) is taken to be on each phase it is wired to
    b = Allocator(params())
    r = b.allocate([s("E", (L2,), 16.0)], (0.0, 36.0, 0.0), now=0.0)
    assert r.other_phases == (0.0, 20.0, 0.0)


def test_connectors_sharing_a_whole_charger_meter_count_its_draw_once() -> None:
    a = Allocator(params())
    c1 = SessionInput(("D", 1), 1, 0.0, 32.0, 0, (10.0, 10.0, 10.0), True, meter="mD")
    c2 = SessionInput(("D", 2), 2, 1.0, 32.0, 0, (10.0, 10.0, 10.0), True, meter="mD")
    r = a.allocate([c1, c2], (15.0, 15.0, 15.0), now=0.0)
    assert r.other_phases == (5.0, 5.0, 5.0)  # not 15 - 20 = -5 -> 0


def test_unreachable_single_phase_session_is_held_on_its_phase_only() -> None:
    a = Allocator(params(lease=120.0))
    a.confirm(("A", 1), 20.0, 0.0)
    sessions = [
        SessionInput(("A", 1), 1, 0.0, 32.0, 0, (20.0,), True, reachable=False, phases=(L1,), meter="mA"),
        s("B", (L1,), (0.0,), 1),
        s("C", (L2,), (0.0,), 2),
    ]
    r = a.allocate(sessions, (25.0, 5.0, 5.0), now=1.0)
    assert r.held == {("A", 1): 20.0}
    assert r.targets[("B", 1)] == 6.0  # 32 - 1 - 5 - 20 on L1
    assert r.targets[("C", 1)] == 26.0  # L2 untouched by A


def test_queued_three_phase_session_does_not_block_a_single_phase_one_on_a_free_phase() -> None:
    # L1 is nearly full (building 22 A): the three-phase T cannot get 6 A there, the single-phase P on L2 can
    sessions = [s("T", THREE, (0.0, 0.0, 0.0), 0), s("P", (L2,), (0.0,), 1)]
    r = Allocator(params()).allocate(sessions, (27.0, 5.0, 5.0), now=0.0)
    assert r.targets == {("T", 1): 0.0, ("P", 1): 26.0}
    assert r.waiting == [("T", 1)]


def test_inconsistent_phase_accounting_falls_back_to_the_static_split() -> None:
    """A charger declared STR whose meter is in fact wired in the site's order: its 16 A are counted on L2 where the
    grid meter shows less than that. It must not go on trusting the estimate (its draw is missing elsewhere)."""
    a = Allocator(params())
    wrong = s("W", STR, (16.0, 0.0, 0.0))  # really on L1
    grid = (21.0, 5.0, 5.0)
    r = a.allocate([wrong], grid, now=0.0, grid_time=0.0)
    assert r.mode == "measured" and r.mismatch == ()  # a sample or two is meter lag
    t = 0.0
    while t < PHASE_MISMATCH_S:
        t += 1.0
        r = a.allocate([wrong], grid, now=t, grid_time=t)
    assert r.mode == "fallback" and r.mismatch == (L2,)
    assert r.available_phases == (15.0, 15.0, 15.0)
    # wiring fixed (or the EV stopped): consistent again, measured again
    right = s("W", THREE, (16.0, 0.0, 0.0))
    for _ in range(3):
        t += 1.0
        r = a.allocate([right], grid, now=t, grid_time=t)
    assert r.mode == "measured" and r.mismatch == ()


def test_min_current_is_needed_on_every_phase_a_session_uses() -> None:
    sessions = [s("A", THREE, None, 0), s("B", (L3,), None, 1)]
    # 11 A free on L3 only: A (6 A on all three) and B cannot both have 6 A there
    t = share(sessions, (20.0, 20.0, 11.0), 6.0)
    assert t == {("A", 1): 11.0, ("B", 1): 0.0}


@pytest.mark.parametrize("seed", range(40))
def test_random_sites_never_exceed_any_phase_and_use_tenths(seed: int) -> None:
    rnd = random.Random(seed)
    sessions = []
    for i in range(rnd.randint(1, 9)):
        phases = rnd.choice([THREE, STR, (L1,), (L2,), (L3,), (L3, L1, L2)])
        sessions.append(
            s(
                f"S{i}",
                phases,
                t=float(i),
                cap=rnd.choice([10.0, 16.0, 20.5, 32.0]),
                prio=rnd.choice([0, 0, 1]),
            )
        )
    avail = (rnd.uniform(0, 60), rnd.uniform(0, 60), rnd.uniform(0, 60))
    min_current = rnd.choice([6.0, 6.0, 8.3])
    t = share(sessions, avail, min_current)
    load = per_phase(sessions, t)
    for ph in range(3):
        assert load[ph] <= avail[ph] + 1e-9, (ph, load, avail)
    for x in sessions:
        v = t[x.key]
        assert abs(v * 10 - round(v * 10)) < 1e-9  # a multiple of 0.1 A
        assert v == 0 or min_current - 1e-9 <= v <= x.max_current + 1e-9
    # nothing left unused that a session could still take in a whole step
    for x in sessions:
        if 0 < t[x.key] <= x.max_current - 0.1:
            assert any(load[ph] > avail[ph] - 0.1 for ph in used_phases(x)), (x.key, t, load, avail)
    # higher priority first: a queued session never leaves room that a lower tier took on its phases
    for x in sessions:
        if t[x.key] == 0 and x.max_current >= min_current:
            lower = [y for y in sessions if y.priority < x.priority and t[y.key] > 0]
            freed = per_phase(lower, t)
            assert any(load[ph] - freed[ph] + min_current > avail[ph] + 1e-9 for ph in used_phases(x))
