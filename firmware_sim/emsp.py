"""Simulated eMSP backend for the chargegate MQTT uplink (contract: docs/uplink.md).

Library use (tests, benchmarks):
    emsp = SimEmsp("127.0.0.1", port, tokens={"04A2B3C4D5E6F7": "Accepted"})
    task = asyncio.create_task(emsp.run())
    await emsp.wait_connected()
    result = await emsp.command("site-1", "reset", {"charger": "CP1", "type": "Soft"})
    ...
    await emsp.stop()

It subscribes to every gateway (optionally through a shared subscription), de-duplicates events by
(gateway, seq), checks they arrive in order, keeps session records (in memory, or SQLite with --db), answers
authorization requests from its token table, sends commands and token lists, and reports what it received.

CLI:  python -m firmware_sim.emsp --port 1883 [--token 04A2B3C4D5E6F7=Accepted] [--db emsp.db] [--report-every 5]
      python -m firmware_sim.emsp --port 1883 --send site-1 reset '{"charger": "CP1", "type": "Soft"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import ssl
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.aio import within
from gateway.uplink.contract import (
    TOPIC_ROOT,
    ContractError,
    Encoding,
    Topics,
    decode_batch,
    decode_message,
    encode_message,
    gateway_of_topic,
)
from gateway.uplink.tokenparts import split_counts

# Reconnect delay of the simulator (a test double of a backend: fixed, short).
RECONNECT_DELAY_S = 0.2
# A token_list command larger than this goes in parts (docs/uplink.md "Token lists in parts"): the gateway's default
# max_downlink_bytes is 4 MiB; the margin covers the command envelope and MQTT framing.
TOKEN_LIST_PART_BYTES = 3 * 1024 * 1024
# List parts awaiting their result at once: keeps the pipe full without queueing a whole list at the gateway.
TOKEN_LIST_WINDOW = 4


def token_list_commands(
    kind: str,
    version: int,
    tokens: list[dict[str, Any]],
    base_version: int | None = None,
    *,
    max_part_bytes: int = TOKEN_LIST_PART_BYTES,
    encoding: Encoding = "cbor",
    update_id: str | None = None,
) -> list[dict[str, Any]]:
    """The args of the token_list command(s) carrying this list: one command when it fits max_part_bytes, else
    parts of about equal size under one update id (size-based split)."""
    head: dict[str, Any] = {"kind": kind, "version": version}
    if base_version is not None:
        head["base_version"] = base_version
    envelope = 256  # command id, op, header args
    size = len(encode_message({"tokens": tokens}, encoding))
    if size + envelope <= max_part_bytes:
        return [{**head, "tokens": tokens}]
    uid = update_id or f"tl-{version}-{uuid.uuid4().hex[:8]}"
    n = split_counts(size, len(tokens), max_part_bytes - envelope)
    while True:
        per = -(-len(tokens) // n)
        slices = [tokens[i : i + per] for i in range(0, len(tokens), per)]
        if all(len(encode_message({"tokens": t}, encoding)) + envelope <= max_part_bytes for t in slices):
            break
        n *= 2
    return [
        {**head, "update_id": uid, "part": i, "parts": len(slices), "tokens": t} for i, t in enumerate(slices)
    ]


@dataclass
class GatewayView:
    """What the eMSP knows about one gateway."""

    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> canonical event
    order: list[int] = field(default_factory=list)  # seqs in first-arrival order
    duplicates: int = 0
    duplicate_mismatches: int = 0  # a re-sent seq whose content differs (must stay 0)
    out_of_order: int = 0  # a new seq lower than one already seen
    batches: int = 0
    presence: dict[str, Any] | None = None
    status: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    chargers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[int, dict[str, Any]] = field(default_factory=dict)  # transaction id -> session.record body


class SimEmsp:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tokens: dict[str, str] | None = None,
        client_id: str | None = None,
        share_group: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        protocol: int = 5,
        encoding: Encoding = "cbor",
        db_path: str | None = None,
        persistent: bool = True,
        status_hook: Callable[[dict[str, Any], float], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.tokens = dict(tokens or {})
        self.client_id = client_id or f"sim-emsp-{uuid.uuid4().hex[:8]}"
        self.share_group = share_group
        self.username, self.password = username, password
        self.tls_ca, self.tls_cert, self.tls_key = tls_ca, tls_cert, tls_key
        self.protocol = protocol
        self.encoding: Encoding = encoding
        self.persistent = persistent
        self.status_hook = status_hook
        self.gateways: dict[str, GatewayView] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.result_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.auth_requests: list[dict[str, Any]] = []
        self.malformed: list[str] = []
        self.connects = 0
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._db: sqlite3.Connection | None = None
        if db_path:
            self._db = sqlite3.connect(db_path)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (gateway TEXT, seq INTEGER, kind TEXT, event TEXT, "
                "PRIMARY KEY (gateway, seq))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sessions (gateway TEXT, transaction_id INTEGER, record TEXT, "
                "PRIMARY KEY (gateway, transaction_id))"
            )

    # -- lifecycle --------------------------------------------------------------------------------------------
    def gateway(self, gateway_id: str) -> GatewayView:
        return self.gateways.setdefault(gateway_id, GatewayView())

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run())
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._db is not None:
            self._db.commit()
            self._db.close()
            self._db = None

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await within(self._connected.wait(), timeout)

    async def wait_for(
        self, cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"eMSP: timed out waiting for {what}; report: {self.report()}")
            await asyncio.sleep(0.02)

    def _client_args(self) -> dict[str, Any]:
        v5 = self.protocol == 5
        props = None
        if v5 and self.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
        tls = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None
        if tls is not None and self.tls_cert:
            tls.load_cert_chain(self.tls_cert, self.tls_key)
        return {
            "username": self.username,
            "password": self.password,
            "identifier": self.client_id,
            "protocol": aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            "clean_session": None if v5 else (not self.persistent),
            "clean_start": (not self.persistent) if v5 else 3,
            "properties": props,
            "tls_context": tls,
            "max_inflight_messages": 64,
        }

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, **self._client_args()) as client:
                    topics = [
                        (self._filter("events"), 1),
                        (f"{TOPIC_ROOT}/+/presence", 1),
                        (f"{TOPIC_ROOT}/+/status/+/+", 1),
                        (f"{TOPIC_ROOT}/+/charger/+", 1),
                        (self._filter("auth/request"), 1),
                        (f"{TOPIC_ROOT}/+/result", 1),
                    ]
                    await client.subscribe(topics)
                    self._client = client
                    self.connects += 1
                    self._connected.set()
                    async for message in client.messages:
                        await self._on_message(message)
            except aiomqtt.MqttError:
                pass
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(RECONNECT_DELAY_S)

    def _filter(self, suffix: str) -> str:
        flt = f"{TOPIC_ROOT}/+/{suffix}"
        return f"$share/{self.share_group}/{flt}" if self.share_group else flt

    # -- inbound ----------------------------------------------------------------------------------------------
    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        try:
            gw = gateway_of_topic(topic)
            suffix = topic.split("/", 3)[3]
            if suffix == "events":
                self._on_batch(gw, payload)
            elif suffix == "presence":
                if payload:
                    self.gateway(gw).presence = decode_message(payload)
            elif suffix.startswith("status/"):
                if payload:
                    msg = decode_message(payload)
                    self.gateway(gw).status[(msg["charger_id"], msg["connector_id"])] = msg
                    if self.status_hook is not None:
                        self.status_hook(msg, time.time())
            elif suffix.startswith("charger/"):
                if payload:
                    msg = decode_message(payload)
                    self.gateway(gw).chargers[msg["charger_id"]] = msg
            elif suffix == "auth/request":
                await self._on_auth(gw, decode_message(payload))
            elif suffix == "result":
                msg = decode_message(payload)
                rid = msg.get("id")
                if isinstance(rid, str):
                    self.results[rid] = msg
                    fut = self.result_waiters.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    self.results[f"?{len(self.results)}"] = msg
        except (ContractError, KeyError, TypeError, ValueError) as e:
            self.malformed.append(f"{topic}: {e}")

    def _on_batch(self, gw: str, payload: bytes) -> None:
        view = self.gateway(gw)
        view.batches += 1
        for e in decode_batch(payload):
            seq = e["seq"]
            old = view.events.get(seq)
            if old is not None:
                view.duplicates += 1
                if old != e:
                    view.duplicate_mismatches += 1
                continue
            if view.order and seq < view.order[-1]:
                view.out_of_order += 1
            view.events[seq] = e
            view.order.append(seq)
            if e["kind"] == "session.record" and isinstance(e["body"], dict):
                tx = e["body"].get("transaction_id")
                if isinstance(tx, int):
                    view.sessions[tx] = e["body"]
                    if self._db is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                            (gw, tx, json.dumps(e["body"])),
                        )
            if self._db is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?)", (gw, seq, e["kind"], json.dumps(e))
                )
        if self._db is not None:
            self._db.commit()

    async def _on_auth(self, gw: str, msg: dict[str, Any]) -> None:
        self.auth_requests.append(msg)
        token = msg.get("token")
        status = self.tokens.get(token, "Invalid") if isinstance(token, str) else "Invalid"
        if status == "NoAnswer":
            return
        answer = {"id": msg.get("id"), "status": status, "expiry": time.time() + 3600}
        await self._publish(Topics(gw).auth_response, encode_message(answer, self.encoding))

    # -- outbound ---------------------------------------------------------------------------------------------
    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("eMSP simulator not connected")
        await client.publish(topic, payload, qos=1, retain=retain)

    async def send_raw(self, gateway_id: str, payload: bytes, retain: bool = False) -> None:
        """Publish bytes on a gateway's command topic (tests: malformed input, a wrongly retained command)."""
        await self._publish(Topics(gateway_id).command, payload, retain)

    async def command(
        self,
        gateway_id: str,
        op: str,
        args: dict[str, Any],
        *,
        command_id: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its result."""
        cid = command_id or uuid.uuid4().hex[:12]
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.result_waiters[cid] = fut
        try:
            msg = {"id": cid, "op": op, "args": args}
            await self.send_raw(gateway_id, encode_message(msg, self.encoding))
            return await within(fut, timeout)
        finally:
            self.result_waiters.pop(cid, None)

    async def send_token_list(
        self,
        gateway_id: str,
        kind: str,
        version: int,
        tokens: list[dict[str, Any]],
        base_version: int | None = None,
        *,
        max_part_bytes: int = TOKEN_LIST_PART_BYTES,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send a token list: one command, or parts when it is larger than max_part_bytes. Returns the result
        that carries the outcome of the whole list (`version_applied`), or the first error."""
        commands = token_list_commands(
            kind, version, tokens, base_version, max_part_bytes=max_part_bytes, encoding=self.encoding
        )
        if len(commands) == 1:
            return await self.command(gateway_id, "token_list", commands[0], timeout=timeout)
        return await self.send_token_list_parts(gateway_id, commands, timeout=timeout)

    async def send_token_list_parts(
        self, gateway_id: str, commands: list[dict[str, Any]], *, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Send the parts (in the given order, TOKEN_LIST_WINDOW at a time, each with its own command id) and
        return the final result (the one with `version_applied`), or the first error result."""
        window = asyncio.Semaphore(TOKEN_LIST_WINDOW)

        async def one(args: dict[str, Any]) -> dict[str, Any]:
            async with window:  # a window well under the gateway's 32 commands in progress: never `busy`
                return await self.command(gateway_id, "token_list", args, timeout=timeout)

        results = await asyncio.gather(*(one(a) for a in commands))
        for r in results:
            if not r.get("ok"):
                return r
        final = [r for r in results if "version_applied" in r["result"]]
        return final[0] if final else results[-1]

    # -- report -----------------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connects": self.connects, "malformed": self.malformed[-5:], "gateways": {}}
        for gw, v in self.gateways.items():
            seqs = sorted(v.events)
            missing = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
            out["gateways"][gw] = {
                "events": len(v.events),
                "first_seq": seqs[0] if seqs else None,
                "last_seq": seqs[-1] if seqs else None,
                "gaps": missing,
                "duplicates": v.duplicates,
                "duplicate_mismatches": v.duplicate_mismatches,
                "out_of_order": v.out_of_order,
                "batches": v.batches,
                "sessions": len(v.sessions),
                "online": (v.presence or {}).get("online"),
                "connectors": len(v.status),
            }
        return out


async def _amain(args: argparse.Namespace) -> int:
    tokens = dict(t.split("=", 1) for t in args.token)
    emsp = SimEmsp(
        args.host,
        args.port,
        tokens=tokens,
        share_group=args.share_group,
        username=args.username,
        password=args.password,
        tls_ca=args.tls_ca,
        protocol=5 if args.protocol == "5" else 4,
        encoding=args.encoding,
        db_path=args.db,
        client_id=args.client_id,
    )
    emsp.start()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    try:
        await emsp.wait_connected(args.connect_timeout)
        if args.send:
            gw, op, raw = args.send
            result = await emsp.command(gw, op, json.loads(raw), timeout=args.timeout)
            print(json.dumps(result))
            return 0 if result.get("ok") else 1
        print(json.dumps({"emsp": "ready", "host": args.host, "port": args.port}), flush=True)
        while True:
            await asyncio.sleep(args.report_every)
            print(json.dumps(emsp.report()), flush=True)
    finally:
        await emsp.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="firmware_sim.emsp", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--tls-ca")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--encoding", choices=["cbor", "json"], default="cbor")
    p.add_argument("--client-id")
    p.add_argument("--share-group", help="consume events and auth requests through $share/<group>/...")
    p.add_argument(
        "--token", action="append", default=[], help="TOKEN=Accepted|Blocked|Expired|Invalid|NoAnswer"
    )
    p.add_argument("--db", help="SQLite file for events and sessions (default: memory)")
    p.add_argument("--report-every", type=float, default=5.0)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument(
        "--send", nargs=3, metavar=("GATEWAY", "OP", "ARGS_JSON"), help="send one command, print result"
    )
    args = p.parse_args(argv)
    try:
        return asyncio.run(_amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    except TimeoutError as e:
        print(f"emsp: {e or 'timed out'}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
