"""Simulated Modbus RTU meters on a pty pair: real serial semantics for the gateway side.

`PtyMeterBus` opens a pty pair with os.openpty(); the gateway opens the slave side by its path (/dev/pts/N) with
pyserial exactly as it would open /dev/ttyUSB0. The simulator serves the master side (raw fd reads/writes) from a
thread and answers FC3/FC4 reads for every simulated meter on the bus.

Register values are produced by an encoder written here with `struct`, independent of the gateway's decoder, from
the same catalog data files the gateway reads. A read must start at a mapped register (or anywhere, with
`answer_any`, as many real meters allow); unmapped registers inside it read as 0; a read starting elsewhere or
longer than the model allows gets exception 2 (illegal data address). Counters with a decade-exponent register get
the smallest exponent their count fits with; a model-code register answers the model's first catalog code.

A pty has no baud-rate pacing: with `line_baud` set, each answer is delayed by the time the request and the answer
would take on a real line at that rate (11 bits per character) plus the 3.5-character inter-frame silence, so a
benchmark's polls/s can be compared to the line's theoretical maximum.

Fault injection per unit: silent (no answer), crc (corrupt the CRC of answers), slow (extra delay), wrong_unit
(answer with another unit id), garbage (noise bytes before the answer).
"""

from __future__ import annotations

import argparse
import os
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.meters.catalog import MeterModel, RegisterSpec, load_catalog

Phases = tuple[float, float, float]
NOMINAL_VOLTAGE = 230.0
NOMINAL_FREQUENCY = 50.0


# ---------------------------------------------------------------------------------------------- independent encoder
def _t5_t6(value: float, signed: bool) -> int:
    """Iskra T5/T6: find the smallest decade exponent whose mantissa fits 24 bits (23 + sign for T6)."""
    limit = (1 << 23) - 1 if signed else (1 << 24) - 1
    for exp in range(-6, 7):
        mant = round(value / 10.0**exp)
        if abs(mant) <= limit:
            return ((exp & 0xFF) << 24) | (mant & 0xFFFFFF)
    raise ValueError(f"{value} does not fit Iskra T5/T6")


def encode_value(value: float, data_type: str, word_order: str, scale: float) -> list[int]:
    """Engineering value -> register words, using struct (the gateway decodes by hand)."""
    raw = value / scale
    if data_type == "float32":
        b = struct.pack(">f", raw)
    elif data_type == "uint16":
        b = struct.pack(">H", round(raw))
    elif data_type == "int16":
        b = struct.pack(">h", round(raw))
    elif data_type == "uint32":
        b = struct.pack(">I", round(raw))
    elif data_type == "int32":
        b = struct.pack(">i", round(raw))
    elif data_type == "uint64":
        b = struct.pack(">Q", round(raw))
    elif data_type == "int64":
        b = struct.pack(">q", round(raw))
    elif data_type in ("iskra_t5", "iskra_t6"):
        b = struct.pack(">I", _t5_t6(raw, data_type == "iskra_t6"))
    else:
        raise ValueError(data_type)
    words = list(struct.unpack(f">{len(b) // 2}H", b))
    return words if word_order == "big" else words[::-1]


def encode_counter(value: float, data_type: str, word_order: str, scale: float) -> tuple[int, list[int]]:
    """A counter with a separate decade-exponent register: the smallest exponent >= 0 whose count fits the type.
    Returns (exponent register word, value words)."""
    raw = value / scale
    bits = {"int16": 15, "uint16": 16, "int32": 31, "uint32": 32, "int64": 63, "uint64": 64}[data_type]
    for exp in range(0, 10):
        count = round(raw / 10**exp)
        if abs(count) < (1 << bits):
            (exp_word,) = struct.unpack(">H", struct.pack(">h", exp))
            return exp_word, encode_value(count * 10**exp * scale, data_type, word_order, scale * 10**exp)
    raise ValueError(f"{value} does not fit {data_type} with an exponent register")


def crc16(data: bytes) -> int:
    # Bitwise (no table) so it does not share code with the gateway's table-driven CRC.
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def add_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


