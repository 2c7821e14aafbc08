"""Meter catalog: one TOML data file per meter model in configs/meters/, each citing its register table.

Adding a model is a data file, not code. A file looks like:

    [meter]
    id = "eastron-sdm630-v2"            # what [[meters]].model refers to
    manufacturer = "Eastron"
    name = "SDM630-Modbus V2"
    phases = 3
    source = "Eastron SDM630 Modbus Protocol ... (register table name and version)"
    function = 4                        # default function code: 3 = holding, 4 = input registers
    word_order = "big"                  # default: "big" = high word first (ABCD), "little" = CDAB
    max_read_registers = 80             # largest block one request may read on this meter
    identify = ["voltage_l2"]           # quantities whose registers must answer for `meters scan` to match

    [registers]
    voltage_l1 = { address = 0x0000, type = "float32" }
    energy_import = { address = 0x0048, type = "float32", scale = 1000.0 }   # kWh on the wire -> Wh

Every register may override `function` and `word_order`. Values are normalised to the units in QUANTITIES.

A counter whose resolution is given by a separate decade-exponent register (Iskra WM3M4: value = raw * 10**exp)
names that register: `energy_import = { address = 418, type = "int32", exponent_address = 414 }`; the exponent is
read as a signed 16-bit register in the same request.

A model-identification register, where the maker has one, makes `meters scan` certain rather than plausible:

    [meter]
    model_code = { function = 4, address = 0x000B, type = "uint16", values = [71, 72, 73] }
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.meters.registers import DATA_TYPES, register_count

# quantity -> unit after scaling
QUANTITIES: dict[str, str] = {
    "voltage_l1": "V",
    "voltage_l2": "V",
    "voltage_l3": "V",
    "current_l1": "A",
    "current_l2": "A",
    "current_l3": "A",
    "power": "W",
    "power_l1": "W",
    "power_l2": "W",
    "power_l3": "W",
    "frequency": "Hz",
    "energy_import": "Wh",
    "energy_export": "Wh",
}

# Modbus allows at most 125 registers in one read (PDU limit).
MODBUS_MAX_READ = 125

DEFAULT_CATALOG_DIR = Path(__file__).resolve().parents[2] / "configs" / "meters"


@dataclass(frozen=True)
class RegisterSpec:
    quantity: str
    function: int
    address: int
    data_type: str
    word_order: str
    scale: float
    # separate signed 16-bit decade-exponent register (value = raw * 10**exp * scale), same function code
    exponent_address: int | None = None

    @property
    def count(self) -> int:
        return register_count(self.data_type)

    @property
    def start(self) -> int:
        """First register a read must cover for this value (the exponent register may come first)."""
        return self.address if self.exponent_address is None else min(self.address, self.exponent_address)

    @property
    def end(self) -> int:
        """One past the last register a read must cover for this value."""
        end = self.address + self.count
        return end if self.exponent_address is None else max(end, self.exponent_address + 1)


@dataclass(frozen=True)
class ModelCode:
    """A register holding the maker's model code, and the codes that mean this catalog model."""

    function: int
    address: int
    data_type: str
    values: frozenset[int]


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read covering one or more registers of a model."""

    function: int
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]


@dataclass(frozen=True)
class MeterModel:
    id: str
    manufacturer: str
    name: str
    phases: int
    source: str
    max_read_registers: int
    identify: tuple[str, ...]
    registers: tuple[RegisterSpec, ...]
    # extra (function, address, count) reads that must answer for `meters scan` to match (registers other models
    # of the same family lack)
    probes: tuple[tuple[int, int, int], ...] = ()
    model_code: ModelCode | None = None

    def register(self, quantity: str) -> RegisterSpec | None:
        for r in self.registers:
            if r.quantity == quantity:
                return r
        return None

    def blocks(self, quantities: Iterable[str] | None = None, max_gap: int = 8) -> tuple[ReadBlock, ...]:
        """Group registers into as few reads as the meter allows: same function code, contiguous or separated by
        at most `max_gap` unused registers, at most max_read_registers long."""
        wanted = set(quantities) if quantities is not None else None
        regs = sorted(
            (r for r in self.registers if wanted is None or r.quantity in wanted),
            key=lambda r: (r.function, r.start),
        )
        blocks: list[ReadBlock] = []
        cur: list[RegisterSpec] = []
        for r in regs:
            if cur:
                start = min(c.start for c in cur)
                end = max(c.end for c in cur)
                same_fn = r.function == cur[0].function
                if (
                    same_fn
                    and r.start - end <= max_gap
                    and max(end, r.end) - start <= self.max_read_registers
                    and r.start >= start
                ):
                    cur.append(r)
                    continue
                blocks.append(_block(cur))
                cur = []
            cur.append(r)
        if cur:
            blocks.append(_block(cur))
        return tuple(blocks)


def _block(regs: list[RegisterSpec]) -> ReadBlock:
    start = min(r.start for r in regs)
    end = max(r.end for r in regs)
    return ReadBlock(regs[0].function, start, end - start, tuple(regs))


def parse_model(file: str, data: dict[str, Any]) -> MeterModel:
    meter = data.get("meter")
    registers = data.get("registers")
    if not isinstance(meter, dict) or not isinstance(registers, dict):
        raise ConfigError(file, "-", "expected a [meter] table and a [registers] table")

    def req(key: str, tp: type) -> Any:
        v = meter.get(key)
        if not isinstance(v, tp) or isinstance(v, bool):
            raise ConfigError(file, f"meter.{key}", f"required, expected {tp.__name__}")
        return v

    model_id = req("id", str)
    source = req("source", str)
    if not source.strip():
        raise ConfigError(file, "meter.source", "must cite the register table (document name and version)")
    fn_default = meter.get("function", 3)
    wo_default = meter.get("word_order", "big")
    max_read = meter.get("max_read_registers", 40)
    if not isinstance(max_read, int) or not 1 <= max_read <= MODBUS_MAX_READ:
        raise ConfigError(file, "meter.max_read_registers", f"expected 1..{MODBUS_MAX_READ}")
    specs: list[RegisterSpec] = []
    for q, r in registers.items():
        key = f"registers.{q}"
        if q not in QUANTITIES:
            raise ConfigError(file, key, f"unknown quantity (known: {', '.join(QUANTITIES)})")
        if not isinstance(r, dict):
            raise ConfigError(file, key, "expected an inline table { address = ..., type = ... }")
        unknown = set(r) - {"address", "type", "scale", "function", "word_order", "exponent_address"}
        if unknown:
            raise ConfigError(file, f"{key}.{sorted(unknown)[0]}", "unknown key")
        addr = r.get("address")
        if not isinstance(addr, int) or isinstance(addr, bool) or not 0 <= addr <= 0xFFFF:
            raise ConfigError(file, f"{key}.address", "expected 0..65535 (protocol address, 0-based)")
        dtype = r.get("type")
        if dtype not in DATA_TYPES:
            raise ConfigError(file, f"{key}.type", f"expected one of {', '.join(DATA_TYPES)}")
        fn = r.get("function", fn_default)
        if fn not in (3, 4):
            raise ConfigError(file, f"{key}.function", "expected 3 (holding) or 4 (input registers)")
        wo = r.get("word_order", wo_default)
        if wo not in ("big", "little"):
            raise ConfigError(file, f"{key}.word_order", "expected 'big' or 'little'")
        scale = r.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0:
            raise ConfigError(file, f"{key}.scale", "expected a non-zero number")
        exp_addr = r.get("exponent_address")
        if exp_addr is not None and (
            not isinstance(exp_addr, int) or isinstance(exp_addr, bool) or not 0 <= exp_addr <= 0xFFFF
        ):
            raise ConfigError(file, f"{key}.exponent_address", "expected 0..65535 (the exponent's register)")
        spec = RegisterSpec(q, int(fn), addr, str(dtype), str(wo), float(scale), exp_addr)
        if spec.end - spec.start > max_read:
            raise ConfigError(
                file,
                f"{key}.exponent_address",
                f"value and exponent must fit one read of {max_read} registers",
            )
        specs.append(spec)
    identify = meter.get("identify", [])
    if not isinstance(identify, list) or any(i not in registers for i in identify):
        raise ConfigError(file, "meter.identify", "expected a list of quantities mapped in [registers]")
    probes: list[tuple[int, int, int]] = []
    for i, p in enumerate(meter.get("probes", [])):
        key = f"meter.probes[{i}]"
        if not isinstance(p, dict) or p.get("function") not in (3, 4) or p.get("type") not in DATA_TYPES:
            raise ConfigError(file, key, "expected { function = 3|4, address = N, type = T }")
        a = p.get("address")
        if not isinstance(a, int) or not 0 <= a <= 0xFFFF:
            raise ConfigError(file, f"{key}.address", "expected 0..65535")
        probes.append((int(p["function"]), a, register_count(str(p["type"]))))
    model_code = None
    mc = meter.get("model_code")
    if mc is not None:
        values = mc.get("values") if isinstance(mc, dict) else None
        if (
            not isinstance(mc, dict)
            or mc.get("function") not in (3, 4)
            or mc.get("type") not in ("uint16", "int16", "uint32", "int32")
            or not isinstance(mc.get("address"), int)
            or not 0 <= mc["address"] <= 0xFFFF
            or not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise ConfigError(
                file,
                "meter.model_code",
                "expected { function = 3|4, address = N, type = uint16|int16|uint32|int32, values = [codes] }",
            )
        model_code = ModelCode(int(mc["function"]), int(mc["address"]), str(mc["type"]), frozenset(values))
    phases = meter.get("phases", 3)
    if phases not in (1, 3):
        raise ConfigError(file, "meter.phases", "expected 1 or 3")
    return MeterModel(
        id=model_id,
        manufacturer=str(meter.get("manufacturer", "")),
        name=str(meter.get("name", model_id)),
        phases=int(phases),
        source=source,
        max_read_registers=max_read,
        identify=tuple(identify),
        registers=tuple(specs),
        probes=tuple(probes),
        model_code=model_code,
    )


def load_catalog(directory: Path | None = None) -> dict[str, MeterModel]:
    d = directory or DEFAULT_CATALOG_DIR
    models: dict[str, MeterModel] = {}
    for path in sorted(d.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(str(path), "-", f"cannot read meter model: {e}") from None
        model = parse_model(str(path), data)
        if model.id in models:
            raise ConfigError(str(path), "meter.id", f"duplicate model id {model.id!r}")
        models[model.id] = model
    return models
