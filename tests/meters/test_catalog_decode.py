"""Every catalog model decodes register values written by an independent encoder (struct here, never the
decoder under test), including word order and scale cases."""

from __future__ import annotations

import math
import struct

import pytest

from gateway.errors import ConfigError
from gateway.meters.catalog import QUANTITIES, load_catalog, parse_model
from gateway.meters.reading import decode_blocks
from gateway.meters.registers import DecodeError, decode

CATALOG = load_catalog()

# Catalog models the issue asks for (a model missing here is a regression).
REQUIRED = {
    "eastron-sdm630-v2",
    "eastron-sdm120",
    "eastron-sdm72d-m-v2",
    "abb-b23-b24",
    "carlogavazzi-em24",
    "carlogavazzi-em340",
    "janitza-b23",
    "iskra-wm3m4",
}

# plausible values for every quantity, different per phase so a swapped address shows
SAMPLE = {
    "voltage_l1": 231.4,
    "voltage_l2": 229.8,
    "voltage_l3": 233.1,
    "current_l1": 12.345,
    "current_l2": 7.5,
    "current_l3": 0.25,
    "power": 4567.8,
    "power_l1": 2856.3,
    "power_l2": 1723.5,
    "power_l3": -12.0,
    "frequency": 49.98,
    "energy_import": 1234567.0,
    "energy_export": 4321.0,
}


def struct_encode(value: float, data_type: str, word_order: str, scale: float) -> list[int]:
    raw = value / scale
    fmt = {
        "float32": ">f",
        "uint16": ">H",
        "int16": ">h",
        "uint32": ">I",
        "int32": ">i",
        "uint64": ">Q",
        "int64": ">q",
    }
    if data_type in fmt:
        packed = struct.pack(fmt[data_type], raw if data_type == "float32" else round(raw))
    else:  # Iskra T5/T6 with a fixed exponent of -3
        mant = round(raw * 1000)
        packed = struct.pack(">b", -3) + struct.pack(">i", mant)[1:]
    words = list(struct.unpack(f">{len(packed) // 2}H", packed))
    return words if word_order == "big" else words[::-1]


def test_catalog_has_required_models_each_citing_a_source() -> None:
    assert REQUIRED <= set(CATALOG)
    for m in CATALOG.values():
        assert len(m.source) > 20, m.id
        assert {"voltage_l1", "current_l1"} <= {r.quantity for r in m.registers}, m.id


def struct_encode_counter(value: float, data_type: str, word_order: str, scale: float, exp: int) -> list[int]:
    """A counter read with a separate decade-exponent register holding `exp`."""
    return struct_encode(value, data_type, word_order, scale * 10.0**exp)


# every model with the exponent register at 0; models with exponent registers also at 10^1 and 10^-1
DECODE_CASES = [(m, 0) for m in sorted(CATALOG)] + [
    (m, e)
    for m in sorted(CATALOG)
    if any(r.exponent_address is not None for r in CATALOG[m].registers)
    for e in (1, -1)
]


@pytest.mark.parametrize(("model_id", "counter_exponent"), DECODE_CASES)
def test_model_decodes_independently_encoded_registers(model_id: str, counter_exponent: int) -> None:
    model = CATALOG[model_id]
    blocks = model.blocks()
    block_words = []
    for b in blocks:
        words = [0xFFFF] * b.count  # gaps hold junk the decoder must not touch
        for r in b.registers:
            if r.exponent_address is None:
                enc = struct_encode(SAMPLE[r.quantity], r.data_type, r.word_order, r.scale)
            else:
                enc = struct_encode_counter(
                    SAMPLE[r.quantity], r.data_type, r.word_order, r.scale, counter_exponent
                )
                (words[r.exponent_address - b.address],) = struct.unpack(
                    ">H", struct.pack(">h", counter_exponent)
                )
            words[r.address - b.address : r.address - b.address + len(enc)] = enc
        block_words.append(words)
    values, invalid = decode_blocks(model, blocks, block_words)
    assert invalid == ()
    for r in model.registers:
        q = r.quantity
        expected = SAMPLE[q]
        # resolution of the wire format: float32 ~7 digits, integers one scale step
        step = abs(r.scale) * (10.0**counter_exponent if r.exponent_address is not None else 1.0)
        tol = max(abs(expected) * 1e-6, step / 2 + 1e-9, 1e-3 if r.data_type.startswith("iskra") else 0)
        assert values[q] == pytest.approx(expected, abs=tol), (model_id, q)
    assert set(values) <= set(QUANTITIES)


def test_word_order_big_and_little() -> None:
    # 0x00010002 as int32: big word order = high word first
    assert decode([0x0001, 0x0002], "int32", "big") == 65538
    assert decode([0x0002, 0x0001], "int32", "little") == 65538
    # negative int32 with the low word first (Carlo Gavazzi style): -1234 * 0.1 W
    lo_hi = list(struct.unpack(">2H", struct.pack(">i", -1234)))[::-1]
    assert decode(lo_hi, "int32", "little", 0.1) == pytest.approx(-123.4)
    # float32 both ways
    w = list(struct.unpack(">2H", struct.pack(">f", 230.5)))
    assert decode(w, "float32", "big") == 230.5
    assert decode(w[::-1], "float32", "little") == 230.5
    # uint64, little word order reverses all four words
    w64 = list(struct.unpack(">4H", struct.pack(">Q", 123456789012)))
    assert decode(w64[::-1], "uint64", "little", 10.0) == 1234567890120.0


def test_scale_and_signed_16() -> None:
    assert decode([0xFFFF], "int16", scale=0.1) == pytest.approx(-0.1)
    assert decode([0xFFFF], "uint16", scale=0.1) == pytest.approx(6553.5)
    assert decode([5000], "uint16", scale=0.01) == pytest.approx(50.0)


