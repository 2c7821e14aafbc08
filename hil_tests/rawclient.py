"""A lightweight OCPP 1.6J test charge point on `websockets.asyncio.client`.

It sends CALLs and awaits their results, answers the gateway's CALLs with canned, schema-valid responses, and records
and schema-checks every frame in both directions (`cp.frames`, `cp.problems`). It deliberately does no protocol logic
of its own, so tests can also send malformed frames (`send_raw`).

    async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1")) as cp:
        boot = await cp.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        action, payload = await cp.next_gateway_call("Reset")   # after e.g. `chargegate cmd CP1 reset hard`
    assert cp.problems == []
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from firmware_sim.ocpp_check import CALL, CALLERROR, CALLRESULT, FROM_GATEWAY, TO_GATEWAY, FrameChecker

# How long a test waits for the gateway's answer to one CALL. Generous: the box is a shared 2-core machine and the
# gateway commits to SQLite (fsync) before it answers; a healthy gateway answers in milliseconds.
CALL_TIMEOUT = 15.0
# How long a test waits for a gateway-initiated CALL or for the gateway to close a connection.
EVENT_TIMEOUT = 15.0

Responder = Callable[[dict[str, Any]], dict[str, Any] | None]
# A responder returning NO_ANSWER leaves the gateway's CALL unanswered (a charger that hangs).
NO_ANSWER = None

_CONFIG = {"HeartbeatInterval": "300", "MeterValueSampleInterval": "60", "AuthorizeRemoteTxRequests": "true"}


def _get_configuration(payload: dict[str, Any]) -> dict[str, Any]:
    keys = payload.get("key") or list(_CONFIG)
    known = [{"key": k, "readonly": False, "value": _CONFIG[k]} for k in keys if k in _CONFIG]
    unknown = [k for k in keys if k not in _CONFIG]
    return {"configurationKey": known, **({"unknownKey": unknown} if unknown else {})}


# Canned answers a well-behaved charge point gives; override per client with `responses=`.
DEFAULT_RESPONSES: dict[str, Responder] = {
    "RemoteStartTransaction": lambda p: {"status": "Accepted"},
    "RemoteStopTransaction": lambda p: {"status": "Accepted"},
    "Reset": lambda p: {"status": "Accepted"},
    "UnlockConnector": lambda p: {"status": "Unlocked"},
    "ChangeAvailability": lambda p: {"status": "Accepted"},
    "GetConfiguration": _get_configuration,
    "ChangeConfiguration": lambda p: {"status": "Accepted"},
    "ClearCache": lambda p: {"status": "Accepted"},
    "TriggerMessage": lambda p: {"status": "Accepted"},
    "DataTransfer": lambda p: {"status": "UnknownVendorId"},
    "GetLocalListVersion": lambda p: {"listVersion": 0},
    "SendLocalList": lambda p: {"status": "Accepted"},
    "SetChargingProfile": lambda p: {"status": "Accepted"},
    "ClearChargingProfile": lambda p: {"status": "Accepted"},
    "GetCompositeSchedule": lambda p: {"status": "Rejected"},
    "ReserveNow": lambda p: {"status": "Rejected"},
    "CancelReservation": lambda p: {"status": "Rejected"},
}


class OcppCallError(Exception):
    """The gateway answered a CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any, frame: str) -> None:
        super().__init__(f"{code}: {description} {details!r}")
        self.code = code
        self.description = description
        self.details = details
        self.frame = frame


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class RawChargePoint:
    _ids = itertools.count(1)

    def __init__(
        self,
        url: str,
        charger_id: str,
        password: str | None,
        subprotocols: Sequence[str] | None = ("ocpp1.6",),
        responses: dict[str, Responder] | None = None,
        max_size: int | None = 2**20,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.charger_id = charger_id
        self.password = password
        self.subprotocols = subprotocols
        self.responses = {**DEFAULT_RESPONSES, **(responses or {})}
        self.max_size = max_size
        self.tls = tls  # for wss:// (None: websockets' default context); a client certificate for profile 3
        self.checker = FrameChecker()
        self.frames: list[tuple[str, str]] = []  # (direction, text), both directions, in order
        self.ws: ClientConnection | None = None
        self._pending: dict[str, asyncio.Future[list[Any]]] = {}
        self._gateway_calls: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.gateway_calls: list[tuple[str, dict[str, Any]]] = []
        self.unmatched: list[list[Any] | str] = []  # frames from the gateway that answer nothing we sent
        self._reader: asyncio.Task[None] | None = None
        self._prefix = f"m{next(self._ids)}."  # ids stay well under the 36-char limit
        self._seq = itertools.count(1)

    # -- connection ---------------------------------------------------------------------------------------------
    async def connect(self) -> RawChargePoint:
        headers = basic_auth(self.charger_id, self.password) if self.password is not None else None
        self.ws = await connect(
            self.url,
            subprotocols=[Subprotocol(s) for s in self.subprotocols] if self.subprotocols else None,
            additional_headers=headers,
            max_size=self.max_size,
            open_timeout=CALL_TIMEOUT,
            ping_interval=None,
            compression=None,
            # websockets refuses ssl=None for wss:// URLs: pass a context only when one is given
            **({"ssl": self.tls} if self.tls is not None else {}),
        )
        self._reader = asyncio.create_task(self._read_loop(self.ws), name=f"rawcp-{self.charger_id}")
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def __aenter__(self) -> RawChargePoint:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_closed(self, timeout: float = EVENT_TIMEOUT) -> int | None:
        """Wait until the gateway closes the connection; returns the close code."""
        assert self.ws is not None
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code

    @property
    def is_open(self) -> bool:
        return (
            self.ws is not None
            and self.ws.close_code is None
            and self._reader is not None
            and not self._reader.done()
        )

    @property
    def problems(self) -> list[str]:
        return self.checker.problems

    # -- sending ------------------------------------------------------------------------------------------------
    def new_id(self) -> str:
        return self._prefix + str(next(self._seq))

    async def _send(self, text: str) -> None:
        assert self.ws is not None, "not connected"
        self.frames.append((TO_GATEWAY, text))
        try:
            await self.ws.send(text)
        except ConnectionClosed as e:
            raise ConnectionError(f"{self.charger_id}: connection closed ({e})") from e

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload; raises OcppCallError on a CALLERROR."""
        mid = self.new_id()
        text = json.dumps([CALL, mid, action, payload], separators=(",", ":"))
        self.checker.check(TO_GATEWAY, text)
        answer = await self._roundtrip(mid, text, timeout)
        return self._result(answer)

    async def send_raw(self, text: str, answer_id: str | None = None) -> None:
        """Send a frame without checking it. If the gateway should answer it (readable id), pass `answer_id`: its
        CALLERROR is then accepted by the checker and can be awaited with `wait_answer`."""
        if answer_id is not None:
            self.checker.expect_answer(TO_GATEWAY, answer_id)
            self._pending[answer_id] = asyncio.get_running_loop().create_future()
        await self._send(text)

    async def wait_answer(self, mid: str, timeout: float = CALL_TIMEOUT) -> list[Any]:
        """The answer frame (parsed) to message id `mid` sent with send_raw(..., answer_id=mid)."""
        fut = self._pending[mid]
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            if fut.done():
                self._pending.pop(mid, None)

    async def _roundtrip(self, mid: str, text: str, timeout: float) -> list[Any]:
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        try:
            await self._send(text)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(mid, None)

    @staticmethod
    def _result(answer: list[Any]) -> dict[str, Any]:
        if answer[0] == CALLRESULT:
            result: dict[str, Any] = answer[2]
            return result
        raise OcppCallError(answer[2], answer[3], answer[4], json.dumps(answer))

    # -- receiving ----------------------------------------------------------------------------------------------
    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                assert isinstance(text, str) or isinstance(text, bytes)
                shown = text if isinstance(text, str) else repr(text)
                self.frames.append((FROM_GATEWAY, shown))
                self.checker.check(FROM_GATEWAY, text)
                try:
                    msg = json.loads(text)
                except ValueError:
                    self.unmatched.append(shown)
                    continue
                if not isinstance(msg, list) or len(msg) < 3:
                    self.unmatched.append(msg)
                    continue
                if msg[0] == CALL and len(msg) == 4:
                    await self._answer_gateway_call(msg[1], msg[2], msg[3])
                elif msg[0] in (CALLRESULT, CALLERROR) and msg[1] in self._pending:
                    fut = self._pending[msg[1]]
                    if not fut.done():
                        fut.set_result(msg)
                    else:
                        self.unmatched.append(msg)  # a second answer to the same id
                else:
                    self.unmatched.append(msg)
        except ConnectionClosed:
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.charger_id}: connection closed"))

    async def _answer_gateway_call(self, mid: str, action: str, payload: dict[str, Any]) -> None:
        self.gateway_calls.append((action, payload))
        self._gateway_calls.put_nowait((action, payload))
        responder = self.responses.get(action)
        if responder is None:
            frame: list[Any] = [CALLERROR, mid, "NotImplemented", f"test charge point has no {action}", {}]
        else:
            result = responder(payload)
            if result is NO_ANSWER:
                return
            frame = [CALLRESULT, mid, result]
        text = json.dumps(frame, separators=(",", ":"))
        self.checker.check(TO_GATEWAY, text)
        with contextlib.suppress(ConnectionError):
            await self._send(text)

    async def next_gateway_call(
        self, action: str | None = None, timeout: float = EVENT_TIMEOUT
    ) -> tuple[str, dict[str, Any]]:
        """The next CALL the gateway sent us (already answered), optionally skipping other actions."""
        async with asyncio.timeout(timeout):
            while True:
                got = await self._gateway_calls.get()
                if action is None or got[0] == action:
                    return got

    # -- conveniences -------------------------------------------------------------------------------------------
    async def boot(self, vendor: str = "HilVendor", model: str = "RawCP") -> dict[str, Any]:
        return await self.call("BootNotification", {"chargePointVendor": vendor, "chargePointModel": model})

    async def status(self, connector: int, status: str, error_code: str = "NoError") -> dict[str, Any]:
        return await self.call(
            "StatusNotification",
            {"connectorId": connector, "errorCode": error_code, "status": status, "timestamp": now_iso()},
        )

    def answers_to_gateway(self) -> list[str]:
        return [t for d, t in self.frames if d == TO_GATEWAY]


def meter_values(
    connector: int, tx_id: int | None, wh: int, ts: str | None = None, power_w: float | None = None
) -> dict[str, Any]:
    sampled = [
        {
            "value": str(wh),
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
            "context": "Sample.Periodic",
        }
    ]
    if power_w is not None:
        sampled.append(
            {
                "value": f"{power_w:.1f}",
                "measurand": "Power.Active.Import",
                "unit": "W",
                "context": "Sample.Periodic",
            }
        )
    payload: dict[str, Any] = {
        "connectorId": connector,
        "meterValue": [{"timestamp": ts or now_iso(), "sampledValue": sampled}],
    }
    if tx_id is not None:
        payload["transactionId"] = tx_id
    return payload


async def gather_closing(*clients: RawChargePoint) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# Upper bound for one async test body; a hung gateway fails the test instead of hanging the run.
TEST_BODY_TIMEOUT = 120.0


def run_async(coro: Any, timeout: float = TEST_BODY_TIMEOUT) -> Any:
    """Run an async test body from a plain pytest test (no pytest-asyncio needed)."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def assert_clean(*clients: RawChargePoint) -> None:
    """No schema/protocol problems in any frame either way, and no gateway frame that answered nothing."""
    problems = [p for c in clients for p in c.problems]
    unmatched = [(c.charger_id, m) for c in clients for m in c.unmatched]
    assert not problems, "OCPP frame problems:\n" + "\n".join(problems)
    assert not unmatched, f"gateway frames answering nothing we sent: {unmatched}"
