"""The pure authorization decision: precedence, expiry, cache TTL, parent groups, offline policies and caps."""

from __future__ import annotations

import pytest

from gateway.auth.decision import (
    ASK_EMSP,
    AuthDecision,
    CacheEntry,
    Facts,
    LocalEntry,
    Policy,
    Request,
    evaluate,
)
from gateway.auth.emsp import EmspAuthAnswer

NOW = 1_800_000_000.0  # injected clock: 2027-01-15
HOUR = 3600.0


def listed(status: str = "Accepted", **kw: object) -> LocalEntry:
    args: dict[str, object] = {
        "id": "TAG1",
        "status": status,
        "expiry": None,
        "parent_id": None,
        "chargers": None,
        "source": "local_list",
    }
    args.update(kw)
    return LocalEntry(**args)  # type: ignore[arg-type]


def cached(status: str = "Accepted", age: float = 60.0, **kw: object) -> CacheEntry:
    args: dict[str, object] = {
        "id": "TAG1",
        "status": status,
        "expiry": None,
        "parent_id": None,
        "cached_at": NOW - age,
    }
    args.update(kw)
    return CacheEntry(**args)  # type: ignore[arg-type]


def req(purpose: str = "start", **kw: object) -> Request:
    args: dict[str, object] = {"charger_id": "CP1", "id_tag": "TAG1", "purpose": purpose}
    args.update(kw)
    return Request(**args)  # type: ignore[arg-type]


def final(result: object) -> AuthDecision:
    assert isinstance(result, AuthDecision), result
    return result


# -- 1. the local list -------------------------------------------------------------------------------------------
def test_listed_token_is_answered_from_the_list_without_asking_the_emsp() -> None:
    d = final(evaluate(req(), Facts(local=(listed(parent_id="FLEET"),), emsp_reachable=True), Policy(), NOW))
    assert (d.status, d.source, d.auth_method, d.parent_id_tag) == (
        "Accepted",
        "local_list",
        "WHITELIST",
        "FLEET",
    )
    assert d.id_tag_info() == {"status": "Accepted", "parentIdTag": "FLEET"}


def test_listed_blocked_token_is_refused_even_with_a_fresh_cached_accepted() -> None:
    facts = Facts(local=(listed("Blocked"),), cache=cached("Accepted"), emsp_reachable=True)
    d = final(evaluate(req(), facts, Policy(local_pre_authorize=True), NOW))
    assert (d.status, d.source) == ("Blocked", "local_list")


def test_expiry_date_in_the_past_turns_accepted_into_expired() -> None:
    d = final(evaluate(req(), Facts(local=(listed(expiry=NOW - 1),)), Policy(), NOW))
    assert d.status == "Expired"
    assert d.reason == "expiry date passed"
    assert d.id_tag_info()["expiryDate"] == "2027-01-15T07:59:59Z"
    # one second earlier it was still valid
    assert (
        final(evaluate(req(), Facts(local=(listed(expiry=NOW - 1),)), Policy(), NOW - 2)).status == "Accepted"
    )


def test_charger_restriction() -> None:
    facts = Facts(local=(listed(chargers=("CP2", "CP3")),))
    assert final(evaluate(req(charger_id="CP2"), facts, Policy(), NOW)).status == "Accepted"
    d = final(evaluate(req(charger_id="CP1"), facts, Policy(), NOW))
    assert (d.status, d.reason) == ("Invalid", "not valid at this charger")


def test_manual_and_emsp_list_disagree_most_restrictive_wins() -> None:
    manual_block = listed("Blocked", source="manual")
    d = final(evaluate(req(), Facts(local=(listed("Accepted"), manual_block)), Policy(), NOW))
    assert (d.status, d.source) == ("Blocked", "manual")
    # an operator cannot un-block a card the eMSP blocked
    d = final(
        evaluate(req(), Facts(local=(listed("Blocked"), listed("Accepted", source="manual"))), Policy(), NOW)
    )
    assert (d.status, d.source) == ("Blocked", "local_list")
    # both accept: the eMSP list is named as the source
    d = final(evaluate(req(), Facts(local=(listed(), listed(source="manual"))), Policy(), NOW))
    assert (d.status, d.source) == ("Accepted", "local_list")


# -- 2.-4. eMSP and cache ------------------------------------------------------------------------------------------
def test_unknown_token_with_reachable_emsp_asks_it_and_uses_its_answer() -> None:
    facts = Facts(emsp_reachable=True)
    assert evaluate(req(), facts, Policy(), NOW) is ASK_EMSP
    d = final(
        evaluate(req(), facts, Policy(), NOW, EmspAuthAnswer("Accepted", expiry=NOW + HOUR, parent_id="P"))
    )
    assert (d.status, d.source, d.auth_method, d.parent_id_tag) == ("Accepted", "emsp", "AUTH_REQUEST", "P")
    d = final(evaluate(req(), facts, Policy(), NOW, EmspAuthAnswer("Accepted", expiry=NOW - 5)))
    assert d.status == "Expired"
    d = final(evaluate(req(), facts, Policy(), NOW, EmspAuthAnswer("Blocked")))
    assert (d.status, d.source) == ("Blocked", "emsp")


