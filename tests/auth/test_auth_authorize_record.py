"""What is durable before an Authorize's answer (AuthService.record_authorize, docs/authorization.md).

An answer from committed data (local list, manual tokens, cache) and any refusal go out at once and their record
is queued; an Accepted that lets in a token nobody vouches for (offline policy, eMSP) is committed first.
The store's writer is held on a gate (a real Store, a real SQLite file) so what is and is not committed at the
moment record_authorize() returns is seen by a fresh reader, without timing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import cbor2
import pytest
from authfakes import EmspDouble

from gateway import events
from gateway.auth.decision import AuthDecision
from gateway.auth.emsp import EmspAuthAnswer
from gateway.auth.service import AuthService, answer_before_commit
from gateway.auth.settings import AuthSection
from gateway.store import Store

T = TypeVar("T")
# Longest a test holds the store's writer: only reached when a test fails half-way (it then must not hang).
GATE_LIMIT_S = 30.0

LIST = [
    {"id": "LISTED01", "status": "Accepted", "parent_id": "FLEET1"},
    {"id": "BLOCKED1", "status": "Blocked"},
]


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def hold_writer(store: Store) -> threading.Event:
    """Occupy the store's writer thread until the returned event is set: nothing queued after this commits."""
    release = threading.Event()
    holding = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        release.wait(GATE_LIMIT_S)

    store.submit(hold)
    assert holding.wait(GATE_LIMIT_S)
    return release


def committed(store: Store) -> tuple[list[tuple[Any, ...]], list[dict[str, Any]]]:
    """(auth_decisions rows, auth.decision event bodies) as a fresh reader connection sees them."""
    conn = sqlite3.connect(store.path)
    try:
        rows = [
            tuple(r)
            for r in conn.execute(
                "SELECT charger_id, id_tag, purpose, status, source FROM auth_decisions ORDER BY id"
            )
        ]
        bodies = [
            cbor2.loads(r[0])
            for r in conn.execute(
                "SELECT body FROM outbox WHERE kind = ? ORDER BY seq", (events.AUTH_DECISION,)
            )
        ]
        return rows, bodies
    finally:
        conn.close()


