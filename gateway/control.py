"""The control channel of a running gateway: a unix socket (0600) speaking JSON lines.

Request  {"op": "call", "charger": "CP1", "action": "Reset", "payload": {"type": "Hard"}}
Answer   {"ok": true, "result": {...}}  or  {"ok": false, "error": "..."}
Subsystems add operations with `register(op, handler)`; a handler takes the request dict and returns a JSON-able
result or raises ChargegateError (its message becomes the error text).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.aio import within
from gateway.errors import ChargegateError

log = logging.getLogger("chargegate.control")

# A request line larger than this is refused: the control socket is local, but still a peer-controlled input.
MAX_REQUEST_BYTES = 1 << 20

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._ops: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, op: str, handler: Handler) -> None:
        self._ops[op] = handler

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._client, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._answer(writer, {"ok": False, "error": "request too large"})
                    break
                if not line:
                    break
                await self._answer(writer, await self.dispatch(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not valid JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": 'request must be an object with a string "op"'}
        handler = self._ops.get(req["op"])
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown op {req['op'][:40]!r} (known: {', '.join(sorted(self._ops))})",
            }
        try:
            return {"ok": True, "result": await handler(req)}
        except ChargegateError as e:
            return {"ok": False, "error": str(e)}
        except (KeyError, TypeError, ValueError) as e:
            return {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}
        except Exception as e:
            log.exception("control op %s failed", req["op"])
            return {"ok": False, "error": f"internal error: {type(e).__name__}"}

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await writer.drain()


async def request(path: Path, req: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Client side: one request, one answer."""
    reader, writer = await within(asyncio.open_unix_connection(str(path), limit=MAX_REQUEST_BYTES), timeout)
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        line = await within(reader.readline(), timeout)
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer
    finally:
        writer.close()