def test_reachable_emsp_is_asked_even_with_a_fresh_cache_unless_pre_authorize() -> None:
    facts = Facts(cache=cached("Accepted"), emsp_reachable=True)
    assert evaluate(req(), facts, Policy(), NOW) is ASK_EMSP
    d = final(evaluate(req(), facts, Policy(local_pre_authorize=True), NOW))
    assert (d.status, d.source, d.auth_method) == ("Accepted", "cache", "AUTH_CACHE")


def test_cache_within_ttl_answers_when_the_emsp_is_silent() -> None:
    policy = Policy(cache_ttl_s=HOUR)
    facts = Facts(cache=cached("Accepted", age=HOUR - 1), emsp_reachable=True)
    d = final(evaluate(req(), facts, policy, NOW, None))
    assert (d.status, d.source) == ("Accepted", "cache")
    assert "no eMSP answer within the budget" in d.reason


def test_cache_past_ttl_is_ignored_and_offline_policy_applies() -> None:
    policy = Policy(cache_ttl_s=HOUR, offline="reject")
    d = final(evaluate(req(), Facts(cache=cached("Accepted", age=HOUR)), policy, NOW))
    assert (d.status, d.source, d.auth_method) == ("Invalid", "offline_policy", "OFFLINE_UNKNOWN")
    assert "eMSP unreachable" in d.reason


def test_cached_negative_answers_win_at_any_age_over_the_offline_policy() -> None:
    policy = Policy(cache_ttl_s=HOUR, offline="accept")
    for status in ("Blocked", "Expired", "Invalid"):
        d = final(evaluate(req(), Facts(cache=cached(status, age=30 * 24 * HOUR)), policy, NOW))
        assert (d.status, d.source) == (status, "cache")


def test_cached_accepted_with_passed_expiry_is_expired() -> None:
    d = final(evaluate(req(), Facts(cache=cached("Accepted", expiry=NOW - 1)), Policy(), NOW))
    assert (d.status, d.source) == ("Expired", "cache")


# -- 5. offline policies -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "status"), [("reject", "Invalid"), ("accept", "Accepted"), ("accept_limited", "Accepted")]
)
def test_offline_policy_for_unknown_tokens(mode: str, status: str) -> None:
    d = final(evaluate(req(), Facts(), Policy(offline=mode), NOW))  # type: ignore[arg-type]
    assert (d.status, d.source, d.auth_method) == (status, "offline_policy", "OFFLINE_UNKNOWN")
    assert mode in d.reason
    assert (d.limits is not None) == (mode == "accept_limited")


def test_accept_limited_caps_and_concurrency() -> None:
    policy = Policy(
        offline="accept_limited", limited_max_kwh=7.5, limited_max_minutes=0, limited_max_concurrent=2
    )
    d = final(evaluate(req(), Facts(limited_active=1), policy, NOW))
    assert d.status == "Accepted"
    assert d.limits is not None
    assert (d.limits.max_kwh, d.limits.max_minutes) == (7.5, None)  # 0 = no cap
    d = final(evaluate(req(), Facts(limited_active=2), policy, NOW))
    assert d.status == "Invalid"
    assert "cap of 2 concurrent sessions" in d.reason
    assert d.limits is None


def test_emsp_silent_falls_back_to_offline_policy() -> None:
    d = final(evaluate(req(), Facts(emsp_reachable=True), Policy(offline="accept"), NOW, None))
    assert (d.status, d.source) == ("Accepted", "offline_policy")
    assert "no eMSP answer within the budget" in d.reason


# -- stops and parent groups ---------------------------------------------------------------------------------------
def stop(id_tag: str, **kw: object) -> Request:
    return req(
        "stop", id_tag=id_tag, transaction_id=7, session_id_tag="TAG1", session_parent_id="FLEET", **kw
    )


def test_the_sessions_own_token_may_always_stop_it() -> None:
    d = final(evaluate(stop("TAG1"), Facts(local=(listed("Blocked"),)), Policy(), NOW))
    assert (d.status, d.source, d.auth_method) == ("Accepted", "session", "SESSION_TOKEN")


def test_another_token_of_the_same_parent_group_may_stop() -> None:
    other = listed(id="TAG2", parent_id="FLEET")
    d = final(evaluate(stop("TAG2"), Facts(local=(other,)), Policy(), NOW))
    assert (d.status, d.parent_id_tag) == ("Accepted", "FLEET")
    assert d.reason == "same parent group as the session's token"


def test_a_token_of_another_group_or_unknown_cannot_stop() -> None:
    d = final(evaluate(stop("TAG3"), Facts(local=(listed(id="TAG3", parent_id="OTHER"),)), Policy(), NOW))
    assert d.status == "Invalid"
    d = final(evaluate(stop("TAG3"), Facts(), Policy(offline="accept"), NOW))
    assert d.status == "Invalid"
    assert "unknown token cannot stop" in d.reason
    # a blocked token of the same group keeps its own status
    d = final(
        evaluate(stop("TAG3"), Facts(local=(listed("Blocked", id="TAG3", parent_id="FLEET"),)), Policy(), NOW)
    )
    assert d.status == "Blocked"


def test_same_group_via_the_emsp() -> None:
    r = stop("TAG4")
    assert evaluate(r, Facts(emsp_reachable=True), Policy(), NOW) is ASK_EMSP
    d = final(
        evaluate(r, Facts(emsp_reachable=True), Policy(), NOW, EmspAuthAnswer("Accepted", parent_id="FLEET"))
    )
    assert d.status == "Accepted"
