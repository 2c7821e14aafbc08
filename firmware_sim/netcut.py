"""A TCP relay on loopback that can cut a charger's network: the simulated cellular modem losing coverage.

    link = NetLink("127.0.0.1", gateway_port)
    await link.start()          # agents connect to ws://127.0.0.1:{link.port}/ocpp/CP1
    link.cut()                  # open connections are reset, new ones are refused at once
    link.restore()
    await link.close()

While cut, the listening socket stays open (so the port cannot be taken by someone else) but every new
connection is closed immediately: to the agent that is a failed handshake, as with a dead uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

# Relay buffer per read; websocket frames of a charger are small.
_CHUNK = 65536


class NetLink:
    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = 0
        self.up = True
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> NetLink:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.up = False
        for a, b in list(self._pipes):
            _abort(a)
            _abort(b)
        self._pipes.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        if not self.up:
            _abort(writer)
            _abort(up_writer)
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pipes.add(pair)
        tasks = [asyncio.create_task(_pump(reader, up_writer)), asyncio.create_task(_pump(up_reader, writer))]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            self._pipes.discard(pair)
            _abort(writer)
            _abort(up_writer)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            data = await src.read(_CHUNK)
            if not data:
                break
            dst.write(data)
            await dst.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: a lost link does not say goodbye."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()
