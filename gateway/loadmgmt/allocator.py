"""Allocation of the site's current among charging sessions. Pure: inputs and the monotonic time in, decisions out.

Model (per phase, amps): the grid meter measures everything; the chargers' own draw (their meters, else what they
were last allowed) is subtracted to get the building's other load; what remains below the site limit (minus a
margin) is shared among sessions. Sessions are admitted in priority order (then by start time) while each can get
at least `min_current`; the others are queued at 0 A (OCPP: the EV pauses). Admitted sessions get min_current each,
then the rest is water-filled from the highest priority tier down, capped by each charger's rating.

What cannot be changed this round is taken off the top before sharing: a session whose charger is unreachable
counts at the limit in force on the charger (its last confirmed TxProfile while that lease runs, the charger's
TxDefaultProfile current once it has run out), and so does a session whose last decrease failed (the old, higher
limit is still in force; it is asked again, the others are sized as if it kept the old limit).

Safety rules:
- the grid meter stale (or absent), or a charger meter stale/not read yet -> static split of
  `site_limit - building_reserve` (no measurement to trust);
- decreases are applied at once; increases only when they exceed the hysteresis and the session's last change is
  older than `min_change_interval`, so chargers are not spammed as the building load wobbles;
- a session whose meter shows more than its limit + tolerance for longer than `overdraw_grace` is flagged;
- a session's limit counts as in force until its lease has surely run out (see LEASE_END_UNCERTAINTY_S).
All three-phase: the budget is the tightest phase's (a conservative simplification for mixed 1/3-phase sites).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SessionKey = tuple[str, int]  # (charger_id, connector_id)

# When a TxProfile lease runs out on the charger is only known to within this: startSchedule goes out truncated to
# whole seconds (the lease may end up to 1 s before `sent + lease`), the charger's clock (set from the
# BootNotification answer) may be off by a little, and it re-evaluates its profiles on its own tick. Inside the
# window the higher of the lease's limit and the fallback current counts.
LEASE_END_UNCERTAINTY_S = 2.0


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


@dataclass(frozen=True)
class SessionInput:
    key: SessionKey
    transaction_id: int
    started_at: float  # monotonic
    max_current: float  # the charger's rating
    priority: int = 0  # higher first
    measured: float | None = None  # max phase current from its own meter, None if not metered/stale
    metered: bool = False  # it has a meter of its own (so measured None means: not read yet, or stale)
    reachable: bool = True  # its charger is connected: a new limit can be sent to it now


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


@dataclass
class Allocation:
    """One round's outcome. `targets` is the ideal allocation (an unreachable session's is the limit in force on
    its charger); `changes` are the limits to send now, none for unreachable sessions (decreases first: the caller
    must apply them before the increases, and send no increase when a decrease failed)."""

    mode: str  # "measured" | "fallback"
    available: float  # A per phase for all sessions together
    other_load: float | None  # building load estimate (A, tightest phase)
    targets: dict[SessionKey, float]
    changes: list[Decision]
    overdraws: list[Overdraw] = field(default_factory=list)
    # sessions counted at what is in force on their charger (unreachable, or their last decrease failed): A each
    held: dict[SessionKey, float] = field(default_factory=dict)


@dataclass
class _Sent:
    limit: float
    at: float  # when the charger confirmed it
    # when it was sent: the lease starts then (less the startSchedule truncation)
    lease_from: float


class Allocator:
    def __init__(self, params: AllocatorParams) -> None:
        self.params = params
        self._sent: dict[SessionKey, _Sent] = {}
        self._refused: set[SessionKey] = set()  # the last decrease failed: the old limit is still in force
        # sent after the last confirmed one but never answered: it may be in force
        self._unknown: dict[SessionKey, _Sent] = {}
        self._over_since: dict[SessionKey, float] = {}
        self._flagged: set[SessionKey] = set()
        self._other_seen: deque[tuple[float, float]] = deque()  # (time, filtered building-load estimate)
        self._raw: deque[float] = deque(maxlen=3)  # raw estimates of the last grid samples
        self._last_sample: float | None = None

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
        grid: tuple[float, float, float] | None,
        now: float,
        grid_time: float | None = None,
    ) -> Allocation:
        """`grid_time`: when the grid reading was sampled; rounds that reuse the same sample add no new evidence
        to the building-load filter (None: every call is a new sample)."""
        p = self.params
        sessions = list(sessions)
        # A metered session whose meter has not answered (yet) makes the building-load estimate meaningless: its
        # draw would count in the grid reading but not be subtracted. Treat that like a stale grid meter.
        blind = any(s.metered and s.measured is None for s in sessions)
        if grid is None or blind:
            self._other_seen.clear()  # estimates from before the meter went stale are not evidence later
            self._raw.clear()
            self._last_sample = None
            mode = "fallback"
            other: float | None = None
            available = p.site_limit - p.building_reserve - p.margin
        else:
            mode = "measured"
            ev_draw = sum(self._draw(s) for s in sessions)
            # every session is assumed to load all three phases equally: subtract from each phase
            raw = max(0.0, max(g - ev_draw for g in grid))
            other = self._building_load(raw, max(grid), now, grid_time)
            available = p.site_limit - p.margin - other
        available = max(0.0, available)
        for key in [k for k, u in self._unknown.items() if self._lease_force(u, now) is None]:
            del self._unknown[key]  # its lease is over either way
        # Nothing can be sent to an unreachable charger: what is in force there comes off the top.
        held = {s.key: self.in_force(s.key, now) for s in sessions if not s.reachable}
        free = max(0.0, available - sum(held.values()))
        reachable = [s for s in sessions if s.reachable]
        targets = share(reachable, free, p.min_current)
        stuck = [s for s in reachable if s.key in self._refused]
        if stuck:
            # Its last decrease failed, so its old limit may still be in force: it is asked for its share again,
            # and the others get what is left if it keeps the old limit (or takes its share, when that is higher).
            for s in stuck:
                held[s.key] = max(targets[s.key], self.in_force(s.key, now))
            others = [s for s in reachable if s.key not in self._refused]
            stuck_total = sum(held[s.key] for s in stuck)
            targets.update(share(others, max(0.0, free - stuck_total), p.min_current))
        for s in sessions:
            if not s.reachable:
                targets[s.key] = held[s.key]
        changes = self._changes(reachable, targets, now)
        overdraws = self._overdraws(sessions, now)
        return Allocation(mode, available, other, targets, changes, overdraws, held)

    def _building_load(self, raw: float, grid_max: float, now: float, sample: float | None) -> float:
        """Filter the raw building-load estimate. Meters on a bus are read one after the other, so when an EV
        changes its draw the grid and its own meter disagree for one sample, in either direction:
        - median of the last three grid samples: a one-sample glitch changes nothing (no oscillation);
        - then the highest over `other_load_hold` s: releasing current needs a lower estimate that lasts;
        - but when the grid itself shows the site over its limit the raw estimate counts at once (safety)."""
        p = self.params
        if sample is None or sample != self._last_sample:
            self._raw.append(raw)
            self._last_sample = sample
        vals = sorted(self._raw)
        median = vals[len(vals) // 2] if len(vals) == 3 else vals[-1]
        self._other_seen.append((now, median))
        while self._other_seen and now - self._other_seen[0][0] > p.other_load_hold:
            self._other_seen.popleft()
        held = max(v for _, v in self._other_seen)
        return max(held, raw) if grid_max > p.site_limit else held

    def _draw(self, s: SessionInput) -> float:
        # Unmetered: count nothing. The building load is then overestimated, which is safe (the EV may draw up to
        # its limit at any moment); assuming it draws its limit would be stable but could overshoot the site limit
        # by whatever the EV leaves unused. Meter the chargers (or feed their reported current) to get the full share.
        return s.measured if s.measured is not None else 0.0

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
                big_enough = target - sent.limit >= p.hysteresis or from_zero
                if big_enough and now - sent.at >= p.min_change_interval:
                    increases.append(Decision(s.key, s.transaction_id, target, sent.limit, force))
        return decreases + increases

    def _overdraws(self, sessions: list[SessionInput], now: float) -> list[Overdraw]:
        p = self.params
        out: list[Overdraw] = []
        for s in sessions:
            sent = self._sent.get(s.key)
            if s.measured is None or sent is None:
                self._over_since.pop(s.key, None)
                continue
            # grace counts from when the overdraw began or the limit was last lowered (confirm() resets it);
            # compared with what is in force (after a lease ran out: the fallback current)
            limit = self.in_force(s.key, now)
            if s.measured > limit + p.overdraw_tolerance:
                since = self._over_since.setdefault(s.key, now)
                if now - since >= p.overdraw_grace and s.key not in self._flagged:
                    self._flagged.add(s.key)
                    out.append(Overdraw(s.key, s.transaction_id, limit, s.measured))
            else:
                self._over_since.pop(s.key, None)
                self._flagged.discard(s.key)
        return out


def share(sessions: list[SessionInput], available: float, min_current: float) -> dict[SessionKey, float]:
    """Fair share with priorities, whole amps (OCPP limits go out as multiples of 0.1 A; whole amps are what most
    chargers resolve). Pure."""
    order = sorted(sessions, key=lambda s: (-s.priority, s.started_at, s.key))
    targets: dict[SessionKey, float] = {s.key: 0.0 for s in sessions}
    admitted: list[SessionInput] = []
    budget = math.floor(available + 1e-9)
    for s in order:
        need = max(min_current, 0.0)
        if s.max_current < min_current:
            continue  # cannot charge at all
        if budget - need * (len(admitted) + 1) >= -1e-9:
            admitted.append(s)
    if not admitted:
        return targets
    for s in admitted:
        targets[s.key] = float(min_current)
    rest = budget - min_current * len(admitted)
    tiers = sorted({s.priority for s in admitted}, reverse=True)
    for tier in tiers:
        group = [s for s in admitted if s.priority == tier]
        rest = _water_fill(group, targets, rest)
        if rest <= 0:
            break
    return {k: float(math.floor(v + 1e-9)) for k, v in targets.items()}


def _water_fill(group: list[SessionInput], targets: dict[SessionKey, float], rest: float) -> float:
    """Raise the group's targets evenly (1 A steps) until the rest is used or every session is at its cap."""
    while rest >= 1:
        open_ = [s for s in group if targets[s.key] + 1 <= s.max_current]
        if not open_:
            break
        # give 1 A to the lowest first (ties: the earlier session), so the split differs by at most 1 A
        open_.sort(key=lambda s: (targets[s.key], s.started_at, s.key))
        for s in open_:
            if rest < 1:
                break
            targets[s.key] += 1
            rest -= 1
    return rest
