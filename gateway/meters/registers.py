"""Register value decoding: Modbus words (16-bit, as sent on the wire) -> engineering values.

Pure functions, no I/O. A value spans 1, 2 or 4 registers. Word order "big" means the most significant word comes
first (ABCD, the Modbus convention); "little" means the least significant word comes first (CDAB, e.g. Carlo
Gavazzi). Bytes inside each word are always big-endian, as Modbus sends them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

DataType = Literal["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "iskra_t5", "iskra_t6"]
WordOrder = Literal["big", "little"]

DATA_TYPES: tuple[str, ...] = (
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "iskra_t5",
    "iskra_t6",
)

_WIDTH: dict[str, int] = {
    "uint16": 1,
    "int16": 1,
    "uint32": 2,
    "int32": 2,
    "uint64": 4,
    "int64": 4,
    "float32": 2,
    "iskra_t5": 2,
    "iskra_t6": 2,
}


# Largest decade exponent a separate exponent register may hold (see decode_exponent).
MAX_DECADE_EXPONENT = 9


class DecodeError(ValueError):
    """The registers do not hold a usable value (wrong length, NaN/inf, a meter's 'not available' marker)."""


def register_count(data_type: str) -> int:
    """How many 16-bit registers a value of this type spans."""
    return _WIDTH[data_type]


def _combine(words: Sequence[int], word_order: str) -> int:
    ordered = list(words) if word_order == "big" else list(reversed(words))
    value = 0
    for w in ordered:
        if not 0 <= w <= 0xFFFF:
            raise DecodeError(f"register value {w!r} out of 0..65535")
        value = (value << 16) | w
    return value


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def decode_raw(words: Sequence[int], data_type: str, word_order: str = "big") -> float:
    """Decode the raw (unscaled) value of one register group."""
    width = _WIDTH.get(data_type)
    if width is None:
        raise DecodeError(f"unknown data type {data_type!r}")
    if len(words) != width:
        raise DecodeError(f"{data_type} needs {width} registers, got {len(words)}")
    raw = _combine(words, word_order)
    if data_type == "uint16":
        return float(raw)
    if data_type == "int16":
        return float(_signed(raw, 16))
    if data_type == "uint32":
        return float(raw)
    if data_type == "int32":
        return float(_signed(raw, 32))
    if data_type == "uint64":
        return float(raw)
    if data_type == "int64":
        return float(_signed(raw, 64))
    if data_type == "float32":
        # IEEE-754 single precision, assembled by hand (not struct) so a test can use struct independently.
        sign = -1.0 if raw >> 31 else 1.0
        exponent = (raw >> 23) & 0xFF
        mantissa = raw & 0x7FFFFF
        if exponent == 0xFF:
            raise DecodeError("float32 register holds NaN or infinity")
        if exponent == 0:
            return sign * mantissa * 2.0**-149
        return sign * (1.0 + mantissa / 2.0**23) * 2.0 ** (exponent - 127)
    # Iskra T5/T6: bits 31..24 = signed decade exponent, bits 23..0 = mantissa (T5 unsigned, T6 two's complement)
    exponent = _signed(raw >> 24, 8)
    mantissa = raw & 0xFFFFFF
    if data_type == "iskra_t6":
        mantissa = _signed(mantissa, 24)
    return mantissa * 10.0**exponent


def decode_exponent(word: int) -> int:
    """A decade-exponent register (e.g. Iskra's energy counters): signed 16-bit, value = raw * 10**exponent."""
    if not 0 <= word <= 0xFFFF:
        raise DecodeError(f"register value {word!r} out of 0..65535")
    exponent = _signed(word, 16)
    # A counter's exponent is a small number (Iskra: resolution of the counter in Wh); anything else means the
    # register holds something else, and 10**exponent would overflow or vanish.
    if not -MAX_DECADE_EXPONENT <= exponent <= MAX_DECADE_EXPONENT:
        raise DecodeError(f"decade exponent {exponent} out of range")
    return exponent


def decode(
    words: Sequence[int], data_type: str, word_order: str = "big", scale: float = 1.0, exponent: int = 0
) -> float:
    """Engineering value: raw * 10**exponent * scale (exponent from a separate register, 0 for most meters)."""
    value = decode_raw(words, data_type, word_order) * 10.0**exponent * scale
    if not math.isfinite(value):
        raise DecodeError("value is not finite")
    return value
