"""CPython port of the agent: drives a ChargePointCore over a real websocket (websockets >= 15 asyncio client).

One loop per charge point: tick the core every `tick_interval` seconds (also while offline, so charging and
the offline queue keep working), forward inbound frames to it and send what it leaves in `outgoing()`.
Reconnects with jittered exponential backoff until `stop` is set. When the core asks the HAL to reboot
(Reset), the port closes the connection, throws the core away and builds a new one on the same HAL.

OCPP 1.6 security profiles: 1 = ws:// and a password; 2 = wss:// (the gateway's certificate checked against a CA)
and a password; 3 = wss:// with a client certificate (`client_tls_context(ca, cert, key)`), no password needed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from agent.core import ChargePointCore

log = logging.getLogger("chargegate.agent")

SUBPROTOCOL = "ocpp1.6"
# First reconnect delay and its cap; each failure doubles the delay, jittered to 50-100% so a site's chargers
# coming back after a gateway restart do not reconnect in lockstep.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
# Opening handshake must finish within this (a gateway that accepts TCP but never answers is down).
OPEN_TIMEOUT_S = 10.0
# Largest inbound frame accepted (a full SendLocalList of 200 entries is ~20 kB).
MAX_FRAME_BYTES = 65536

FrameHook = Callable[[str, str], None]


def client_tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """TLS for wss:// (security profiles 2 and 3): TLS 1.2 or above, the gateway's certificate verified against
    `ca_file` (None: the system's trust store) including its host name or IP address; with `cert_file` (PEM,
    chain allowed) and `key_file` (None: the key is in cert_file) the charger's client certificate (profile 3)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    elif key_file is not None:
        raise ValueError("a client key without its certificate")
    return ctx


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode((user + ":" + password).encode()).decode()


class _Rebooting(Exception):
    """The core asked the HAL to reboot (after Reset); unwinds the connection handling."""


