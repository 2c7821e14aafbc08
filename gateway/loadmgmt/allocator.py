"""Allocation of the site's current among charging sessions. Pure: inputs and the monotonic time in, decisions out.

Model (per phase, amps): the grid meter measures everything; the chargers' own draw (their meters, else what they
were last allowed) is subtracted to get the building's other load; what remains below the site limit (minus a
margin) is shared among sessions. Sessions are admitted in priority order (then by start time) while each can get
at least `min_current`; the others are queued at 0 A (OCPP: the EV pauses). Admitted sessions get min_current each,
then the rest is water-filled from the highest priority tier down, capped by each charger's rating.

Safety rules:
- the grid meter stale (or absent), or a charger meter stale/not read yet -> static split of
  `site_limit - building_reserve` (no measurement to trust);
- decreases are applied at once; increases only when they exceed the hysteresis and the session's last change is
  older than `min_change_interval`, so chargers are not spammed as the building load wobbles;
- a session whose meter shows more than its limit + tolerance for longer than `overdraw_grace` is flagged.
All three-phase: the budget is the tightest phase's (a conservative simplification for mixed 1/3-phase sites).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SessionKey = tuple[str, int]  # (charger_id, connector_id)


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


@dataclass(frozen=True)
class SessionInput:
    key: SessionKey
    transaction_id: int
    started_at: float  # monotonic
    max_current: float  # the charger's rating
    priority: int = 0  # higher first
    measured: float | None = None  # max phase current from its own meter, None if not metered/stale
    metered: bool = False  # it has a meter of its own (so measured None means: not read yet, or stale)


@dataclass(frozen=True)
class Decision:
    key: SessionKey
    transaction_id: int
    limit: float  # A per phase; 0 = queued
    previous: float | None  # what the charger was last told (None = nothing yet)


@dataclass(frozen=True)
class Overdraw:
    key: SessionKey
    transaction_id: int
    limit: float
    measured: float


@dataclass
class Allocation:
    """One round's outcome. `targets` is the ideal allocation; `changes` are the limits to send now
    (decreases first: the caller must apply them before the increases)."""

    mode: str  # "measured" | "fallback"
    available: float  # A per phase for all sessions together
    other_load: float | None  # building load estimate (A, tightest phase)
    targets: dict[SessionKey, float]
    changes: list[Decision]
    overdraws: list[Overdraw] = field(default_factory=list)


@dataclass
class _Sent:
    limit: float
    at: float


class Allocator:
    def __init__(self, params: AllocatorParams) -> None:
        self.params = params
        self._sent: dict[SessionKey, _Sent] = {}
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

    def confirm(self, key: SessionKey, limit: float, now: float) -> None:
        """The charger accepted `limit` (call after SetChargingProfile returned Accepted)."""
        prev = self._sent.get(key)
        if prev is not None and limit < prev.limit:
            self._over_since.pop(key, None)  # a lower limit: the EV gets a fresh grace period to follow it
        self._sent[key] = _Sent(limit, now)

    def forget(self, key: SessionKey) -> None:
        self._sent.pop(key, None)
        self._over_since.pop(key, None)
        self._flagged.discard(key)

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
        targets = share(sessions, available, p.min_current)
        changes = self._changes(sessions, targets, now)
        overdraws = self._overdraws(sessions, now)
        return Allocation(mode, available, other, targets, changes, overdraws)

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
            if sent is None:
                (decreases if target == 0 else increases).append(
                    Decision(s.key, s.transaction_id, target, None)
                )
                continue
            if target < sent.limit:
                decreases.append(Decision(s.key, s.transaction_id, target, sent.limit))
            elif target > sent.limit:
                from_zero = sent.limit == 0  # resuming a queued session is always worth a message
                big_enough = target - sent.limit >= p.hysteresis or from_zero
                if big_enough and now - sent.at >= p.min_change_interval:
                    increases.append(Decision(s.key, s.transaction_id, target, sent.limit))
        return decreases + increases

    def _overdraws(self, sessions: list[SessionInput], now: float) -> list[Overdraw]:
        p = self.params
        out: list[Overdraw] = []
        for s in sessions:
            sent = self._sent.get(s.key)
            if s.measured is None or sent is None:
                self._over_since.pop(s.key, None)
                continue
            # grace counts from when the overdraw began or the limit was last lowered (confirm() resets it)
            if s.measured > sent.limit + p.overdraw_tolerance:
                since = self._over_since.setdefault(s.key, now)
                if now - since >= p.overdraw_grace and s.key not in self._flagged:
                    self._flagged.add(s.key)
                    out.append(Overdraw(s.key, s.transaction_id, sent.limit, s.measured))
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
