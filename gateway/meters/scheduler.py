"""Poll scheduler for the meters on one bus: which meter next, retries, backoff, staleness. Pure; the caller passes
the monotonic time in.

A healthy meter is polled every `interval` seconds (fixed rate, no drift; a late poll does not make the next one
early). A poll that fails is retried at once up to `retries` times (each attempt costs at most one request timeout).
When every attempt failed the meter goes into backoff: it is not asked again for `backoff` seconds (doubling from
backoff_min up to backoff_max), and while backing off each probe gets a single attempt, so a dead meter costs the bus
at most one timeout per backoff period and the other meters keep their rate. A meter is stale while it is backing off
or when its last good reading is older than `stale_after`, whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PollPolicy:
    interval: float = 1.0
    retries: int = 1
    backoff_min: float = 2.0
    backoff_max: float = 30.0
    stale_after: float = 5.0

    def validate(self) -> str | None:
        if self.interval <= 0 or self.backoff_min <= 0 or self.backoff_max < self.backoff_min:
            return "need interval > 0 and 0 < backoff_min <= backoff_max"
        if self.retries < 0 or self.retries > 5:
            return "retries must be 0..5"
        if self.stale_after < self.interval:
            return "stale_after must be at least the poll interval"
        return None


@dataclass
class _Meter:
    id: str
    due: float
    last_success: float | None = None
    failures: int = 0  # consecutive failed polls
    polls: int = 0
    successes: int = 0

    @property
    def backing_off(self) -> bool:
        return self.failures > 0


class PollScheduler:
    def __init__(self, meter_ids: list[str], policy: PollPolicy, now: float) -> None:
        if len(set(meter_ids)) != len(meter_ids):
            raise ValueError("duplicate meter id on one bus")
        self.policy = policy
        # Spread the first polls by list order; ties go to the earlier meter.
        self._meters = {m: _Meter(m, now) for m in meter_ids}
        self._order = list(meter_ids)

    def next_poll(self) -> tuple[str, float]:
        """The meter to poll next and the monotonic time it is due (may be in the past: poll now)."""
        best = min(self._order, key=lambda m: (self._meters[m].due, self._order.index(m)))
        return best, self._meters[best].due

    def attempts(self, meter_id: str) -> int:
        """Requests allowed for this poll: 1 + retries when healthy, a single probe while backing off."""
        return 1 if self._meters[meter_id].backing_off else 1 + self.policy.retries

    def record_success(self, meter_id: str, started: float, now: float) -> None:
        m = self._meters[meter_id]
        m.polls += 1
        m.successes += 1
        m.last_success = now
        base = m.due if not m.backing_off else started
        m.failures = 0
        nxt = base + self.policy.interval
        # fixed rate, but never catch up with a burst after a long stall
        m.due = nxt if nxt > now - self.policy.interval else now

    def record_failure(self, meter_id: str, now: float) -> float:
        """All attempts of a poll failed; returns the backoff period chosen."""
        m = self._meters[meter_id]
        m.polls += 1
        m.failures += 1
        backoff = min(self.policy.backoff_max, self.policy.backoff_min * 2.0 ** (m.failures - 1))
        m.due = now + backoff
        return backoff

    def is_stale(self, meter_id: str, now: float) -> bool:
        m = self._meters[meter_id]
        if m.backing_off or m.last_success is None:
            return True
        return now - m.last_success > self.policy.stale_after

    def status(self, meter_id: str, now: float) -> dict[str, object]:
        m = self._meters[meter_id]
        return {
            "stale": self.is_stale(meter_id, now),
            "backing_off": m.backing_off,
            "consecutive_failures": m.failures,
            "polls": m.polls,
            "successes": m.successes,
            "last_success_age": None if m.last_success is None else now - m.last_success,
        }
