"""Downlink commands from the eMSP: validation (pure) and dispatch to the ports.

A command is a map {"id": str, "op": str, "args": map}. Every command gets exactly one result on the result topic:
{"id", "op", "ok": true, "result": {...}} or {"id", "op", "ok": false, "error": {"code", "message"}}. A malformed or
unknown command gets an error result and changes nothing. A repeated id (QoS 1 redelivery, an eMSP retry) gets the
first result again without running the command twice.

A `token_list` may come in parts (`update_id`, `part`, `parts`): parts are staged on disk and the list is applied
when the last one arrives (gateway/uplink/tokenparts.py, gateway/uplink/tokenstaging.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ChargerNotConnected, CommandError
from gateway.store import Store
from gateway.uplink.contract import ContractError, decode_message
from gateway.uplink.ports import ChargerCommands, SiteLimitSink, TokenListSink
from gateway.uplink.tokenparts import MAX_PARTS
from gateway.uplink.tokenstaging import TokenListStaging

log = logging.getLogger("chargegate.uplink")

MAX_COMMAND_ID = 64
MAX_ID_TAG = 20  # OCPP 1.6 CiString20
MAX_TOKENS_PER_LIST = 2_000_000  # the token store's own cap (docs/authorization.md)
MAX_SITE_LIMIT_A = 10_000.0
# Results remembered for repeated command ids (an eMSP retry window rarely spans more).
RESULT_CACHE_SIZE = 256
# Payloads above this size (token lists, in practice) are decoded and executed one at a time: a gateway receiving
# many list parts at once holds one decoded part, not one per command in progress (32 x 4 MiB of dicts).
LARGE_PAYLOAD_BYTES = 64 * 1024

# op -> (required args, optional args)
OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "remote_start": (frozenset({"charger", "id_tag"}), frozenset({"connector"})),
    "remote_stop": (frozenset({"charger", "transaction_id"}), frozenset()),
    "reset": (frozenset({"charger", "type"}), frozenset()),
    "unlock": (frozenset({"charger", "connector"}), frozenset()),
    "change_availability": (frozenset({"charger", "connector", "type"}), frozenset()),
    "trigger_status": (frozenset({"charger"}), frozenset({"connector"})),
    "set_site_limit": (frozenset({"amps"}), frozenset()),
    "token_list": (
        frozenset({"kind", "version", "tokens"}),
        frozenset({"base_version", "update_id", "part", "parts"}),
    ),
}


class Rejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Command:
    id: str
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    # for charger ops: the OCPP action and camelCase payload
    charger: str | None = None
    action: str | None = None
    payload: dict[str, Any] | None = None


def _int(args: dict[str, Any], key: str, lo: int, hi: int = 2**31 - 1) -> int:
    v = args.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise Rejected("invalid_args", f"{key}: expected an integer {lo}..{hi}, got {v!r}")
    return v


def _str(args: dict[str, Any], key: str, max_len: int, choices: tuple[str, ...] = ()) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not 1 <= len(v) <= max_len:
        raise Rejected("invalid_args", f"{key}: expected text of 1..{max_len} characters")
    if choices and v not in choices:
        raise Rejected("invalid_args", f"{key}: expected one of {', '.join(choices)}")
    return v


def parse_command(msg: dict[str, Any]) -> Command:
    """Validate a decoded command map. Raises Rejected (code, message)."""
    if not msg.keys() <= {"id", "op", "args"}:
        raise Rejected("malformed", f"unknown top-level keys: {sorted(set(msg) - {'id', 'op', 'args'})}")
    cid = msg.get("id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= MAX_COMMAND_ID:
        raise Rejected("malformed", f"id: expected text of 1..{MAX_COMMAND_ID} characters")
    op = msg.get("op")
    if not isinstance(op, str):
        raise Rejected("malformed", "op: expected text")
    if op not in OPS:
        raise Rejected("unknown_op", f"unknown op {op[:40]!r} (known: {', '.join(sorted(OPS))})")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise Rejected("malformed", "args: expected a map")
    required, optional = OPS[op]
    missing = required - args.keys()
    if missing:
        raise Rejected("invalid_args", f"missing args: {', '.join(sorted(missing))}")
    unknown = args.keys() - required - optional
    if unknown:
        raise Rejected("invalid_args", f"unknown args: {', '.join(sorted(map(str, unknown)))}")

    if op == "set_site_limit":
        amps = args["amps"]
        if isinstance(amps, bool) or not isinstance(amps, int | float) or not math.isfinite(amps):
            raise Rejected("invalid_args", "amps: expected a number")
        if not 0 <= amps <= MAX_SITE_LIMIT_A:
            raise Rejected("invalid_args", f"amps: expected 0..{MAX_SITE_LIMIT_A:g}")
        return Command(cid, op, {"amps": float(amps)})
    if op == "token_list":
        kind = _str(args, "kind", 16, ("full", "differential"))
        version = _int(args, "version", 0, 2**53)
        base = args.get("base_version")
        if base is not None and (type(base) is not int or not 0 <= base <= 2**53):
            raise Rejected("invalid_args", "base_version: expected an integer or null")
        if kind == "differential" and base is None:
            raise Rejected("invalid_args", "base_version: required for a differential list")
        tokens = args["tokens"]
        if not isinstance(tokens, list) or len(tokens) > MAX_TOKENS_PER_LIST:
            raise Rejected("invalid_args", f"tokens: expected a list of at most {MAX_TOKENS_PER_LIST} maps")
        if not all(isinstance(t, dict) for t in tokens):
            raise Rejected("invalid_args", "tokens: every entry must be a map")
        out = {"kind": kind, "version": version, "base_version": base, "tokens": tokens}
        multipart = {"update_id", "part", "parts"} & args.keys()
        if multipart:
            if len(multipart) != 3:
                raise Rejected(
                    "invalid_args", "update_id, part and parts: give all three (a list in parts) or none"
                )
            parts = _int(args, "parts", 1, MAX_PARTS)
            out["parts"] = parts
            out["part"] = _int(args, "part", 0, parts - 1)
            out["update_id"] = _str(args, "update_id", MAX_COMMAND_ID)
        return Command(cid, op, out)

    charger = _str(args, "charger", 48)
    if op == "remote_start":
        payload: dict[str, Any] = {"idTag": _str(args, "id_tag", MAX_ID_TAG)}
        if "connector" in args:
            payload["connectorId"] = _int(args, "connector", 1, 64)
        return Command(cid, op, args, charger, "RemoteStartTransaction", payload)
    if op == "remote_stop":
        return Command(
            cid,
            op,
            args,
            charger,
            "RemoteStopTransaction",
            {"transactionId": _int(args, "transaction_id", 0)},
        )
    if op == "reset":
        return Command(cid, op, args, charger, "Reset", {"type": _str(args, "type", 8, ("Hard", "Soft"))})
    if op == "unlock":
        return Command(
            cid, op, args, charger, "UnlockConnector", {"connectorId": _int(args, "connector", 1, 64)}
        )
    if op == "change_availability":
        payload = {
            "connectorId": _int(args, "connector", 0, 64),
            "type": _str(args, "type", 16, ("Operative", "Inoperative")),
        }
        return Command(cid, op, args, charger, "ChangeAvailability", payload)
    # trigger_status
    payload = {"requestedMessage": "StatusNotification"}
    if "connector" in args:
        payload["connectorId"] = _int(args, "connector", 1, 64)
    return Command(cid, op, args, charger, "TriggerMessage", payload)


def error_result(cid: Any, op: Any, code: str, message: str) -> dict[str, Any]:
    return {
        "id": cid if isinstance(cid, str) and len(cid) <= MAX_COMMAND_ID else None,
        "op": op if isinstance(op, str) and op in OPS else None,
        "ok": False,
        "error": {"code": code, "message": message[:300]},
    }


def refusal(payload: bytes, max_payload_bytes: int, code: str, message: str) -> dict[str, Any]:
    """An error result for a command refused before it is run (busy, retained): carries the command's id and op
    when the payload decodes, so the eMSP can correlate it and retry that command; null ids otherwise."""
    try:
        msg = decode_message(payload, max_payload_bytes)
    except ContractError:
        return error_result(None, None, code, message)
    return error_result(msg.get("id"), msg.get("op"), code, message)


class Downlink:
    """Executes validated commands against the ports. `handle(payload)` always returns one result map."""

    def __init__(
        self,
        commands: ChargerCommands | None,
        token_sink: TokenListSink | None,
        site_limit_sink: SiteLimitSink | None,
        call_timeout: float,
        max_payload_bytes: int,
        store: Store | None = None,
    ) -> None:
        self.commands = commands
        self.token_sink = token_sink
        self.staging = (
            TokenListStaging(store, token_sink) if store is not None and token_sink is not None else None
        )
        self._large = asyncio.Lock()
        self.site_limit_sink = site_limit_sink
        self.call_timeout = call_timeout
        self.max_payload_bytes = max_payload_bytes
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.handled = 0
        self.rejected = 0

    async def handle(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > LARGE_PAYLOAD_BYTES:
            async with self._large:
                return await self._handle(payload)
        return await self._handle(payload)

    async def _handle(self, payload: bytes) -> dict[str, Any]:
        self.handled += 1
        try:
            msg = decode_message(payload, self.max_payload_bytes)
        except ContractError as e:
            self.rejected += 1
            log.warning("uplink: malformed downlink command: %s", e)
            return error_result(None, None, "malformed", str(e))
        try:
            cmd = parse_command(msg)
        except Rejected as e:
            self.rejected += 1
            log.warning("uplink: rejected downlink command %r: %s", msg.get("id"), e.message)
            return error_result(msg.get("id"), msg.get("op"), e.code, e.message)
        cached = self._results.get(cmd.id)
        if cached is not None:
            return cached
        try:
            result = await self._execute(cmd)
            out: dict[str, Any] = {"id": cmd.id, "op": cmd.op, "ok": True, "result": result}
        except Rejected as e:
            self.rejected += 1
            out = error_result(cmd.id, cmd.op, e.code, e.message)
        self._results[cmd.id] = out
        while len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)
        return out

    async def _execute(self, cmd: Command) -> dict[str, Any]:
        if cmd.op == "set_site_limit":
            if self.site_limit_sink is None:
                raise Rejected("not_supported", "this gateway has no load management")
            self.site_limit_sink.set_site_limit(cmd.args["amps"])
            return {"amps": cmd.args["amps"]}
        if cmd.op == "token_list":
            if self.token_sink is None:
                raise Rejected("not_supported", "this gateway has no token store")
            a = cmd.args
            if "update_id" in a:
                if self.staging is None:
                    raise Rejected("not_supported", "this gateway cannot stage token lists in parts")
                ok, res = await self.staging.handle_part(
                    a["update_id"],
                    a["kind"],
                    a["version"],
                    a["base_version"],
                    a["part"],
                    a["parts"],
                    a["tokens"],
                )
                if not ok:
                    raise Rejected(str(res["code"]), str(res["message"]))
                return res
            applied, message = await self.token_sink.apply_token_list(
                a["kind"], a["version"], a["base_version"], a["tokens"]
            )
            if not applied:
                raise Rejected("token_list_refused", f"version {a['version']} not applied: {message}")
            return {"version_applied": a["version"], "message": message}
        assert cmd.charger is not None and cmd.action is not None and cmd.payload is not None
        if self.commands is None or cmd.charger not in self.commands.connected():
            raise Rejected(
                "charger_not_connected", f"charger {cmd.charger!r} is not connected to this gateway"
            )
        try:
            answer = await self.commands.call(cmd.charger, cmd.action, cmd.payload, timeout=self.call_timeout)
        except ChargerNotConnected as e:
            raise Rejected("charger_not_connected", str(e)) from None
        except CommandError as e:
            raise Rejected("command_failed", str(e)) from None
        return {"charger": cmd.charger, "action": cmd.action, "response": answer}
