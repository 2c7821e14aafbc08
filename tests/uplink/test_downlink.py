"""Downlink validation and dispatch (test doubles for the ports: this is pure dispatch logic)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import cbor2
import pytest

from gateway.errors import ChargerNotConnected, CommandError
from gateway.uplink.contract import encode_message
from gateway.uplink.downlink import Command, Downlink, Rejected, parse_command, refusal


class Chargers:
    def __init__(self, answer: dict[str, Any] | Exception | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.answer = answer if answer is not None else {"status": "Accepted"}

    def connected(self) -> list[str]:
        return ["CP1"]

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        self.calls.append((charger_id, action, payload))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Tokens:
    def __init__(self) -> None:
        self.version = 3
        self.applied: list[tuple[str, int, int | None, int]] = []

    async def apply_token_list(
        self, kind: str, version: int, base_version: int | None, tokens: list[dict[str, Any]]
    ) -> tuple[bool, str]:
        if kind == "differential" and base_version != self.version:
            return False, f"holding version {self.version}"
        self.applied.append((kind, version, base_version, len(tokens)))
        self.version = version
        return True, "ok"


class Site:
    def __init__(self) -> None:
        self.limits: list[float] = []

    def set_site_limit(self, amps: float) -> None:
        self.limits.append(amps)


def cmd(op: str, args: dict[str, Any], cid: str = "c1") -> bytes:
    return cbor2.dumps({"id": cid, "op": op, "args": args})


@pytest.mark.parametrize(
    ("op", "args", "action", "payload"),
    [
        ("remote_start", {"charger": "CP1", "id_tag": "04A2B3C4", "connector": 2}, "RemoteStartTransaction",
         {"idTag": "04A2B3C4", "connectorId": 2}),
        ("remote_start", {"charger": "CP1", "id_tag": "04A2B3C4"}, "RemoteStartTransaction", {"idTag": "04A2B3C4"}),
        ("remote_stop", {"charger": "CP1", "transaction_id": 17}, "RemoteStopTransaction", {"transactionId": 17}),
        ("reset", {"charger": "CP1", "type": "Hard"}, "Reset", {"type": "Hard"}),
        ("unlock", {"charger": "CP1", "connector": 1}, "UnlockConnector", {"connectorId": 1}),
        ("change_availability", {"charger": "CP1", "connector": 0, "type": "Inoperative"}, "ChangeAvailability",
         {"connectorId": 0, "type": "Inoperative"}),
        ("trigger_status", {"charger": "CP1", "connector": 1}, "TriggerMessage",
         {"requestedMessage": "StatusNotification", "connectorId": 1}),
    ],
)  # fmt: skip
def test_charger_ops_map_to_ocpp_calls(
    op: str, args: dict[str, Any], action: str, payload: dict[str, Any]
) -> None:
    chargers = Chargers()
    result = asyncio.run(Downlink(chargers, None, None, 30.0, 1 << 20).handle(cmd(op, args)))
    assert result == {"id": "c1", "op": op, "ok": True,
                      "result": {"charger": "CP1", "action": action, "response": {"status": "Accepted"}}}  # fmt: skip
    assert chargers.calls == [("CP1", action, payload)]


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"id": "x", "op": "launch_rockets", "args": {}}, "unknown_op"),
        ({"id": "", "op": "reset", "args": {}}, "malformed"),
        ({"id": "x" * 65, "op": "reset", "args": {}}, "malformed"),
        ({"op": "reset", "args": {}}, "malformed"),
        ({"id": "x", "op": "reset", "args": [], }, "malformed"),
        ({"id": "x", "op": "reset", "args": {}, "extra": 1}, "malformed"),
        ({"id": "x", "op": "reset", "args": {"charger": "CP1"}}, "invalid_args"),
        ({"id": "x", "op": "reset", "args": {"charger": "CP1", "type": "Medium"}}, "invalid_args"),
        ({"id": "x", "op": "reset", "args": {"charger": "CP1", "type": "Hard", "force": True}}, "invalid_args"),
        ({"id": "x", "op": "remote_start", "args": {"charger": "CP1", "id_tag": "A" * 21}}, "invalid_args"),
        ({"id": "x", "op": "remote_start", "args": {"charger": "CP1", "id_tag": "A", "connector": True}}, "invalid_args"),
        ({"id": "x", "op": "remote_stop", "args": {"charger": "CP1", "transaction_id": "17"}}, "invalid_args"),
        ({"id": "x", "op": "set_site_limit", "args": {"amps": -1}}, "invalid_args"),
        ({"id": "x", "op": "set_site_limit", "args": {"amps": float("nan")}}, "invalid_args"),
        ({"id": "x", "op": "token_list", "args": {"kind": "differential", "version": 2, "tokens": []}}, "invalid_args"),
        ({"id": "x", "op": "token_list", "args": {"kind": "full", "version": 2, "tokens": [1]}}, "invalid_args"),
        ({"id": "x", "op": "token_list", "args": {"kind": "half", "version": 2, "tokens": []}}, "invalid_args"),
    ],
)  # fmt: skip
def test_bad_commands_get_an_error_and_change_nothing(msg: dict[str, Any], code: str) -> None:
    chargers, tokens, site = Chargers(), Tokens(), Site()
    result = asyncio.run(Downlink(chargers, tokens, site, 30.0, 1 << 20).handle(cbor2.dumps(msg)))
    assert result["ok"] is False and result["error"]["code"] == code, result
    assert chargers.calls == [] and tokens.applied == [] and site.limits == []


@pytest.mark.parametrize(
    "payload", [b"\xff\x00garbage", b"", b"{not json", cbor2.dumps([1, 2]), b"\x9f" * 5000]
)
def test_undecodable_payload(payload: bytes) -> None:
    result = asyncio.run(Downlink(Chargers(), None, None, 30.0, 1 << 20).handle(payload))
    assert result["ok"] is False and result["error"]["code"] == "malformed" and result["id"] is None


def test_oversize_payload_rejected() -> None:
    big = cmd("token_list", {"kind": "full", "version": 1, "tokens": [{"uid": "A" * 100}] * 100})
    result = asyncio.run(Downlink(None, Tokens(), None, 30.0, 1000).handle(big))
    assert result["error"]["code"] == "malformed"


def test_unknown_charger_and_charger_failures() -> None:
    d = Downlink(Chargers(), None, None, 30.0, 1 << 20)
    r = asyncio.run(d.handle(cmd("reset", {"charger": "CP404", "type": "Soft"})))
    assert r["error"]["code"] == "charger_not_connected"
    for exc, code in (
        (ChargerNotConnected("gone"), "charger_not_connected"),
        (CommandError("CALLERROR"), "command_failed"),
    ):
        r = asyncio.run(
            Downlink(Chargers(exc), None, None, 30.0, 1 << 20).handle(
                cmd("reset", {"charger": "CP1", "type": "Soft"})
            )
        )
        assert r["error"]["code"] == code
    r = asyncio.run(Downlink(None, None, None, 30.0, 1 << 20).handle(cmd("set_site_limit", {"amps": 10})))
    assert r["error"]["code"] == "not_supported"


def test_token_lists_acknowledge_the_version_applied() -> None:
    tokens = Tokens()
    d = Downlink(None, tokens, None, 30.0, 1 << 20)
    full = asyncio.run(
        d.handle(cmd("token_list", {"kind": "full", "version": 10, "tokens": [{"uid": "A"}]}, "t1"))
    )
    assert full["ok"] and full["result"]["version_applied"] == 10
    diff = asyncio.run(
        d.handle(
            cmd("token_list", {"kind": "differential", "version": 11, "base_version": 10, "tokens": []}, "t2")
        )
    )
    assert diff["ok"] and diff["result"]["version_applied"] == 11
    stale = asyncio.run(
        d.handle(
            cmd("token_list", {"kind": "differential", "version": 13, "base_version": 12, "tokens": []}, "t3")
        )
    )
    assert stale["ok"] is False and stale["error"]["code"] == "token_list_refused"
    assert tokens.applied == [("full", 10, None, 1), ("differential", 11, 10, 0)]


def test_repeated_id_is_not_executed_twice_and_json_works() -> None:
    chargers, site = Chargers(), Site()
    d = Downlink(chargers, None, site, 30.0, 1 << 20)
    payload = json.dumps({"id": "same", "op": "set_site_limit", "args": {"amps": 63}}).encode()
    first = asyncio.run(d.handle(payload))
    again = asyncio.run(d.handle(payload))
    assert first == again and first["ok"] and first["result"] == {"amps": 63.0}
    assert site.limits == [63.0]


def test_parse_command_returns_typed_command() -> None:
    c = parse_command({"id": "a", "op": "trigger_status", "args": {"charger": "CP1"}})
    assert isinstance(c, Command) and c.payload == {"requestedMessage": "StatusNotification"}
    with pytest.raises(Rejected):
        parse_command({"id": "a", "op": 5})


def test_refusal_carries_the_command_id_when_the_payload_decodes() -> None:
    payload = encode_message({"id": "c-7", "op": "set_site_limit", "args": {"amps": 20}}, "cbor")
    r = refusal(payload, 65536, "busy", "too many commands in progress; retry later")
    assert r == {
        "id": "c-7",
        "op": "set_site_limit",
        "ok": False,
        "error": {"code": "busy", "message": "too many commands in progress; retry later"},
    }
    garbage = refusal(b"\xff\x00 not cbor", 65536, "busy", "x")
    assert garbage["id"] is None and garbage["op"] is None and garbage["error"]["code"] == "busy"
