"""Reconnect backoff (sans-I/O): jittered exponential, capped; refused credentials go straight to the cap."""

from __future__ import annotations

import random
from collections.abc import Callable

# First retry after a lost connection: quick enough that a broker restart costs little.
BACKOFF_INITIAL_S = 0.5
# Cap from the contract: a fleet of gateways must not hammer a broker that is down or refusing them.
BACKOFF_CAP_S = 60.0


class Backoff:
    """`next_delay(refused)` after each failed attempt; `reset()` after a successful connection.

    Equal jitter: the delay is uniformly drawn from [d/2, d] where d doubles per failure up to the cap, so a
    fleet that lost the broker at the same moment spreads its reconnects without ever retrying at once."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL_S,
        cap: float = BACKOFF_CAP_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError("expected 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self._rand = rand
        self.failures = 0

    def next_delay(self, refused: bool = False) -> float:
        self.failures += 1
        if refused:
            d = self.cap
        else:
            d = min(self.cap, self.initial * (2 ** min(self.failures - 1, 32)))
        return d / 2 + self._rand() * d / 2

    def reset(self) -> None:
        self.failures = 0
