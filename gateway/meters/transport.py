"""Transports: one request -> one response, with a deadline. RTU over a serial port (pyserial, our sans-I/O framing)
and Modbus TCP (pymodbus client). Foreign exceptions stop here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.aio import within
from gateway.errors import ChargegateError
from gateway.meters import rtu

log = logging.getLogger(__name__)

Answer = rtu.Registers | rtu.ModbusException | None  # None = no valid answer before the deadline


class TransportError(ChargegateError):
    """The port or connection is unusable (missing device, permission, closed)."""


class Transport(Protocol):
    stats: rtu.LineStats

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, unit: int, function: int, address: int, count: int) -> Answer: ...


class RtuSerialTransport:
    """Modbus RTU master on a serial port. Non-blocking pyserial driven by the event loop's reader callback."""

    def __init__(
        self,
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        response_timeout: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.response_timeout = response_timeout
        self.clock = clock
        self.stats = rtu.LineStats()
        self._ser: Any = None
        self._rx: asyncio.Queue[bytes] = asyncio.Queue()
        self._last_activity = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken: str | None = None

    async def open(self) -> None:
        import serial  # pyserial

        self._broken = None
        self._rx = asyncio.Queue()

        try:
            self._ser = serial.serial_for_url(
                self.port,
                baudrate=self.baudrate,
                parity=self.parity,
                stopbits=self.stopbits,
                bytesize=8,
                timeout=0,
                write_timeout=0,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise TransportError(f"cannot open serial port {self.port}: {e}") from None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._ser.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self._ser.read(4096)
        except Exception as e:  # pyserial raises SerialException/OSError when the device goes away
            log.warning("serial port %s read failed: %s", self.port, e)
            self._broken = str(e) or type(e).__name__
            if self._loop is not None and self._ser is not None:
                self._loop.remove_reader(self._ser.fileno())
            self._rx.put_nowait(b"")  # wake a waiting read() so it reports the failure now
            return
        if data:
            self._last_activity = self.clock()
            self._rx.put_nowait(data)

    async def close(self) -> None:
        if self._ser is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._ser.fileno())
            with contextlib.suppress(Exception):
                self._ser.close()
            self._ser = None

    def _drain_input(self) -> None:
        while not self._rx.empty():
            self.stats.garbage_bytes += len(self._rx.get_nowait())

    async def read(self, unit: int, function: int, address: int, count: int) -> Answer:
        if self._ser is None or self._broken is not None:
            raise TransportError(f"serial port {self.port} is not usable: {self._broken or 'not open'}")
        # Stray bytes from an earlier late answer must not be taken for this one.
        self._drain_input()
        gap = rtu.frame_gap(self.baudrate)
        wait = self._last_activity + gap - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        request = rtu.encode_read_request(unit, function, address, count)
        parser = rtu.ResponseParser(unit, function, count, self.stats)
        try:
            self._ser.write(request)
        except Exception as e:
            raise TransportError(f"serial port {self.port} write failed: {e}") from None
        self._last_activity = self.clock()
        # deadline: our request on the wire + the meter's think time + its answer on the wire
        budget = (
            rtu.wire_time(len(request), self.baudrate)
            + self.response_timeout
            + rtu.wire_time(rtu.response_size(count), self.baudrate)
        )
        deadline = self.clock() + budget
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            try:
                data = await within(self._rx.get(), remaining)
            except TimeoutError:
                break
            if self._broken is not None:
                parser.close()
                raise TransportError(f"serial port {self.port} failed: {self._broken}")
            answer = parser.feed(data)
            if answer is not None:
                parser.close()
                return answer
        parser.close()
        self.stats.timeouts += 1
        return None


class TcpTransport:
    """Modbus TCP via pymodbus (MBAP framing, transaction ids, reconnects are pymodbus's job)."""

    def __init__(self, host: str, port: int = 502, response_timeout: float = 0.3) -> None:
        self.host = host
        self.port = port
        self.response_timeout = response_timeout
        self.stats = rtu.LineStats()
        self._client: Any = None

    async def open(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self._client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.response_timeout, retries=0
        )
        await self._client.connect()

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, unit: int, function: int, address: int, count: int) -> Answer:
        from pymodbus.exceptions import ModbusException as PymodbusError

        if self._client is None:
            raise TransportError("Modbus TCP client is not open")
        if not self._client.connected:
            with contextlib.suppress(Exception):
                await self._client.connect()
        fn = (
            self._client.read_holding_registers
            if function == rtu.READ_HOLDING
            else self._client.read_input_registers
        )
        try:
            rr = await fn(address, count=count, device_id=unit)
        except (PymodbusError, OSError, TimeoutError):
            self.stats.timeouts += 1
            return None
        if rr.isError():
            code = int(getattr(rr, "exception_code", 4))
            self.stats.exceptions += 1
            return rtu.ModbusException(code)
        self.stats.frames_ok += 1
        return rtu.Registers(tuple(int(w) for w in rr.registers))
