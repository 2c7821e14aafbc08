"""Charger local-list sync (SendLocalList Full / Differential, chunking, version tracking) against a fake charger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from authfakes import FakeCharger, FakeCommands

from gateway.auth import tokenstore as ts
from gateway.auth.charger_lists import ChargerLists
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenSpec
from gateway.store import Store

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def tokens(n: int, prefix: str = "T") -> list[dict[str, object]]:
    return [{"id": f"{prefix}{i:04d}", "status": "Accepted"} for i in range(n)]


def setup(store: Store, charger: FakeCharger) -> tuple[AuthService, FakeCommands, ChargerLists]:
    svc = AuthService(store, AuthSection())
    commands = FakeCommands()
    commands.chargers["CP1"] = charger
    return svc, commands, ChargerLists(store, svc, commands)


def expected(store: Store, charger_id: str) -> dict[str, dict[str, object]]:
    def q(c):  # type: ignore[no-untyped-def]
        out = {}
        for row in ts.iter_local(c):
            e = ts.charger_entry(row.entries, charger_id, 0.0)
            if e is not None:
                out[e["idTag"]] = e["idTagInfo"]
        return out

    return store.read(q)


def test_boot_sends_a_chunked_full_list_then_differentials(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger(max_length=100, send_max=10)
        svc, commands, lists = setup(store, charger)
        assert (await svc.apply_token_list("full", 3, None, tokens(25)))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        sends = commands.actions("SendLocalList")
        assert [p["updateType"] for _, p in sends] == ["Full", "Differential", "Differential"]
        assert [len(p["localAuthorizationList"]) for _, p in sends] == [10, 10, 5]
        assert [p["listVersion"] for _, p in sends] == [1, 2, 3]  # each chunk newer than the last
        revision = store.read(lambda c: ts.meta(c, "revision"))
        assert charger.version == 3
        assert charger.entries == expected(store, "CP1")
        state = store.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and (state.version, state.revision) == (3, revision)

        # a differential eMSP update reaches the charger as a differential with only the changes
        commands.calls.clear()
        ok, _ = await svc.apply_token_list(
            "differential",
            4,
            3,
            [{"id": "T0001", "status": "Blocked"}, {"id": "T0002"}, {"id": "NEW", "status": "Accepted"}],
        )
        assert ok
        await lists.wait_idle()
        sends = commands.actions("SendLocalList")
        assert len(sends) == 1
        assert sends[0][1]["updateType"] == "Differential"
        assert {e["idTag"] for e in sends[0][1]["localAuthorizationList"]} == {"T0001", "T0002", "NEW"}
        assert charger.entries["T0001"] == {"status": "Blocked"}
        assert "T0002" not in charger.entries
        assert charger.entries == expected(store, "CP1")

        # booting again in sync: probe and version check only
        commands.calls.clear()
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        assert commands.actions("SendLocalList") == []

    run(body)


def test_charger_version_mismatch_forces_full(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger(send_max=50)
        svc, commands, lists = setup(store, charger)
        assert (await svc.apply_token_list("full", 1, None, tokens(5)))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        charger.version, charger.entries = 0, {}  # the charger lost its list (factory reset)
        await store.write(lambda c: ts.upsert_manual(c, [TokenSpec(id="MAN1", status="Accepted")], 0.0))
        commands.calls.clear()
        lists.notify_list_changed()
        await lists.wait_idle()
        assert [p["updateType"] for _, p in commands.actions("SendLocalList")] == ["Full"]
        assert charger.entries == expected(store, "CP1")
        assert "MAN1" in charger.entries

    run(body)


def test_failed_differential_is_followed_by_full(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger(send_max=50)
        svc, commands, lists = setup(store, charger)
        assert (await svc.apply_token_list("full", 1, None, tokens(5)))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        charger.force_status = ["VersionMismatch"]
        commands.calls.clear()
        assert (await svc.apply_token_list("differential", 2, 1, [{"id": "T0000", "status": "Blocked"}]))[0]
        await lists.wait_idle()
        assert [p["updateType"] for _, p in commands.actions("SendLocalList")] == ["Differential", "Full"]
        assert charger.entries == expected(store, "CP1")
        assert charger.entries["T0000"]["status"] == "Blocked"

    run(body)


def test_list_larger_than_the_charger_holds_is_truncated(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger(max_length=8, send_max=3)
        svc, _commands, lists = setup(store, charger)
        assert (await svc.apply_token_list("full", 1, None, tokens(20)))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        assert len(charger.entries) == 8
        state = store.read(lambda c: ts.charger_list_state(c, "CP1"))
        assert state is not None and state.truncated

    run(body)


def test_charger_without_local_list_support_gets_no_list(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger(profiles="Core,RemoteTrigger")
        svc, commands, lists = setup(store, charger)
        assert (await svc.apply_token_list("full", 1, None, tokens(3)))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        assert commands.actions("SendLocalList") == []
        assert commands.actions("GetLocalListVersion") == []

    run(body)


def test_tokens_restricted_to_other_chargers_are_not_sent(store: Store) -> None:
    async def body() -> None:
        charger = FakeCharger()
        svc, _commands, lists = setup(store, charger)
        toks = [
            {"id": "HERE", "status": "Accepted", "chargers": ["CP1"]},
            {"id": "THERE", "status": "Accepted", "chargers": ["CP9"]},
        ]
        assert (await svc.apply_token_list("full", 1, None, toks))[0]
        await lists.on_charger_booted("CP1")
        await lists.wait_idle()
        assert set(charger.entries) == {"HERE"}

    run(body)
