"""Modbus RTU framing for a bus master, sans-I/O: bytes in, frames/events out; no clock, no port.

The master knows what it asked for, so the response parser is built per request (unit id, function code, register
count) and hunts for exactly that frame in the byte stream: bytes before it are garbage (counted), a frame-shaped
candidate with a bad CRC is counted and skipped one byte at a time (so a frame that starts inside garbage is still
found), answers from another unit id are counted and skipped. pymodbus's FramerRTU does the same hunting but drops
the evidence (no CRC-error or garbage counters) and decodes into PDU objects we do not need; it is used in the
tests as an independent reference implementation instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

READ_HOLDING = 3
READ_INPUT = 4
# Modbus PDU limit: 125 registers per read.
MAX_READ_COUNT = 125
# A buffer this long without a frame is garbage: keep only the tail that could still start one.
_MAX_BUFFER = 512

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF). On the wire it is sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def encode_read_request(unit: int, function: int, address: int, count: int) -> bytes:
    if not 1 <= unit <= 247:
        raise ValueError("unit id must be 1..247")
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError("function must be 3 or 4")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_READ_COUNT or address + count > 0x10000:
        raise ValueError("address/count out of range")
    return with_crc(bytes([unit, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def response_size(count: int) -> int:
    """Bytes of a normal read response: unit, fc, byte count, 2*count data, CRC."""
    return 5 + 2 * count


@dataclass(frozen=True)
class Registers:
    words: tuple[int, ...]


@dataclass(frozen=True)
class ModbusException:
    code: int

    @property
    def name(self) -> str:
        return EXCEPTION_NAMES.get(self.code, f"exception {self.code}")


@dataclass
class LineStats:
    """Counters of what went wrong on the line; shared by all parsers of one bus."""

    crc_errors: int = 0
    garbage_bytes: int = 0
    wrong_unit: int = 0
    timeouts: int = 0
    exceptions: int = 0
    frames_ok: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ResponseParser:
    """Finds the response to one read request in the bytes fed to it."""

    unit: int
    function: int
    count: int
    stats: LineStats = field(default_factory=LineStats)
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> Registers | ModbusException | None:
        self._buf += data
        while True:
            result, consumed = self._scan()
            if consumed:
                del self._buf[:consumed]
            if result is not None or not consumed:
                if len(self._buf) > _MAX_BUFFER:
                    drop = len(self._buf) - _MAX_BUFFER
                    self.stats.garbage_bytes += drop
                    del self._buf[:drop]
                return result

    def _scan(self) -> tuple[Registers | ModbusException | None, int]:
        """Returns (result, bytes consumed). (None, 0) means: need more bytes."""
        buf = self._buf
        n = len(buf)
        expected = response_size(self.count)
        for i in range(n):
            unit, fc = buf[i], buf[i + 1] if i + 1 < n else None
            if fc is None:
                break
            if fc == self.function | 0x80:
                if n - i < 5:
                    break
                frame = bytes(buf[i : i + 5])
                if crc16(frame[:3]) != int.from_bytes(frame[3:], "little"):
                    return self._bad_crc(i)
                self.stats.garbage_bytes += i
                if unit != self.unit:
                    self.stats.wrong_unit += 1
                    return None, i + 5
                self.stats.exceptions += 1
                return ModbusException(frame[2]), i + 5
            if fc == self.function and buf[i + 2 : i + 3] == bytes([2 * self.count]):
                if n - i < expected:
                    break
                frame = bytes(buf[i : i + expected])
                if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                    return self._bad_crc(i)
                self.stats.garbage_bytes += i
                if unit != self.unit:
                    self.stats.wrong_unit += 1
                    return None, i + expected
                words = tuple(int.from_bytes(frame[3 + 2 * k : 5 + 2 * k], "big") for k in range(self.count))
                self.stats.frames_ok += 1
                return Registers(words), i + expected
        return None, 0

    def _bad_crc(self, i: int) -> tuple[None, int]:
        # Skip one byte past the candidate's start: a real frame may begin inside it.
        self.stats.crc_errors += 1
        self.stats.garbage_bytes += i + 1
        return None, i + 1

    def pending(self) -> int:
        """Bytes received but not (yet) part of a frame; counted as garbage when the request ends."""
        return len(self._buf)

    def close(self) -> None:
        """The request is over (answered or timed out): whatever is left is garbage."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()


def char_time(baudrate: int, bits_per_char: int = 11) -> float:
    """Seconds to send one character: start + 8 data + parity/stop = 11 bits in RTU."""
    return bits_per_char / baudrate


def frame_gap(baudrate: int) -> float:
    """The 3.5-character silent interval that delimits RTU frames; fixed at 1.75 ms above 19200 baud."""
    return 1.75e-3 if baudrate > 19200 else 3.5 * char_time(baudrate)


def wire_time(nbytes: int, baudrate: int) -> float:
    return nbytes * char_time(baudrate)
