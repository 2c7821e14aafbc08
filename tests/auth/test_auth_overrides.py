"""Operator overrides (`chargegate tokens allow`): --until parsing, precedence in the pure decision, the store
operations with their audit records, the end of an override (supervisor), charger-list entries and the CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from authfakes import EmspDouble, FakeCharger, FakeCommands, cli

from gateway import events
from gateway.auth import overrides
from gateway.auth import tokenstore as ts
from gateway.auth.charger_lists import ChargerLists
from gateway.auth.decision import AuthDecision, Facts, LocalEntry, Policy, Request, evaluate
from gateway.auth.emsp import EmspAuthAnswer
from gateway.auth.service import AuthService, answer_before_commit
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenError, TokenSpec
from gateway.store import Store

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
HOUR = 3600.0


# -- --until ------------------------------------------------------------------------------------------------------
def test_parse_until() -> None:
    assert overrides.parse_until(None, NOW) == NOW + overrides.DEFAULT_S
    assert overrides.parse_until("90m", NOW) == NOW + 90 * 60
    assert overrides.parse_until("+12h", NOW) == NOW + 12 * HOUR
    assert overrides.parse_until("2d", NOW) == NOW + 2 * 86400
    assert overrides.parse_until("2027-01-16T08:00:00Z", NOW) == NOW + 86400
    assert overrides.parse_until("2027-01-16T08:00:00", NOW) == NOW + 86400  # naive = UTC
    for bad, why in (
        ("8d", "at most 7 days"),
        ("2027-01-15T07:00:00Z", "not in the future"),
        ("0h", "not in the future"),
        ("soon", "expected a duration"),
    ):
        with pytest.raises(TokenError, match=why):
            overrides.parse_until(bad, NOW)


# -- precedence (pure) -----------------------------------------------------------------------------------------
def entry(source: str, status: str = "Accepted", **kw: Any) -> LocalEntry:
    args: dict[str, Any] = {
        "id": "TAG1",
        "status": status,
        "expiry": None,
        "parent_id": None,
        "chargers": None,
        "source": source,
    }
    args.update(kw)
    return LocalEntry(**args)


def override(until: float = NOW + HOUR, note: str | None = "eMSP list wrong") -> LocalEntry:
    return entry("override", expiry=until, note=note)


def decide(*local: LocalEntry, charger: str = "CP1", **facts: Any) -> AuthDecision:
    d = evaluate(
        Request(charger_id=charger, id_tag="TAG1", purpose="start"),
        Facts(local=local, **facts),
        Policy(),
        NOW,
    )
    assert isinstance(d, AuthDecision)
    return d


@pytest.mark.parametrize(
    "listed",
    [
        entry("local_list", "Blocked", parent_id="FLEET"),
        entry("local_list", "Expired", parent_id="FLEET"),
        entry("local_list", "Invalid", parent_id="FLEET"),
        entry("local_list", "Accepted", expiry=NOW - HOUR, parent_id="FLEET"),  # expiry date passed
    ],
)
def test_an_override_beats_the_emsp_list(listed: LocalEntry) -> None:
    d = decide(listed, override())
    assert (d.status, d.source, d.auth_method) == ("Accepted", "override", "OPERATOR_OVERRIDE")
    # the charger may cache the answer only until the override ends; stop rights follow the list's parent
    assert d.id_tag_info() == {
        "status": "Accepted",
        "expiryDate": "2027-01-15T09:00:00Z",
        "parentIdTag": "FLEET",
    }
    assert "operator override (eMSP list wrong) beats listed" in d.reason


def test_a_manual_refusal_beats_an_override_and_a_restriction_still_holds() -> None:
    d = decide(entry("local_list", "Blocked"), entry("manual", "Blocked"), override())
    assert (d.status, d.source) == ("Blocked", "manual")
    d = decide(entry("manual", "Accepted", expiry=NOW - 1), override())
    assert (d.status, d.source) == ("Expired", "manual")
    d = decide(entry("local_list", "Blocked", chargers=("CP9",)), override())
    assert (d.status, d.source) == ("Invalid", "override")
    assert decide(entry("local_list", "Blocked", chargers=("CP9",)), override(), charger="CP9").accepted


def test_an_ended_override_is_gone_not_expired() -> None:
    d = decide(entry("local_list", "Blocked"), override(until=NOW))
    assert (d.status, d.source) == ("Blocked", "local_list")
    # an unknown token with only an ended override: the offline policy decides, as if it never existed
    d = decide(override(until=NOW - HOUR))
    assert (d.status, d.source) == ("Invalid", "offline_policy")


def test_an_override_answers_without_asking_the_emsp() -> None:
    d = decide(override(), emsp_reachable=True)  # a token the eMSP blocks online and the list does not know
    assert (d.status, d.source) == ("Accepted", "override")


# -- store operations --------------------------------------------------------------------------------------------
def audit(store: Store) -> list[tuple[Any, ...]]:
    return store.read(
        lambda c: [
            tuple(r)
            for r in c.execute(
                "SELECT charger_id, id_tag, purpose, status, source, auth_method, reason FROM auth_decisions "
                "ORDER BY id"
            )
        ]
    )


def outbox(store: Store) -> list[dict[str, Any]]:
    return store.read(
        lambda c: [
            events.decode_body(r[0])
            for r in c.execute("SELECT body FROM outbox WHERE kind = 'auth.decision' ORDER BY seq")
        ]
    )


def test_grant_records_the_override_with_its_reason_and_bumps_the_revision(store: Store) -> None:
    async def body() -> None:
        svc = AuthService(store, AuthSection(), wall=lambda: NOW)
        assert (await svc.apply_token_list("full", 1, None, [{"id": "TAG1", "status": "Blocked"}]))[0]
        rev = store.read(lambda c: ts.meta(c, "revision"))
        o, beaten = store.write_sync(
            lambda c: overrides.grant(c, "TAG1", NOW + HOUR, " stuck  in garage ", NOW)
        )
        assert (o.until, o.reason, beaten) == (NOW + HOUR, "stuck in garage", "listed Blocked")
        assert store.read(lambda c: ts.meta(c, "revision")) == rev + 1
        assert store.read(lambda c: ts.changes_since(c, rev)) == ["TAG1"]
        [row] = audit(store)
        assert row[:6] == ("*", "TAG1", "override", "Accepted", "override", "OPERATOR_OVERRIDE")
        assert "until 2027-01-15T09:00:00Z (overrides listed Blocked): stuck in garage" in row[6]
        [ev] = outbox(store)
        assert (ev["purpose"], ev["expiry_date"], ev["reason"]) == (
            "override",
            "2027-01-15T09:00:00Z",
            row[6],
        )
        d = await svc.decide("CP1", "tag1", purpose="authorize")
        assert (d.status, d.source) == ("Accepted", "override")

    asyncio.run(body())


def test_grant_refused_by_a_manual_block_or_the_cap_changes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_sync(lambda c: ts.upsert_manual(c, [TokenSpec("TAG1", "Blocked")], NOW))
    rev = store.read(lambda c: ts.meta(c, "revision"))
    with pytest.raises(TokenError, match="Blocked by a manual entry"):
        store.write_sync(lambda c: overrides.grant(c, "TAG1", NOW + HOUR, None, NOW))
    monkeypatch.setattr(overrides, "MAX_LIVE", 1)
    store.write_sync(lambda c: overrides.grant(c, "A1", NOW + HOUR, None, NOW))
    with pytest.raises(TokenError, match="1 overrides are live"):
        store.write_sync(lambda c: overrides.grant(c, "A2", NOW + HOUR, None, NOW))
    store.write_sync(lambda c: overrides.grant(c, "A1", NOW + 2 * HOUR, None, NOW))  # replacing is fine
    assert store.read(lambda c: [o.id for o in overrides.live(c, NOW)]) == ["A1"]
    assert [r[1] for r in audit(store)] == ["A1", "A1"]
    assert store.read(lambda c: ts.meta(c, "revision")) == rev + 2


def test_supervisor_ends_due_overrides_and_chargers_get_the_list_back(store: Store) -> None:
    clock = [NOW]

    async def body() -> None:
        svc = AuthService(store, AuthSection(), wall=lambda: clock[0])
        commands = FakeCommands()
        charger = FakeCharger()
        commands.chargers["CP1"] = charger
        lists = ChargerLists(store, svc, commands, wall=lambda: clock[0])
        toks = [{"id": "TAG1", "status": "Blocked"}, {"id": "OK1", "status": "Accepted"}]
        assert (await svc.apply_token_list("full", 1, None, toks))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        assert charger.entries["TAG1"] == {"status": "Blocked"}

        await svc.grant_override("TAG1", "2h", "eMSP list wrong")
        await svc.grant_override("GUEST1", "1h", None)  # a token nobody knows
        await lists.wait_idle()
        assert charger.entries["TAG1"] == {"status": "Accepted", "expiryDate": "2027-01-15T10:00:00Z"}
        assert charger.entries["GUEST1"] == {"status": "Accepted", "expiryDate": "2027-01-15T09:00:00Z"}
        assert commands.actions("SendLocalList")[-1][1]["updateType"] == "Differential"

        clock[0] = NOW + HOUR  # GUEST1's end
        await svc.supervise_once()
        await lists.wait_idle()
        assert "GUEST1" not in charger.entries
        assert charger.entries["TAG1"]["status"] == "Accepted"
        assert (await svc.decide("CP1", "GUEST1", purpose="authorize")).status == "Invalid"

        assert await svc.end_override("TAG1", "list fixed")
        assert not await svc.end_override("TAG1", "again")
        await lists.wait_idle()
        assert charger.entries["TAG1"] == {"status": "Blocked"}
        await svc.flush_records()

    asyncio.run(body())
    reasons = [(r[1], r[3], r[6]) for r in audit(store) if r[2] == "override"]
    assert reasons[2:] == [
        ("GUEST1", "Expired", "operator override ended (its end has passed)"),
        ("TAG1", "Expired", "operator override ended early: list fixed"),
    ]
    assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM auth_overrides").fetchone()[0]) == 0


def test_an_override_keeps_a_restriction_in_charger_lists(store: Store) -> None:
    def q(c: sqlite3.Connection) -> tuple[Any, Any]:
        toks = [TokenSpec("TAG1", "Blocked", chargers=("CP9",))]
        ts.insert_list_chunk(c, ts.meta(c, "active_gen"), 1, toks)
        overrides.grant(c, "TAG1", NOW + HOUR, None, NOW)
        entries = ts.lookup_local(c, "TAG1")
        return ts.charger_entry(entries, "CP1", NOW), ts.charger_entry(entries, "CP9", NOW)

    cp1, cp9 = store.write_sync(q)
    assert cp1 is None
    assert cp9 == {"idTag": "TAG1", "idTagInfo": {"status": "Accepted", "expiryDate": "2027-01-15T09:00:00Z"}}


def test_the_emsp_is_not_asked_about_an_overridden_token(store: Store) -> None:
    emsp = EmspDouble()
    emsp.answers["TAG1"] = EmspAuthAnswer("Blocked")
    svc = AuthService(store, AuthSection(), emsp=emsp, wall=lambda: NOW)
    store.write_sync(lambda c: overrides.grant(c, "TAG1", NOW + HOUR, None, NOW))

    async def body() -> AuthDecision:
        return await svc.decide("CP1", "TAG1", purpose="start")

    d = asyncio.run(body())
    assert (d.status, d.source, emsp.asked) == ("Accepted", "override", [])


# -- CLI --------------------------------------------------------------------------------------------------------


def test_cli_allow_show_list_block_and_end(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store.open(site.parent / "data")
    try:

        async def emsp_list() -> None:
            svc = AuthService(store, AuthSection())
            assert (await svc.apply_token_list("full", 1, None, [{"id": "STUCK1", "status": "Blocked"}]))[0]

        asyncio.run(emsp_list())
    finally:
        store.close()
    assert cli(site, "allow", "stuck1", "--until", "12h", "--reason", "driver stuck, ticket 4711") == 0
    out = capsys.readouterr().out
    assert "STUCK1: Accepted until" in out and "operator override of listed Blocked" in out

    assert cli(site, "show", "STUCK1") == 0
    out = capsys.readouterr().out
    assert '"source": "override"' in out and '"reason": "driver stuck, ticket 4711"' in out
    assert "offline answer at any charger: Accepted via override" in out
    assert "* override: Accepted via override" in out  # the audit record among the recent decisions

    assert cli(site, "list", "--json", "--source", "override") == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["id"], row["source"], row["status"], row["reason"]) == (
        "STUCK1",
        "override",
        "Accepted",
        "driver stuck, ticket 4711",
    )
    assert "until" in row and "expiry" not in row
    assert cli(site, "list") == 0
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines()[1:3]] == ["list", "override"]

    # tokens block stays the operator's way to block: it ends the override, on the record
    assert cli(site, "block", "STUCK1") == 0
    assert "its operator override ended" in capsys.readouterr().out
    assert cli(site, "show", "STUCK1") == 0
    out = capsys.readouterr().out
    assert "offline answer at any charger: Blocked via local_list" in out  # both say Blocked: the list speaks
    assert '"source": "override"' not in out
    # ... and an override cannot un-block the operator's own block
    assert cli(site, "allow", "STUCK1") == 2
    assert "wins over an override" in capsys.readouterr().err

    assert cli(site, "remove", "STUCK1") == 0
    assert cli(site, "allow", "STUCK1", "--until", "8d") == 2
    assert "at most 7 days" in capsys.readouterr().err
    assert cli(site, "allow", "STUCK1") == 0
    assert "no --reason" in capsys.readouterr().err
    assert cli(site, "allow", "STUCK1", "--end", "--reason", "list fixed") == 0
    assert cli(site, "allow", "STUCK1", "--end") == 1
    assert cli(site, "allow", "STUCK1", "--end", "--until", "1h") == 2

    store = Store.open(site.parent / "data")
    try:
        rows = store.read(
            lambda c: [
                (r[0], r[1])
                for r in c.execute(
                    "SELECT status, reason FROM auth_decisions WHERE purpose = 'override' ORDER BY id"
                )
            ]
        )
    finally:
        store.close()
    assert [s for s, _ in rows] == ["Accepted", "Expired", "Accepted", "Expired"]
    assert rows[1][1] == "operator override ended early: tokens block"
    assert rows[3][1] == "operator override ended early: tokens allow --end: list fixed"


def test_an_authorize_accepted_by_an_override_is_answered_before_its_record_commits() -> None:
    d = decide(entry("local_list", "Blocked"), override())
    assert d.source == "override"
    assert answer_before_commit(replace(d, purpose="authorize"))  # committed data, like the local list
    assert not answer_before_commit(d)  # a start is recorded with its session
