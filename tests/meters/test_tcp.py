"""Modbus TCP transport (pymodbus client) against a minimal MBAP server written here with struct."""

from __future__ import annotations

import asyncio
import struct

from firmware_sim.modbus_meter import SimMeter, constant
from gateway.meters import rtu
from gateway.meters.catalog import load_catalog
from gateway.meters.poller import BusPoller, PolledMeter
from gateway.meters.scheduler import PollPolicy
from gateway.meters.transport import TcpTransport

CATALOG = load_catalog()


def test_tcp_meter_poll_and_exception() -> None:
    meter = SimMeter(3, CATALOG["carlogavazzi-em340"], constant(9.0))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                fn, addr, count = struct.unpack(">BHH", pdu)
                answer = meter.answer(fn, addr, count, 0.0) if unit == 3 else bytes([fn | 0x80, 11])
                writer.write(struct.pack(">HHHB", tid, 0, len(answer) + 1, unit) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        t = TcpTransport("127.0.0.1", port, response_timeout=1.0)
        await t.open()
        try:
            readings = []
            p = BusPoller("tcp", t, [PolledMeter("m", 3, meter.model)], PollPolicy(), readings.append)
            r = await p.poll_once("m")
            assert r is not None and r.values["current_l1"] == 9.0 and r.values["frequency"] == 50.0
            assert await t.read(3, 4, 0x1234, 2) == rtu.ModbusException(2)
            assert await t.read(9, 4, 0, 2) == rtu.ModbusException(11)
        finally:
            await t.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
