"""The bus task against simulated meters on a real pty (pyserial on the gateway side), with fault injection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from firmware_sim.modbus_meter import Faults, PtyMeterBus, SimMeter, constant
from gateway.meters.catalog import load_catalog
from gateway.meters.poller import BusPoller, PolledMeter
from gateway.meters.reading import MeterReading
from gateway.meters.scheduler import PollPolicy
from gateway.meters.transport import RtuSerialTransport

CATALOG = load_catalog()
SDM = CATALOG["eastron-sdm630-v2"]
FAST = PollPolicy(interval=0.05, retries=1, backoff_min=0.5, backoff_max=2.0, stale_after=0.5)


def run(
    faults: dict[int, Faults], body: Callable[[BusPoller, PtyMeterBus], Coroutine[Any, Any, None]]
) -> list[MeterReading]:
    readings: list[MeterReading] = []

    async def main() -> None:
        meters = [SimMeter(u, SDM, constant(float(u)), f) for u, f in faults.items()]
        with PtyMeterBus(meters) as bus:
            t = RtuSerialTransport(bus.port, 19200, response_timeout=0.05)
            poller = BusPoller("b", t, [PolledMeter(f"m{u}", u, SDM) for u in faults], FAST, readings.append)
            await t.open()
            try:
                await body(poller, bus)
            finally:
                await t.close()

    asyncio.run(main())
    return readings


def test_good_meter_reads_values_with_timestamps() -> None:
    async def body(p: BusPoller, _bus: PtyMeterBus) -> None:
        r = await p.poll_once("m3")
        assert r is not None
        assert r.values["current_l2"] == 3.0 and r.values["voltage_l1"] == 230.0
        assert r.monotonic > 0 and r.wall > 1.7e9
        assert not p.is_stale("m3")

    assert len(run({3: Faults()}, body)) == 1


def test_crc_corruption_is_counted_and_meter_goes_stale_then_recovers() -> None:
    faults = Faults(crc=True)

    async def body(p: BusPoller, _bus: PtyMeterBus) -> None:
        assert await p.poll_once("m1") is None
        assert p.stats.crc_errors >= 2  # first attempt + one retry
        assert p.is_stale("m1")
        faults.crc = False
        assert await p.poll_once("m1") is not None
        assert not p.is_stale("m1")

    run({1: faults}, body)


def test_garbage_on_the_line_is_survived() -> None:
    async def body(p: BusPoller, _bus: PtyMeterBus) -> None:
        for _ in range(3):
            assert await p.poll_once("m1") is not None
        assert p.stats.garbage_bytes >= 3 * 7

    run({1: Faults(garbage=7)}, body)


def test_wrong_unit_and_slow_answers_fail_without_poisoning_the_next_request() -> None:
    async def body(p: BusPoller, _bus: PtyMeterBus) -> None:
        assert await p.poll_once("m1") is None
        assert p.stats.wrong_unit >= 1
        assert await p.poll_once("m2") is None  # 0.2 s late: times out
        assert p.stats.timeouts >= 2
        await asyncio.sleep(0.3)  # the late answer arrives while nobody waits ...
        assert await p.poll_once("m3") is not None  # ... and is not taken for m3's
        assert p.stats.garbage_bytes > 0

    run({1: Faults(wrong_unit=True), 2: Faults(slow=0.2), 3: Faults()}, body)


def test_silent_meter_costs_one_timeout_per_backoff_period() -> None:
    async def body(p: BusPoller, _bus: PtyMeterBus) -> None:
        assert await p.poll_once("m1") is None
        assert p.stats.timeouts == 2  # healthy: first attempt + 1 retry
        assert await p.poll_once("m1") is None
        assert p.stats.timeouts == 3  # backing off: a single probe
        assert p.is_stale("m1")

    run({1: Faults(silent=True)}, body)


def test_port_going_away_raises_transport_error_instead_of_hanging() -> None:
    import pytest

    from gateway.meters.transport import TransportError

    async def main() -> None:
        bus = PtyMeterBus([SimMeter(1, SDM, constant(1.0))])
        bus.start()
        t = RtuSerialTransport(bus.port, 19200, response_timeout=0.05)
        await t.open()
        try:
            assert await t.read(1, 4, 0, 2) is not None
            bus.stop()  # the "adapter" is unplugged: the pty's other side closes
            with pytest.raises(TransportError):
                for _ in range(5):
                    await t.read(1, 4, 0, 2)
        finally:
            await t.close()

    asyncio.run(main())
