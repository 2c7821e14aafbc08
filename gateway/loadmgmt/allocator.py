"""Allocation of the site's current among charging sessions. Pure: inputs and the monotonic time in, decisions out.

Model (amps, per site phase L1/L2/L3): the grid meter measures everything; the chargers' own draw (their meters)
is mapped onto the site phases through each charger's wiring (`SessionInput.phases`: a three-phase charger, maybe
rotated, loads all three; a single-phase one only its own) and subtracted phase by phase to get the building's other
load on each phase; what remains below the site limit (minus a margin) on each phase is that phase's budget.
A session consumes its limit on every site phase it is wired to, whatever its EV draws at the moment (a three-phase
charger whose EV charges on one phase may get an EV that uses three at any time): only measured draw is taken off
the building-load estimate, and only on the phases it was measured on.

Sessions are admitted in order (priority, then their place in line: the start time, or when they were last
rotated out) while each gets at least `min_current` on every phase it uses; a session that does not fit is queued at
0 A (OCPP: the EV pauses) and the next one is tried (a single-phase session on a free phase may charge while a
three-phase one waits). Admitted sessions get min_current each, then the rest is water-filled from the highest
priority tier down (each tier max-min fair over the phases), capped by each charger's rating. Limits are multiples
of 0.1 A (OCPP 1.6 limit has one fractional digit), computed in integer tenths and always rounded down, so on every
phase the limits never sum above the budget.

Queue rotation (`rotation_interval` > 0): when a queued session has waited `rotation_interval` and an admitted one
of the same priority shares a phase with it and has charged that long, the one that charged longest pauses and goes
to the back of the line, and the one first in line charges - only if that lets it in and pauses nobody else.
Sessions of another priority are never swapped. Idle sessions (`idle_yield`): a metered session drawing at most
`idle_current` for `idle_yield` while others wait yields its place at once; it is "parked" (admitted only after all
others, at min_current) until it draws again or gets its turn by rotation.

What cannot be changed this round is taken off the top before sharing, on the phases it is wired to: a session
whose charger is unreachable counts at the limit in force on the charger (its last confirmed TxProfile while that
lease runs, the charger's TxDefaultProfile current once it has run out), and so does a session whose last decrease
failed (the old, higher limit is still in force; it is asked again, the others are sized as if it kept the old
limit). No rotation and no yielding in a round where a decrease is pending like that.

A new session's draw reaches the grid reading before its own meter's: for a few seconds after its start, its limit
in force less its reading is taken as its draw, out of a rise of the building-load estimate above its level from
before the start and never more (START_LEAD_S). A queued session resumes after a wait that grows with the pauses it
had lately (RESUME_WAITS_S: 3 s after one, up to 5 minutes after four; contactor cycling).

Safety rules:
- the grid meter stale (or absent), or a charger meter stale/not read yet -> static split of
  `site_limit - building_reserve` on every phase (no measurement to trust); and likewise while the phase accounting
  is inconsistent (PHASE_MISMATCH_A);
- decreases are applied at once (one smaller than the hysteresis only when the limits in force no longer fit);
  increases only when they exceed the hysteresis and the session's last change is older than
  `min_change_interval`, so chargers are not spammed as the building load wobbles;
- a session whose meter shows more than its limit + tolerance for longer than `overdraw_grace` is flagged;
- a session's limit counts as in force until its lease has surely run out (see LEASE_END_UNCERTAINTY_S).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SessionKey = tuple[str, int]  # (charger_id, connector_id)
Phases = tuple[float, float, float]  # per site phase L1, L2, L3
ALL_PHASES: tuple[int, ...] = (0, 1, 2)

# When a TxProfile lease runs out on the charger is only known to within this: startSchedule goes out truncated to
# whole seconds (the lease may end up to 1 s before `sent + lease`), the charger's clock (set from the
# BootNotification answer) may be off by a little, and it re-evaluates its profiles on its own tick. Inside the
# window the higher of the lease's limit and the fallback current counts.
LEASE_END_UNCERTAINTY_S = 2.0

# OCPP 1.6 ChargingSchedulePeriod.limit has one fractional digit: limits are whole tenths of an ampere. Shares are
# computed as integers (tenths), so rounding can never make a sum exceed the budget.
TENTHS_PER_A = 10
_EPS = 1e-9  # float noise: 6.3 * 10 may be 62.99999999999999

# Phase accounting check: the building load on a phase, grid current minus the EV draw mapped onto it, cannot be
# clearly negative. Meters read a poll cycle apart make it so for a sample or two when an EV changes its draw (the
# median of three samples filters that). If it stays below -PHASE_MISMATCH_A for PHASE_MISMATCH_S, EV current is
# being counted on a phase it is not on (a wrong phase_rotation, or a charger meter wired in another order than
# its charger), so it is missing from another phase whose building load is then underestimated: the measurement is
# not trusted (static split) until the accounting is consistent again.
PHASE_MISMATCH_A = 3.0
PHASE_MISMATCH_S = 10.0

# A new session's draw shows in the grid reading before its own meter's: the charger closes its relay when it
# starts the transaction (before the gateway has its StartTransaction), its EV ramps up over a second or two, and
# its meter is read up to a poll cycle after the grid meter. For START_CREDIT_MAX_S after its start, the limit in
# force on a session (its TxDefaultProfile current at first) less what its meter shows is taken as drawn by it, out
# of a rise of the building-load estimate above its level from START_LEAD_S before the start, never more than that
# rise: the estimate cannot drop below where it was before the session started (no estimate from before its start,
# e.g. right after the gateway started or a meter was stale: no credit). The session counts at its full limit in the sharing, so if
# its EV does not draw after all, the current credited to it is not drawn either. START_LEAD_S covers the
# StartTransaction round trip and the gateway's durable write (the EV may draw meanwhile); START_CREDIT_MAX_S an
# EV's ramp-up plus a few bus poll cycles.
START_LEAD_S = 2.0
START_CREDIT_MAX_S = 5.0

# Resuming a queued (0 A) session: an EV paused by its pilot has a few seconds to stop drawing and open its
# contactor; a resume sooner than RESUME_DELAY_S after the pause could catch it half-way. Each pause and resume
# cycles the charger's and the EV's contactors, and some EVs stop charging for good after a few pauses in a row, so
# the wait before a resume grows with the pauses the session had within PAUSE_MEMORY_S: one pause (a short
# queueing) costs the driver 3 s, a session on the edge of the site's room waits 30 s, 2 min, then 5 min (the
# guard time site energy managers such as evcc use between two switchings). Never less than min_change_interval
# after the second pause. Pauses themselves always go out at once (the limit comes first).
RESUME_DELAY_S = 3.0
RESUME_WAITS_S = (RESUME_DELAY_S, 30.0, 120.0, 300.0)  # after 1, 2, 3, >= 4 pauses within PAUSE_MEMORY_S
PAUSE_MEMORY_S = 900.0


@dataclass(frozen=True)
class AllocatorParams:
    site_limit: float  # A per phase at the grid connection
    min_current: float = 6.0  # IEC 61851: below 6 A an EV cannot charge
    margin: float = 1.0  # kept free below the limit to absorb measurement lag
    building_reserve: float = 16.0  # assumed building load when the grid meter is stale
    hysteresis: float = 1.0  # an increase smaller than this is not sent
    min_change_interval: float = 10.0  # s between two increases for one session
    overdraw_tolerance: float = 2.0  # A above its limit a session may draw ...
    overdraw_grace: float = 15.0  # ... for this long (EVs have ~5 s to follow a lower limit; meters lag)
    # The building-load estimate used is the highest seen over this many seconds: meters on a bus are read one after
    # the other, so right after an EV changes its draw the grid and charger readings disagree for a poll cycle; an
    # underestimate must not release current, and a real drop in building load may wait a few seconds.
    other_load_hold: float = 5.0
    # A TxProfile lasts this long unless renewed (inf: never runs out); then the charger applies its TxDefaultProfile,
    # `fallback_current` (also what applies before a session's first TxProfile is confirmed).
    lease: float = math.inf
    fallback_current: float = 6.0
    # Queue rotation (s; 0 = off) and idle sessions yielding their place (s; 0 = off): see the module docstring.
    rotation_interval: float = 0.0
    idle_current: float = 1.0
    idle_yield: float = 0.0


@dataclass(frozen=True)
class SessionInput:
    key: SessionKey
    transaction_id: int
    started_at: float  # monotonic
    max_current: float  # the charger's rating
    priority: int = 0  # higher first
    # What its own meter measures, None if not metered/stale: a tuple gives the current on each of the charger's
    # phases in the charger's own order (a single-phase charger: its one current, or the largest value of a meter
    # with more phases); a number means that current on each phase it is wired to.
    measured: float | tuple[float, ...] | None = None
    metered: bool = False  # it has a meter of its own (so measured None means: not read yet, or stale)
    reachable: bool = True  # its charger is connected: a new limit can be sent to it now
    # the site phase (0 = L1) of each of the charger's phases, in its order
    phases: tuple[int, ...] = ALL_PHASES
    # which meter `measured` comes from: sessions sharing one meter count its draw once
    meter: str | None = None
    # Where the phases of a measured tuple are on the site when that is not `phases`: candidate mappings (a meter
    # before or after a rotation); only what all of them agree on is taken as drawn on a phase. None: `phases`.
    meter_phases: tuple[tuple[int, ...], ...] | None = None


@dataclass(frozen=True)
class Decision:
    key: SessionKey
    transaction_id: int
    limit: float  # A per phase; 0 = queued
    previous: float | None  # what the charger was last told (None = nothing yet)
    in_force: float  # what the charger applies now (Allocator.in_force): a decrease if limit is below it

    @property
    def decrease(self) -> bool:
        return self.limit < self.in_force


@dataclass(frozen=True)
class Overdraw:
    key: SessionKey
    transaction_id: int
    limit: float
    measured: float


@dataclass(frozen=True)
class Rotation:
    """`resumed` gets its turn; `paused` (charged longest) goes to the back of the line."""

    resumed: SessionKey
    paused: tuple[SessionKey, ...]


@dataclass
class Allocation:
    """One round's outcome. `targets` is what each session is to have (an unreachable session's is the limit in
    force on its charger); `changes` are the limits to send now, none for unreachable sessions (decreases first: the
    caller must apply them before the increases, and send no increase when a decrease failed)."""

    mode: str  # "measured" | "fallback"
    available: float  # A for all sessions together on the tightest phase (see available_phases)
    other_load: float | None  # building load estimate (A, highest phase)
    targets: dict[SessionKey, float]
    changes: list[Decision]
    overdraws: list[Overdraw] = field(default_factory=list)
    # sessions counted at what is in force on their charger (unreachable, or their last decrease failed): A each
    held: dict[SessionKey, float] = field(default_factory=dict)
    available_phases: Phases = (0.0, 0.0, 0.0)  # A for all sessions on each site phase
    other_phases: Phases | None = None  # building load estimate per site phase
    waiting: list[SessionKey] = field(default_factory=list)  # queued at 0 A for lack of current
    rotations: list[Rotation] = field(default_factory=list)
    yielded: list[SessionKey] = field(default_factory=list)  # idle sessions that gave their place this round
    mismatch: tuple[int, ...] = ()  # site phases whose accounting is inconsistent (mode is then "fallback")


@dataclass
class _Sent:
    limit: float
    at: float  # when the charger confirmed it
    # when it was sent: the lease starts then (less the startSchedule truncation)
    lease_from: float


def tenths(amps: float) -> int:
    """Whole tenths of an ampere, rounded down (never below 0)."""
    return max(0, math.floor(amps * TENTHS_PER_A + _EPS))


def _tenths_up(amps: float) -> int:
    return max(0, math.ceil(amps * TENTHS_PER_A - _EPS))


def used_phases(s: SessionInput) -> tuple[int, ...]:
    return tuple(sorted(set(s.phases)))


def site_draw(s: SessionInput) -> list[float]:
    """The session's measured draw on each site phase (0 where unknown: overestimating the building load is safe)."""
    out = [0.0, 0.0, 0.0]
    m = s.measured
    if m is None:
        return out
    if isinstance(m, int | float):
        for p in used_phases(s):
            out[p] += max(0.0, float(m))
    elif len(s.phases) == 1:
        out[s.phases[0]] += max(0.0, max(m, default=0.0))
    else:
        candidates = []
        for mapping in s.meter_phases or (s.phases,):
            c = [0.0, 0.0, 0.0]
            for i, amps in enumerate(m[: len(mapping)]):
                c[mapping[i]] += max(0.0, amps)
            candidates.append(c)
        out = [min(c[p] for c in candidates) for p in ALL_PHASES]
    return out


