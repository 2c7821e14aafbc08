"""session.update end to end: a real gateway process with `[uplink]` on a real mosquitto, a raw charge point, and the
simulated eMSP (firmware_sim.emsp) as the consumer: the updates arrive at the interval (charger time), not for a
resent MeterValues, not after session.stopped, and decode to the documented body."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.emsp import SimEmsp
from hil_tests.gateway_proc import DEFAULT_TAG, GatewayFactory
from hil_tests.mosquitto import Mosquitto, mosquitto_binary
from hil_tests.rawclient import RawChargePoint, assert_clean, meter_values, run_async

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto not installed (apt-get install mosquitto)"
)

GW_ID = "site-progress"
INTERVAL_S = 60
# Bound for the outbox to reach the eMSP through the broker; a healthy gateway needs milliseconds.
DELIVERY_TIMEOUT_S = 20.0
POLL_S = 0.02


def charger_time(seconds: float) -> str:
    t = datetime(2026, 11, 21, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_session_updates_reach_the_emsp(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = SimEmsp("127.0.0.1", broker.port, client_id="emsp-progress", tokens={DEFAULT_TAG: "Accepted"})
        emsp.start()
        try:
            await emsp.wait_connected()
            uplink = (
                f'[uplink]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\ngateway_id = "{GW_ID}"\n'
                f"session_update_interval_s = {INTERVAL_S}\n"
            )
            gw = gateway_factory(extra_toml=uplink)
            async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1")) as cp:
                assert (await cp.boot())["status"] == "Accepted"
                start = {
                    "connectorId": 1,
                    "idTag": DEFAULT_TAG,
                    "meterStart": 5000,
                    "timestamp": charger_time(0),
                }
                tx = (await cp.call("StartTransaction", start))["transactionId"]
                for t, wh, w in [
                    (10, 5100, 7200.0),
                    (40, 5400, None),
                    (70, 5700, 7000.0),
                    (70, 5700, 7000.0),
                ]:
                    # (70 twice: the charger resends a MeterValues whose answer it lost)
                    assert (
                        await cp.call("MeterValues", meter_values(1, tx, wh, charger_time(t), power_w=w))
                        == {}
                    )
                stop = {
                    "transactionId": tx,
                    "meterStop": 5900,
                    "timestamp": charger_time(200),
                    "reason": "Local",
                }
                assert await cp.call("StopTransaction", stop) == {}
                # a reading that arrives after the stop: stored, never reported as progress
                assert await cp.call("MeterValues", meter_values(1, tx, 5950, charger_time(300))) == {}
            assert_clean(cp)

            view = emsp.gateway(GW_ID)
            high = int(gw.query("SELECT MAX(seq) AS s FROM outbox")[0]["s"])
            deadline = time.monotonic() + DELIVERY_TIMEOUT_S
            while len(view.events) < high:
                assert time.monotonic() < deadline, (
                    f"{len(view.events)} of {high} events arrived; {emsp.report()}"
                )
                await asyncio.sleep(POLL_S)
            assert not emsp.malformed and view.out_of_order == 0 and view.duplicate_mismatches == 0
            stream = [view.events[s] for s in sorted(view.events)]
            kinds = [e["kind"] for e in stream]
            updates = [e for e in stream if e["kind"] == "session.update"]
            want: list[dict[str, Any]] = [
                {
                    "tx": tx,
                    "charger": "CP1",
                    "connector": 1,
                    "energy_wh": 100,
                    "power_w": 7200.0,
                    "ts": charger_time(10),
                },
                {
                    "tx": tx,
                    "charger": "CP1",
                    "connector": 1,
                    "energy_wh": 700,
                    "power_w": 7000.0,
                    "ts": charger_time(70),
                },
            ]
            assert [e["body"] for e in updates] == want
            assert [e["charger_ts"] for e in updates] == [charger_time(10), charger_time(70)]
            assert all(e["charger_id"] == "CP1" for e in updates)
            assert kinds.index("session.started") < kinds.index("session.update")
            last_update = max(i for i, k in enumerate(kinds) if k == "session.update")
            assert last_update < kinds.index("session.stopped")
            assert (
                kinds.count("meter.reading") == 4
            )  # every fresh reading still travels, the late one included
        finally:
            await emsp.stop()
            broker.stop()

    run_async(body())
