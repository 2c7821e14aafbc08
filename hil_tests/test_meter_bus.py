"""Three meters on one real pty bus (pyserial on the gateway side, wire timing emulated at 19200 baud); one falls
silent. The other two keep their polling rate, the silent one is marked stale within a bounded time and costs the
bus at most one timeout per backoff period. Rates are measured; the bounds asserted are deliberately generous."""

from __future__ import annotations

import asyncio
import time

from firmware_sim.modbus_meter import PtyMeterBus, SimMeter, constant
from gateway.meters.catalog import load_catalog
from gateway.meters.config import BusSection, MeterSection
from gateway.meters.hub import MeterHub
from gateway.meters.reading import MeterReading

CATALOG = load_catalog()
HEALTHY_S = 2.0
SILENT_S = 4.0


def test_silent_meter_goes_stale_others_keep_their_rate() -> None:
    models = ["eastron-sdm630-v2", "abb-b23-b24", "carlogavazzi-em24"]
    sims = [SimMeter(u, CATALOG[m], constant(float(u))) for u, m in enumerate(models, start=1)]

    async def main() -> None:
        with PtyMeterBus(sims, line_baud=19200) as pty:
            bus = BusSection(
                id="rs485",
                port=pty.port,
                baudrate=19200,
                response_timeout=0.1,
                poll_interval=0.2,
                retries=1,
                backoff_min=1.0,
                backoff_max=2.0,
                stale_after=1.0,
            )
            meters = tuple(
                MeterSection(
                    id=f"m{u}",
                    bus="rs485",
                    unit_id=u,
                    model=m,
                    role="grid" if u == 1 else "charger",
                    charger_id="" if u == 1 else f"CP{u}",
                )
                for u, m in enumerate(models, start=1)
            )
            hub = MeterHub((bus,), meters, CATALOG)
            log: list[tuple[float, str]] = []

            def on_reading(r: MeterReading) -> None:
                log.append((time.monotonic(), r.meter_id))
                # a reading handed out is never older than the poll that produced it
                assert r.age(time.monotonic()) < 1.0

            hub.subscribe(on_reading)
            await hub.start()
            try:
                await asyncio.sleep(HEALTHY_S)
                t_silent = time.monotonic()
                timeouts_before = hub.pollers["rs485"].stats.timeouts
                sims[1].faults.silent = True
                stale_at = None
                while time.monotonic() - t_silent < SILENT_S:
                    if stale_at is None and hub.is_stale("m2"):
                        stale_at = time.monotonic() - t_silent
                        assert hub.fresh("m2") is None  # stale values are never handed out as fresh
                    await asyncio.sleep(0.02)
                t_end = time.monotonic()
            finally:
                await hub.stop()
            status = hub.status()["rs485"]
            timeouts = hub.pollers["rs485"].stats.timeouts - timeouts_before

        def rate(meter: str, a: float, b: float) -> float:
            return sum(1 for t, m in log if m == meter and a <= t < b) / (b - a)

        t0 = log[0][0]
        report = {
            m: (round(rate(m, t0, t_silent), 2), round(rate(m, t_silent + 0.5, t_end), 2))
            for m in ("m1", "m2", "m3")
        }
        print(
            "readings/s before/after m2 fell silent:",
            report,
            "m2 stale after",
            stale_at,
            "s; timeouts",
            timeouts,
        )
        print("bus status:", status)
        for m in ("m1", "m3"):
            before, after = report[m]
            assert before > 2.0, report  # configured 5/s
            assert after >= 0.6 * before, report
        assert report["m2"][1] == 0
        # stale within stale_after (1 s) + one poll cycle + two timeouts, with a wide margin for a loaded machine
        assert stale_at is not None and stale_at < 2.5
        # at most: first attempt + retry, then one probe per backoff period (>= 1 s) -> <= 2 + 4 in 4 s
        assert timeouts <= 2 + SILENT_S / 1.0

    asyncio.run(main())
