"""Reservations end to end: the simulated eMSP reserves a connector through a real mosquitto, the gateway
(gateway.app.Gateway as `chargegate run` builds it, OCPP over real loopback websockets) sends ReserveNow to a
charger running the real agent (firmware_sim.fleet); another card is refused at the reserved connector, the reserved
card starts a transaction that carries the reservation id (transaction row, session.started, session record), and a
second reservation expires on the charger's clock and the connector reports Available again."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.uplink  # noqa: F401 - registers [uplink] before the config is loaded
from firmware_sim.ev import Ev, EvSpec
from firmware_sim.fleet import ChargerCreds, Fleet
from firmware_sim.scenarios import ConnectorCtx
from hil_tests.uplink_site import uplink_site

try:
    from hil_tests.mosquitto import mosquitto_binary
except ImportError:
    from mosquitto import mosquitto_binary  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")

TAG = "04A2B3C4D5E6F7"  # the reserved card
OTHER = "04FFEEDDCCBBAA"  # accepted by the gateway, but not the reserved card
SITE = "site-resv"
PASSWORD = "reservation-e2e-secret"
# Real time: the agent's clock follows the gateway's (BootNotification/Heartbeat currentTime), so a reservation's
# expiry means the same instant on both sides.
SPEED = 1.0
SPEC = EvSpec("test-11kW", capacity_kwh=50.0, max_ac_power_w=11000.0, phases=3)


def test_reserve_refuse_other_card_start_with_reservation_then_expire(tmp_path: Path) -> None:
    async def main() -> None:
        fleet: Fleet | None = None
        async with uplink_site(tmp_path, SITE, [("CP1", PASSWORD, 1)], allow=[TAG, OTHER]) as site:
            gw, emsp = site.gw, site.emsp
            try:
                fleet = Fleet([ChargerCreds("CP1", PASSWORD, 1)], gw.server.url, [TAG, OTHER], speed=SPEED, seed=3,
                              control_socket=str(gw.control.path))  # fmt: skip
                await fleet.start()
                assert await fleet.wait_registered(30.0), fleet.problems.items
                view = emsp.gateway(SITE)
                await emsp.wait_for(
                    lambda: view.chargers.get("CP1", {}).get("online") is True, 10, "charger online"
                )
                charger = fleet.charger("CP1")

                def status() -> Any:
                    return view.status.get(("CP1", 1), {}).get("status")

                # invalid args: a clear answer, nothing sent
                bad = await emsp.command(
                    SITE, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": TAG, "expiry": 10**6}
                )
                assert bad["error"]["code"] == "invalid_args"
                assert charger.core is not None and charger.core.connectors[0].reservation is None

                res = await emsp.command(
                    SITE, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": TAG, "expiry": 3600}
                )
                assert res["ok"] and res["result"]["response"] == {"status": "Accepted"}, res
                rid = res["result"]["reservation_id"]
                assert isinstance(rid, int) and rid > 0
                await emsp.wait_for(lambda: status() == "Reserved", 10, "connector Reserved")
                second = await emsp.command(
                    SITE, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": OTHER, "expiry": 600}
                )
                assert second["result"]["response"] == {"status": "Occupied"}, second

                # another card at the reserved connector: refused by the charger, no transaction
                ctx = ConnectorCtx(fleet, charger, 1, time.monotonic() + 3600, random.Random(1), 0)
                ctx.arrive(Ev(SPEC, soc=0.4, id_tag=OTHER), "test")
                charger.hal.tap(OTHER)
                await asyncio.sleep(1.5)
                assert ctx.tx() is None and charger.status(1) == "Reserved"
                assert (
                    gw.store.read(lambda c: c.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]) == 0
                )

                # the reserved card starts; the transaction carries the reservation id
                charger.hal.tap(TAG)
                await ctx.wait_for("transaction id", lambda: (ctx.tx() or 0) > 0)
                tx = ctx.tx()
                row = gw.store.read(
                    lambda c: dict(c.execute("SELECT id_tag, reservation_id FROM transactions").fetchone())
                )
                assert row == {"id_tag": TAG, "reservation_id": rid}

                def started() -> list[dict[str, Any]]:
                    return [e["body"] for e in view.events.values() if e["kind"] == "session.started"]

                await emsp.wait_for(lambda: len(started()) == 1, 10, "session.started")
                assert started()[0]["reservation_id"] == rid and started()[0]["tx"] == tx
                stopped = await emsp.command(SITE, "remote_stop", {"charger": "CP1", "transaction_id": tx})
                assert stopped["ok"], stopped
                await emsp.wait_for(lambda: tx in view.sessions, 20, "session record")
                assert view.sessions[tx]["reservation_id"] == rid
                ctx.leave()
                await emsp.wait_for(lambda: status() == "Available", 20, "Available after the session")

                # a second reservation (the gateway allocates a new id) expires on the charger: Available again
                short = await emsp.command(
                    SITE, "reserve_now", {"charger": "CP1", "connector": 1, "id_tag": TAG, "expiry": 3}
                )
                assert short["result"]["response"] == {"status": "Accepted"}, short
                assert short["result"]["reservation_id"] not in (rid, None)
                await emsp.wait_for(lambda: status() == "Reserved", 10, "Reserved again")
                await emsp.wait_for(lambda: status() == "Available", 20, "Available after the expiry")
                gone = await emsp.command(
                    SITE,
                    "cancel_reservation",
                    {"charger": "CP1", "reservation_id": short["result"]["reservation_id"]},
                )
                assert gone["result"]["response"] == {"status": "Rejected"}, gone
                assert not fleet.problems.items, fleet.problems.items
            finally:
                if fleet is not None:
                    await fleet.close()

    asyncio.run(main())
