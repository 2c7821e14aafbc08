"""The simulator's clock: real monotonic time, plus a simulated timeline running `speed` times faster.

Protocol timing (the agent's timeouts, heartbeats, retry backoff) runs on real time so a fast demo never makes a
loopback round trip look like a timeout; only the physics (energy = power x dt x speed, the EV's state of charge,
departure times) runs on the simulated timeline. OCPP timestamps come from the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    def __init__(
        self,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._monotonic = monotonic
        self._wall = wall
        self._t0 = monotonic()

    def real(self) -> float:
        """Monotonic real seconds (arbitrary origin)."""
        return self._monotonic()

    def sim(self) -> float:
        """Simulated seconds since the clock was created."""
        return (self._monotonic() - self._t0) * self.speed

    def wall(self) -> float:
        return self._wall()

    def sim_to_real(self, sim_seconds: float) -> float:
        """How many real seconds a simulated duration takes."""
        return sim_seconds / self.speed


class ManualTime:
    """A settable time source for unit tests: `clock = SimClock(speed, monotonic=t)`, then `t.advance(s)`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self.now += seconds
