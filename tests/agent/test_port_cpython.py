"""The CPython port against a real websockets server on loopback: subprotocol, HTTP Basic auth, boot,
reconnect after the server drops the link (offline transaction delivered afterwards), reboot on Reset."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

sys.path.insert(0, os.path.dirname(__file__))

from agentfakes import FakeHal

from agent.core import AgentConfig, ChargePointCore
from agent.port_cpython import run_charge_point

PASSWORD = "0123456789abcdef-secret"


class RealClockHal(FakeHal):
    """FakeHal on the real monotonic clock (the port ticks in real time)."""

    def ticks_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def wall_time(self) -> float:
        return time.time()


# Upper bound for any single wait in these tests; they normally finish in well under a second.
WAIT_S = 10.0


class MiniCentral:
    """A tiny OCPP 1.6J Central System: answers the agent's CALLs and can send CALLs to it."""

    def __init__(self) -> None:
        self.frames: list[list[Any]] = []
        self.connections: list[ServerConnection] = []
        self.auth_seen: list[str | None] = []
        self.answers: dict[str, Any] = {}
        self.next_tx = 500
        self.changed = asyncio.Event()

    def check_request(self, conn: ServerConnection, request: Request) -> Response | None:
        auth = request.headers.get("Authorization")
        self.auth_seen.append(auth)
        expected = "Basic " + base64.b64encode(("CP1:" + PASSWORD).encode()).decode()
        if auth != expected:
            return conn.respond(401, "unauthorized\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.frames.append(msg)
                self.changed.set()
                if msg[0] == 2:
                    await ws.send(json.dumps([3, msg[1], self.answer(msg[2], msg[3])]))
                else:
                    self.answers[msg[1]] = msg
        except Exception:
            pass

    def answer(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        now = "2026-11-21T12:00:00Z"
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted"}}
        if action == "StartTransaction":
            self.next_tx += 1
            return {"transactionId": self.next_tx, "idTagInfo": {"status": "Accepted"}}
        if action == "Heartbeat":
            return {"currentTime": now}
        return {}

    def actions(self) -> list[str]:
        return [f[2] for f in self.frames if f[0] == 2]

    async def wait_for(self, pred: Any) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), WAIT_S)


async def _start_server(central: MiniCentral) -> tuple[Server, int]:
    server = await serve(
        central.handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol("ocpp1.6")],
        process_request=central.check_request,
    )
    port = next(iter(server.sockets)).getsockname()[1]
    return server, port


async def _wait(pred: Any) -> None:
    """Poll a condition on the agent's side (the agent has no event to wait on)."""

    async def loop() -> None:
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), WAIT_S)


def test_port_boots_reconnects_and_delivers_offline_transaction() -> None:
    async def main() -> None:
        central = MiniCentral()
        server, port = await _start_server(central)
        hal = RealClockHal(1)
        core = ChargePointCore(AgentConfig("CP1"), hal)
        core.cfg.change("AllowOfflineTxForUnknownId", "true")
        stop = asyncio.Event()
        traced: list[tuple[str, str]] = []
        task = asyncio.create_task(
            run_charge_point(
                core,
                f"ws://127.0.0.1:{port}/ocpp/CP1",
                PASSWORD,
                stop=stop,
                on_frame=lambda d, t: traced.append((d, t)),
                tick_interval=0.02,
            )
        )
        try:
            await central.wait_for(lambda: "StatusNotification" in central.actions())
            assert central.actions()[0] == "BootNotification"
            assert central.connections[0].subprotocol == "ocpp1.6"
            assert core.registration_status == "Accepted"
            # the gateway goes away; a transaction happens offline
            server.close()
            await server.wait_closed()
            await _wait(lambda: not core._connected)
            hal.cards.append("OFFLINE-PORT")
            hal.pilot[1] = "C"
            await _wait(lambda: core.status(1) == "Charging")
            hal.pilot[1] = "A"
            await _wait(lambda: core.status(1) == "Available")
            assert len(core.queue) == 2
            # the gateway comes back on the same port: the agent reconnects and delivers in order
            server2 = await serve(
                central.handler,
                "127.0.0.1",
                port,
                subprotocols=[Subprotocol("ocpp1.6")],
                process_request=central.check_request,
            )
            try:
                await central.wait_for(lambda: "StopTransaction" in central.actions())
                tx_actions = [a for a in central.actions() if a in ("StartTransaction", "StopTransaction")]
                assert tx_actions == ["StartTransaction", "StopTransaction"]
                stop_frame = [f for f in central.frames if f[0] == 2 and f[2] == "StopTransaction"][-1]
                assert stop_frame[3]["transactionId"] == central.next_tx
                assert central.actions().count("BootNotification") == 2
                assert any(d == "tx" for d, _ in traced) and any(d == "rx" for d, _ in traced)
            finally:
                stop.set()
                await asyncio.wait_for(task, WAIT_S)
                server2.close()
                await server2.wait_closed()
        finally:
            stop.set()
            if not task.done():
                task.cancel()
            server.close()

    asyncio.run(main())


