"""RTU framing against pymodbus as the reference implementation, plus garbage/CRC/unit-id survival."""

from __future__ import annotations

import pytest
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu.decoders import DecodePDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from gateway.meters import rtu


def pymodbus_response(unit: int, words: list[int], function: int = 4) -> bytes:
    framer = FramerRTU(DecodePDU(is_server=True))
    cls = ReadInputRegistersResponse
    pdu = cls(registers=words, dev_id=unit)
    frame: bytes = framer.buildFrame(pdu)
    assert frame[1] == function
    return frame


@pytest.mark.parametrize("data", [b"", b"\x01\x04\x00\x00\x00\x02", bytes(range(256))])
def test_crc_matches_pymodbus(data: bytes) -> None:
    assert rtu.crc16(data).to_bytes(2, "little") == FramerRTU.compute_CRC(data).to_bytes(2, "big")


@pytest.mark.parametrize(("fc", "cls"), [(3, ReadHoldingRegistersRequest), (4, ReadInputRegistersRequest)])
def test_request_matches_pymodbus(fc: int, cls: type) -> None:
    framer = FramerRTU(DecodePDU(is_server=False))
    ref = framer.buildFrame(cls(address=0x5B00, count=28, dev_id=17))
    assert rtu.encode_read_request(17, fc, 0x5B00, 28) == ref


def test_request_rejects_out_of_range() -> None:
    for args in ((0, 4, 0, 1), (248, 4, 0, 1), (1, 6, 0, 1), (1, 4, 0, 126), (1, 4, 0xFFFF, 2)):
        with pytest.raises(ValueError):
            rtu.encode_read_request(*args)


def test_parses_pymodbus_response_fed_byte_by_byte() -> None:
    frame = pymodbus_response(7, [1, 2, 0xFFFF])
    p = rtu.ResponseParser(7, 4, 3)
    results = [p.feed(bytes([b])) for b in frame]
    assert results[:-1] == [None] * (len(frame) - 1)
    assert results[-1] == rtu.Registers((1, 2, 0xFFFF))
    assert p.stats.frames_ok == 1 and p.stats.crc_errors == 0 and p.stats.garbage_bytes == 0


def test_garbage_before_and_a_corrupted_copy_are_counted_and_survived() -> None:
    good = pymodbus_response(7, [10, 20])
    bad = good[:-1] + bytes([good[-1] ^ 0xFF])
    stats = rtu.LineStats()
    p = rtu.ResponseParser(7, 4, 2, stats)
    assert p.feed(b"\x00\xff\x13" + bad) is None
    assert p.feed(good) == rtu.Registers((10, 20))
    assert stats.crc_errors == 1
    assert stats.garbage_bytes >= 3


def test_answer_from_another_unit_is_skipped() -> None:
    stats = rtu.LineStats()
    p = rtu.ResponseParser(7, 4, 1, stats)
    assert p.feed(pymodbus_response(8, [99])) is None
    assert stats.wrong_unit == 1
    assert p.feed(pymodbus_response(7, [42])) == rtu.Registers((42,))


def test_exception_response() -> None:
    frame = rtu.with_crc(bytes([7, 0x84, 2]))
    p = rtu.ResponseParser(7, 4, 10)
    answer = p.feed(frame)
    assert answer == rtu.ModbusException(2)
    assert isinstance(answer, rtu.ModbusException) and answer.name == "illegal data address"


def test_endless_noise_is_bounded() -> None:
    stats = rtu.LineStats()
    p = rtu.ResponseParser(7, 4, 2, stats)
    for _ in range(50):
        assert p.feed(bytes(range(100))) is None
    assert p.pending() <= 512
    p.close()
    assert p.pending() == 0
    assert stats.garbage_bytes == 5000


def test_line_timing() -> None:
    assert rtu.char_time(9600) == pytest.approx(11 / 9600)
    assert rtu.frame_gap(9600) == pytest.approx(3.5 * 11 / 9600)
    assert rtu.frame_gap(115200) == pytest.approx(1.75e-3)
