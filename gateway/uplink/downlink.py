"""Downlink commands from the eMSP: validation (pure) and dispatch to the ports.

A command is a map {"id": str, "op": str, "args": map}. Every command gets exactly one result on the result topic:
{"id", "op", "ok": true, "result": {...}} or {"id", "op", "ok": false, "error": {"code", "message"}}. A malformed or
unknown command gets an error result and changes nothing. A repeated id (QoS 1 redelivery, an eMSP retry) gets the
first result again without running the command twice.

A `token_list` may come in parts (`update_id`, `part`, `parts`): parts are staged on disk and the list is applied
when the last one arrives (gateway/uplink/tokenparts.py, gateway/uplink/tokenstaging.py).

`reserve_now` without a `reservation_id` gets one from the gateway: a positive integer from the `reservations`
table (AUTOINCREMENT: never reused, durable), keyed by the command id so a command redelivered after a restart
gets the same id again; ids the eMSP chooses itself are recorded there too, so an allocated one never equals them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.errors import ChargerNotConnected, CommandError
from gateway.store import Store, register_migrations
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
# Longest reservation an eMSP may ask for: a reservation blocks a connector for everyone else, and a day covers any
# "reserve before I arrive" use; longer is more likely a unit mistake (ms for s) than a wish.
MAX_RESERVATION_S = 24 * 3600
MAX_OCPP_INT = 2**31 - 1  # OCPP integer fields (reservationId) are 32-bit signed

register_migrations(
    "reservations",
    [
        """
        CREATE TABLE reservations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            command_id TEXT UNIQUE,
            charger_id TEXT NOT NULL,
            connector_id INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        """
    ],
)

# op -> (required args, optional args)
OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "remote_start": (frozenset({"charger", "id_tag"}), frozenset({"connector"})),
    "remote_stop": (frozenset({"charger", "transaction_id"}), frozenset()),
    "reset": (frozenset({"charger", "type"}), frozenset()),
    "unlock": (frozenset({"charger", "connector"}), frozenset()),
    "change_availability": (frozenset({"charger", "connector", "type"}), frozenset()),
    "trigger_status": (frozenset({"charger"}), frozenset({"connector"})),
    "reserve_now": (
        frozenset({"charger", "connector", "id_tag", "expiry"}),
        frozenset({"reservation_id", "parent_id_tag"}),
    ),
    "cancel_reservation": (frozenset({"charger", "reservation_id"}), frozenset()),
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


def _expiry(args: dict[str, Any], now: float) -> str:
    """`expiry`: seconds from now (1..MAX_RESERVATION_S) or an ISO-8601 time with a UTC offset, in the future and
    at most MAX_RESERVATION_S ahead -> the OCPP expiryDate (UTC, whole seconds)."""
    v = args.get("expiry")
    if type(v) is int:
        if not 1 <= v <= MAX_RESERVATION_S:
            raise Rejected(
                "invalid_args", f"expiry: expected 1..{MAX_RESERVATION_S} seconds from now, got {v}"
            )
        at = math.floor(now) + v
    elif isinstance(v, str) and len(v) <= 40:
        try:
            t = datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
        except ValueError:
            raise Rejected(
                "invalid_args", "expiry: expected an ISO-8601 time or a number of seconds"
            ) from None
        if t.tzinfo is None:
            raise Rejected("invalid_args", "expiry: the time needs a UTC offset (e.g. Z)")
        at = math.floor(t.timestamp())
        if at <= now:
            raise Rejected("invalid_args", "expiry: the time is not in the future")
        if at > now + MAX_RESERVATION_S:
            raise Rejected("invalid_args", f"expiry: at most {MAX_RESERVATION_S} s from now")
    else:
        raise Rejected("invalid_args", "expiry: expected an ISO-8601 time or a number of seconds")
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_command(msg: dict[str, Any], now: float | None = None) -> Command:
    """Validate a decoded command map (`now`: UNIX time for relative expiries; default the system clock).
    Raises Rejected (code, message)."""
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
    if op == "reserve_now":
        payload = {
            "connectorId": _int(args, "connector", 1, 64),  # connectorId 0 (any connector) is not offered
            "expiryDate": _expiry(args, time.time() if now is None else now),
            "idTag": _str(args, "id_tag", MAX_ID_TAG),
        }
        if "parent_id_tag" in args:
            payload["parentIdTag"] = _str(args, "parent_id_tag", MAX_ID_TAG)
        if "reservation_id" in args:
            payload["reservationId"] = _int(args, "reservation_id", 1, MAX_OCPP_INT)
        return Command(cid, op, args, charger, "ReserveNow", payload)
    if op == "cancel_reservation":
        payload = {"reservationId": _int(args, "reservation_id", 1, MAX_OCPP_INT)}
        return Command(cid, op, args, charger, "CancelReservation", payload)
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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.commands = commands
        self.store = store
        self.wall = wall  # UNIX time, for relative reservation expiries
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
            cmd = parse_command(msg, self.wall())
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
        payload = cmd.payload
        if cmd.op == "reserve_now":
            payload = dict(payload)
            payload["reservationId"] = await self._reservation_id(cmd, payload.get("reservationId"))
        try:
            answer = await self.commands.call(cmd.charger, cmd.action, payload, timeout=self.call_timeout)
        except ChargerNotConnected as e:
            raise Rejected("charger_not_connected", str(e)) from None
        except CommandError as e:
            raise Rejected("command_failed", str(e)) from None
        out = {"charger": cmd.charger, "action": cmd.action, "response": answer}
        if cmd.op == "reserve_now":
            out["reservation_id"] = payload["reservationId"]
        return out

    async def _reservation_id(self, cmd: Command, given: int | None) -> int:
        """The eMSP's reservation id (recorded), or one allocated for this command (the same one again when the
        command id comes again)."""
        if self.store is None:
            if given is None:
                raise Rejected(
                    "not_supported", "this gateway cannot allocate reservation ids: give reservation_id"
                )
            return given
        charger, connector, now = cmd.charger, cmd.args["connector"], self.wall()

        def op(conn: sqlite3.Connection) -> int:
            if given is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO reservations (id, charger_id, connector_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (given, charger, connector, now),
                )
                return given
            row = conn.execute("SELECT id FROM reservations WHERE command_id = ?", (cmd.id,)).fetchone()
            if row is not None:
                return int(row[0])
            cur = conn.execute(
                "INSERT INTO reservations (command_id, charger_id, connector_id, created_at) VALUES (?, ?, ?, ?)",
                (cmd.id, charger, connector, now),
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

        rid: int = await self.store.write(op)
        if rid > MAX_OCPP_INT:
            raise Rejected("command_failed", "reservation ids exhausted (give reservation_id)")
        return rid
