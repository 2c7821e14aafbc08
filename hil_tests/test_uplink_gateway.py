"""The uplink wired into the real gateway (gateway.app.Gateway: OCPP server, store, CSMS) with real agents on
simulated hardware (firmware_sim.fleet) and a real mosquitto; the simulated eMSP sends a remote start and a remote
stop and receives the session it caused.

The gateway runs in this process as `chargegate run` builds it (gateway.app.Gateway with `[uplink] enabled`), so the
test pins the real wiring.
"""

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

TAG = "04A2B3C4D5E6F7"
ONLINE_TAG = "EMSP00000001"  # known only to the eMSP: authorized online through the uplink
SITE = "site-e2e"
PASSWORD = "uplink-e2e-charger-secret"
SPEED = 600.0  # simulated seconds per real second
SPEC = EvSpec("test-11kW", capacity_kwh=50.0, max_ac_power_w=11000.0, phases=3)


def test_remote_start_and_stop_from_the_emsp_run_a_real_session(tmp_path: Path) -> None:
    async def main() -> None:
        fleet: Fleet | None = None
        async with uplink_site(
            tmp_path, SITE, [("CP1", PASSWORD, 2)], allow=[TAG], emsp_tokens={ONLINE_TAG: "Accepted"}
        ) as site:
            gw, emsp = site.gw, site.emsp
            try:
                fleet = Fleet([ChargerCreds("CP1", PASSWORD, 2)], gw.server.url, [TAG], speed=SPEED, seed=1,
                              control_socket=str(gw.control.path))  # fmt: skip
                await fleet.start()
                assert await fleet.wait_registered(30.0), fleet.problems.items
                await fleet.change_configuration("MeterValueSampleInterval", "1")
                view = emsp.gateway(SITE)
                await emsp.wait_for(
                    lambda: view.chargers.get("CP1", {}).get("online") is True, 10, "charger online"
                )

                # unknown charger: a clear answer, nothing happens
                nope = await emsp.command(SITE, "remote_start", {"charger": "CP9", "id_tag": TAG})
                assert nope["error"]["code"] == "charger_not_connected"

                ctx = ConnectorCtx(
                    fleet, fleet.charger("CP1"), 2, time.monotonic() + 3600, random.Random(7), 0
                )
                ctx.arrive(Ev(SPEC, soc=0.4, id_tag=TAG), "test")
                await ctx.wait_status("Preparing")
                started = await emsp.command(
                    SITE, "remote_start", {"charger": "CP1", "id_tag": TAG, "connector": 2}
                )
                assert started["ok"] and started["result"]["response"] == {"status": "Accepted"}, started
                await ctx.wait_status("Charging")
                await ctx.wait_for("transaction id", lambda: (ctx.tx() or 0) > 0)
                tx = ctx.tx()
                assert tx is not None
                await emsp.wait_for(
                    lambda: view.status.get(("CP1", 2), {}).get("status") == "Charging",
                    10,
                    "retained Charging status",
                )
                await ctx.charge_for(20 * 60)

                stopped = await emsp.command(SITE, "remote_stop", {"charger": "CP1", "transaction_id": tx})
                assert stopped["ok"] and stopped["result"]["response"] == {"status": "Accepted"}, stopped
                await ctx.wait_for("transaction stopped", lambda: ctx.tx() is None)
                await emsp.wait_for(lambda: tx in view.sessions, 20, "session record")
                record: dict[str, Any] = view.sessions[tx]
                ctx.leave()
                await ctx.wait_status("Available")

                # the session the eMSP received is the one the simulated meter measured
                visit = fleet.visits[-1] if fleet.visits else None
                row = gw.store.read(
                    lambda c: dict(c.execute("SELECT * FROM transactions WHERE id = ?", (tx,)).fetchone())
                )
                assert record["complete"] is True and record["stop_reason"] == "Remote"
                assert record["charger_id"] == "CP1" and record["connector_id"] == 2
                assert record["cdr_token"]["uid"] == TAG
                assert (
                    record["meter_start_wh"] == row["meter_start"]
                    and record["meter_stop_wh"] == row["meter_stop"]
                )
                assert (
                    record["total_energy_wh"] == row["meter_stop"] - row["meter_start"] > 1000
                )  # ~11 kW, 20 min
                if visit is not None and visit.register_end is not None:
                    # the simulated meter's ground truth (it may tick on between the remote stop and the unplug)
                    assert (
                        visit.register_start
                        <= record["meter_start_wh"]
                        < record["meter_stop_wh"]
                        <= visit.register_end
                    )
                assert sum(d["volume"] for p in record["charging_periods"] for d in p["dimensions"]
                           if d["type"] == "ENERGY") == pytest.approx(record["total_energy"], abs=0.002)  # fmt: skip
                # the ordered stream: started, readings, stopped, record for this transaction, no gaps
                kinds = [e["kind"] for s, e in sorted(view.events.items())
                         if (e["body"].get("tx") or e["body"].get("transaction_id")) == tx
                         and e["kind"] != "auth.decision"]  # fmt: skip
                assert kinds[0] == "session.started" and kinds[-2:] == [
                    "session.stopped",
                    "session.record",
                ], kinds
                readings = [e["body"] for e in view.events.values() if e["kind"] == "meter.reading"]
                assert readings and all(
                    b["transaction_id"] == tx and b["connector_id"] == 2 for b in readings
                )
                seqs = sorted(view.events)
                assert seqs == list(range(seqs[0], seqs[-1] + 1)) and view.out_of_order == 0
                assert any(r.get("op") == "remote_start" for r in emsp.results.values())
                stats = await site.uplink.stats()
                assert stats["connected"] and stats["commands_handled"] >= 3

                # token lists land in the real token store and are acknowledged with the version applied
                full = await emsp.send_token_list(
                    SITE, "full", 7, [{"id": "LISTED000001", "status": "Accepted"}]
                )
                assert full["ok"] and full["result"]["version_applied"] == 7, full
                stale = await emsp.send_token_list(SITE, "differential", 9, [], base_version=8)
                assert stale["ok"] is False and stale["error"]["code"] == "token_list_refused", stale

                # a card only the eMSP knows: the gateway asks online and the session starts
                ctx1 = ConnectorCtx(
                    fleet, fleet.charger("CP1"), 1, time.monotonic() + 3600, random.Random(8), 1
                )
                ctx1.arrive(Ev(SPEC, soc=0.5, id_tag=ONLINE_TAG), "test")
                await ctx1.start()
                await ctx1.wait_status("Charging")
                assert any(r.get("token") == ONLINE_TAG for r in emsp.auth_requests)
                await ctx1.finish(stop_by_tap=False)
            finally:
                if fleet is not None:
                    await fleet.close()

    asyncio.run(main())