def test_port_rejected_credentials_keep_retrying_without_crashing() -> None:
    async def main() -> None:
        central = MiniCentral()
        server, port = await _start_server(central)
        core = ChargePointCore(AgentConfig("CP1"), RealClockHal(1))
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_charge_point(
                core, f"ws://127.0.0.1:{port}/ocpp/CP1", "wrong-password-123", stop=stop, tick_interval=0.02
            )
        )
        try:
            await _wait(lambda: len(central.auth_seen) >= 2)
            assert central.frames == []
            assert core.registration_status is None
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_port_reset_rebuilds_core_on_same_hal() -> None:
    async def main() -> None:
        central = MiniCentral()
        server, port = await _start_server(central)
        hal = RealClockHal(1)
        core = ChargePointCore(AgentConfig("CP1"), hal)
        stop = asyncio.Event()
        rebooted: list[ChargePointCore] = []
        task = asyncio.create_task(
            run_charge_point(
                core,
                f"ws://127.0.0.1:{port}/ocpp/CP1",
                PASSWORD,
                stop=stop,
                tick_interval=0.02,
                on_reboot=rebooted.append,
            )
        )
        try:
            await central.wait_for(lambda: "StatusNotification" in central.actions())
            ws = central.connections[-1]
            await ws.send(json.dumps([2, "reset-1", "Reset", {"type": "Soft"}]))
            await central.wait_for(lambda: "reset-1" in central.answers)
            assert central.answers["reset-1"][2] == {"status": "Accepted"}
            await central.wait_for(lambda: central.actions().count("BootNotification") == 2)
            assert hal.reboots == [False]
            assert len(rebooted) == 1 and rebooted[0] is not core
        finally:
            stop.set()
            final = await asyncio.wait_for(task, WAIT_S)
            server.close()
            await server.wait_closed()
        assert final is rebooted[0]

    asyncio.run(main())


def test_port_bad_url_fails_fast() -> None:
    core = ChargePointCore(AgentConfig("CP1"), RealClockHal(1))
    with pytest.raises(ValueError, match="ws://"):
        asyncio.run(run_charge_point(core, "http://x/ocpp/CP1", PASSWORD, stop=asyncio.Event()))


def test_port_unreachable_gateway_keeps_ticking() -> None:
    url = "ws://127.0.0.1:1/ocpp/CP1"

    async def main() -> None:
        hal = RealClockHal(1)
        core = ChargePointCore(AgentConfig("CP1"), hal)
        core.cfg.change("AllowOfflineTxForUnknownId", "true")
        stop = asyncio.Event()
        task = asyncio.create_task(run_charge_point(core, url, PASSWORD, stop=stop, tick_interval=0.02))
        try:
            hal.cards.append("OFFLINE-X")
            hal.pilot[1] = "C"
            await _wait(lambda: core.status(1) == "Charging")
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(main())


def test_port_returns_on_reboot_without_on_reboot_hook() -> None:
    """The fleet runner's contract: run_charge_point returns after the core asked for a reboot."""

    async def main() -> None:
        central = MiniCentral()
        server, port = await _start_server(central)
        hal = RealClockHal(1)
        core = ChargePointCore(AgentConfig("CP1"), hal)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_charge_point(core, f"ws://127.0.0.1:{port}/ocpp/CP1", PASSWORD, stop=stop, tick_interval=0.02)
        )
        try:
            await central.wait_for(lambda: "StatusNotification" in central.actions())
            await central.connections[-1].send(json.dumps([2, "reset-2", "Reset", {"type": "Hard"}]))
            final = await asyncio.wait_for(task, WAIT_S)
            assert final is core and hal.reboots == [True]
            assert central.answers["reset-2"][2] == {"status": "Accepted"}
            assert not stop.is_set()
        finally:
            stop.set()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