# ---------------------------------------------------------------------------------------------------- site & meters
@dataclass
class Faults:
    silent: bool = False
    crc: bool = False
    slow: float = 0.0
    wrong_unit: bool = False
    garbage: int = 0  # noise bytes sent before each answer


@dataclass
class SimMeter:
    """A meter whose phase currents come from `currents()`; voltage and frequency are nominal, pf = 1, and energy
    is integrated from power over (monotonic) time, or, with `energy` set, its import register is what `energy()`
    returns (Wh; e.g. the energy a simulated charger delivered on a sped-up timeline, where integrating the present
    current over real time would not match). The register never goes backwards."""

    unit_id: int
    model: MeterModel
    currents: Callable[[], Phases]
    faults: Faults = field(default_factory=Faults)
    # what the model-code register answers (default: the first code the catalog lists for the model)
    model_code: int | None = None
    # answer reads at any address (unmapped registers read 0), as many real meters do; default: strict, a read
    # must start at a mapped register
    answer_any: bool = False
    energy_import_wh: float = 0.0
    energy_export_wh: float = 0.0
    requests: int = 0
    _last_t: float | None = None
    energy: Callable[[], float] | None = None

    def values(self, now: float) -> dict[str, float]:
        i1, i2, i3 = self.currents()
        if self.model.phases == 1:
            i2 = i3 = 0.0
        p = [NOMINAL_VOLTAGE * i for i in (i1, i2, i3)]
        total = sum(p)
        if self.energy is not None:
            self.energy_import_wh = max(self.energy_import_wh, float(self.energy()))
        elif self._last_t is not None:
            dt_h = (now - self._last_t) / 3600.0
            if total >= 0:
                self.energy_import_wh += total * dt_h
            else:
                self.energy_export_wh += -total * dt_h
        self._last_t = now
        v: dict[str, float] = {
            "voltage_l1": NOMINAL_VOLTAGE,
            "voltage_l2": NOMINAL_VOLTAGE,
            "voltage_l3": NOMINAL_VOLTAGE,
            "current_l1": i1,
            "current_l2": i2,
            "current_l3": i3,
            "power": total,
            "power_l1": p[0],
            "power_l2": p[1],
            "power_l3": p[2],
            "frequency": NOMINAL_FREQUENCY,
            "energy_import": self.energy_import_wh,
            "energy_export": self.energy_export_wh,
        }
        return v

    def register_image(self, now: float) -> dict[tuple[int, int], tuple[int, RegisterSpec]]:
        """(function, address) -> (word, the register it belongs to)."""
        image: dict[tuple[int, int], tuple[int, RegisterSpec]] = {}
        vals = self.values(now)
        for r in self.model.registers:
            if r.exponent_address is None:
                words = encode_value(vals[r.quantity], r.data_type, r.word_order, r.scale)
            else:
                exp_word, words = encode_counter(vals[r.quantity], r.data_type, r.word_order, r.scale)
                image[(r.function, r.exponent_address)] = (exp_word, r)
            for k, w in enumerate(words):
                image[(r.function, r.address + k)] = (w, r)
        mc = self.model.model_code
        if mc is not None:
            code = self.model_code if self.model_code is not None else min(mc.values)
            fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i"}[mc.data_type]
            packed = struct.pack(fmt, code)
            for k, (w,) in enumerate(struct.iter_unpack(">H", packed)):
                image[(mc.function, mc.address + k)] = (w, self.model.registers[0])
        return image

    def answer(self, function: int, address: int, count: int, now: float) -> bytes:
        """PDU (without unit id and CRC) for a read request."""
        self.requests += 1
        starts = {(r.function, r.start) for r in self.model.registers}
        starts |= {(r.function, r.address) for r in self.model.registers}
        starts |= {(f, a) for f, a, _ in self.model.probes}
        if self.model.model_code is not None:
            starts.add((self.model.model_code.function, self.model.model_code.address))
        if count > self.model.max_read_registers or (
            not self.answer_any and (function, address) not in starts
        ):
            return bytes([function | 0x80, 2])
        image = self.register_image(now)
        words = [image.get((function, address + k), (0, None))[0] for k in range(count)]
        return bytes([function, 2 * count]) + struct.pack(f">{count}H", *words)


