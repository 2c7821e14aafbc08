"""The uplink service: one MQTT connection to the eMSP broker, reconnected with backoff, carrying
presence, connector status (prompt, retained), the outbox event stream (durable, ordered), authorization
requests, and downlink commands. Composition entry point: `Uplink`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt import client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.aio import within
from gateway.auth.emsp import EmspAuthAnswer
from gateway.events import ConnectorStatus, StatusBus
from gateway.store import Store
from gateway.uplink.backoff import Backoff
from gateway.uplink.config import UplinkSection
from gateway.uplink.contract import CONTRACT_VERSION, Topics, content_type, decode_message, encode_message
from gateway.uplink.downlink import Downlink, refusal
from gateway.uplink.outbox import OutboxDrainer
from gateway.uplink.ports import ChargerCommands, SiteLimitSink, TokenListSink

log = logging.getLogger("chargegate.uplink")

# Waiting for a PUBACK / SUBACK / CONNACK: a broker that does not answer in this long is treated as lost.
BROKER_ACK_TIMEOUT_S = 30.0
# A connection that lived this long counts as healthy: the next failure starts the backoff from the beginning
# (a broker that accepts and then drops us at once must not be retried hot).
STABLE_CONNECTION_S = 10.0
# Last words on shutdown: the offline presence gets this long before we disconnect anyway.
SHUTDOWN_PUBLISH_S = 2.0
# Commands executing at once; more get a 'busy' result instead of queueing without bound.
MAX_CONCURRENT_COMMANDS = 32
# Authorization requests awaiting an answer at once; more are answered None (offline fallback) at once.
MAX_PENDING_AUTH = 256
# paho's window of unacknowledged QoS 1 publishes (drainer window + status + results fit in it).
MAX_INFLIGHT = 64
# MQTT v5 reason codes (and their 3.1.1 equivalents 4 and 5 as paho maps them) for refused credentials.
REFUSED_CODES = frozenset({4, 5, 134, 135, 138})


def mask_token(token: str) -> str:
    """Token UIDs in logs: first 4 and last 2 characters."""
    if len(token) <= 6:
        return "*" * len(token)
    return f"{token[:4]}****{token[-2:]}"


class CredentialsRefused(Exception):
    pass


def _unwrap(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


class MqttAuthorizer:
    """gateway.auth.emsp.EmspAuthorizer over MQTT: request on .../auth/request, answer on .../auth/response,
    correlated by a random id; None on timeout, when offline, or when too many requests are pending."""

    def __init__(self, uplink: Uplink) -> None:
        self._uplink = uplink
        self._pending: dict[str, asyncio.Future[EmspAuthAnswer]] = {}

    def reachable(self) -> bool:
        return self._uplink.connected

    @contextlib.contextmanager
    def _request(self) -> Iterator[tuple[str, asyncio.Future[EmspAuthAnswer]]]:
        rid = uuid.uuid4().hex[:16]
        fut: asyncio.Future[EmspAuthAnswer] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            yield rid, fut
        finally:
            self._pending.pop(rid, None)
            if not fut.done():
                fut.cancel()

    async def authorize(self, token_id: str, charger_id: str, timeout: float) -> EmspAuthAnswer | None:
        timeout = min(timeout, self._uplink.cfg.auth_timeout)
        if not self.reachable() or len(self._pending) >= MAX_PENDING_AUTH or timeout <= 0:
            return None
        with self._request() as (rid, fut):
            msg = {
                "id": rid,
                "token": token_id,
                "charger_id": charger_id,
                "gateway_ms": self._uplink.now_ms(),
            }
            try:
                async with asyncio.timeout(timeout):
                    await self._uplink.publish(
                        self._uplink.topics.auth_request, encode_message(msg, self._uplink.cfg.encoding)
                    )
                    answer = await fut
            except (TimeoutError, aiomqtt.MqttError, ConnectionError):
                log.info("uplink: no eMSP answer for token %s within %.1fs", mask_token(token_id), timeout)
                return None
            log.info("uplink: eMSP answered %s for token %s", answer.status, mask_token(token_id))
            return answer

    def resolve(self, payload: bytes) -> None:
        try:
            msg = decode_message(payload, 4096)
        except ValueError as e:
            log.warning("uplink: malformed authorization answer: %s", e)
            return
        rid, status = msg.get("id"), msg.get("status")
        fut = self._pending.get(rid) if isinstance(rid, str) else None
        if fut is None or fut.done():
            return  # late (timed out) or unknown: nothing waits for it
        if status not in ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"):
            log.warning("uplink: authorization answer with bad status %r ignored", status)
            return
        expiry, parent = msg.get("expiry"), msg.get("parent_id")
        fut.set_result(
            EmspAuthAnswer(
                status=status,
                expiry=float(expiry)
                if isinstance(expiry, int | float) and not isinstance(expiry, bool)
                else None,
                parent_id=parent if isinstance(parent, str) and len(parent) <= 20 else None,
            )
        )

    def fail_all(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("uplink connection lost"))


class Uplink:
    """Wire: `uplink = Uplink(cfg, store, status_bus, gateway_id, commands, token_sink, site_limit_sink)`, run
    `await uplink.run()` as a task (cancel it to stop: it publishes offline presence and disconnects),
    hand `uplink.authorizer` to authorization, add `uplink.control_ops()` to the control socket."""

    def __init__(
        self,
        cfg: UplinkSection,
        store: Store,
        status_bus: StatusBus,
        gateway_id: str,
        commands: ChargerCommands | None = None,
        token_sink: TokenListSink | None = None,
        site_limit_sink: SiteLimitSink | None = None,
        *,
        base_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg.resolve(base_dir) if base_dir is not None else cfg
        self.gateway_id = cfg.gateway_id or gateway_id
        self.topics = Topics(self.gateway_id)
        self.clock = clock
        self.store = store
        self.drainer = OutboxDrainer(
            store,
            self.gateway_id,
            self.cfg.encoding,
            self.cfg.batch_max,
            self.cfg.batch_max_bytes,
            int(self.cfg.outbox_budget_mb * 1024 * 1024),
            clock,
        )
        self.downlink = Downlink(
            commands,
            token_sink,
            site_limit_sink,
            self.cfg.command_timeout,
            self.cfg.max_downlink_bytes,
            store=store,
        )
        self.backoff = Backoff(cap=self.cfg.reconnect_max, rand=rand)
        self._authorizer = MqttAuthorizer(self)
        self._client: aiomqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # latest status per connector and presence per charger; dirty = not yet on the broker
        self._status: dict[tuple[str, int], ConnectorStatus] = {}
        self._status_dirty: set[tuple[str, int]] = set()
        self._chargers: dict[str, tuple[bool, float]] = {}
        self._chargers_dirty: set[str] = set()
        self._status_wake = asyncio.Event()
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.state = "starting"
        self.last_error: str | None = None
        self.next_retry_at: float | None = None
        self.connects = 0
        self.status_published = 0
        status_bus.subscribe_status(self._on_status)
        status_bus.subscribe_presence(self._on_presence)

    # -- public ---------------------------------------------------------------------------------------------------
    @property
    def authorizer(self) -> MqttAuthorizer:
        return self._authorizer

    @property
    def connected(self) -> bool:
        return self._client is not None

    def now_ms(self) -> int:
        return round(self.clock() * 1000)

    def wake(self) -> None:
        """Call after committing outbox rows to publish them without waiting for the next poll."""
        self.drainer.wake()

    async def stats(self) -> dict[str, Any]:
        s = self.drainer.stats
        out: dict[str, Any] = {
            "state": self.state,
            "connected": self.connected,
            "broker": f"{self.cfg.host}:{self.cfg.port}",
            "gateway_id": self.gateway_id,
            "last_error": self.last_error,
            "next_retry_in_s": (
                round(max(0.0, self.next_retry_at - time.monotonic()), 1)
                if self.next_retry_at is not None
                else None
            ),
            "connects": self.connects,
            "sent_events": s.sent_events,
            "sent_batches": s.sent_batches,
            "sent_bytes": s.sent_bytes,
            "dropped_events": s.dropped_events,
            "over_budget": s.over_budget,
            "status_published": self.status_published,
            "commands_handled": self.downlink.handled,
            "commands_rejected": self.downlink.rejected,
        }
        staging = self.downlink.staging
        if staging is not None:
            s_ = staging.assembly.staged
            out["token_list_parts_staged"] = staging.parts_staged
            out["token_list_updates_applied"] = staging.updates_applied
            out["token_list_staging"] = (
                None
                if s_ is None
                else {
                    "update_id": s_.header.update_id,
                    "version": s_.header.version,
                    "received": s_.received,
                    "parts": s_.header.parts,
                }
            )
        out.update(await self.drainer.backlog())
        return out

    def control_ops(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        """Ops for the control socket: {"op": "uplink.stats"} and {"op": "uplink.enforce_budget"}."""

        async def stats(_req: dict[str, Any]) -> dict[str, Any]:
            return await self.stats()

        async def enforce(_req: dict[str, Any]) -> dict[str, Any]:
            return {"dropped": await self.drainer.enforce_budget()}

        return {"uplink.stats": stats, "uplink.enforce_budget": enforce}

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 publish on the current connection; returns on PUBACK."""
        client = self._client
        if client is None:
            raise ConnectionError("uplink not connected")
        await client.publish(
            topic, payload, qos=1, retain=retain, properties=self._props(), timeout=BROKER_ACK_TIMEOUT_S
        )

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; forever (cancel to stop)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if not self.cfg.enabled:
            log.info("uplink: disabled in config ([uplink] enabled = false)")
            self.state = "disabled"
            await asyncio.Event().wait()
        self.seed_status()
        background = [asyncio.create_task(self.drainer.retention_loop(), name="uplink-retention")]
        if self.downlink.staging is not None:
            background.append(asyncio.create_task(self.downlink.staging.sweep_loop(), name="uplink-staging"))
        try:
            await self._connection_loop()
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _connection_loop(self) -> None:
        while True:
            started = time.monotonic()
            refused = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure ends in a backoff, never in a crash
                err = _unwrap(e)
                refused = isinstance(err, CredentialsRefused)
                self.last_error = str(err) or type(err).__name__
                if refused:
                    log.error(
                        "uplink: broker %s:%s refused the connection (%s): check [uplink] username/password/"
                        "certificates; not retrying before the backoff cap",
                        self.cfg.host,
                        self.cfg.port,
                        self.last_error,
                    )
                elif isinstance(err, aiomqtt.MqttError | OSError | ConnectionError | TimeoutError):
                    log.warning("uplink: broker connection lost or failed: %s", self.last_error)
                else:
                    log.error("uplink: unexpected failure, reconnecting", exc_info=err)
            if time.monotonic() - started >= STABLE_CONNECTION_S and not refused:
                self.backoff.reset()
            delay = self.backoff.next_delay(refused=refused)
            self.state = "refused" if refused else "backoff"
            self.next_retry_at = time.monotonic() + delay
            await asyncio.sleep(delay)
            self.next_retry_at = None

    def seed_status(self) -> None:
        """The last known status of every connector from the store: published (retained) at the first connect,
        so the eMSP's live view is complete even after a broker restart that lost its retained messages."""

        def q(conn: sqlite3.Connection) -> list[ConnectorStatus]:
            return [
                ConnectorStatus(r[0], int(r[1]), r[2], r[3] or "", r[4], r[5], float(r[6]))
                for r in conn.execute(
                    "SELECT charger_id, connector_id, status, error_code, info, charger_ts, received_at "
                    "FROM connector_status"
                )
            ]

        for st in self.store.read(q):
            self._status.setdefault((st.charger_id, st.connector_id), st)

    # -- connection -----------------------------------------------------------------------------------------------
    def _props(self) -> Properties | None:
        if self.cfg.protocol != 5:
            return None
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.ContentType = content_type(self.cfg.encoding)
        return p

    def _presence(self, online: bool, reason: str) -> bytes:
        msg = {
            "online": online,
            "gateway_id": self.gateway_id,
            "contract": CONTRACT_VERSION,
            "encoding": self.cfg.encoding,
            "reason": reason,
            "gateway_ms": self.now_ms(),
        }
        return encode_message(msg, self.cfg.encoding)

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.cfg.tls_ca or None)
        if self.cfg.tls_cert:
            ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        return ctx

    def _make_client(self) -> aiomqtt.Client:
        v5 = self.cfg.protocol == 5
        persistent = self.cfg.command_session_s > 0
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.MaximumPacketSize = self.cfg.max_downlink_bytes + 1024
            if persistent:
                # the broker queues the commands (QoS 1) sent while this gateway is offline, for this long
                connect_props.SessionExpiryInterval = self.cfg.command_session_s
        client = aiomqtt.Client(
            self.cfg.host,
            self.cfg.port,
            username=self.cfg.username or None,
            password=self.cfg.password or None,
            identifier=self.cfg.client_id or f"chargegate-{self.gateway_id}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(
                self.topics.presence, self._presence(False, "connection_lost"), qos=1, retain=True
            ),
            clean_session=None if v5 else not persistent,
            # MQTT 5: resume the session the broker kept; 3.1.1 takes clean_session and must keep paho's default
            clean_start=(not persistent) if v5 else mqtt_client.MQTT_CLEAN_START_FIRST_ONLY,
            timeout=BROKER_ACK_TIMEOUT_S,
            keepalive=self.cfg.keepalive,
            max_inflight_messages=MAX_INFLIGHT,
            properties=connect_props,
            tls_context=self._tls_context(),
        )
        # the drainer keeps a window of publishes in flight on purpose; aiomqtt would warn above 10
        client.pending_calls_threshold = 4 * MAX_INFLIGHT
        return client

    async def _session(self) -> None:
        self.state = "connecting"
        client = self._make_client()
        try:
            await client.__aenter__()
        except MqttConnectError as e:
            code = getattr(e.rc, "value", e.rc)
            if code in REFUSED_CODES:
                raise CredentialsRefused(f"CONNACK reason {code}: {e}") from None
            raise
        except aiomqtt.MqttError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e) or "certificate" in str(e).lower():
                raise CredentialsRefused(f"TLS: {e}") from None
            raise
        self.connects += 1
        self.state = "connected"
        self.last_error = None
        log.info("uplink: connected to %s:%s as gateway %s", self.cfg.host, self.cfg.port, self.gateway_id)
        try:
            await client.subscribe([(self.topics.command, 1), (self.topics.auth_response, 1)])
            self._client = client
            await self.publish(self.topics.presence, self._presence(True, "connected"), retain=True)
            # the broker may have lost retained state (restart without persistence): republish everything
            self._status_dirty.update(self._status)
            self._chargers_dirty.update(self._chargers)
            self._status_wake.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.drainer.drain(self._publish_batch))
                tg.create_task(self._status_loop())
                tg.create_task(self._downlink_loop(client))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await within(
                    client.publish(
                        self.topics.presence, self._presence(False, "shutdown"), qos=1, retain=True,
                        properties=self._props(),
                    ),
                    SHUTDOWN_PUBLISH_S,
                )  # fmt: skip
            raise
        finally:
            self._client = None
            self.state = "disconnected"
            self._authorizer.fail_all()
            with contextlib.suppress(Exception):
                await within(client.__aexit__(None, None, None), SHUTDOWN_PUBLISH_S)

    async def _publish_batch(self, payload: bytes) -> None:
        await self.publish(self.topics.events, payload)

    # -- status path ----------------------------------------------------------------------------------------------
    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(fn)
        else:
            fn()

    def _on_status(self, status: ConnectorStatus) -> None:
        def apply() -> None:
            key = (status.charger_id, status.connector_id)
            self._status[key] = status
            self._status_dirty.add(key)
            self._status_wake.set()

        self._call_in_loop(apply)

    def _on_presence(self, charger_id: str, online: bool) -> None:
        now = self.clock()

        def apply() -> None:
            self._chargers[charger_id] = (online, now)
            self._chargers_dirty.add(charger_id)
            self._status_wake.set()

        self._call_in_loop(apply)

    async def _status_loop(self) -> None:
        enc = self.cfg.encoding
        while True:
            await self._status_wake.wait()
            self._status_wake.clear()
            jobs: list[Awaitable[None]] = []
            for cid in list(self._chargers_dirty):
                self._chargers_dirty.discard(cid)
                online, at = self._chargers[cid]
                msg = {"charger_id": cid, "online": online, "gateway_ms": round(at * 1000)}
                jobs.append(self.publish(self.topics.charger(cid), encode_message(msg, enc), retain=True))
            for key in list(self._status_dirty):
                self._status_dirty.discard(key)
                s = self._status[key]
                msg2: dict[str, Any] = {
                    "charger_id": s.charger_id,
                    "connector_id": s.connector_id,
                    "status": s.status,
                    "error_code": s.error_code,
                    "info": s.info,
                    "charger_ts": s.charger_ts,
                    "gateway_ms": round(s.received_at * 1000),
                }
                jobs.append(self.publish(self.topics.status(*key), encode_message(msg2, enc), retain=True))
            if jobs:
                await asyncio.gather(*jobs)
                self.status_published += len(jobs)

    # -- downlink -------------------------------------------------------------------------------------------------
    async def _downlink_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if message.topic.value == self.topics.auth_response:
                self._authorizer.resolve(payload)
            elif message.topic.value == self.topics.command:
                if message.retain:
                    # a retained command would run again at every reconnect: refuse it, change nothing
                    stale = refusal(
                        payload,
                        self.downlink.max_payload_bytes,
                        "retained",
                        "commands must not be retained; not executed",
                    )
                    task = asyncio.create_task(self._send_result(stale))
                elif len(self._command_tasks) >= MAX_CONCURRENT_COMMANDS:
                    busy = refusal(
                        payload,
                        self.downlink.max_payload_bytes,
                        "busy",
                        "too many commands in progress; retry later",
                    )
                    task = asyncio.create_task(self._send_result(busy))
                else:
                    task = asyncio.create_task(self._run_command(payload))
                self._command_tasks.add(task)
                task.add_done_callback(self._command_tasks.discard)

    async def _run_command(self, payload: bytes) -> None:
        result = await self.downlink.handle(payload)
        await self._send_result(result)

    async def _send_result(self, result: dict[str, Any]) -> None:
        try:
            await self.publish(self.topics.result, encode_message(result, self.cfg.encoding))
        except (aiomqtt.MqttError, ConnectionError) as e:
            # the eMSP retries with the same id and gets the cached result
            log.warning("uplink: result of command %r not delivered: %s", result.get("id"), e)
