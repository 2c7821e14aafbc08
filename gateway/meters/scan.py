"""`meters scan`: find meters on a bus (baud rates x unit ids) and identify catalog models by probing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gateway.meters import rtu
from gateway.meters.catalog import MeterModel
from gateway.meters.registers import DecodeError, decode, register_count
from gateway.meters.transport import Transport

# What a live meter shows; values outside these ranges mean the registers mean something else on this device.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "voltage_l1": (80.0, 500.0),
    "voltage_l2": (0.0, 500.0),
    "voltage_l3": (0.0, 500.0),
    "frequency": (40.0, 70.0),
    "current_l1": (-2000.0, 2000.0),
    "energy_import": (0.0, 1e13),
    "energy_export": (0.0, 1e13),
}

Reader = Callable[[int, int, int], Awaitable[rtu.Registers | rtu.ModbusException | None]]


# A model-code register that answers with one of the model's codes is proof, not plausibility: it outweighs any
# number of plausible registers.
MODEL_CODE_SCORE = 100


@dataclass(frozen=True)
class Match:
    model_id: str
    score: int  # identify registers + probes that answered plausibly (+ MODEL_CODE_SCORE for a matching code)


async def identify(read: Reader, catalog: dict[str, MeterModel]) -> list[Match]:
    """Models whose identify registers all answer plausibly and whose probes all answer, best first."""
    matches: list[Match] = []
    for model in catalog.values():
        score = 0
        ok = True
        mc = model.model_code
        if mc is not None:
            answer = await read(mc.function, mc.address, register_count(mc.data_type))
            if not isinstance(answer, rtu.Registers):
                continue
            try:
                code = decode(answer.words, mc.data_type)
            except DecodeError:
                continue
            if int(code) not in mc.values:
                continue
            score += MODEL_CODE_SCORE
        for q in model.identify:
            r = model.register(q)
            assert r is not None
            answer = await read(r.function, r.address, r.count)
            if not isinstance(answer, rtu.Registers):
                ok = False
                break
            try:
                v = decode(answer.words, r.data_type, r.word_order, r.scale)
            except DecodeError:
                ok = False
                break
            lo, hi = PLAUSIBLE.get(q, (-1e13, 1e13))
            if not lo <= v <= hi:
                ok = False
                break
            score += 1
        if not ok:
            continue
        for fn, addr, count in model.probes:
            if not isinstance(await read(fn, addr, count), rtu.Registers):
                ok = False
                break
            score += 1
        if ok:
            matches.append(Match(model.id, score))
    matches.sort(key=lambda m: -m.score)
    return matches


def same_readings(models: list[MeterModel]) -> bool:
    """True when every model maps each quantity they share to the same register and decoding (so picking any of
    them reads the meter the same), and the first maps every quantity the others do."""
    if len(models) < 2:
        return True
    first = {r.quantity: r for r in models[0].registers}
    for other in models[1:]:
        for r in other.registers:
            if first.get(r.quantity) != r:
                return False
    return True


async def present(transport: Transport, unit: int) -> bool:
    """Anything that answers (even with an exception) at this unit id is a device."""
    for fn in (rtu.READ_INPUT, rtu.READ_HOLDING):
        if await transport.read(unit, fn, 0, 1) is not None:
            return True
    return False


def parse_units(spec: str) -> list[int]:
    """'1-10,33' -> [1..10, 33]; raises ValueError on anything outside 1..247."""
    units: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            units.extend(range(int(a), int(b) + 1))
        elif part:
            units.append(int(part))
    if not units or any(not 1 <= u <= 247 for u in units):
        raise ValueError("unit ids must be in 1..247")
    return units


async def scan_bus(
    make_transport: Callable[[int], Transport],
    bauds: Iterable[int],
    units: list[int],
    catalog: dict[str, MeterModel],
    progress: Callable[[str], None] = lambda _s: None,
) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for baud in bauds:
        t = make_transport(baud)
        await t.open()
        try:
            for unit in units:
                if not await present(t, unit):
                    continue

                async def read(
                    fn: int, addr: int, count: int, _u: int = unit, _t: Transport = t
                ) -> rtu.Registers | rtu.ModbusException | None:
                    return await _t.read(_u, fn, addr, count)

                matches = await identify(read, catalog)
                progress(
                    f"baud {baud} unit {unit}: {', '.join(m.model_id for m in matches) or 'unknown device'}"
                )
                tied = [m.model_id for m in matches if m.score == matches[0].score] if matches else []
                found.append(
                    {
                        "baudrate": baud,
                        "unit_id": unit,
                        "model": matches[0].model_id if matches else None,
                        "candidates": [m.model_id for m in matches],
                        # equally likely models that would read this meter differently: the installer must choose
                        "ambiguous": not same_readings([catalog[t] for t in tied]),
                    }
                )
        finally:
            await t.close()
    return found