async def run_charge_point(
    core: ChargePointCore,
    url: str,
    password: str | None,
    *,
    stop: asyncio.Event,
    on_frame: FrameHook | None = None,
    tick_interval: float = 0.1,
    on_reboot: Callable[[ChargePointCore], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> ChargePointCore:
    """Run one charge point until `stop` is set, or until its core asks for a reboot.

    url: "ws://HOST:PORT/ocpp/CP1"; password: HTTP Basic password (user = charge point id), None = no auth.
    tls: for a wss:// url, e.g. client_tls_context(ca, cert, key); None = the system's default TLS settings.
    on_frame(direction, text): trace hook, direction "tx" or "rx".

    Reboot (the core called hal.reboot after Reset): the frames already produced are sent, the connection is
    closed, and then
      - without on_reboot: run_charge_point returns; the caller powers the hardware back on and builds a new
        core on the same HAL (what firmware_sim.fleet does);
      - with on_reboot: the port builds the new core itself (same config, same HAL), calls on_reboot(new_core)
        and carries on.
    Returns the core in use at the end.
    """
    try:
        secure = parse_uri(url).secure
    except InvalidURI as e:
        raise ValueError(f"charge point url must be ws:// or wss://: {e}") from None
    if tls is not None and not secure:
        raise ValueError(f"TLS settings given for a ws:// url ({url}): use wss://")
    runner = _Runner(core, url, password, stop, on_frame, tick_interval, on_reboot, tls)
    await runner.run()
    return runner.core


class _Runner:
    def __init__(
        self,
        core: ChargePointCore,
        url: str,
        password: str | None,
        stop: asyncio.Event,
        on_frame: FrameHook | None,
        tick_interval: float,
        on_reboot: Callable[[ChargePointCore], None] | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.core = core
        self.tls = tls
        self.url = url
        self.password = password
        self.stop = stop
        self.on_frame = on_frame
        self.tick_interval = tick_interval
        self.on_reboot = on_reboot
        self._attach_log()

    def _attach_log(self) -> None:
        cp = self.core.config.charge_point_id
        self.core.log = lambda msg: log.info("%s: %s", cp, msg)

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self._connect_loop()
                return
            except _Rebooting:
                if self.on_reboot is None:
                    return
                self._rebuild()

    async def _connect_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self.stop.is_set():
            ws = await self._open()
            if ws is None:
                if self.stop.is_set():
                    return
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                await self._tick_for(delay)
                continue
            backoff = BACKOFF_MIN_S
            try:
                await self._session(ws)
            finally:
                self.core.on_disconnected()
                self.core.outgoing()  # answers for a dead link are dropped
                await ws.close()
            if self.core.reboot_requested is not None:
                raise _Rebooting()
            if not self.stop.is_set():
                await self._tick_for(backoff * random.uniform(0.5, 1.0))

    def _rebuild(self) -> None:
        old = self.core
        self.core = ChargePointCore(old.config, old.hal)
        self._attach_log()
        log.info("%s: rebooted", old.config.charge_point_id)
        if self.on_reboot is not None:
            self.on_reboot(self.core)

    def _tick_offline(self) -> None:
        self.core.tick()
        self.core.outgoing()  # offline: nothing can be sent (the core queues what must survive)
        if self.core.reboot_requested is not None:
            raise _Rebooting()

    async def _tick_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.stop.is_set() and loop.time() < deadline:
            self._tick_offline()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation (gateway/aio.py)
            try:
                async with asyncio.timeout(max(0.0, min(self.tick_interval, deadline - loop.time()))):
                    await self.stop.wait()
            except TimeoutError:
                pass

    async def _open(self) -> ClientConnection | None:
        headers = {}
        if self.password is not None:
            headers["Authorization"] = _basic_auth(self.core.config.charge_point_id, self.password)
        ping = self.core.cfg.get("WebSocketPingInterval")
        # websockets refuses ssl=None for wss:// (it then makes its default context itself): pass it only when set
        tls: dict[str, Any] = {"ssl": self.tls} if self.tls is not None else {}
        task = asyncio.ensure_future(
            connect(
                self.url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                additional_headers=headers,
                open_timeout=OPEN_TIMEOUT_S,
                ping_interval=ping if ping > 0 else None,
                max_size=MAX_FRAME_BYTES,
                proxy=None,
                **tls,
            )
        )
        try:
            while not task.done():
                # keep the charger alive (offline charging) while the handshake runs
                try:
                    self._tick_offline()
                except _Rebooting:
                    task.cancel()
                    raise
                stop_wait = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait(
                    {task, stop_wait}, timeout=self.tick_interval, return_when=asyncio.FIRST_COMPLETED
                )
                stop_wait.cancel()
                if self.stop.is_set():
                    task.cancel()
                    return None
            ws = task.result()
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            log.info("%s: connect to %s failed: %r", self.core.config.charge_point_id, self.url, e)
            return None
        if ws.subprotocol != SUBPROTOCOL:
            log.warning(
                "%s: gateway did not accept subprotocol %s", self.core.config.charge_point_id, SUBPROTOCOL
            )
            await ws.close()
            return None
        return ws

    async def _flush(self, ws: ClientConnection) -> None:
        for frame in self.core.outgoing():
            if self.on_frame is not None:
                self.on_frame("tx", frame)
            await ws.send(frame)

    async def _session(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        self.core.on_connected()
        next_tick = loop.time()
        try:
            await self._flush(ws)
            while not self.stop.is_set():
                now = loop.time()
                if now >= next_tick:
                    self.core.tick()
                    next_tick = now + self.tick_interval
                    if self.core.reboot_requested is not None:
                        await self._flush(ws)
                        return
                await self._flush(ws)
                try:
                    # recv() is cancellation-safe in websockets' asyncio implementation
                    async with asyncio.timeout(max(0.0, next_tick - loop.time())):
                        msg = await ws.recv()
                except TimeoutError:
                    continue
                text = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
                if self.on_frame is not None:
                    self.on_frame("rx", text)
                self.core.receive(text)
                await self._flush(ws)
        except ConnectionClosed as e:
            log.info("%s: connection closed: %r", self.core.config.charge_point_id, e)