def test_iskra_t5_t6_examples_from_the_format_definition() -> None:
    # "123456 * 10^-3 stored as 0xFD01 0xE240" / "-123456 * 10^-3 stored as 0xFDFE 0x1DC0"
    assert decode([0xFD01, 0xE240], "iskra_t5") == pytest.approx(123.456)
    assert decode([0xFDFE, 0x1DC0], "iskra_t6") == pytest.approx(-123.456)


def test_float_nan_and_bad_lengths_are_rejected() -> None:
    nan = list(struct.unpack(">2H", struct.pack(">f", math.nan)))
    with pytest.raises(DecodeError):
        decode(nan, "float32")
    with pytest.raises(DecodeError):
        decode([1], "float32")
    with pytest.raises(DecodeError):
        decode([1, 2], "complex")  # type: ignore[arg-type]


def test_denormal_and_negative_float() -> None:
    for v in (-0.5, 1e-40, -3.4e38):
        w = list(struct.unpack(">2H", struct.pack(">f", v)))
        assert decode(w, "float32") == struct.unpack(">f", struct.pack(">f", v))[0]


def test_nan_register_reported_invalid_not_zero() -> None:
    m = CATALOG["eastron-sdm630-v2"]
    blocks = m.blocks()
    words = [[0x7FC0, 0x0000] * (b.count // 2) for b in blocks]
    values, invalid = decode_blocks(m, blocks, words)
    assert "voltage_l1" in invalid and "voltage_l1" not in values


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"registers": {"voltage_l9": {"address": 0, "type": "float32"}}}, "registers.voltage_l9"),
        (
            {"registers": {"voltage_l1": {"address": 70000, "type": "float32"}}},
            "registers.voltage_l1.address",
        ),
        ({"registers": {"voltage_l1": {"address": 0, "type": "double"}}}, "registers.voltage_l1.type"),
        ({"registers": {"voltage_l1": {"address": 0, "type": "float32", "function": 6}}}, "function"),
        ({"meter": {"id": "x", "source": " "}}, "meter.source"),
    ],
)
def test_bad_model_file_is_rejected_with_the_key(patch: dict[str, dict[str, object]], key: str) -> None:
    data: dict[str, dict[str, object]] = {
        "meter": {"id": "x", "source": "doc v1"},
        "registers": {"voltage_l1": {"address": 0, "type": "float32"}},
    }
    for k, v in patch.items():
        data[k] = v
    with pytest.raises(ConfigError) as e:
        parse_model("m.toml", data)
    assert key in e.value.key


def test_blocks_respect_max_read_and_function() -> None:
    for m in CATALOG.values():
        covered = set()
        for b in m.blocks():
            assert b.count <= m.max_read_registers
            for r in b.registers:
                assert r.function == b.function
                assert b.address <= r.address and r.address + r.count <= b.address + b.count
                covered.add(r.quantity)
        assert covered == {r.quantity for r in m.registers}


def test_exponent_register_is_signed_and_bounded() -> None:
    from gateway.meters.registers import decode_exponent

    assert decode_exponent(0x0001) == 1
    assert decode_exponent(0xFFFE) == -2  # signed 16-bit
    assert decode([0x0000, 0x3039], "int32", exponent=2) == 1234500.0  # 12345 x 10^2 Wh
    with pytest.raises(DecodeError):
        decode_exponent(0x0100)  # 256: not an exponent, the register holds something else


def test_iskra_counter_with_a_garbage_exponent_is_reported_invalid() -> None:
    m = CATALOG["iskra-wm3m4"]
    blocks = m.blocks()
    words = [[0x0100] * b.count for b in blocks]  # every register 0x0100: exponent 256
    values, invalid = decode_blocks(m, blocks, words)
    assert {"energy_import", "energy_export"} <= set(invalid)
    assert "energy_import" not in values


@pytest.mark.parametrize(
    ("registers", "meter", "key"),
    [
        ({"energy_import": {"address": 10, "type": "int32", "exponent_address": -1}}, {}, "exponent_address"),
        (
            {"energy_import": {"address": 10, "type": "int32", "exponent_address": 900}},
            {},
            "registers.energy_import.exponent_address",
        ),
        (
            {},
            {"model_code": {"function": 4, "address": 11, "type": "uint16", "values": []}},
            "meter.model_code",
        ),
        (
            {},
            {"model_code": {"function": 6, "address": 11, "type": "uint16", "values": [1]}},
            "meter.model_code",
        ),
    ],
)
def test_bad_exponent_or_model_code_is_rejected_with_the_key(
    registers: dict[str, object], meter: dict[str, object], key: str
) -> None:
    data: dict[str, dict[str, object]] = {
        "meter": {"id": "x", "source": "doc v1", **meter},
        "registers": {"voltage_l1": {"address": 0, "type": "float32"}, **registers},
    }
    with pytest.raises(ConfigError) as e:
        parse_model("m.toml", data)
    assert key in e.value.key


def test_every_catalog_model_maps_power_frequency_and_energy() -> None:
    """The issue: each model maps voltage, current per phase, active power, frequency and imported/exported energy."""
    needed = {"voltage_l1", "current_l1", "frequency", "energy_import", "energy_export"}
    for m in CATALOG.values():
        mapped = {r.quantity for r in m.registers}
        assert needed <= mapped, (m.id, needed - mapped)
        assert "power" in mapped or {"power_l1", "power_l2", "power_l3"} <= mapped, m.id
        if m.phases == 3:
            assert {"voltage_l2", "voltage_l3", "current_l2", "current_l3"} <= mapped, m.id
