from __future__ import annotations

import pytest

from gateway.meters.scheduler import PollPolicy, PollScheduler

POLICY = PollPolicy(interval=1.0, retries=1, backoff_min=2.0, backoff_max=16.0, stale_after=3.0)


def test_round_robin_at_fixed_rate() -> None:
    s = PollScheduler(["a", "b", "c"], POLICY, now=0.0)
    order = []
    t = 0.0
    for _ in range(9):
        m, due = s.next_poll()
        t = max(t, due) + 0.1  # each poll takes 0.1 s
        order.append(m)
        s.record_success(m, t - 0.1, t)
    assert order == ["a", "b", "c"] * 3
    assert not any(s.is_stale(m, t) for m in "abc")


def test_failure_backs_off_doubling_and_costs_one_attempt_per_period() -> None:
    s = PollScheduler(["a", "dead"], POLICY, now=0.0)
    assert s.attempts("dead") == 2
    assert s.record_failure("dead", 1.0) == 2.0
    assert s.attempts("dead") == 1  # while backing off: a single probe
    assert s.is_stale("dead", 1.0)
    assert s.record_failure("dead", 3.0) == 4.0
    assert s.record_failure("dead", 7.0) == 8.0
    assert s.record_failure("dead", 15.0) == 16.0
    assert s.record_failure("dead", 31.0) == 16.0  # capped
    _, due = s.next_poll()
    # the healthy meter is due long before the dead one
    assert s.next_poll()[0] == "a" and due <= 1.0


def test_recovery_clears_backoff() -> None:
    s = PollScheduler(["a"], POLICY, now=0.0)
    s.record_failure("a", 0.5)
    s.record_success("a", 2.5, 2.6)
    assert not s.is_stale("a", 2.6)
    assert s.attempts("a") == 2
    assert s.next_poll()[1] == pytest.approx(3.5)


def test_stale_after_time_without_success() -> None:
    s = PollScheduler(["a"], POLICY, now=0.0)
    assert s.is_stale("a", 0.0)  # nothing read yet
    s.record_success("a", 0.0, 0.1)
    assert not s.is_stale("a", 3.0)
    assert s.is_stale("a", 3.2)


def test_no_burst_after_a_stall() -> None:
    s = PollScheduler(["a"], POLICY, now=0.0)
    s.record_success("a", 0.0, 0.1)
    s.record_success("a", 50.0, 50.1)  # stalled for 50 s
    assert s.next_poll()[1] >= 49.1


def test_policy_validation() -> None:
    assert PollPolicy(stale_after=0.5, interval=1.0).validate() is not None
    assert PollPolicy(backoff_min=5, backoff_max=1).validate() is not None
    assert POLICY.validate() is None