async def settle() -> None:
    """Let every ready task run (a few loop turns; nothing here waits on a clock)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("token", "settings", "expect"),
    [
        ("LISTED01", {}, ("Accepted", "local_list")),
        ("BLOCKED1", {}, ("Blocked", "local_list")),
        ("MANUAL01", {"allow": ["MANUAL01"]}, ("Accepted", "manual")),
        ("UNKNOWN1", {"offline_policy": "reject"}, ("Invalid", "offline_policy")),
        ("A B", {"offline_policy": "accept"}, ("Invalid", "offline_policy")),  # malformed
    ],
)
def test_answer_from_the_list_goes_out_before_its_record_which_then_reaches_the_db(
    store: Store, token: str, settings: dict[str, Any], expect: tuple[str, str]
) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection(**settings))
        await svc.start()
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        d = await svc.decide("CP1", token, purpose="authorize")
        assert (d.status, d.source) == expect
        assert answer_before_commit(d)
        release = hold_writer(store)
        try:
            call = asyncio.create_task(svc.record_authorize(d))
            await settle()
            # returned while the writer is held: the answer does not wait for the commit ...
            assert call.done() and call.exception() is None
            # ... and the record is not on disk yet
            assert committed(store) == ([], [])
            # the charger's next message, queued after the answer: the record must commit before it
            later = store.submit(lambda c: events.emit(c, events.CHARGER_FAULT, {"n": 1}, charger_id="CP1"))
        finally:
            release.set()
        await svc.flush_records()
        rows, bodies = committed(store)
        assert rows == [("CP1", token, "authorize", *expect)]
        assert len(bodies) == 1
        assert (bodies[0]["id_tag"], bodies[0]["status"], bodies[0]["source"]) == (token, *expect)
        await asyncio.wrap_future(later)
        kinds = store.read(lambda c: [r[0] for r in c.execute("SELECT kind FROM outbox ORDER BY seq")])
        assert kinds == [events.AUTH_DECISION, events.CHARGER_FAULT]
        await svc.close()

    run(body)


def test_cached_answer_goes_out_before_its_record(store: Store) -> None:
    async def body() -> None:
        emsp = EmspDouble()
        emsp.answers["ONLINE1"] = EmspAuthAnswer("Accepted")
        svc = AuthService(store, AuthSection())
        svc.set_emsp(emsp)
        online = await svc.decide("CP1", "ONLINE1", purpose="authorize")
        assert (online.source, online.accepted) == ("emsp", True)
        await svc.record_authorize(online)  # durable: the cache entry it came with was not committed yet
        await store.write(lambda c: None)  # the cache write is queued before this barrier
        emsp.online = False
        d = await svc.decide("CP1", "ONLINE1", purpose="authorize")
        assert (d.status, d.source) == ("Accepted", "cache")
        assert answer_before_commit(d)
        release = hold_writer(store)
        try:
            call = asyncio.create_task(svc.record_authorize(d))
            await settle()
            assert call.done()
            assert len(committed(store)[0]) == 1  # only the eMSP-answered one
        finally:
            release.set()
        await svc.flush_records()
        rows, bodies = committed(store)
        assert [r[4] for r in rows] == ["emsp", "cache"] and len(bodies) == 2

    run(body)


@pytest.mark.parametrize("policy", ["accept", "accept_limited"])
def test_offline_accepted_authorize_is_durable_before_the_answer(store: Store, policy: str) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection(offline_policy=policy))
        d = await svc.decide("CP1", "STRANGER", purpose="authorize")
        assert (d.status, d.source) == ("Accepted", "offline_policy")
        assert not answer_before_commit(d)
        release = hold_writer(store)
        try:
            call = asyncio.create_task(svc.record_authorize(d))
            await settle()
            # the writer is held: the call cannot have returned, the answer waits for the commit
            assert not call.done()
            assert committed(store) == ([], [])
        finally:
            release.set()
        await call
        # at the moment the call returns, a fresh reader sees the record and its event
        rows, bodies = committed(store)
        assert rows == [("CP1", "STRANGER", "authorize", "Accepted", "offline_policy")]
        assert len(bodies) == 1 and bodies[0]["source"] == "offline_policy"

    run(body)


def test_emsp_accepted_is_durable_refusals_are_not_and_starts_stops_never_skip_their_transaction() -> None:
    base = AuthDecision(
        charger_id="CP1",
        id_tag="T1",
        purpose="authorize",
        status="Accepted",
        expiry_date=None,
        parent_id_tag=None,
        source="emsp",
        auth_method="AUTH_REQUEST",
        reason="eMSP answered Accepted",
    )
    assert not answer_before_commit(base)
    assert answer_before_commit(replace(base, status="Blocked"))  # a refusal permits nothing
    assert not answer_before_commit(replace(base, source="offline_policy"))
    assert answer_before_commit(replace(base, source="offline_policy", status="Invalid"))
    for source in ("local_list", "manual", "cache"):
        for status in ("Accepted", "Blocked", "Expired", "Invalid"):
            assert answer_before_commit(replace(base, source=source, status=status))
        d = replace(base, source=source)
        assert not answer_before_commit(replace(d, purpose="start"))
        assert not answer_before_commit(replace(d, purpose="stop"))


def test_a_queued_record_that_fails_is_logged_with_the_token_masked(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection())
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        d = await svc.decide("CP1", "LISTED01", purpose="authorize")
        bad = replace(d, charger_id=None)  # type: ignore[arg-type]  # violates auth_decisions NOT NULL
        with caplog.at_level(logging.WARNING, logger="chargegate.auth"):
            await svc.record_authorize(bad)
            await svc.flush_records()
        assert committed(store) == ([], [])
        [msg] = [r.getMessage() for r in caplog.records if "decision record" in r.getMessage()]
        assert "LISTED01" not in msg and "answered Accepted" in msg
        # the failure cost only that record: the next one is written
        await svc.record_authorize(d)
        await svc.flush_records()
        assert len(committed(store)[0]) == 1

    run(body)