def peak(s: SessionInput) -> float | None:
    """The highest phase current its meter shows, None if unknown."""
    m = s.measured
    if m is None:
        return None
    if isinstance(m, int | float):
        return float(m)
    return max(m, default=0.0)


def _order_key(
    s: SessionInput, parked: Iterable[SessionKey], turn: Mapping[SessionKey, float]
) -> tuple[bool, int, float, float, SessionKey]:
    return (s.key in parked, -s.priority, turn.get(s.key, s.started_at), s.started_at, s.key)


def _share(
    order: Sequence[SessionInput], free: Sequence[int], min_t: int, parked: Iterable[SessionKey] = ()
) -> dict[SessionKey, int]:
    """First-fit admission in `order` at min_t tenths on every phase used, then water-filling of the admitted
    sessions that are not parked, by priority tier. In tenths of an ampere. Pure."""
    parked = set(parked)
    left = list(free)
    t: dict[SessionKey, int] = {s.key: 0 for s in order}
    caps = {s.key: tenths(s.max_current) for s in order}
    admitted: list[SessionInput] = []
    for s in order:
        if caps[s.key] < min_t or caps[s.key] == 0:
            continue  # cannot charge at all
        ph = used_phases(s)
        if all(left[p] >= min_t for p in ph):
            admitted.append(s)
            t[s.key] = min_t
            for p in ph:
                left[p] -= min_t
    for tier in sorted({s.priority for s in admitted if s.key not in parked}, reverse=True):
        _fill([s for s in admitted if s.priority == tier and s.key not in parked], t, left, caps)
    return t


