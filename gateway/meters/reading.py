"""A meter reading: decoded values plus when they were taken (monotonic for ages/deadlines, wall for records)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.meters.catalog import MeterModel, ReadBlock
from gateway.meters.registers import DecodeError, decode, decode_exponent


@dataclass(frozen=True)
class MeterReading:
    meter_id: str
    values: Mapping[str, float]
    monotonic: float
    wall: float
    # quantities whose registers held an unusable value (NaN, "not available")
    invalid: tuple[str, ...] = field(default=())

    def age(self, now: float) -> float:
        return now - self.monotonic

    def phase_currents(self) -> tuple[float, float, float] | None:
        """Per-phase current (A); a single-phase meter reports its current on L1."""
        if "current_l1" not in self.values:
            return None
        return (
            self.values["current_l1"],
            self.values.get("current_l2", 0.0),
            self.values.get("current_l3", 0.0),
        )


def decode_blocks(
    model: MeterModel, blocks: Sequence[ReadBlock], words: Sequence[Sequence[int]]
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Decode every register of `blocks` from the words each block read. Pure."""
    values: dict[str, float] = {}
    invalid: list[str] = []
    for block, ws in zip(blocks, words, strict=True):
        for r in block.registers:
            off = r.address - block.address
            try:
                exponent = (
                    0
                    if r.exponent_address is None
                    else decode_exponent(ws[r.exponent_address - block.address])
                )
                values[r.quantity] = decode(
                    ws[off : off + r.count], r.data_type, r.word_order, r.scale, exponent
                )
            except DecodeError:
                invalid.append(r.quantity)
    derive(values)
    return values, tuple(invalid)


def derive(values: dict[str, float]) -> None:
    """Fill quantities a model lacks but can be computed: total power from the phase powers."""
    phases = [values.get(f"power_l{i}") for i in (1, 2, 3)]
    if "power" not in values and all(p is not None for p in phases):
        values["power"] = sum(p for p in phases if p is not None)


def as_mapping(values: Mapping[str, float]) -> dict[str, float]:
    return dict(values)
