"""AuthService against a real SQLite store: list application, decisions, persistence, re-checks and caps."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest
from authfakes import EmspDouble, FakeCharger, FakeCommands, insert_transaction

from gateway import events
from gateway.auth import tokenstore as ts
from gateway.auth.emsp import EmspAuthAnswer
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenSpec
from gateway.store import Store

T = TypeVar("T")
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def make(store: Store, clock: Clock | None = None, **settings: Any) -> AuthService:
    return AuthService(store, AuthSection(**settings), wall=clock or Clock())


LIST = [
    {"id": "04a2b3c4d5e6f7", "status": "Accepted", "parent_id": "FLEET1"},
    {"idTag": "BLOCKED1", "status": "Blocked"},
    {"id": "OLD1", "status": "Accepted", "expiry": "2020-01-01T00:00:00Z"},
]


def test_full_list_then_decisions_from_the_list(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        ok, msg = await svc.apply_token_list("full", 5, None, LIST)
        assert ok, msg
        d = await svc.decide("CP1", " 04A2B3c4d5e6f7 ", purpose="start")
        assert (d.status, d.source, d.auth_method, d.parent_id_tag) == (
            "Accepted",
            "local_list",
            "WHITELIST",
            "FLEET1",
        )
        assert d.id_tag == "04A2B3C4D5E6F7"
        assert (await svc.decide("CP1", "blocked1", purpose="authorize")).status == "Blocked"
        assert (await svc.decide("CP1", "OLD1", purpose="authorize")).status == "Expired"
        d = await svc.decide("CP1", "NOBODY", purpose="authorize")
        assert (d.status, d.source) == ("Invalid", "offline_policy")

    run(body)


def test_record_writes_decision_and_event_in_the_callers_transaction(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        await svc.apply_token_list("full", 1, None, LIST)
        d = await svc.decide("CP1", "04A2B3C4D5E6F7", purpose="start")

        def start_tx(conn: sqlite3.Connection) -> int:
            tx = insert_transaction(conn, "CP1", d.id_tag, parent=d.parent_id_tag)
            svc.record(conn, d, transaction_id=tx)
            return tx

        tx = await store.write(start_tx)
        row = store.read(
            lambda c: c.execute(
                "SELECT status, source, auth_method, transaction_id FROM auth_decisions"
            ).fetchall()
        )
        assert [tuple(r) for r in row] == [("Accepted", "local_list", "WHITELIST", tx)]
        ev = store.read(lambda c: c.execute("SELECT kind, charger_id, body FROM outbox").fetchall())
        assert len(ev) == 1
        assert (ev[0][0], ev[0][1]) == (events.AUTH_DECISION, "CP1")
        body_ = cbor2.loads(ev[0][2])
        assert body_["id_tag"] == "04A2B3C4D5E6F7"
        assert (body_["source"], body_["transaction_id"], body_["status"]) == ("local_list", tx, "Accepted")

        # the handler's transaction fails after record(): neither the decision nor its event survive
        def failing(conn: sqlite3.Connection) -> None:
            svc.record(conn, d, transaction_id=None)
            raise RuntimeError("handler failed")

        try:
            await store.write(failing)
        except RuntimeError:
            pass
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_decisions").fetchone()[0]) == 1
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) == 1

    run(body)


def test_differential_with_stale_base_is_refused_and_changes_nothing(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 10, None, LIST))[0]
        ok, msg = await svc.apply_token_list("differential", 12, 11, [{"id": "NEW1", "status": "Accepted"}])
        assert not ok
        assert "full resync required" in msg
        assert (await svc.decide("CP1", "NEW1", purpose="authorize")).source == "offline_policy"
        ok, msg = await svc.apply_token_list(
            "differential", 11, 10, [{"id": "NEW1", "status": "Accepted"}, {"id": "BLOCKED1"}]
        )
        assert ok, msg
        assert (await svc.decide("CP1", "NEW1", purpose="authorize")).source == "local_list"
        # BLOCKED1 was removed (no status = delete)
        assert (await svc.decide("CP1", "BLOCKED1", purpose="authorize")).source == "offline_policy"
        assert store.read(lambda c: ts.meta(c, "list_version")) == 11

    run(body)


def test_bad_list_entry_refuses_the_whole_list(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        bad = [*LIST, {"id": "X" * 21, "status": "Accepted"}]
        ok, msg = await svc.apply_token_list("full", 2, None, bad)
        assert not ok
        assert "entry 3" in msg
        assert not (await svc.apply_token_list("full", 3, None, [{"id": "A", "status": "Maybe"}]))[0]
        assert not (await svc.apply_token_list("bogus", 3, None, []))[0]
        assert not (await svc.apply_token_list("full", 0, None, []))[0]
        assert store.read(lambda c: ts.meta(c, "list_version")) == 1
        assert (await svc.decide("CP1", "BLOCKED1", purpose="authorize")).status == "Blocked"

    run(body)


def test_new_full_list_replaces_the_old_and_leaves_one_generation(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        assert (await svc.apply_token_list("full", 2, None, [{"id": "ONLY", "status": "Accepted"}]))[0]
        assert (await svc.decide("CP1", "BLOCKED1", purpose="authorize")).source == "offline_policy"
        assert (await svc.decide("CP1", "ONLY", purpose="authorize")).status == "Accepted"
        gens = store.read(lambda c: c.execute("SELECT DISTINCT gen FROM auth_list").fetchall())
        assert len(gens) == 1
        assert not (await svc.apply_token_list("full", 1, None, LIST))[0]  # older than applied

    run(body)


def test_manual_token_from_another_process_counts_at_the_next_decision(store: Store, tmp_path: Path) -> None:
    async def body() -> None:
        svc = make(store)
        await svc.start()
        changed: list[int] = []
        svc.add_list_listener(lambda: changed.append(1))
        other = Store.open(tmp_path / "data")  # what `chargegate tokens add` does, with its own connection
        try:
            other.write_sync(lambda c: ts.upsert_manual(c, [TokenSpec(id="CLI1", status="Accepted")], NOW))
        finally:
            other.close()
        d = await svc.decide("CP1", "cli1", purpose="authorize")
        assert (d.status, d.source) == ("Accepted", "manual")
        await svc.supervise_once()
        assert changed == [1]
        await svc.close()

    run(body)


def test_config_allow_list_becomes_manual_tokens(store: Store) -> None:
    async def body() -> None:
        svc = make(store, allow=("abc123",))
        await svc.start()
        await svc.close()
        assert (await svc.decide("CP1", "ABC123", purpose="authorize")).source == "manual"
        svc2 = make(store, allow=())
        await svc2.start()
        await svc2.close()
        assert (await svc2.decide("CP1", "ABC123", purpose="authorize")).status == "Invalid"

    run(body)


def test_emsp_answer_is_cached_and_used_when_the_emsp_is_gone(store: Store) -> None:
    async def body() -> None:
        emsp = EmspDouble()
        emsp.answers["ONLINE1"] = EmspAuthAnswer("Accepted", parent_id="GRP")
        svc = make(store, cache_ttl_s=3600.0)
        svc.set_emsp(emsp)
        d = await svc.decide("CP1", "online1", purpose="authorize")
        assert (d.status, d.source, d.auth_method) == ("Accepted", "emsp", "AUTH_REQUEST")
        assert [(t, c) for t, c, _ in emsp.asked] == [("ONLINE1", "CP1")]
        assert 0 < emsp.asked[0][2] <= 2.0  # what is left of the budget
        await store.write(lambda c: None)  # the cache write is queued before this barrier
        emsp.online = False
        d = await svc.decide("CP1", "ONLINE1", purpose="authorize")
        assert (d.status, d.source, d.parent_id_tag) == ("Accepted", "cache", "GRP")
        # a token put on the local list leaves the cache
        assert (await svc.apply_token_list("full", 1, None, [{"id": "ONLINE1", "status": "Blocked"}]))[0]
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_cache").fetchone()[0]) == 0
        assert (await svc.decide("CP1", "ONLINE1", purpose="authorize")).status == "Blocked"

    run(body)


def test_silent_emsp_falls_back_to_offline_policy_within_the_budget(store: Store) -> None:
    async def body() -> None:
        emsp = EmspDouble(delay=5.0)
        svc = make(store, emsp_budget_s=0.2, offline_policy="accept")
        svc.set_emsp(emsp)
        d = await svc.decide("CP1", "SLOW1", purpose="start")
        assert (d.status, d.source) == ("Accepted", "offline_policy")
        assert "no eMSP answer within the budget" in d.reason

    run(body)


def test_malformed_id_tag_is_invalid(store: Store) -> None:
    async def body() -> None:
        svc = make(store, offline_policy="accept")
        for bad in ("", "  ", "A" * 21, "äöü", "A B"):
            d = await svc.decide("CP1", bad, purpose="authorize")
            assert d.status == "Invalid"
            assert d.reason.startswith("malformed idTag")

    run(body)


def _offline_start(svc: AuthService, store: Store, token: str, **tx: Any) -> Awaitable[int]:
    async def go() -> int:
        d = await svc.decide("CP1", token, purpose="start")
        assert d.source == "offline_policy" and d.accepted

        def w(conn: sqlite3.Connection) -> int:
            t = insert_transaction(conn, "CP1", d.id_tag, **tx)
            svc.record(conn, d, transaction_id=t)
            return t

        t = await store.write(w)
        svc.on_transaction_started(t, d)
        return t

    return go()


def test_offline_session_rechecked_and_stopped_when_emsp_says_blocked(store: Store) -> None:
    async def body() -> None:
        emsp = EmspDouble(reachable=False)
        commands = FakeCommands()
        commands.chargers["CP1"] = FakeCharger()
        svc = make(store, offline_policy="accept", invalid_action="stop")
        svc.set_emsp(emsp)
        svc.set_commands(commands)
        tx_bad = await _offline_start(svc, store, "THIEF")
        tx_ok = await _offline_start(svc, store, "GOOD")
        await svc.supervise_once()  # eMSP still unreachable: nothing happens
        assert commands.actions("RemoteStopTransaction") == []
        emsp.online = True
        emsp.answers["THIEF"] = EmspAuthAnswer("Blocked")
        emsp.answers["GOOD"] = EmspAuthAnswer("Accepted")
        await svc.supervise_once()
        assert commands.actions("RemoteStopTransaction") == [("CP1", {"transactionId": tx_bad})]
        states = dict(
            store.read(
                lambda c: c.execute("SELECT transaction_id, state FROM auth_offline_sessions").fetchall()
            )
        )
        assert states == {tx_bad: "stopping", tx_ok: "confirmed"}
        rechecks = store.read(
            lambda c: c.execute(
                "SELECT transaction_id, status FROM auth_decisions WHERE purpose = 'recheck' ORDER BY transaction_id"
            ).fetchall()
        )
        assert [tuple(r) for r in rechecks] == [(tx_bad, "Blocked"), (tx_ok, "Accepted")]
        svc.on_transaction_stopped(tx_bad)
        await store.write(lambda c: None)
        assert (
            store.read(
                lambda c: c.execute(
                    "SELECT state FROM auth_offline_sessions WHERE transaction_id = ?", (tx_bad,)
                ).fetchone()[0]
            )
            == "ended"
        )

    run(body)


def test_offline_session_flagged_when_invalid_action_is_flag(store: Store) -> None:
    async def body() -> None:
        emsp = EmspDouble(reachable=False)
        commands = FakeCommands()
        commands.chargers["CP1"] = FakeCharger()
        svc = make(store, offline_policy="accept", invalid_action="flag")
        svc.set_emsp(emsp)
        svc.set_commands(commands)
        tx = await _offline_start(svc, store, "THIEF")
        emsp.online = True
        await svc.supervise_once()  # the double answers Invalid for unknown tokens
        assert commands.actions("RemoteStopTransaction") == []
        assert (
            store.read(
                lambda c: c.execute(
                    "SELECT state FROM auth_offline_sessions WHERE transaction_id = ?", (tx,)
                ).fetchone()[0]
            )
            == "flagged"
        )

    run(body)


def test_accept_limited_caps_stop_sessions_and_limit_concurrency(store: Store) -> None:
    async def body() -> None:
        clock = Clock()
        commands = FakeCommands()
        commands.chargers["CP1"] = FakeCharger()
        svc = make(
            store,
            clock,
            offline_policy="accept_limited",
            limited_max_kwh=5.0,
            limited_max_minutes=60.0,
            limited_max_concurrent=2,
        )
        svc.set_commands(commands)
        tx_energy = await _offline_start(svc, store, "U1", started_at=NOW, meter_start=1000)
        tx_time = await _offline_start(svc, store, "U2", started_at=NOW, connector_id=2)
        d = await svc.decide("CP1", "U3", purpose="start")
        assert d.status == "Invalid" and "cap of 2 concurrent" in d.reason
        await svc.supervise_once()
        assert commands.actions("RemoteStopTransaction") == []

        def sample(conn: sqlite3.Connection, value: str, unit: str, ts_: str) -> None:
            conn.execute(
                "INSERT INTO meter_samples (charger_id, connector_id, transaction_id, charger_ts, measurand, value, "
                "unit, source, received_at) VALUES ('CP1', 1, ?, ?, 'Energy.Active.Import.Register', ?, ?, 'ocpp', 0)",
                (tx_energy, ts_, value, unit),
            )

        await store.write(lambda c: sample(c, "5.9", "kWh", "2026-01-01T00:10:00Z"))  # 4.9 kWh since start
        await svc.supervise_once()
        assert commands.actions("RemoteStopTransaction") == []
        await store.write(lambda c: sample(c, "6001", "Wh", "2026-01-01T00:20:00Z"))  # 5.001 kWh
        await svc.supervise_once()
        assert commands.actions("RemoteStopTransaction") == [("CP1", {"transactionId": tx_energy})]
        clock.t = NOW + 3600
        await svc.supervise_once()
        assert commands.actions("RemoteStopTransaction")[1:] == [("CP1", {"transactionId": tx_time})]
        # once a session has ended, a new limited session is allowed
        await store.write(
            lambda c: c.execute("UPDATE transactions SET state = 'stopped' WHERE id = ?", (tx_time,))
        )
        assert (await svc.decide("CP1", "U3", purpose="start")).status == "Accepted"

    run(body)


def test_stop_by_a_token_of_the_same_parent_group(store: Store) -> None:
    async def body() -> None:
        svc = make(store)
        tokens = [
            {"id": "CARD1", "status": "Accepted", "parent_id": "FLEET"},
            {"id": "CARD2", "status": "Accepted", "parent_id": "FLEET"},
            {"id": "CARD3", "status": "Accepted", "parent_id": "OTHER"},
        ]
        assert (await svc.apply_token_list("full", 1, None, tokens))[0]
        tx = await store.write(lambda c: insert_transaction(c, "CP1", "card1", parent="FLEET"))
        assert (await svc.decide("CP1", "CARD1", purpose="stop", transaction_id=tx)).source == "session"
        assert (await svc.decide("CP1", "CARD2", purpose="stop", transaction_id=tx)).status == "Accepted"
        assert (await svc.decide("CP1", "CARD3", purpose="stop", transaction_id=tx)).status == "Invalid"

    run(body)


def test_old_decisions_are_pruned_and_huge_differentials_refused(store: Store) -> None:
    async def body() -> None:
        clock = Clock()
        svc = make(store, clock)
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        old = await svc.decide("CP1", "BLOCKED1", purpose="authorize")
        await svc.record_async(old)
        clock.t = NOW + 181 * 86400
        new = await svc.decide("CP1", "BLOCKED1", purpose="authorize")
        await svc.record_async(new)
        await svc.supervise_once()
        kept = store.read(lambda c: c.execute("SELECT decided_at FROM auth_decisions").fetchall())
        assert [r[0] for r in kept] == [NOW + 181 * 86400]
        ok, msg = await svc.apply_token_list(
            "differential", 2, 1, [{"id": f"D{i}", "status": "Accepted"} for i in range(100_001)]
        )
        assert not ok and "send a full list" in msg

    run(body)


def test_two_simultaneous_limited_starts_cannot_share_the_last_slot(store: Store) -> None:
    async def body() -> None:
        svc = make(store, offline_policy="accept_limited", limited_max_concurrent=1)
        first, second = await asyncio.gather(
            svc.decide("CP1", "U1", purpose="start"), svc.decide("CP2", "U2", purpose="start")
        )
        assert sorted([first.status, second.status]) == ["Accepted", "Invalid"]
        # the reserved slot is taken until the start is recorded: an Authorize is refused too
        assert (await svc.decide("CP3", "U3", purpose="authorize")).status == "Invalid"
        won = first if first.accepted else second
        tx = await store.write(lambda c: insert_transaction(c, won.charger_id, won.id_tag))
        await store.write(lambda c: svc.record(c, won, transaction_id=tx))
        assert (await svc.decide("CP3", "U3", purpose="start")).status == "Invalid"  # the session holds it
        await store.write(
            lambda c: c.execute("UPDATE transactions SET state = 'stopped' WHERE id = ?", (tx,))
        )
        assert (await svc.decide("CP3", "U3", purpose="start")).status == "Accepted"

    run(body)


def test_bad_entry_in_a_later_chunk_leaves_the_old_list_and_no_partial_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.auth import service

    monkeypatch.setattr(service, "LIST_CHUNK", 10)

    async def body() -> None:
        svc = make(store)
        assert (await svc.apply_token_list("full", 1, None, LIST))[0]
        big = [{"id": f"N{i:05d}", "status": "Accepted"} for i in range(35)] + [{"id": "BAD", "status": "?"}]
        ok, msg = await svc.apply_token_list("full", 2, None, big)
        assert not ok and "entry 35" in msg
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_list").fetchone()[0]) == len(LIST)
        assert (await svc.decide("CP1", "N00001", purpose="authorize")).source == "offline_policy"
        ok, _ = await svc.apply_token_list("full", 2, None, big[:-1])
        assert ok
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_list").fetchone()[0]) == 35
        assert (await svc.decide("CP1", "N00034", purpose="authorize")).source == "local_list"

    run(body)