def _fill(
    group: list[SessionInput], t: dict[SessionKey, int], left: list[int], caps: Mapping[SessionKey, int]
) -> None:
    """Raise the group's limits evenly (progressive filling: max-min fair over the phases) until every session is at
    its cap or a phase it uses has nothing left. Equal steps for all while every phase allows them, then single
    tenths to the lowest first (ties: the group's order), so the split differs by at most 0.1 A."""
    phases = {s.key: used_phases(s) for s in group}
    while True:
        open_ = [s for s in group if t[s.key] < caps[s.key] and all(left[p] > 0 for p in phases[s.key])]
        if not open_:
            return
        on = [0, 0, 0]
        for s in open_:
            for p in phases[s.key]:
                on[p] += 1
        chunk = min(
            min(caps[s.key] - t[s.key] for s in open_), min(left[p] // on[p] for p in ALL_PHASES if on[p])
        )
        if chunk >= 1:
            for s in open_:
                t[s.key] += chunk
                for p in phases[s.key]:
                    left[p] -= chunk
            continue
        gave = False
        for s in sorted(open_, key=lambda s: t[s.key]):  # stable: ties keep the group's order
            if all(left[p] >= 1 for p in phases[s.key]):
                t[s.key] += 1
                for p in phases[s.key]:
                    left[p] -= 1
                gave = True
        if not gave:
            return


def share(
    sessions: list[SessionInput], available: float | Sequence[float], min_current: float
) -> dict[SessionKey, float]:
    """Fair share with priorities in 0.1 A steps, each session in order of priority then start time. `available`:
    A per site phase (one number: the same on all three). Pure."""
    avail = [available] * 3 if isinstance(available, int | float) else list(available)
    order = sorted(sessions, key=lambda s: (-s.priority, s.started_at, s.key))
    t = _share(order, [tenths(a) for a in avail], _tenths_up(min_current))
    return {k: v / TENTHS_PER_A for k, v in t.items()}


class Allocator:
    def __init__(self, params: AllocatorParams) -> None:
        self.params = params
        self._sent: dict[SessionKey, _Sent] = {}
        self._refused: set[SessionKey] = set()  # the last decrease failed: the old limit is still in force
        # sent after the last confirmed one but never answered: it may be in force
        self._unknown: dict[SessionKey, _Sent] = {}
        self._over_since: dict[SessionKey, float] = {}
        self._flagged: set[SessionKey] = set()
        self._other_seen: deque[tuple[float, Phases]] = deque()  # (time, filtered building-load estimate)
        # (time, grid - EV draw) of the last three grid samples (may be < 0)
        self._raw: deque[tuple[float, Phases]] = deque(maxlen=3)
        # (time, filtered estimate) for the last START_LEAD_S + START_CREDIT_MAX_S: a new session's baseline
        self._recent: deque[tuple[float, Phases]] = deque()
        self._pauses: dict[SessionKey, deque[float]] = {}  # when each session's 0 A limits were confirmed
        self._last_sample: float | None = None
        self._mismatch_since: float | None = None
        # the line: admission order within a priority tier (start time; when last rotated out or parked)
        self._turn: dict[SessionKey, float] = {}
        self._admitted_since: dict[SessionKey, float] = {}  # got a limit > 0 then (this stint)
        self._waiting_since: dict[SessionKey, float] = {}  # queued at 0 A for lack of current since then
        self._idle_since: dict[SessionKey, float] = {}  # allowed to charge but drawing <= idle_current since
        self._parked: set[SessionKey] = set()  # yielded its place while idle: admitted after everyone else

    def set_site_limit(self, amps: float) -> None:
        if not math.isfinite(amps) or amps < 0:
            raise ValueError("site limit must be a finite number >= 0")
        self.params = dataclasses.replace(self.params, site_limit=amps)

    def sent_limit(self, key: SessionKey) -> float | None:
        s = self._sent.get(key)
        return None if s is None else s.limit

    def confirm(self, key: SessionKey, limit: float, now: float, sent_at: float | None = None) -> None:
        """The charger accepted `limit` (call after SetChargingProfile returned Accepted). `sent_at`: when the
        profile was built (its lease starts then); None: now."""
        prev = self._sent.get(key)
        if prev is not None and limit < prev.limit:
            self._over_since.pop(key, None)  # a lower limit: the EV gets a fresh grace period to follow it
        if limit <= 0 and (prev is None or prev.limit > 0):
            pauses = self._pauses.setdefault(key, deque())
            pauses.append(now)
            while pauses and now - pauses[0] > PAUSE_MEMORY_S:
                pauses.popleft()
        sent = _Sent(limit, now, now if sent_at is None else sent_at)
        self._sent[key] = sent
        self._refused.discard(key)
        unknown = self._unknown.get(key)
        if unknown is not None and unknown.lease_from <= sent.lease_from:
            del self._unknown[key]  # replaced on the charger (same profile id) by the one just confirmed

    def unconfirmed(self, key: SessionKey, limit: float, sent_at: float) -> None:
        """A TxProfile went out but no answer came (timeout, connection lost): the charger may apply it or not, so
        until a later one is confirmed the higher of the two counts as in force."""
        self._unknown[key] = _Sent(limit, sent_at, sent_at)

    def refused(self, key: SessionKey) -> None:
        """A decrease for this session did not land (no answer, rejected, disconnected): whatever was in force
        stays in force. Until a limit is confirmed the others are sized as if it kept it."""
        self._refused.add(key)

    def forget(self, key: SessionKey) -> None:
        self._sent.pop(key, None)
        self._refused.discard(key)
        self._unknown.pop(key, None)
        self._over_since.pop(key, None)
        self._flagged.discard(key)
        self._turn.pop(key, None)
        self._admitted_since.pop(key, None)
        self._waiting_since.pop(key, None)
        self._idle_since.pop(key, None)
        self._parked.discard(key)
        self._pauses.pop(key, None)

    def parked(self, key: SessionKey) -> bool:
        return key in self._parked

    def waiting_since(self, key: SessionKey) -> float | None:
        return self._waiting_since.get(key)

    def lease_running(self, key: SessionKey, now: float) -> bool:
        """The session's last confirmed TxProfile is surely still in force on the charger."""
        s = self._sent.get(key)
        return s is not None and now < s.lease_from + self.params.lease - LEASE_END_UNCERTAINTY_S

    def in_force(self, key: SessionKey, now: float) -> float:
        """The limit the charger applies to this session now, as far as the gateway can know (the higher one where
        it cannot tell): the last confirmed TxProfile while its lease runs, the charger's TxDefaultProfile
        (`fallback_current`) before any was confirmed and once the lease has run out; a later unanswered one too,
        while its lease may run."""
        confirmed = self._lease_force(self._sent.get(key), now)
        force = self.params.fallback_current if confirmed is None else confirmed
        unknown = self._lease_force(self._unknown.get(key), now)
        return force if unknown is None else max(force, unknown)

    def _lease_force(self, s: _Sent | None, now: float) -> float | None:
        """What this TxProfile makes the charger apply now; None once its lease has surely run out."""
        p = self.params
        if s is None:
            return None
        if now < s.lease_from + p.lease - LEASE_END_UNCERTAINTY_S:
            return s.limit
        if now < s.at + p.lease + LEASE_END_UNCERTAINTY_S:
            return max(s.limit, p.fallback_current)
        return None

    # ------------------------------------------------------------------------------------------------------------
    def allocate(
        self,
        sessions: Iterable[SessionInput],
        grid: Sequence[float] | None,
        now: float,
        grid_time: float | None = None,
    ) -> Allocation:
        """`grid`: current per site phase (L1, L2, L3). `grid_time`: when the grid reading was sampled; rounds that
        reuse the same sample add no new evidence to the building-load filter (None: every call is a new sample)."""
        p = self.params
        sessions = list(sessions)
        new = [s for s in sessions if s.key not in self._turn]
        for s in sessions:
            self._turn.setdefault(s.key, s.started_at)
        # A metered session whose meter has not answered (yet) makes the building-load estimate meaningless: its
        # draw would count in the grid reading but not be subtracted. Treat that like a stale grid meter.
        blind = any(s.metered and s.measured is None for s in sessions)
        other: Phases | None = None
        mismatch: tuple[int, ...] = ()
        if grid is None or blind:
            self._other_seen.clear()  # estimates from before the meter went stale are not evidence later
            self._raw.clear()
            self._recent.clear()
            self._last_sample = None
            self._mismatch_since = None
        else:
            draw = self._site_draw(sessions)
            g = (float(grid[0]), float(grid[1]), float(grid[2]))
            signed = (g[0] - draw[0], g[1] - draw[1], g[2] - draw[2])
            credit = self._start_credit(sessions, new, now)
            signed = credit(signed)
            median = self._sample(signed, grid_time, now)
            mismatch = self._check_mismatch(median, now)
            if mismatch:
                self._other_seen.clear()
                self._recent.clear()
            else:
                other = self._building_load(median, signed, g, now)
        mode = "fallback" if other is None else "measured"
        if other is None:
            static = max(0.0, p.site_limit - p.building_reserve - p.margin)
            available: Phases = (static, static, static)
        else:
            a = [max(0.0, p.site_limit - p.margin - o) for o in other]
            available = (a[0], a[1], a[2])
        for key in [k for k, u in self._unknown.items() if self._lease_force(u, now) is None]:
            del self._unknown[key]  # its lease is over either way
        # Nothing can be sent to an unreachable charger: what is in force there comes off the top.
        held = {s.key: self.in_force(s.key, now) for s in sessions if not s.reachable}
        unreachable = [s for s in sessions if not s.reachable]
        free = _minus(available, unreachable, held)
        pool = [s for s in sessions if s.reachable]
        stuck = [s for s in pool if s.key in self._refused]
        self._track_idle(pool, now)
        min_t = _tenths_up(p.min_current)
        rotations: list[Rotation] = []
        yielded: list[SessionKey] = []
        # Its last decrease failed: nothing is rotated or yielded until it lands (no increase may go out anyway).
        shares = self._share_pool(pool, [tenths(f) for f in free], min_t, now, not stuck, rotations, yielded)
        targets = {k: v / TENTHS_PER_A for k, v in shares.items()}
        if stuck:
            # Its old limit may still be in force: it is asked for its share again, and the others get what is
            # left if it keeps the old limit (or takes its share, when that is higher).
            for s in stuck:
                held[s.key] = max(targets[s.key], self.in_force(s.key, now))
            others = [s for s in pool if s.key not in self._refused]
            rest = _minus(free, stuck, held)
            again = _share(self._ordered(others), [tenths(f) for f in rest], min_t, self._parked)
            targets.update({k: v / TENTHS_PER_A for k, v in again.items()})
        for s in unreachable:
            targets[s.key] = held[s.key]
        self._keep_small_decreases(sessions, targets, held, available, now)
        changes = self._changes(pool, targets, now)
        overdraws = self._overdraws(sessions, now)
        waiting = self._note_admission([s for s in pool if s.key not in self._refused], targets, min_t, now)
        return Allocation(
            mode,
            min(available),
            None if other is None else max(other),
            targets,
            changes,
            overdraws,
            held,
            available_phases=available,
            other_phases=other,
            waiting=waiting,
            rotations=rotations,
            yielded=yielded,
            mismatch=mismatch,
        )

    # ---- measurement ---------------------------------------------------------------------------------------------
    @staticmethod
    def _site_draw(sessions: list[SessionInput]) -> list[float]:
        total = [0.0, 0.0, 0.0]
        seen: set[str] = set()
        for s in sorted(sessions, key=lambda s: s.key):
            if s.meter is not None:
                if s.meter in seen:
                    continue  # connectors sharing a whole-charger meter: its draw counts once
                seen.add(s.meter)
            for i, amps in enumerate(site_draw(s)):
                total[i] += amps
        return total

    def _start_credit(
        self, sessions: list[SessionInput], new: list[SessionInput], now: float
    ) -> Callable[[Phases], Phases]:
        """How a building-load estimate is corrected for sessions started in the last START_CREDIT_MAX_S (see
        START_LEAD_S): the rise above the baseline, up to their limit in force less what their meter shows, is
        theirs. Estimates recorded since START_LEAD_S before a new session's start are corrected at once (the EV
        may have drawn before the gateway knew of it). Returns the correction for a new sample."""
        credit = [0.0, 0.0, 0.0]
        floor = [0.0, 0.0, 0.0]
        for s in sessions:
            if now - s.started_at > START_CREDIT_MAX_S:
                continue
            base = self._baseline(s.started_at)
            if base is None:
                continue  # nothing known from before its start: no credit (overestimating is safe)
            force = self.in_force(s.key, now)
            own = site_draw(s)
            for ph in used_phases(s):
                credit[ph] += max(0.0, force - own[ph])
                floor[ph] = max(floor[ph], base[ph])

        def correct(v: Phases) -> Phases:
            out = [
                min(v[ph], max(floor[ph], v[ph] - credit[ph])) if credit[ph] > 0 else v[ph]
                for ph in ALL_PHASES
            ]
            return (out[0], out[1], out[2])

        if any(credit) and new:
            since = min(s.started_at for s in new) - START_LEAD_S
            self._raw = deque(((t, correct(v) if t >= since else v) for t, v in self._raw), maxlen=3)
            self._other_seen = deque((t, correct(v) if t >= since else v) for t, v in self._other_seen)
        return correct

    def _baseline(self, started: float) -> Phases | None:
        """The building-load level before a session started: the latest estimate recorded START_LEAD_S before its
        start, else the earliest one before its start (it may include the EV's draw already: a higher level
        allows less credit, which is safe); None if there is none."""
        found = None
        for t, v in self._recent:
            if t < started - START_LEAD_S:
                found = v
        if found is None and self._recent and self._recent[0][0] < started:
            found = self._recent[0][1]
        return found

    def _sample(self, signed: Phases, sample: float | None, now: float) -> Phases:
        """Record a new grid sample's raw estimate; return the per-phase median of the last three (fewer: the
        highest). A one-sample glitch between meters read at different moments changes nothing."""
        if sample is None or sample != self._last_sample:
            self._raw.append((now, signed))
            self._last_sample = sample
        out = []
        for ph in ALL_PHASES:
            vals = sorted(r[1][ph] for r in self._raw)
            out.append(vals[len(vals) // 2] if len(vals) == 3 else vals[-1])
        return (out[0], out[1], out[2])

    def _check_mismatch(self, median: Phases, now: float) -> tuple[int, ...]:
        bad = tuple(ph for ph in ALL_PHASES if median[ph] < -PHASE_MISMATCH_A)
        if not bad:
            self._mismatch_since = None
            return ()
        if self._mismatch_since is None:
            self._mismatch_since = now
        return bad if now - self._mismatch_since >= PHASE_MISMATCH_S else ()

    def _building_load(self, median: Phases, raw: Phases, grid: Phases, now: float) -> Phases:
        """Filter the building-load estimate, per phase: the median of the last three samples (above), then the
        highest over `other_load_hold` s (releasing current needs a lower estimate that lasts); but on a phase where
        the grid itself shows the site over its limit the raw estimate counts at once (safety)."""
        p = self.params
        est = (max(0.0, median[0]), max(0.0, median[1]), max(0.0, median[2]))
        self._other_seen.append((now, est))
        while self._other_seen and now - self._other_seen[0][0] > p.other_load_hold:
            self._other_seen.popleft()
        self._recent.append((now, est))
        while len(self._recent) > 1 and now - self._recent[1][0] > START_LEAD_S + START_CREDIT_MAX_S:
            self._recent.popleft()  # the oldest kept is older than the window: a baseline for a start in it
        out = []
        for ph in ALL_PHASES:
            held = max(v[ph] for _, v in self._other_seen)
            out.append(max(held, max(0.0, raw[ph])) if grid[ph] > p.site_limit else held)
        return (out[0], out[1], out[2])

    # ---- sharing, the line, rotation -------------------------------------------------------------------------------
    def _ordered(
        self,
        sessions: list[SessionInput],
        parked: set[SessionKey] | None = None,
        turn: Mapping[SessionKey, float] | None = None,
    ) -> list[SessionInput]:
        pk = self._parked if parked is None else parked
        tn = self._turn if turn is None else turn
        return sorted(sessions, key=lambda s: _order_key(s, pk, tn))

    def _track_idle(self, pool: list[SessionInput], now: float) -> None:
        p = self.params
        for s in pool:
            amps = peak(s)
            if amps is not None and amps > p.idle_current:
                self._idle_since.pop(s.key, None)
                self._parked.discard(s.key)  # it draws: it wants its place back
            elif amps is not None and self.in_force(s.key, now) >= p.min_current - _EPS:
                self._idle_since.setdefault(s.key, now)
            else:
                self._idle_since.pop(s.key, None)  # not allowed to charge (or not metered): cannot tell

    def _share_pool(
        self,
        pool: list[SessionInput],
        free: list[int],
        min_t: int,
        now: float,
        rotate: bool,
        rotations: list[Rotation],
        yielded: list[SessionKey],
    ) -> dict[SessionKey, int]:
        p = self.params
        t = _share(self._ordered(pool), free, min_t, self._parked)
        if not rotate:
            return t

        def waiting(t: Mapping[SessionKey, int]) -> list[SessionInput]:
            eligible = [s for s in pool if t[s.key] == 0 and tenths(s.max_current) >= max(min_t, 1)]
            return self._ordered(eligible)

        queued = waiting(t)
        if not queued:
            return t
        if p.idle_yield > 0 and any(s.key not in self._parked for s in queued):
            for s in pool:
                since = self._idle_since.get(s.key)
                if (
                    t[s.key] > 0
                    and s.key not in self._parked
                    and since is not None
                    and now - since >= p.idle_yield
                ):
                    self._parked.add(s.key)
                    self._turn[s.key] = now
                    yielded.append(s.key)
            if yielded:
                t = _share(self._ordered(pool), free, min_t, self._parked)
        if p.rotation_interval <= 0:
            return t
        for w in waiting(t):
            if t[w.key] > 0 or now - self._waiting_since.get(w.key, now) < p.rotation_interval - _EPS:
                continue
            candidates = [
                c
                for c in pool
                if t[c.key] > 0
                and c.priority == w.priority
                and c.key not in self._parked
                and now - self._admitted_since.get(c.key, now) >= p.rotation_interval - _EPS
                and set(c.phases) & set(w.phases)
            ]
            candidates.sort(
                key=lambda c: (self._admitted_since[c.key], _order_key(c, self._parked, self._turn))
            )
            swap = self._try_swap(pool, free, min_t, t, w, candidates, now)
            if swap is not None:
                t, paused = swap
                rotations.append(Rotation(w.key, tuple(c.key for c in paused)))
        return t

    def _try_swap(
        self,
        pool: list[SessionInput],
        free: list[int],
        min_t: int,
        t: Mapping[SessionKey, int],
        w: SessionInput,
        candidates: list[SessionInput],
        now: float,
    ) -> tuple[dict[SessionKey, int], list[SessionInput]] | None:
        """Pause as few of `candidates` (longest charging first) as let `w` in without pausing anyone else."""

        def trial(out: list[SessionInput]) -> dict[SessionKey, int]:
            parked = self._parked - {w.key}
            turn = dict(self._turn)
            for c in out:
                turn[c.key] = now
            return _share(self._ordered(pool, parked, turn), free, min_t, parked)

        def ok(t2: Mapping[SessionKey, int], out: list[SessionInput]) -> bool:
            paused = {c.key for c in out}
            return t2[w.key] > 0 and not any(
                t[s.key] > 0 and t2[s.key] == 0 and s.key not in paused for s in pool
            )

        chosen: list[SessionInput] = []
        found: dict[SessionKey, int] | None = None
        for c in candidates:
            chosen.append(c)
            t2 = trial(chosen)
            if ok(t2, chosen):
                found = t2
                break
        if found is None:
            return None
        for c in list(chosen):  # the ones that were not needed keep charging
            rest = [x for x in chosen if x is not c]
            if rest:
                t3 = trial(rest)
                if ok(t3, rest):
                    chosen, found = rest, t3
        for c in chosen:
            self._turn[c.key] = now
        self._parked.discard(w.key)
        self._idle_since.pop(w.key, None)
        return found, chosen

    def _note_admission(
        self, pool: list[SessionInput], targets: Mapping[SessionKey, float], min_t: int, now: float
    ) -> list[SessionKey]:
        waiting = []
        for s in pool:
            if targets[s.key] > 0:
                self._admitted_since.setdefault(s.key, now)
                self._waiting_since.pop(s.key, None)
            elif tenths(s.max_current) >= max(min_t, 1):
                self._waiting_since.setdefault(s.key, now)
                self._admitted_since.pop(s.key, None)
                waiting.append(s.key)
            else:
                self._admitted_since.pop(s.key, None)
                self._waiting_since.pop(s.key, None)
        return waiting

    # ---- what goes out -------------------------------------------------------------------------------------------
    def _keep_small_decreases(
        self,
        sessions: list[SessionInput],
        targets: dict[SessionKey, float],
        held: Mapping[SessionKey, float],
        available: Phases,
        now: float,
    ) -> None:
        """A decrease smaller than the hysteresis is not sent while the limits in force still fit on every phase
        (0.1 A steps would otherwise send one whenever the building-load estimate rises a little)."""
        p = self.params
        usage = [0.0, 0.0, 0.0]
        for s in sessions:
            for ph in used_phases(s):
                usage[ph] += held.get(s.key, targets[s.key])
        for s in self._ordered(sessions):
            if (
                not s.reachable
                or s.key in held
                or s.key in self._unknown
                or not self.lease_running(s.key, now)
            ):
                continue
            sent = self._sent[s.key].limit
            target = targets[s.key]
            extra = sent - target
            if target <= 0 or extra <= _EPS or extra >= p.hysteresis - _EPS or sent > s.max_current:
                continue
            wired = used_phases(s)
            if all(usage[i] + extra <= available[i] + _EPS for i in wired):
                targets[s.key] = sent
                for i in wired:
                    usage[i] += extra

    def _changes(
        self, sessions: list[SessionInput], targets: Mapping[SessionKey, float], now: float
    ) -> list[Decision]:
        p = self.params
        decreases: list[Decision] = []
        increases: list[Decision] = []
        for s in sessions:
            target = targets[s.key]
            sent = self._sent.get(s.key)
            force = self.in_force(s.key, now)
            if sent is None or not self.lease_running(s.key, now) or s.key in self._unknown:
                # nothing confirmed yet, the lease has (or may have) run out, or an unanswered one may be in force:
                # a TxProfile goes out whatever the target, compared with what the charger may apply now
                d = Decision(s.key, s.transaction_id, target, None if sent is None else sent.limit, force)
                (decreases if d.decrease else increases).append(d)
                continue
            if target < sent.limit:
                decreases.append(Decision(s.key, s.transaction_id, target, sent.limit, force))
            elif target > sent.limit:
                from_zero = sent.limit == 0  # resuming a queued session is always worth a message
                big_enough = target - sent.limit >= p.hysteresis - _EPS or from_zero
                wait = p.min_change_interval
                if from_zero:
                    wait = self._resume_wait(s.key, now)
                if big_enough and now - sent.at >= wait:
                    increases.append(Decision(s.key, s.transaction_id, target, sent.limit, force))
        return decreases + increases

    def _resume_wait(self, key: SessionKey, now: float) -> float:
        """How long a queued session waits after its pause before it may resume (RESUME_WAITS_S)."""
        pauses = sum(now - t <= PAUSE_MEMORY_S for t in self._pauses.get(key, ()))
        if pauses <= 1:
            return RESUME_DELAY_S  # queued once lately: resume promptly
        step = RESUME_WAITS_S[min(pauses, len(RESUME_WAITS_S)) - 1]
        return max(step, self.params.min_change_interval)

    def _overdraws(self, sessions: list[SessionInput], now: float) -> list[Overdraw]:
        p = self.params
        out: list[Overdraw] = []
        sharing: dict[str, list[SessionKey]] = {}
        for s in sessions:
            if s.meter is not None:
                sharing.setdefault(s.meter, []).append(s.key)
        for s in sessions:
            amps = peak(s)
            sent = self._sent.get(s.key)
            if amps is None or sent is None:
                self._over_since.pop(s.key, None)
                continue
            # grace counts from when the overdraw began or the limit was last lowered (confirm() resets it);
            # compared with what is in force (after a lease ran out: the fallback current); a meter shared by
            # several connectors is compared with their limits together
            keys = sharing.get(s.meter, [s.key]) if s.meter is not None else [s.key]
            limit = sum(self.in_force(k, now) for k in keys)
            if amps > limit + p.overdraw_tolerance:
                since = self._over_since.setdefault(s.key, now)
                if now - since >= p.overdraw_grace and s.key not in self._flagged:
                    self._flagged.add(s.key)
                    out.append(Overdraw(s.key, s.transaction_id, limit, amps))
            else:
                self._over_since.pop(s.key, None)
                self._flagged.discard(s.key)
        return out


def _minus(
    avail: Sequence[float], sessions: list[SessionInput], amps: Mapping[SessionKey, float]
) -> list[float]:
    """`avail` per phase less `amps` of each session on each phase it is wired to (never below 0)."""
    out = list(avail)
    for s in sessions:
        for ph in used_phases(s):
            out[ph] -= amps[s.key]
    return [max(0.0, v) for v in out]
