"""ConcurrentTx when two starts of one card race: decide() reads the card's active transactions before the
StartTransaction is written, so both of two simultaneous starts read "none"; AuthService.confirm_start repeats the
check on the store's writer thread, in the start's own transaction. Against a real SQLite store, the real Csms
handler (both starts decided before either is written: asyncio.gather, no eMSP to wait for), and confirm_start on
its own: which transactions count is decision.concurrent_conflicts, as for decide()."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from authfakes import insert_transaction

from gateway import events
from gateway.auth import tokenstore as ts
from gateway.auth.decision import AuthDecision
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenSpec
from gateway.config import parse_config
from gateway.csms import ConnectionState, Csms
from gateway.events import StatusBus
from gateway.store import Store

NOW = 1_800_000_000.0
CARD = "04AABBCCDD"


# -- through the OCPP handler -------------------------------------------------------------------------------------
class Site:
    def __init__(self, tmp_path: Path, concurrent: str, offline_policy: str = "reject") -> None:
        cfg = parse_config(
            tmp_path / "site.toml",
            {
                "auth": {
                    "allow": [CARD],
                    "concurrent_sessions": concurrent,
                    "offline_policy": offline_policy,
                },
                "chargers": [
                    {"id": "CP1", "password": "0123456789abcdef", "connectors": 2},
                    {"id": "CP2", "password": "0123456789abcdef"},
                ],
            },
        )
        self.store = Store.open(tmp_path / "data")
        self.auth = AuthService(self.store, cfg.auth)
        self.csms = Csms(cfg, self.store, StatusBus(), self.auth)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.auth.start())

    def close(self) -> None:
        self.loop.run_until_complete(self.auth.close())
        self.loop.close()
        self.store.close()

    def starts(self, *who: tuple[str, int], tag: str = CARD) -> list[tuple[int, str]]:
        """StartTransaction at each (charger, connector), all at once; (transactionId, status) of each."""

        async def body() -> list[Any]:
            return list(
                await asyncio.gather(
                    *(
                        self.csms.handle(
                            ConnectionState(cid),
                            "StartTransaction",
                            {
                                "connectorId": conn,
                                "idTag": tag,
                                "meterStart": 100,
                                "timestamp": "2027-01-15T08:00:00Z",
                            },
                        )
                        for cid, conn in who
                    )
                )
            )

        replies = self.loop.run_until_complete(body())
        return [(r.payload["transactionId"], r.payload["idTagInfo"]["status"]) for r in replies]

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.store.read(lambda c: [tuple(r) for r in c.execute(sql)])


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, "refuse")
    yield s
    s.close()


def test_two_starts_at_two_chargers_at_once_accept_exactly_one(site: Site) -> None:
    (tx1, s1), (tx2, s2) = site.starts(("CP1", 1), ("CP2", 1))
    assert (s1, s2) == ("Accepted", "ConcurrentTx")
    # what was stored and sent to the eMSP is what each charger was answered
    assert site.query("SELECT id, auth_status FROM transactions ORDER BY id") == [
        (tx1, "Accepted"),
        (tx2, "ConcurrentTx"),
    ]
    assert site.query(
        "SELECT transaction_id, status, purpose FROM auth_decisions WHERE purpose = 'start' ORDER BY id"
    ) == [(tx1, "Accepted", "start"), (tx2, "ConcurrentTx", "start")]
    bodies = [
        events.decode_body(r[0])
        for r in site.query(
            "SELECT body FROM outbox WHERE kind IN ('auth.decision', 'session.started') ORDER BY seq"
        )
    ]
    started = {b["tx"]: b["auth_status"] for b in bodies if "tx" in b}
    assert started == {tx1: "Accepted", tx2: "ConcurrentTx"}
    decided = {b["transaction_id"]: b for b in bodies if "purpose" in b}
    assert decided[tx1]["status"] == "Accepted"
    assert decided[tx2]["status"] == "ConcurrentTx"
    assert f"already in transaction {tx1} at CP1 connector 1" in decided[tx2]["reason"]
    assert "stored meanwhile" in decided[tx2]["reason"]


def test_a_resent_start_keeps_its_answer_and_the_race_loser_stays_refused(site: Site) -> None:
    (tx1, _), (tx2, _) = site.starts(("CP1", 1), ("CP2", 1))
    # each charger resends its very same StartTransaction (its answer was lost): the stored answer again
    assert site.starts(("CP2", 1), ("CP1", 1)) == [(tx2, "ConcurrentTx"), (tx1, "Accepted")]
    assert len(site.query("SELECT id FROM transactions")) == 2


def test_the_same_connector_and_another_connector_of_one_charger(site: Site) -> None:
    # two connectors of one charger at once: one of them is refused
    (_, a), (_, b) = site.starts(("CP1", 1), ("CP1", 2))
    assert sorted((a, b)) == ["Accepted", "ConcurrentTx"]


def test_three_at_once_accept_one(tmp_path: Path) -> None:
    site = Site(tmp_path, "refuse")
    try:
        answers = site.starts(("CP1", 1), ("CP1", 2), ("CP2", 1))
        assert sorted(s for _, s in answers) == ["Accepted", "ConcurrentTx", "ConcurrentTx"]
    finally:
        site.close()


def test_allow_accepts_both(tmp_path: Path) -> None:
    site = Site(tmp_path, "allow")
    try:
        assert [s for _, s in site.starts(("CP1", 1), ("CP2", 1))] == ["Accepted", "Accepted"]
    finally:
        site.close()


def test_an_accept_limited_slot_is_given_back_when_the_start_loses(tmp_path: Path) -> None:
    site = Site(tmp_path, "refuse", offline_policy="accept_limited")
    try:
        (tx1, s1), (_, s2) = site.starts(("CP1", 1), ("CP2", 1), tag="UNKNOWN7")
        assert (s1, s2) == ("Accepted", "ConcurrentTx")
        # only the winner is an offline-policy session; no reservation left for the loser
        assert site.query("SELECT transaction_id, limited FROM auth_offline_sessions") == [(tx1, 1)]
        assert site.auth._live_reservations() == 0
    finally:
        site.close()


# -- confirm_start on its own -------------------------------------------------------------------------------------
def refuse(store: Store) -> AuthService:
    store.write_sync(lambda c: ts.upsert_manual(c, [TokenSpec("TAG1", "Accepted")], NOW))
    return AuthService(store, AuthSection(concurrent_sessions="refuse"), wall=lambda: NOW)


def start_decision(
    svc: AuthService, charger: str, connector: int, start_ts: str | None = None
) -> AuthDecision:
    return asyncio.run(
        svc.decide(charger, "TAG1", purpose="start", connector_id=connector, start_ts=start_ts)
    )


def confirm(
    store: Store, svc: AuthService, d: AuthDecision, connector: int, start_ts: str | None = None
) -> AuthDecision:
    def op(conn: sqlite3.Connection) -> AuthDecision:
        return svc.confirm_start(conn, d, connector_id=connector, start_ts=start_ts)

    return store.write_sync(op)


def test_confirm_start_follows_the_rules_of_the_decision(store: Store) -> None:
    svc = refuse(store)
    at_cp2 = start_decision(svc, "CP2", 1)
    same_connector = start_decision(svc, "CP1", 1)
    other_connector = start_decision(svc, "CP1", 2)
    queued_early = start_decision(svc, "CP3", 1, "2027-01-15T06:00:00Z")  # started offline long before
    assert {d.status for d in (at_cp2, same_connector, other_connector, queued_early)} == {"Accepted"}
    # meanwhile a start of the card at CP1 connector 1 was stored
    tx = store.write_sync(lambda c: insert_transaction(c, "CP1", "tag1", started_at=NOW - 1.0))

    refused = confirm(store, svc, at_cp2, 1)
    assert refused.status == "ConcurrentTx" and refused.limits is None
    assert f"already in transaction {tx} at CP1 connector 1" in refused.reason
    assert refused.source == at_cp2.source and refused.id_tag == "TAG1"
    assert confirm(store, svc, same_connector, 1) is same_connector  # a connector holds one transaction
    assert confirm(store, svc, other_connector, 2).status == "ConcurrentTx"
    assert confirm(store, svc, queued_early, 1, "2027-01-15T06:00:00Z") is queued_early


def test_confirm_start_leaves_refusals_authorizes_and_stale_transactions_alone(store: Store) -> None:
    svc = refuse(store)
    store.write_sync(lambda c: insert_transaction(c, "CP1", "TAG1", started_at=NOW - 2 * 86400.0))  # stale
    d = start_decision(svc, "CP2", 1)
    assert confirm(store, svc, d, 1) is d
    store.write_sync(lambda c: insert_transaction(c, "CP1", "TAG1", started_at=NOW - 5.0))
    authorize = asyncio.run(svc.decide("CP2", "TAG1", purpose="authorize"))
    assert authorize.status == "ConcurrentTx"
    assert confirm(store, svc, authorize, 1) is authorize
    accepted_authorize = asyncio.run(svc.decide("CP1", "TAG1", purpose="authorize"))
    assert confirm(store, svc, accepted_authorize, 1) is accepted_authorize  # not a start: untouched
