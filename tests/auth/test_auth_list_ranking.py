"""A site list larger than a charger's LocalAuthListMaxLength: what the charger gets (recently presented tokens first,
revocations of a cached Accepted before everything, Accepted before others), in which order, and how the cut is
counted and reported."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from pathlib import Path

import pytest
from authfakes import FakeCharger, FakeCommands

from gateway.auth import overrides
from gateway.auth import tokenstore as ts
from gateway.auth.charger_lists import RECENT_S, ChargerLists, rank_for_charger
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenSpec
from gateway.store import Store

NOW = 1_800_000_000.0
DAY = 86400.0


def test_rank_order() -> None:
    here_ok = ts.Seen(here_at=NOW - 10, here_status="Accepted", site_at=NOW - 10)
    here_refused = ts.Seen(here_at=NOW - 10, here_status="Blocked", site_at=NOW - 10)
    elsewhere = ts.Seen(here_at=None, here_status=None, site_at=NOW - 5)
    ranks = {
        "revocation": rank_for_charger("Blocked", here_ok),  # Accepted here last time, Blocked now
        "here accepted": rank_for_charger("Accepted", here_ok),
        "here blocked": rank_for_charger("Blocked", here_refused),
        "site accepted": rank_for_charger("Accepted", elsewhere),
        "site blocked": rank_for_charger("Blocked", elsewhere),
        "unseen accepted": rank_for_charger("Accepted", None),
        "unseen blocked": rank_for_charger("Blocked", None),
    }
    assert sorted(ranks, key=lambda k: ranks[k]) == list(ranks)
    # within a tier, the most recently presented first
    newer = ts.Seen(here_at=NOW - 1, here_status="Accepted", site_at=NOW - 1)
    assert rank_for_charger("Accepted", newer) < rank_for_charger("Accepted", here_ok)


def seen_at(
    conn: sqlite3.Connection, charger: str, tag: str, status: str, at: float, purpose: str = "authorize"
) -> None:
    conn.execute(
        "INSERT INTO auth_decisions (decided_at, charger_id, id_tag, purpose, status, source, auth_method, reason, "
        "latency_ms) VALUES (?, ?, ?, ?, ?, 'local_list', 'WHITELIST', 'test', 0)",
        (at, charger, tag, purpose, status),
    )


def test_truncated_list_keeps_recent_and_accepted_tokens_and_counts_the_cut(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # 30 Accepted A00..A29 and 10 Blocked B00..B09 in the eMSP list; the charger holds 8
    toks = [{"id": f"A{i:02d}", "status": "Accepted"} for i in range(30)]
    toks += [{"id": f"B{i:02d}", "status": "Blocked"} for i in range(10)]
    toks += [{"id": "ELSEWHERE", "status": "Accepted", "chargers": ["CP9"]}]  # never counts for CP1

    def history(c: sqlite3.Connection) -> None:
        seen_at(
            c, "CP1", "B05", "Accepted", NOW - 2 * DAY
        )  # answered Accepted here, blocked since: revocation
        seen_at(c, "CP1", "A20", "Accepted", NOW - 3 * DAY)
        seen_at(c, "CP1", "A21", "Accepted", NOW - 1 * DAY)  # more recent than A20
        seen_at(c, "CP1", "B06", "Blocked", NOW - 1 * DAY)  # seen here, refused here: after the Accepted ones
        seen_at(c, "CP2", "A25", "Accepted", NOW - DAY)  # seen on the site
        seen_at(c, "CP2", "B07", "Blocked", NOW - DAY)
        seen_at(c, "CP1", "A29", "Accepted", NOW - RECENT_S - DAY)  # too long ago: unseen
        seen_at(c, "*", "A28", "Accepted", NOW - DAY, purpose="override")  # not a presentation
        seen_at(c, "CP1", "NOTLISTED", "Accepted", NOW - DAY)  # known to nobody's list: not sent

    async def body() -> None:
        svc = AuthService(store, AuthSection(), wall=lambda: NOW)
        commands = FakeCommands()
        charger = FakeCharger(max_length=8, send_max=3)
        commands.chargers["CP1"] = charger
        lists = ChargerLists(store, svc, commands, wall=lambda: NOW)
        store.write_sync(history)
        await lists.on_charger_booted("CP1")
        assert (await svc.apply_token_list("full", 1, None, toks))[0]
        with caplog.at_level(logging.INFO, logger="chargegate.auth.lists"):
            await lists.wait_idle()
        outcome = [r.getMessage() for r in caplog.records if "local list of CP1: full" in r.getMessage()][-1]
        assert (
            "8 entries" in outcome and "truncated to LocalAuthListMaxLength=8: 32 tokens left out" in outcome
        )
        sends = [p for _, p in commands.actions("SendLocalList")]
        last_full = max(i for i, p in enumerate(sends) if p["updateType"] == "Full")
        sent = [e["idTag"] for p in sends[last_full:] for e in p["localAuthorizationList"]]
        # best first, so an interrupted transfer leaves the charger the most useful entries
        assert sent == ["B05", "A21", "A20", "B06", "A25", "B07", "A00", "A01"]
        assert charger.entries["B05"] == {"status": "Blocked"}
        state = store.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and (state.truncated, state.left_out) == (True, 32)

        # once the list fits again, the cut is gone and the count with it
        charger.max_length = 100
        assert (await lists.sync("CP1", probe=True)).startswith("in sync")  # same revision: nothing to do
        assert (await svc.apply_token_list("full", 2, None, toks[:5]))[0]
        outcome = await lists.sync("CP1")
        await lists.wait_idle()
        assert "5 entries" in outcome and "left out" not in outcome
        state = store.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and (state.truncated, state.left_out) == (False, 0)

    asyncio.run(body())


def test_fill_prefers_accepted_even_when_few_are_accepted(store: Store) -> None:
    toks = [{"id": f"B{i:02d}", "status": "Blocked"} for i in range(10)]
    toks += [{"id": "Z1", "status": "Accepted"}, {"id": "Z2", "status": "Accepted"}]

    async def body() -> list[str]:
        svc = AuthService(store, AuthSection(), wall=lambda: NOW)
        commands = FakeCommands()
        commands.chargers["CP1"] = FakeCharger(max_length=4, send_max=10)
        lists = ChargerLists(store, svc, commands, wall=lambda: NOW)
        await lists.on_charger_booted("CP1")
        assert (await svc.apply_token_list("full", 1, None, toks))[0]
        await lists.wait_idle()
        state = store.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and state.left_out == 8
        p = commands.actions("SendLocalList")[-1][1]
        assert p["updateType"] == "Full"
        return [e["idTag"] for e in p["localAuthorizationList"]]

    assert asyncio.run(body()) == ["Z1", "Z2", "B00", "B01"]


def test_count_for_charger_matches_the_entries_built(store: Store) -> None:
    """The SQL count decides whether a list fits; it must agree with charger_entry on every kind of token."""
    rnd = random.Random(7)
    chargers = ["CP1", "CP2", "CP10"]

    def restriction() -> tuple[str, ...] | None:
        return None if rnd.random() < 0.5 else tuple(sorted(rnd.sample(chargers, rnd.randint(1, 2))))

    def fill(c: sqlite3.Connection) -> None:
        gen = ts.meta(c, "active_gen")
        for i in range(300):
            tid = f"T{i:03d}"
            status = rnd.choice(["Accepted", "Accepted", "Blocked", "Expired", "Invalid"])
            where = rnd.random()
            if where < 0.7:
                ts.insert_list_chunk(c, gen, 1, [TokenSpec(tid, status, chargers=restriction())])  # type: ignore[arg-type]
            if where > 0.5:
                ts.upsert_manual(c, [TokenSpec(tid, "Accepted", chargers=restriction())], NOW)
            if rnd.random() < 0.15:
                until = NOW + (3600.0 if rnd.random() < 0.8 else -3600.0)  # some ended
                c.execute(
                    "INSERT INTO auth_overrides (id, until, reason, created_at) VALUES (?, ?, NULL, ?)",
                    (tid, until, NOW),
                )
        overrides.grant(c, "ONLYOVERRIDE", NOW + 3600.0, None, NOW)

    store.write_sync(fill)
    for cid in chargers:

        def both(c: sqlite3.Connection, cid: str = cid) -> tuple[int, int]:
            built = sum(1 for row in ts.iter_local(c, now=NOW) if ts.charger_entry(row.entries, cid, NOW))
            return ts.count_for_charger(c, cid, NOW), built

        counted, built = store.read(both)
        assert counted == built, cid
        assert 0 < built < 302


def test_an_auth_schema_of_version_1_upgrades(tmp_path: Path) -> None:
    from gateway import store as st

    full = list(ts.MIGRATIONS)
    st.register_migrations("auth", full[:1])
    try:
        old = Store.open(tmp_path / "data")
        old.write_sync(
            lambda c: c.execute(
                "INSERT INTO auth_charger_lists (charger_id, truncated, updated_at) VALUES ('CP1', 1, 0)"
            )
        )
        old.close()
    finally:
        st.register_migrations("auth", full)
    new = Store.open(tmp_path / "data")
    try:
        state = new.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and (state.truncated, state.left_out) == (True, 0)
        assert new.read(lambda c: overrides.live(c, NOW)) == []
    finally:
        new.close()
