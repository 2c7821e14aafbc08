from __future__ import annotations

import pytest

from gateway.uplink.backoff import Backoff


def test_doubles_with_equal_jitter_up_to_the_cap() -> None:
    lo = Backoff(initial=0.5, cap=60.0, rand=lambda: 0.0)
    hi = Backoff(initial=0.5, cap=60.0, rand=lambda: 1.0)
    lows = [lo.next_delay() for _ in range(10)]
    highs = [hi.next_delay() for _ in range(10)]
    assert highs[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert lows[:3] == [0.25, 0.5, 1.0]
    assert highs[-1] == 60.0 and lows[-1] == 30.0


def test_refused_goes_straight_to_the_cap_and_reset_restarts() -> None:
    b = Backoff(initial=0.5, cap=60.0, rand=lambda: 0.5)
    assert b.next_delay(refused=True) == 45.0
    b.reset()
    assert b.next_delay() == 0.375


def test_many_failures_do_not_overflow() -> None:
    b = Backoff(rand=lambda: 1.0)
    for _ in range(10_000):
        d = b.next_delay()
    assert d == 60.0


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(initial=5, cap=1)
