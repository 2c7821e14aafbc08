"""ConcurrentTx (`[auth] concurrent_sessions = "refuse"`): the pure rule (which active transactions count), the
decision it makes, and AuthService against a real SQLite store with real transactions rows."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from authfakes import EmspDouble, insert_transaction

from gateway import events
from gateway.auth import tokenstore as ts
from gateway.auth.decision import (
    START_ORDER_SLACK_S,
    ActiveSession,
    AuthDecision,
    CacheEntry,
    Facts,
    LocalEntry,
    Policy,
    Request,
    concurrent_conflicts,
    evaluate,
)
from gateway.auth.emsp import EmspAuthAnswer
from gateway.auth.service import AuthService, answer_before_commit
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenSpec
from gateway.config import ConfigError, load_config
from gateway.store import Store

NOW = 1_800_000_000.0
REFUSE = Policy(concurrent_sessions="refuse", concurrent_stale_after_s=86400.0)


def session(tx: int, charger: str = "CP2", connector: int = 1, age: float = 600.0) -> ActiveSession:
    return ActiveSession(tx, charger, connector, NOW - age)


def req(purpose: str = "authorize", charger: str = "CP1", **kw: Any) -> Request:
    return Request(charger_id=charger, id_tag="TAG1", purpose=purpose, **kw)  # type: ignore[arg-type]


def ids(sessions: list[ActiveSession]) -> list[int]:
    return [s.transaction_id for s in sessions]


# -- which transactions count ---------------------------------------------------------------------------------------
def test_a_transaction_at_another_charger_counts_for_authorize_and_start() -> None:
    for r in (req("authorize"), req("start", connector_id=1), req("start")):
        assert ids(concurrent_conflicts(r, (session(7),), REFUSE, NOW)[0]) == [7]


def test_same_charger_counts_only_for_a_start_on_another_connector() -> None:
    here = (session(7, charger="CP1", connector=1),)
    # Authorize.req names no connector: a charger that lost its transaction must not lock its driver out
    assert concurrent_conflicts(req("authorize"), here, REFUSE, NOW) == ([], [])
    # the same connector: a resent StartTransaction, or a new start after the charger forgot the old transaction
    assert concurrent_conflicts(req("start", connector_id=1), here, REFUSE, NOW) == ([], [])
    # no connector known (an Authorizer caller that does not pass it): treated like an Authorize
    assert concurrent_conflicts(req("start"), here, REFUSE, NOW) == ([], [])
    assert ids(concurrent_conflicts(req("start", connector_id=2), here, REFUSE, NOW)[0]) == [7]


def test_stale_transactions_do_not_count() -> None:
    policy = Policy(concurrent_sessions="refuse", concurrent_stale_after_s=3600.0)
    fresh, stale = session(1, age=3599.0), session(2, age=3601.0)
    assert ids(concurrent_conflicts(req(), (fresh, stale), policy, NOW)[0]) == [1]


def test_a_late_delivered_start_is_not_refused_for_a_transaction_that_began_after_it() -> None:
    queued_at = NOW - 3 * 3600.0  # the charger started offline three hours ago and delivers the start now
    began_later = session(7, age=3600.0)  # its StartTransaction reached the gateway an hour ago
    began_before = session(8, age=4 * 3600.0)
    r = req("start", connector_id=1, start_time=queued_at)
    conflicts, later = concurrent_conflicts(r, (began_later, began_before), REFUSE, NOW)
    assert (ids(conflicts), ids(later)) == ([8], [7])
    # within the clock slack it still counts (charger and gateway clocks differ a little)
    close = ActiveSession(9, "CP2", 1, queued_at + START_ORDER_SLACK_S - 1)
    assert ids(concurrent_conflicts(r, (close,), REFUSE, NOW)[0]) == [9]


def test_a_start_time_from_a_clock_far_off_is_ignored() -> None:
    s = (session(7, age=60.0),)
    for bad in (NOW - 2 * 86400.0, NOW + 3600.0):  # outside the stale window / in the future
        r = req("start", connector_id=1, start_time=bad)
        assert ids(concurrent_conflicts(r, s, REFUSE, NOW)[0]) == [7]


# -- the decision -----------------------------------------------------------------------------------------------
def listed(status: str = "Accepted", **kw: Any) -> LocalEntry:
    args: dict[str, Any] = {
        "id": "TAG1",
        "status": status,
        "expiry": None,
        "parent_id": "FLEET",
        "chargers": None,
        "source": "local_list",
    }
    args.update(kw)
    return LocalEntry(**args)


def decide(r: Request, facts: Facts, policy: Policy = REFUSE, emsp: Any = None) -> AuthDecision:
    d = evaluate(r, facts, policy, NOW) if emsp is None else evaluate(r, facts, policy, NOW, emsp)
    assert isinstance(d, AuthDecision)
    return d


def test_refuse_answers_concurrent_tx_keeping_the_token_facts() -> None:
    expiry = NOW + 86400.0
    facts = Facts(local=(listed(expiry=expiry),), active_sessions=(session(7),))
    d = decide(req("start", connector_id=1), facts)
    assert d.status == "ConcurrentTx"
    assert d.id_tag_info() == {
        "status": "ConcurrentTx",
        "expiryDate": "2027-01-16T08:00:00Z",
        "parentIdTag": "FLEET",
    }
    assert (d.source, d.auth_method) == ("local_list", "WHITELIST")
    assert "transaction 7 at CP2 connector 1" in d.reason and "listed Accepted" in d.reason
    # the default policy allows it (today's behaviour)
    assert decide(req("start", connector_id=1), facts, Policy()).status == "Accepted"


def test_only_an_accepted_token_turns_concurrent_tx_and_stops_never_do() -> None:
    active = (session(7),)
    assert decide(req(), Facts(local=(listed("Blocked"),), active_sessions=active)).status == "Blocked"
    stop = Request(
        charger_id="CP1",
        id_tag="TAG1",
        purpose="stop",
        transaction_id=9,
        session_id_tag="TAG1",
    )
    assert decide(stop, Facts(active_sessions=active)).status == "Accepted"


def test_offline_policy_and_emsp_acceptances_are_checked_too() -> None:
    limited = Policy(offline="accept_limited", concurrent_sessions="refuse")
    d = decide(req("start", connector_id=1), Facts(active_sessions=(session(7),)), limited)
    assert (d.status, d.source, d.limits) == ("ConcurrentTx", "offline_policy", None)
    d = decide(
        req(), Facts(emsp_reachable=True, active_sessions=(session(7),)), emsp=EmspAuthAnswer("Accepted")
    )
    assert (d.status, d.source) == ("ConcurrentTx", "emsp")


def test_an_overlap_with_a_later_transaction_is_accepted_and_said_so() -> None:
    facts = Facts(local=(listed(),), active_sessions=(session(7, age=60.0),))
    d = decide(req("start", connector_id=1, start_time=NOW - 3600.0), facts)
    assert d.status == "Accepted"
    assert "overlaps transaction(s) 7 that began after this start" in d.reason


def test_a_cached_concurrent_tx_is_not_an_answer_about_the_token() -> None:
    cache = CacheEntry("TAG1", "ConcurrentTx", None, None, NOW - 7 * 86400.0)
    d = decide(req(), Facts(cache=cache), Policy(offline="accept"))
    assert (d.status, d.source) == ("Accepted", "offline_policy")


# -- settings ---------------------------------------------------------------------------------------------------
def test_settings_defaults_and_bounds(tmp_path: Any) -> None:
    assert (AuthSection().concurrent_sessions, AuthSection().concurrent_stale_after_s) == ("allow", 86400.0)
    assert AuthSection(concurrent_stale_after_s=59.0).validate() is not None
    assert AuthSection(concurrent_stale_after_s=31 * 86400.0).validate() is not None
    assert AuthSection(concurrent_sessions="refuse", concurrent_stale_after_s=3600.0).validate() is None
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nid = "t"\ndata_dir = "data"\n[auth]\nconcurrent_sessions = "sometimes"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "concurrent_sessions" in str(e.value)


# -- AuthService against the store ----------------------------------------------------------------------------------
def service(store: Store, wall: Callable[[], float] = lambda: NOW, **kw: Any) -> AuthService:
    settings = AuthSection(concurrent_sessions="refuse", **kw)
    svc = AuthService(store, settings, wall=wall)
    store.write_sync(lambda c: ts.upsert_manual(c, [TokenSpec("TAG1", "Accepted")], NOW))
    return svc


def tx(store: Store, charger: str, connector: int = 1, age: float = 60.0, tag: str = "TAG1") -> int:
    return store.write_sync(
        lambda c: insert_transaction(c, charger, tag, connector_id=connector, started_at=NOW - age)
    )


def test_service_answers_concurrent_tx_from_the_transactions_table(store: Store) -> None:
    svc = service(store)
    t1 = tx(store, "CP1", tag=" tag1 ")  # stored as the charger sent it: compared normalized

    async def body() -> None:
        assert (await svc.decide("CP2", "TAG1", purpose="authorize")).status == "ConcurrentTx"
        assert (await svc.decide("CP1", "TAG1", purpose="authorize")).status == "Accepted"
        assert (await svc.decide("CP1", "TAG1", purpose="start", connector_id=1)).status == "Accepted"
        d = await svc.decide("CP1", "TAG1", purpose="start", connector_id=2)
        assert d.status == "ConcurrentTx" and f"transaction {t1} at CP1 connector 1" in d.reason
        # a queued start from before the transaction began: not refused
        early = await svc.decide(
            "CP2", "TAG1", purpose="start", connector_id=1, start_ts="2027-01-15T06:00:00Z"
        )
        assert early.status == "Accepted" and "overlaps" in early.reason
        # an unreadable timestamp is ignored, not an error
        assert (
            await svc.decide("CP2", "TAG1", purpose="start", connector_id=1, start_ts="yesterday")
        ).status == "ConcurrentTx"
        # the transaction stops: the token is free again
        store.write_sync(lambda c: c.execute("UPDATE transactions SET state = 'stopped' WHERE id = ?", (t1,)))
        assert (await svc.decide("CP2", "TAG1", purpose="authorize")).status == "Accepted"

    asyncio.run(body())


def test_service_ignores_stale_transactions_and_allow_changes_nothing(store: Store) -> None:
    svc = service(store, concurrent_stale_after_s=3600.0)
    tx(store, "CP1", age=3700.0)

    async def body() -> None:
        assert (await svc.decide("CP2", "TAG1", purpose="authorize")).status == "Accepted"
        tx(store, "CP1", age=10.0)
        assert (await svc.decide("CP2", "TAG1", purpose="authorize")).status == "ConcurrentTx"
        allow = AuthService(store, AuthSection(), wall=lambda: NOW)
        assert (await allow.decide("CP2", "TAG1", purpose="authorize")).status == "Accepted"

    asyncio.run(body())


def test_a_concurrent_tx_start_is_recorded_with_its_event_and_no_offline_obligation(store: Store) -> None:
    svc = AuthService(
        store, AuthSection(concurrent_sessions="refuse", offline_policy="accept"), wall=lambda: NOW
    )
    tx(store, "CP1", tag="UNKNOWN1")

    async def body() -> AuthDecision:
        return await svc.decide("CP2", "UNKNOWN1", purpose="start", connector_id=1)

    d = asyncio.run(body())
    assert (d.status, d.source) == ("ConcurrentTx", "offline_policy")

    def op(c: sqlite3.Connection) -> int:
        t = insert_transaction(c, "CP2", "UNKNOWN1")
        svc.record(c, d, transaction_id=t)
        return t

    t2 = store.write_sync(op)
    row = store.read(
        lambda c: c.execute(
            "SELECT status, purpose, transaction_id FROM auth_decisions ORDER BY id DESC LIMIT 1"
        ).fetchone()
    )
    assert tuple(row) == ("ConcurrentTx", "start", t2)
    body_ = store.read(
        lambda c: events.decode_body(
            c.execute("SELECT body FROM outbox WHERE kind = 'auth.decision' ORDER BY seq DESC").fetchone()[0]
        )
    )
    assert (body_["status"], body_["transaction_id"]) == ("ConcurrentTx", t2)
    # not Accepted: no re-check / cap obligation for it
    assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_offline_sessions").fetchone()[0]) == 0


def test_an_emsp_concurrent_tx_answer_is_passed_on_but_not_cached(store: Store) -> None:
    emsp = EmspDouble()
    emsp.answers["ROAMER"] = EmspAuthAnswer("ConcurrentTx")
    svc = AuthService(store, AuthSection(), emsp=emsp, wall=lambda: NOW)

    async def body() -> AuthDecision:
        d = await svc.decide("CP1", "ROAMER", purpose="authorize")
        await svc.flush_records()
        return d

    d = asyncio.run(body())
    assert (d.status, d.source) == ("ConcurrentTx", "emsp")
    assert store.read(lambda c: ts.lookup_cache(c, "ROAMER")) is None
    assert not store.write_sync(lambda c: ts.put_cache(c, "ROAMER", "ConcurrentTx", None, None, NOW, 10))


def test_an_authorize_answered_concurrent_tx_is_a_refusal_answered_at_once() -> None:
    d = decide(
        req(), Facts(emsp_reachable=True, active_sessions=(session(7),)), emsp=EmspAuthAnswer("Accepted")
    )
    assert (d.status, d.source) == ("ConcurrentTx", "emsp")
    assert answer_before_commit(
        d
    )  # the eMSP's Accepted would wait for the commit; the refusal permits nothing
