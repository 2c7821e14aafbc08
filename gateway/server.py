"""OCPP 1.6J websocket server: the thin I/O adapter around gateway.ocpp.framing and gateway.csms.

Per connection, a reader task classifies every frame at once (so a charger's CALLRESULT is never stuck behind our
own handler, the deadlock the `ocpp` library has when a handler issues a call), while a worker task answers the
charger's CALLs one at a time in arrival order. Commands to chargers go through `call()` (the ChargerCommands API),
one outstanding CALL per charger as OCPP-J requires.

Before a CALL reaches its handler the worker asks the CSMS's registration gate (`Csms.admit`, OCPP 1.6 §4.2): a
charger that is not Accepted gets one CALLERROR SecurityError for anything but BootNotification, nothing is
recorded, the connection stays up. The first refusal on a connection without a BootNotification asks the charger
to boot (TriggerMessage BootNotification) so its registration can complete. Refusals are counted in `stats`
(`refused_unregistered`, and per charger; `chargegate status` shows both) and logged at WARNING, once a minute
per charger.

Security profiles (OCPP 1.6 Security Whitepaper, docs/ocpp.md "Security profiles") are checked in the opening
handshake, against the profile configured for the charger named in the URL: 1 = HTTP Basic (any transport), 2 = TLS
and HTTP Basic, 3 = TLS with a client certificate verified against [ocpp] client_ca whose subject commonName (or a
DNS subjectAltName) is the charger id; Basic is ignored there. Every refusal of a configured charger is the same
401, whatever failed; the reason is logged at WARNING with the charger id. Certificates, the client CA and the CRL
are reloaded when their files change (gateway.ocpp.tls); a revoked profile-3 charger is refused and, when the CRL
that revokes it arrives while it is connected, disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.config import SiteConfig
from gateway.csms import HANDLED_ACTIONS, CallRefused, ConnectionState, Csms
from gateway.errors import ChargegateError, ChargerNotConnected, CommandError
from gateway.logutil import RepeatFilter
from gateway.ocpp import framing, registration
from gateway.ocpp.tls import ServerTls, TlsFiles

log = logging.getLogger("chargegate.ocpp")

SUBPROTOCOL = "ocpp1.6"
# After a failed ping or our close frame, a peer gets this long to finish the closing handshake before the TCP
# connection is dropped: a dead charger answers nothing, and its id must become free for its reconnect quickly.
CLOSE_TIMEOUT = 2.0
PATH_PREFIX = "/ocpp/"
# A peer that opens a TCP connection to the wss:// port and does not finish the TLS handshake is dropped after this
# (asyncio's default is 60 s; a charger on the site LAN needs well under a second, a slow modem a few).
TLS_HANDSHAKE_TIMEOUT = 10.0
# Longest certificate name quoted in a refusal log line (a certificate's names are peer-controlled).
MAX_LOGGED_NAME = 64

FrameTrace = Callable[[str, str, str], None]  # (charger_id, "rx"|"tx", text)


class _Connection:
    def __init__(self, charger_id: str, ws: ServerConnection, max_queue: int) -> None:
        self.charger_id = charger_id
        self.ws = ws
        self.state = ConnectionState(charger_id)
        # Bounded: a charger that floods CALLs without waiting for answers stalls its own socket, nobody else's.
        self.inbox: asyncio.Queue[framing.InboundCall] = asyncio.Queue(maxsize=max_queue)
        self.pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        # message id of an outstanding TriggerMessage -> the message it asks for (admitted once it is Accepted)
        self.triggers: dict[str, str] = {}
        self.call_lock = asyncio.Lock()
        self.closed = False

    def fail_pending(self, exc: Exception) -> None:
        for _action, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()


def _charger_id_from_path(path: str) -> str | None:
    path = path.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    cid = unquote(path[len(PATH_PREFIX) :])
    if not cid or "/" in cid:
        return None
    return cid


def _certificate_names(cert: dict[str, Any]) -> list[str]:
    """The names a (verified) client certificate vouches for: subject commonName(s), then DNS subjectAltNames."""
    names = [str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    names += [str(v) for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return names


def _basic_credentials(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class OcppServer:
    """Implements gateway.commands.ChargerCommands."""

    def __init__(
        self,
        cfg: SiteConfig,
        csms: Csms,
        on_frame: FrameTrace | None = None,
        id_gen: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.cfg = cfg
        self.csms = csms
        self.on_frame = on_frame
        self._ids = id_gen
        self._conns: dict[str, _Connection] = {}
        self._servers: list[Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._passwords = {c.id: c.password for c in cfg.chargers}
        self._profiles = {c.id: c.profile(cfg.ocpp) for c in cfg.chargers}
        self._quiet = RepeatFilter(log)
        # the wss:// listener's certificates, CA and CRL (reloaded when changed); None without TLS
        self.tls: ServerTls | None = None
        self.port = 0
        self.plain_port = 0  # the extra ws:// listener of a TLS site ([ocpp] plain_port), 0 = none
        self.stats: dict[str, Any] = {
            "frames_in": 0,
            "frames_out": 0,
            "rejected": 0,
            "dropped": 0,
            # CALLs refused by the registration gate (the charger was not Accepted); per charger below
            "refused_unregistered": 0,
        }
        # keys: configured chargers only (an unknown id never gets past the handshake), so bounded
        self.refused_by_charger: dict[str, int] = {}
        self.stats["refused_unregistered_by_charger"] = self.refused_by_charger

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> int:
        o = self.cfg.ocpp
        ssl_ctx = None
        if o.tls_cert:
            self.tls = ServerTls(TlsFiles.from_config(self.cfg))
            self.stats["tls"] = self.tls.status
            ssl_ctx = self.tls.listener_context
            if o.tls_reload_interval_s > 0:
                self._spawn(self._watch_tls(self.tls, o.tls_reload_interval_s), "tls-reload")
        main = await self._serve(o.port, ssl_ctx)
        self.port = int(next(iter(main.sockets)).getsockname()[1])
        if o.plain_port is not None:
            plain = await self._serve(o.plain_port, None)
            self.plain_port = int(next(iter(plain.sockets)).getsockname()[1])
            log.info("also listening on %s for chargers at security profile 1", self.plain_url)
        return self.port

    async def _watch_tls(self, tls: ServerTls, interval: float) -> None:
        """Pick up replaced certificate, key, CA or CRL files (a stat() of each per round; loading happens on a
        worker thread, a large CRL takes a while to parse). After a reload, a profile-3 charger whose certificate
        the new CRL revokes is disconnected (its reconnect is refused)."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await asyncio.to_thread(tls.reload_if_changed):
                    await self._drop_revoked(tls)
            except Exception:  # a bug here must not end the watching: the old files stay in force
                log.exception("TLS reload round failed")

    async def _drop_revoked(self, tls: ServerTls) -> None:
        for cid, conn in list(self._conns.items()):
            obj = conn.ws.transport.get_extra_info("ssl_object")
            if self._profiles.get(cid) != 3 or obj is None:
                continue
            if tls.revoked(obj.getpeercert(binary_form=True) or b""):
                log.warning("%s disconnected: its client certificate is revoked ([ocpp] client_crl)", cid)
                await conn.ws.close(1008, "certificate revoked")

    async def _serve(self, port: int, ssl_ctx: ssl.SSLContext | None) -> Server:
        o = self.cfg.ocpp
        # asyncio refuses a handshake timeout without TLS
        tls_timeout: dict[str, Any] = {"ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT} if ssl_ctx else {}
        server = await serve(
            self._handle,
            o.host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            max_size=o.max_frame_bytes,
            max_queue=o.max_queue,
            ping_interval=o.ping_interval,
            ping_timeout=o.ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            # No permessage-deflate: chargers sit on the site LAN, and zlib per frame costs a Pi's CPU for nothing.
            compression=None,
            ssl=ssl_ctx,
            server_header="chargegate",
            **tls_timeout,
        )
        self._servers.append(server)
        return server

    @property
    def url(self) -> str:
        scheme = "wss" if self.cfg.ocpp.tls_cert else "ws"
        return f"{scheme}://{self.cfg.ocpp.host}:{self.port}{PATH_PREFIX}"

    @property
    def plain_url(self) -> str:
        """The extra ws:// listener of a TLS site ([ocpp] plain_port), "" when there is none."""
        return f"ws://{self.cfg.ocpp.host}:{self.plain_port}{PATH_PREFIX}" if self.plain_port else ""

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    # -- handshake --------------------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cid = _charger_id_from_path(request.path)
        if cid is None or cid not in self._passwords:
            self._quiet.log(
                logging.WARNING,
                f"404:{request.path[:80]}",
                "refused unknown charge point path %r",
                request.path[:80],
            )
            return connection.respond(HTTPStatus.NOT_FOUND, "Unknown charge point\n")
        profile = self._profiles[cid]
        tls = connection.transport.get_extra_info("ssl_object")
        if profile >= 2 and tls is None:
            return self._unauthorized(
                connection,
                cid,
                "tls",
                "security profile %d requires TLS (wss://), it came over ws://",
                profile,
            )
        if profile == 3:
            # The TLS layer has verified the certificate against client_ca (a bad one never gets here); it must
            # also name this charger. HTTP Basic is not used at profile 3 (ignored when sent).
            cert = tls.getpeercert() if tls is not None else None
            if not cert:
                return self._unauthorized(
                    connection, cid, "nocert", "security profile 3 requires a client certificate, none sent"
                )
            if self.tls is not None and self.tls.revoked(tls.getpeercert(binary_form=True) or b""):
                return self._unauthorized(
                    connection, cid, "revoked", "its client certificate is revoked ([ocpp] client_crl)"
                )
            names = _certificate_names(cert)
            if cid not in names:
                shown = ", ".join(repr(n[:MAX_LOGGED_NAME]) for n in names[:4]) or "no name"
                return self._unauthorized(
                    connection, cid, "certname", "its client certificate is for %s, not this charger", shown
                )
            return None
        creds = _basic_credentials(request.headers)
        expected = self._passwords[cid].encode()
        if creds is None or creds[0] != cid or not hmac.compare_digest(creds[1].encode(), expected):
            return self._unauthorized(connection, cid, "", "missing or wrong credentials")
        return None

    def _unauthorized(
        self, connection: ServerConnection, cid: str, kind: str, reason: str, *args: object
    ) -> Response:
        """One answer for every refusal of a configured charger (a prober learns nothing about what failed); the
        reason goes to the log, at most once a minute per charger and reason."""
        key = f"401:{cid}:{kind}" if kind else f"401:{cid}"
        self._quiet.log(logging.WARNING, key, "refused %s: " + reason, cid, *args)
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="chargegate", charset="UTF-8"'
        return response

    @staticmethod
    def _select_subprotocol(connection: ServerConnection, subprotocols: Any) -> Any:
        return SUBPROTOCOL if SUBPROTOCOL in subprotocols else None

    # -- per connection ---------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        cid = _charger_id_from_path(ws.request.path if ws.request else "")
        if cid is None:
            await ws.close(1008, "bad path")
            return
        if ws.subprotocol != SUBPROTOCOL:
            # OCPP-J §3.1.2: complete the handshake without a subprotocol, then close.
            log.warning("%s connected without subprotocol %s: closing", cid, SUBPROTOCOL)
            await ws.close(1002, f"subprotocol {SUBPROTOCOL} required")
            return
        old = self._conns.get(cid)
        conn = _Connection(cid, ws, self.cfg.ocpp.max_queue)
        self._conns[cid] = conn
        if old is not None:
            log.info("%s reconnected: replacing its old connection", cid)
            old.closed = True
            old.fail_pending(ChargerNotConnected(f"{cid}: connection replaced"))
            await old.ws.close(1000, "replaced by a new connection")
        tls = ws.transport.get_extra_info("ssl_object")
        log.info(
            "%s connected from %s (security profile %d, %s)",
            cid,
            ws.remote_address[0] if ws.remote_address else "?",
            self._profiles.get(cid, 1),
            tls.version() if tls is not None else "no TLS",
        )
        conn.state.stored_registration = await self.csms.charger_connected(cid)
        worker = asyncio.create_task(self._worker(conn), name=f"ocpp-worker-{cid}")
        try:
            await self._reader(conn)
        finally:
            conn.closed = True
            worker.cancel()
            conn.fail_pending(ChargerNotConnected(f"{cid}: disconnected"))
            if self._conns.get(cid) is conn:
                del self._conns[cid]
                log.info("%s disconnected (%s)", cid, ws.close_code)
                try:
                    await self.csms.charger_disconnected(cid)
                except ChargegateError as e:
                    log.error("%s: could not record disconnect: %s", cid, e)

    async def _reader(self, conn: _Connection) -> None:
        validate = self.cfg.ocpp.validate_schemas
        try:
            async for text in conn.ws:
                self.stats["frames_in"] += 1
                if self.on_frame is not None:
                    self.on_frame(conn.charger_id, "rx", text if isinstance(text, str) else repr(text))
                parsed = framing.parse_frame(text, HANDLED_ACTIONS, validate)
                if isinstance(parsed, framing.InboundCall):
                    await conn.inbox.put(parsed)
                elif isinstance(parsed, framing.InboundResult | framing.InboundError):
                    self._resolve(conn, parsed)
                elif isinstance(parsed, framing.Reject):
                    self.stats["rejected"] += 1
                    self._quiet.log(
                        logging.WARNING,
                        f"rej:{conn.charger_id}:{parsed.code}",
                        "%s sent an invalid CALL %s: %s -> CALLERROR %s",
                        conn.charger_id,
                        parsed.unique_id,
                        parsed.description,
                        parsed.code,
                    )
                    await self._send(conn, parsed.frame())
                else:
                    self.stats["dropped"] += 1
                    self._quiet.log(
                        logging.WARNING,
                        f"drop:{conn.charger_id}:{parsed.reason}",
                        "%s: dropped a frame: %s",
                        conn.charger_id,
                        parsed.reason,
                    )
        except ConnectionClosed:
            pass

    async def _worker(self, conn: _Connection) -> None:
        validate = self.cfg.ocpp.validate_schemas
        while True:
            msg = await conn.inbox.get()
            verdict = self.csms.admit(conn.state, msg.action)
            if not verdict.admitted:
                try:
                    await self._refuse_unregistered(conn, msg, verdict)
                except ConnectionClosed:
                    return
                continue
            try:
                reply = await self.csms.handle(conn.state, msg.action, msg.payload)
            except CallRefused as e:
                self._quiet.log(
                    logging.WARNING,
                    f"refused:{conn.charger_id}:{e.code}",
                    "%s %s refused: %s -> %s",
                    conn.charger_id,
                    msg.action,
                    e,
                    e.code,
                )
                await self._send(conn, framing.call_error(msg.unique_id, e.code, str(e)))
                continue
            except Exception as e:
                log.exception("%s: %s handler failed", conn.charger_id, msg.action)
                await self._send(
                    conn, framing.call_error(msg.unique_id, "InternalError", f"{type(e).__name__}")
                )
                continue
            if validate:
                problem = framing.validate_payload(framing.CALLRESULT, msg.action, reply.payload)
                if problem is not None:
                    log.error(
                        "%s: our %s answer fails its schema: %s", conn.charger_id, msg.action, problem[1]
                    )
                    await self._send(
                        conn, framing.call_error(msg.unique_id, "InternalError", "invalid answer")
                    )
                    continue
            try:
                await self._send(conn, framing.call_result(msg.unique_id, reply.payload))
            except ConnectionClosed:
                return
            for action in reply.after:
                self._spawn(action(), f"after-{msg.action}-{conn.charger_id}")

    async def _refuse_unregistered(
        self, conn: _Connection, msg: framing.InboundCall, verdict: registration.Verdict
    ) -> None:
        cid = conn.charger_id
        self.stats["refused_unregistered"] += 1
        self.refused_by_charger[cid] = self.refused_by_charger.get(cid, 0) + 1
        self._quiet.log(
            logging.WARNING,
            f"unregistered:{cid}",
            "%s %s refused: not registered (BootNotification %s, %s) -> CALLERROR %s "
            "(%d refused on this connection; repeats within a minute are logged at DEBUG)",
            cid,
            msg.action,
            verdict.status,
            verdict.source,
            registration.REFUSAL_CODE,
            conn.state.refused,
        )
        await self._send(
            conn, framing.call_error(msg.unique_id, registration.REFUSAL_CODE, verdict.description)
        )
        if conn.state.registration is None and not conn.state.boot_requested:
            # No BootNotification on this connection (a reconnect, or a charger that skips it): ask for one, so
            # the registration completes and the charger's retries of its queued messages get through.
            conn.state.boot_requested = True
            self._spawn(self._request_boot(conn), f"trigger-boot-{cid}")

    async def _request_boot(self, conn: _Connection) -> None:
        if conn.closed or self._conns.get(conn.charger_id) is not conn:
            return  # a newer connection has its own gate
        try:
            answer = await self.call(
                conn.charger_id, "TriggerMessage", {"requestedMessage": "BootNotification"}
            )
        except ChargegateError as e:
            log.info("%s: TriggerMessage BootNotification not delivered: %s", conn.charger_id, e)
            return
        log.info(
            "%s: asked to boot (TriggerMessage BootNotification): %s", conn.charger_id, answer.get("status")
        )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %r", name, t.exception())

        task.add_done_callback(done)

    async def _send(self, conn: _Connection, text: str) -> None:
        if self.on_frame is not None:
            self.on_frame(conn.charger_id, "tx", text)
        self.stats["frames_out"] += 1
        await conn.ws.send(text)

    def _resolve(self, conn: _Connection, parsed: framing.InboundResult | framing.InboundError) -> None:
        entry = conn.pending.get(parsed.unique_id)
        if entry is None:
            self._quiet.log(
                logging.WARNING,
                f"unk:{conn.charger_id}",
                "%s answered unknown message id %r",
                conn.charger_id,
                parsed.unique_id,
            )
            return
        action, fut = entry
        if fut.done():
            return
        requested = conn.triggers.pop(parsed.unique_id, None)
        if (
            isinstance(parsed, framing.InboundResult)
            and requested
            and parsed.payload.get("status") == "Accepted"
        ):
            # Recorded here, in the reader, before the next frame is read: the triggered message the charger sends
            # right after this answer must find its allowance when the worker gets to it.
            conn.state.triggered.add(requested)
        if isinstance(parsed, framing.InboundError):
            fut.set_exception(
                CommandError(
                    f"{conn.charger_id} answered {action} with CALLERROR {parsed.code}: {parsed.description}"
                )
            )
            return
        if self.cfg.ocpp.validate_schemas:
            problem = framing.validate_payload(framing.CALLRESULT, action, parsed.payload)
            if problem is not None:
                fut.set_exception(
                    CommandError(
                        f"{conn.charger_id} answered {action} with an invalid payload "
                        f"({problem[0]}: {problem[1]})"
                    )
                )
                return
        fut.set_result(parsed.payload)

    # -- ChargerCommands --------------------------------------------------------------------------------------
    def connected(self) -> list[str]:
        return sorted(self._conns)

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        conn = self._conns.get(charger_id)
        if conn is None or conn.closed:
            raise ChargerNotConnected(f"charger {charger_id!r} is not connected")
        if action not in framing.ACTIONS_16:
            raise CommandError(f"{action!r} is not an OCPP 1.6 action")
        if action not in framing.CSMS_TO_CP_ACTIONS:
            raise CommandError(f"{action} is sent by chargers, not to them")
        problem = framing.validate_payload(framing.CALL, action, payload)
        if problem is not None:
            raise CommandError(f"invalid {action} payload ({problem[0]}: {problem[1]})")
        wait = self.cfg.ocpp.call_timeout if timeout is None else timeout
        async with conn.call_lock:  # OCPP-J: at most one outstanding CALL per direction
            if conn.closed:
                raise ChargerNotConnected(f"charger {charger_id!r} disconnected")
            uid = self._ids()
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            conn.pending[uid] = (action, fut)
            if action in ("TriggerMessage", "ExtendedTriggerMessage"):
                conn.triggers[uid] = str(payload["requestedMessage"])
            try:
                try:
                    await self._send(conn, framing.call(uid, action, payload))
                except ConnectionClosed as e:
                    raise ChargerNotConnected(f"charger {charger_id!r} disconnected") from e
                try:
                    async with asyncio.timeout(wait):
                        return await fut
                except TimeoutError:
                    raise CommandError(f"{charger_id} did not answer {action} within {wait:g} s") from None
            finally:
                conn.pending.pop(uid, None)
                conn.triggers.pop(uid, None)
