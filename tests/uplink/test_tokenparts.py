"""Multi-part token list assembly (pure): duplicates, order, inconsistent parts, replacement, timeout, caps."""

from __future__ import annotations

from gateway.uplink.tokenparts import (
    FINISHED_KEPT,
    Accept,
    Assembly,
    Duplicate,
    Limits,
    Part,
    PartHeader,
    Refuse,
    Replay,
    split_counts,
)

H = PartHeader("u1", "full", 7, None, 3)


def part(i: int, h: PartHeader = H, digest: str | None = None, tokens: int = 10, size: int = 100) -> Part:
    return Part(h, i, tokens, size, digest or f"d{i}")


def feed(a: Assembly, p: Part, applied: int | None = 0, now: float = 0.0) -> object:
    d = a.decide(p, applied, now)
    if isinstance(d, Accept):
        if d.replaces is not None:
            a.abandon(d.replaces)
        a.accepted(p, now)
    return d


def test_parts_in_any_order_complete_once_with_duplicates_ignored() -> None:
    a = Assembly()
    assert feed(a, part(2)) == Accept(complete=False)
    assert feed(a, part(0)) == Accept(complete=False)
    assert feed(a, part(2)) == Duplicate(complete=False)  # same index, same content: idempotent
    assert a.staged is not None and a.staged.received == 2 and a.staged.tokens == 20
    assert feed(a, part(1)) == Accept(complete=True)
    assert a.staged.complete
    replay = a.finished_update(H, True, {"version_applied": 7})
    assert a.staged is None
    # a late duplicate of any part gets the final result again
    assert a.decide(part(0), 7, 1.0) == replay == Replay(True, {"version_applied": 7})


def test_a_single_part_update_completes_at_once() -> None:
    h = PartHeader("one", "full", 1, None, 1)
    assert Assembly().decide(part(0, h), 0, 0.0) == Accept(complete=True)


def test_inconsistent_parts_are_refused_and_change_nothing() -> None:
    a = Assembly()
    feed(a, part(0))
    before = (dict(a.staged.digests), a.staged.tokens) if a.staged else None
    for other in (
        PartHeader("u1", "full", 7, None, 4),  # different parts count
        PartHeader("u1", "full", 8, None, 3),  # different version
        PartHeader("u1", "differential", 7, 6, 3),  # different kind
    ):
        d = a.decide(part(1, other), 0, 0.0)
        assert isinstance(d, Refuse) and d.code == "invalid_args" and d.abandon is None, d
        assert "inconsistent" in d.message
    # same index with different content
    d = a.decide(part(0, digest="other"), 0, 0.0)
    assert isinstance(d, Refuse) and d.code == "invalid_args" and "different content" in d.message
    assert a.staged is not None and (dict(a.staged.digests), a.staged.tokens) == before
    # out of range indices / counts
    assert isinstance(a.decide(part(3), 0, 0.0), Refuse)
    assert isinstance(a.decide(Part(PartHeader("u2", "full", 9, None, 0), 0, 1, 1, "x"), 0, 0.0), Refuse)


def test_a_newer_version_replaces_the_staged_update_an_older_one_is_refused() -> None:
    a = Assembly()
    feed(a, part(0))
    older = PartHeader("u0", "full", 6, None, 2)
    d = a.decide(part(0, older), 0, 0.0)
    assert isinstance(d, Refuse) and d.code == "token_list_refused" and "u1" in d.message
    same_version_restart = PartHeader("u1b", "full", 7, None, 2)
    assert a.decide(part(0, same_version_restart), 0, 0.0) == Accept(complete=False, replaces="u1")
    newer = PartHeader("u2", "full", 8, None, 2)
    assert feed(a, part(1, newer)) == Accept(complete=False, replaces="u1")
    assert a.staged is not None and a.staged.header == newer and a.staged.received == 1


def test_an_idle_staged_update_expires() -> None:
    a = Assembly(Limits(idle_timeout=10.0))
    feed(a, part(0), now=0.0)
    feed(a, part(1), now=8.0)  # each new part extends the deadline
    assert a.expired(17.0) is None
    assert a.expired(18.0) == "u1"
    # a part of the same update after the timeout starts it over (the old rows are replaced)
    d = a.decide(part(2), 0, 18.0)
    assert d == Accept(complete=False, replaces="u1")
    a.abandon("u1")
    a.accepted(part(2), 18.0)
    assert a.staged is not None and a.staged.received == 1


def test_versions_are_checked_at_the_first_part() -> None:
    a = Assembly()
    d = a.decide(part(0, PartHeader("f", "full", 3, None, 2)), 5, 0.0)
    assert isinstance(d, Refuse) and d.code == "token_list_refused" and "older" in d.message
    d = a.decide(part(0, PartHeader("d", "differential", 9, 4, 2)), 5, 0.0)
    assert isinstance(d, Refuse) and "full resync required" in d.message
    assert a.decide(part(0, PartHeader("d", "differential", 9, 5, 2)), 5, 0.0) == Accept(complete=False)
    assert a.decide(part(0, PartHeader("f", "full", 5, None, 2)), 5, 0.0) == Accept(complete=False)
    assert a.staged is None  # decide never changes state


def test_caps_on_tokens_and_bytes_abandon_the_update() -> None:
    a = Assembly(Limits(max_tokens=25, max_differential_tokens=5, max_bytes=1000))
    feed(a, part(0))
    feed(a, part(1))
    d = a.decide(part(2, tokens=6), 0, 0.0)
    assert isinstance(d, Refuse) and d.code == "token_list_refused" and d.abandon == "u1"
    big = a.decide(part(2, size=801), 0, 0.0)
    assert isinstance(big, Refuse) and big.abandon == "u1"
    diff = PartHeader("d", "differential", 9, 0, 2)
    d = a.decide(part(0, diff, tokens=6), 0, 0.0)
    assert isinstance(d, Refuse) and d.abandon is None
    assert isinstance(a.decide(part(0, PartHeader("p", "full", 9, None, 10**6)), 0, 0.0), Refuse)


def test_finished_results_are_bounded_and_checked_for_consistency() -> None:
    a = Assembly()
    for n in range(FINISHED_KEPT + 5):
        a.finished_update(PartHeader(f"u{n}", "full", n + 1, None, 1), True, {"version_applied": n + 1})
    assert len(a.finished) == FINISHED_KEPT and "u0" not in a.finished
    last = PartHeader(f"u{FINISHED_KEPT + 4}", "full", FINISHED_KEPT + 5, None, 1)
    assert isinstance(a.decide(part(0, last), None, 0.0), Replay)
    wrong = PartHeader(last.update_id, "full", 1, None, 1)
    assert isinstance(a.decide(part(0, wrong), None, 0.0), Refuse)


def test_split_counts() -> None:
    assert split_counts(100, 10, 1000) == 1
    assert split_counts(10_000, 100, 1000) == 10
    assert split_counts(10_001, 100, 1000) == 11
    assert split_counts(10_000, 3, 1000) == 3  # never more parts than entries
