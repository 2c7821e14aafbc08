"""Uplink in-process against a real mosquitto: eMSP authorization over MQTT, retained status and presence,
MQTT 3.1.1 + JSON, behaviour while the broker is down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from firmware_sim.emsp import SimEmsp
from gateway.events import ConnectorStatus, StatusBus
from gateway.store import Store
from gateway.uplink import Uplink, UplinkSection

try:
    from hil_tests.mosquitto import Mosquitto, mosquitto_binary
except ImportError:
    from mosquitto import Mosquitto, mosquitto_binary  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")

GW = "site-7"


@pytest.mark.parametrize(("protocol", "encoding"), [(5, "cbor"), ("3.1.1", "json")])
def test_authorization_status_and_presence(tmp_path: Path, protocol: int | str, encoding: str) -> None:
    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        store = Store.open(tmp_path / "data")
        bus = StatusBus()
        cfg = UplinkSection(enabled=True, port=broker.port, protocol=protocol, encoding=encoding,  # type: ignore[arg-type]
                            reconnect_max=1.0)  # fmt: skip
        uplink = Uplink(cfg, store, bus, GW)
        emsp = SimEmsp("127.0.0.1", broker.port, encoding=encoding,  # type: ignore[arg-type]
                       protocol=5 if protocol == 5 else 4,
                       tokens={"04A2B3C4D5E6F7": "Accepted", "BLOCKED01": "Blocked", "SILENT01": "NoAnswer"})  # fmt: skip
        emsp.start()
        task = asyncio.create_task(uplink.run())
        late: SimEmsp | None = None
        try:
            await emsp.wait_connected()
            for _ in range(500):
                if uplink.authorizer.reachable():
                    break
                await asyncio.sleep(0.01)
            auth = uplink.authorizer
            assert auth.reachable()
            ok = await auth.authorize("04A2B3C4D5E6F7", "CP1", timeout=5)
            assert (
                ok is not None
                and ok.status == "Accepted"
                and ok.expiry is not None
                and ok.expiry > time.time()
            )
            blocked = await auth.authorize("BLOCKED01", "CP1", timeout=5)
            assert blocked is not None and blocked.status == "Blocked"
            unknown = await auth.authorize("NOBODY", "CP1", timeout=5)
            assert unknown is not None and unknown.status == "Invalid"
            assert await auth.authorize("SILENT01", "CP1", timeout=0.3) is None  # no answer: offline fallback
            many = await asyncio.gather(
                *[auth.authorize("04A2B3C4D5E6F7", f"CP{i}", timeout=5) for i in range(20)]
            )
            assert all(a is not None and a.status == "Accepted" for a in many)
            assert not auth._pending  # every request cleaned up
            assert [r["charger_id"] for r in emsp.auth_requests[-20:]] == [f"CP{i}" for i in range(20)]

            bus.publish_presence("CP1", True)
            for status in ("Preparing", "Charging", "SuspendedEV"):  # coalesced: only the latest matters
                bus.publish_status(
                    ConnectorStatus("CP1", 1, status, "NoError", None, "2026-11-21T10:00:00Z", time.time())
                )
            await emsp.wait_for(
                lambda: emsp.gateway(GW).status.get(("CP1", 1), {}).get("status") == "SuspendedEV",
                5,
                "status",
            )
            # a consumer connecting later gets the retained state at once
            late = SimEmsp("127.0.0.1", broker.port, persistent=False, encoding=encoding)  # type: ignore[arg-type]
            late.start()
            await late.wait_for(
                lambda: (
                    late.gateway(GW).status.get(("CP1", 1), {}).get("status") == "SuspendedEV"
                    and (late.gateway(GW).presence or {}).get("online") is True
                    and late.gateway(GW).chargers.get("CP1", {}).get("online") is True
                ),
                5,
                "retained state",
            )

            broker.stop()
            for _ in range(500):
                if not uplink.authorizer.reachable():
                    break
                await asyncio.sleep(0.01)
            assert not auth.reachable()
            assert await auth.authorize("04A2B3C4D5E6F7", "CP1", timeout=5) is None  # at once, not after 5 s
            stats = await uplink.stats()
            assert stats["connected"] is False and stats["state"] in ("backoff", "connecting", "disconnected")
            # status while offline goes out after the reconnect
            bus.publish_status(ConnectorStatus("CP1", 2, "Faulted", "GroundFailure", None, None, time.time()))
            broker.start()
            await emsp.wait_for(
                lambda: emsp.gateway(GW).status.get(("CP1", 2), {}).get("error_code") == "GroundFailure",
                10,
                "status",
            )
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            if late is not None:
                await late.stop()
            await emsp.stop()
            store.close()
            broker.stop()

    asyncio.run(main())