def wire_time(nbytes: int, baud: int) -> float:
    return nbytes * 11.0 / baud


def frame_gap(baud: int) -> float:
    return 1.75e-3 if baud > 19200 else 3.5 * 11.0 / baud


class PtyMeterBus:
    """A pty pair with simulated meters answering on the master side. Use `.port` as the gateway's serial port."""

    def __init__(self, meters: list[SimMeter], line_baud: int | None = None, turnaround: float = 0.0) -> None:
        self.meters = {m.unit_id: m for m in meters}
        self.line_baud = line_baud
        # meter think time between the end of a request and the start of its answer
        self.turnaround = turnaround
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests_seen = 0
        self.bad_requests = 0

    def __enter__(self) -> PtyMeterBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="pty-meter-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            r, _, _ = select.select([self._master], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                continue
            buf += data
            # FC3/FC4 requests are 8 bytes; resynchronise byte by byte on a bad CRC.
            while len(buf) >= 8:
                frame = bytes(buf[:8])
                if crc16(frame[:6]) != struct.unpack("<H", frame[6:])[0]:
                    self.bad_requests += 1
                    del buf[:1]
                    continue
                del buf[:8]
                self.requests_seen += 1
                self._handle(frame)

    def _handle(self, frame: bytes) -> None:
        unit, function = frame[0], frame[1]
        address, count = struct.unpack(">HH", frame[2:6])
        meter = self.meters.get(unit)
        if meter is None or function not in (3, 4) or meter.faults.silent:
            return
        pdu = meter.answer(function, address, count, time.monotonic())
        answer_unit = unit + 1 if meter.faults.wrong_unit else unit
        response = add_crc(bytes([answer_unit]) + pdu)
        if meter.faults.crc:
            response = response[:-1] + bytes([response[-1] ^ 0x5A])
        if meter.faults.garbage:
            response = os.urandom(meter.faults.garbage) + response
        delay = self.turnaround + meter.faults.slow
        if self.line_baud:
            delay += wire_time(len(frame), self.line_baud) + frame_gap(self.line_baud)
            delay += wire_time(len(response), self.line_baud)
        if delay > 0:
            time.sleep(delay)
        try:
            os.write(self._master, response)
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------- site model
@dataclass
class SiteLoad:
    """The simulated site: the chargers' draw (a callable returning per-charger phase currents) plus a building
    base-load profile (a function of elapsed seconds)."""

    chargers: Callable[[], dict[str, Phases]]
    base_load: Callable[[float], Phases] = lambda t: (5.0, 5.0, 5.0)
    t0: float = field(default_factory=time.monotonic)

    def grid(self) -> Phases:
        b = self.base_load(time.monotonic() - self.t0)
        tot = [b[0], b[1], b[2]]
        for c in self.chargers().values():
            for k in range(3):
                tot[k] += c[k]
        return (tot[0], tot[1], tot[2])

    def charger(self, charger_id: str) -> Callable[[], Phases]:
        return lambda: self.chargers().get(charger_id, (0.0, 0.0, 0.0))


def constant(i: float) -> Callable[[], Phases]:
    return lambda: (i, i, i)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Simulated Modbus RTU meters on a pty")
    ap.add_argument(
        "--meter", action="append", default=[], help="UNIT:MODEL[:AMPS], e.g. 1:eastron-sdm630-v2:10"
    )
    ap.add_argument("--line-baud", type=int, default=None, help="emulate wire timing at this baud rate")
    ap.add_argument("--catalog", type=Path, default=None)
    args = ap.parse_args(argv)
    catalog = load_catalog(args.catalog)
    meters = []
    for spec in args.meter or ["1:eastron-sdm630-v2:10"]:
        parts = spec.split(":")
        amps = float(parts[2]) if len(parts) > 2 else 10.0
        meters.append(SimMeter(int(parts[0]), catalog[parts[1]], constant(amps)))
    bus = PtyMeterBus(meters, line_baud=args.line_baud)
    bus.start()
    print(f"modbus-meter-sim: port={bus.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        bus.stop()


if __name__ == "__main__":
    main()
