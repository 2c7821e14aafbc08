"""System tests: a real gateway process and real agents (agent.core over agent.port_cpython) on simulated hardware.

Each test drives one charger through a session the way the world would (EV plugs in, card taps, the EV leaves,
the power fails, the network drops) and then holds the gateway's SQLite record against the simulator's ground
truth: the Wh register of the SimHal meter. Every frame either side sends is checked against the official
OCPP 1.6 JSON schemas (firmware_sim/ocpp_check.py) through the port's on_frame hook.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from firmware_sim.ev import Ev, EvSpec
from firmware_sim.fleet import ChargerCreds, Fleet
from firmware_sim.netcut import NetLink
from firmware_sim.ocpp_check import FROM_GATEWAY, TO_GATEWAY, FrameChecker
from firmware_sim.scenarios import ConnectorCtx
from hil_tests.gateway_proc import ChargerSpec, GatewayProcess

TAG = "04A2B3C4D5E6F7"
# Simulated seconds per real second: 30 simulated minutes of charging take 3 s.
SPEED = 600.0
# How long the gateway may take to record what the agent sent (real seconds); only a broken system waits this long.
DB_TIMEOUT_S = 20.0
SPEC = EvSpec("test-11kW", capacity_kwh=50.0, max_ac_power_w=11000.0, phases=3)


class Harness:
    def __init__(self, gw: GatewayProcess, fleet: Fleet) -> None:
        self.gw = gw
        self.fleet = fleet
        self.checkers: dict[str, FrameChecker] = {}
        self.frames: list[tuple[str, str, str]] = []  # (charger, direction, text)

    def ctx(self, charger_id: str = "CP1", connector_id: int = 1) -> ConnectorCtx:
        # no deadline: the tests decide when a visit ends
        return ConnectorCtx(
            self.fleet,
            self.fleet.charger(charger_id),
            connector_id,
            time.monotonic() + 3600,
            random.Random(7),
            0,
        )

    async def wait_db(
        self,
        what: str,
        sql: str,
        params: tuple[Any, ...] = (),
        pred: Callable[[list[dict[str, Any]]], bool] = bool,
    ) -> list[dict[str, Any]]:
        end = time.monotonic() + DB_TIMEOUT_S
        while True:
            rows = self.gw.query(sql, params)
            if pred(rows):
                return rows
            if time.monotonic() >= end:
                raise AssertionError(
                    f"gateway DB: {what} not seen within {DB_TIMEOUT_S:.0f} s; last rows: {rows}\n{self.gw.output()}"
                )
            await asyncio.sleep(0.1)

    async def stopped_tx(self, tx_id: int) -> dict[str, Any]:
        rows = await self.wait_db(
            f"transaction {tx_id} stopped",
            "SELECT * FROM transactions WHERE id = ? AND state = 'stopped'",
            (tx_id,),
        )
        return rows[0]

    def actions(self, charger_id: str, direction: str = "tx") -> list[str]:
        out = []
        for cid, d, text in self.frames:
            msg = json.loads(text)
            if cid == charger_id and d == direction and msg[0] == 2:
                out.append(msg[2])
        return out


@asynccontextmanager
async def site(
    gw: GatewayProcess, chargers: list[ChargerCreds], sample_interval: int = 1
) -> AsyncIterator[Harness]:
    holder: list[Harness] = []

    def hook(charger_id: str) -> Callable[[str, str], None]:
        checker = FrameChecker()

        def on_frame(direction: str, text: str) -> None:
            checker.check(TO_GATEWAY if direction == "tx" else FROM_GATEWAY, text)
            holder[0].frames.append((charger_id, direction, text))

        holder_checkers[charger_id] = checker
        return on_frame

    holder_checkers: dict[str, FrameChecker] = {}
    fleet = Fleet(
        chargers,
        gw.ocpp_url,
        [TAG],
        speed=SPEED,
        control_socket=gw.control_socket,
        seed=1,
        check_frames=False,
        frame_hook_factory=hook,
    )
    h = Harness(gw, fleet)
    h.checkers = holder_checkers
    holder.append(h)
    await fleet.start()
    try:
        assert await fleet.wait_registered(30.0), fleet.problems.items
        await fleet.change_configuration("MeterValueSampleInterval", str(sample_interval))
        try:
            yield h
        except Exception as e:
            # the gateway's side of the story belongs in every failure message
            raise AssertionError(f"{type(e).__name__}: {e}\n{gw.output()}") from e
    finally:
        await fleet.close()
    problems = [p for c in h.checkers.values() for p in c.problems]
    assert not problems, "OCPP schema violations:\n" + "\n".join(problems)
    assert not fleet.problems.items, "fleet problems:\n" + "\n".join(fleet.problems.items)
    assert h.frames, "no frames traced"


def creds(gw: GatewayProcess, charger_id: str = "CP1", url: str | None = None) -> ChargerCreds:
    spec = gw.chargers[charger_id]
    return ChargerCreds(spec.id, spec.secret, spec.connectors, url)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_tx_matches_visit(rows: list[dict[str, Any]], visit: Any) -> None:
    """The transactions of one visit, together, account for exactly the energy the simulated meter delivered."""
    assert rows, "no transaction recorded"
    assert rows[0]["meter_start"] == visit.register_start
    assert rows[-1]["meter_stop"] == visit.register_end
    assert sum(r["energy_wh"] for r in rows) == visit.energy_wh
    for a, b in itertools.pairwise(rows):
        assert a["meter_stop"] <= b["meter_start"]


# -- tests ------------------------------------------------------------------------------------------------------
def test_arrive_tap_charge_leave_recorded_with_metered_energy(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx()
            # visit 1: plug in, tap, charge 30 simulated minutes, unplug
            await ctx.arrive_and_start(Ev(SPEC, soc=0.3, id_tag=TAG), "test")
            tx1 = ctx.tx()
            assert tx1 is not None and tx1 > 0
            assert ctx.status() == "Charging"
            await ctx.charge_for(30 * 60)
            await ctx.finish(stop_by_tap=False)
            v1 = h.fleet.visits[-1]
            row = await h.stopped_tx(tx1)
            assert (row["charger_id"], row["connector_id"], row["id_tag"]) == ("CP1", 1, TAG)
            assert row["stop_reason"] == "EVDisconnected"
            assert_tx_matches_visit([row], v1)
            assert v1.energy_wh > 3000  # 11 kW for half an hour
            # periodic samples of this transaction lie within its meter readings
            samples = h.gw.query(
                "SELECT value FROM meter_samples WHERE transaction_id = ? AND measurand = 'Energy.Active.Import.Register'",
                (tx1,),
            )
            values = [int(float(s["value"])) for s in samples]
            assert len(values) >= 2
            assert all(v1.register_start <= v <= v1.register_end for v in values)

            # visit 2: the driver taps again to stop before unplugging
            await asyncio.sleep(0.2)
            await ctx.arrive_and_start(Ev(SPEC, soc=0.5, id_tag=TAG), "test")
            tx2 = ctx.tx()
            assert tx2 is not None and tx2 > tx1
            await ctx.charge_for(10 * 60)
            await ctx.finish(stop_by_tap=True)
            row2 = await h.stopped_tx(tx2)
            assert row2["stop_reason"] == "Local"
            assert_tx_matches_visit([row2], h.fleet.visits[-1])
            await h.wait_db(
                "connector Available",
                "SELECT status FROM connector_status WHERE charger_id = 'CP1' AND connector_id = 1",
                pred=lambda rows: bool(rows) and rows[0]["status"] == "Available",
            )
            assert h.gw.query("SELECT COUNT(*) AS n FROM transactions WHERE state = 'active'")[0]["n"] == 0

    run(scenario())


def test_idle_after_full_is_suspended_ev_and_draws_nothing(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx()
            ev = Ev(SPEC, soc=0.90, target_soc=0.92, id_tag=TAG)
            await ctx.arrive_and_start(ev, "test")
            tx = ctx.tx()
            await ctx.wait_status("SuspendedEV", timeout=30)
            assert ev.full
            register_when_full = ctx.charger.hal.meter_wh(1)
            await ctx.charge_for(30 * 60)  # parked, full, for half an hour
            assert ctx.status() == "SuspendedEV"
            assert ctx.charger.hal.meter_wh(1) == register_when_full
            await ctx.finish(stop_by_tap=False)
            row = await h.stopped_tx(tx)
            assert_tx_matches_visit([row], h.fleet.visits[-1])
            assert row["meter_stop"] == register_when_full
            history = [
                r["status"]
                for r in h.gw.query(
                    "SELECT status FROM status_history WHERE charger_id = 'CP1' AND connector_id = 1 ORDER BY id"
                )
            ]
            assert "Charging" in history and "SuspendedEV" in history
            assert history.index("Charging") < history.index("SuspendedEV")

    run(scenario())


def test_remote_start_through_the_control_channel(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=2)], allow=[TAG])

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx(connector_id=2)
            ctx.arrive(Ev(SPEC, soc=0.4, id_tag=TAG), "test")
            await ctx.wait_status("Preparing")
            # `chargegate cmd` is a separate process; the agents must keep running meanwhile
            done = await asyncio.to_thread(h.gw.cmd, "CP1", "remote-start", TAG, "--connector", "2")
            assert done.returncode == 0, done.stderr + done.stdout
            assert "Accepted" in done.stdout
            await ctx.wait_status("Charging")
            await ctx.wait_for("transaction id", lambda: (ctx.tx() or 0) > 0)
            tx = ctx.tx()
            assert ctx.charger.status(1) == "Available"  # the other connector is untouched
            await ctx.charge_for(20 * 60)
            await ctx.finish(stop_by_tap=False)
            row = await h.stopped_tx(tx)
            assert (row["connector_id"], row["id_tag"]) == (2, TAG)
            assert_tx_matches_visit([row], h.fleet.visits[-1])
            assert "RemoteStartTransaction" in h.actions("CP1", "rx")

    run(scenario())


def test_power_cut_mid_session_closes_the_transaction_and_driver_restarts(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx()
            await ctx.arrive_and_start(Ev(SPEC, soc=0.3, id_tag=TAG), "test")
            tx1 = ctx.tx()
            await ctx.charge_for(15 * 60)
            lives = ctx.charger.lives
            ctx.charger.power_cut()
            register_at_cut = ctx.charger.hal.meter_wh(1)
            await ctx.wait_for(
                "charger back", lambda: ctx.charger.lives > lives and ctx.charger.registered(), 30
            )
            row1 = await h.stopped_tx(tx1)
            assert row1["stop_reason"] == "PowerLoss"
            assert row1["meter_stop"] == register_at_cut
            # nothing flows without a transaction: the EV waits, the driver taps again
            assert ctx.tx() is None
            await ctx.recover_after_reboot()
            tx2 = ctx.tx()
            assert tx2 is not None and tx2 > tx1
            await ctx.charge_for(15 * 60)
            await ctx.finish(stop_by_tap=False)
            row2 = await h.stopped_tx(tx2)
            assert_tx_matches_visit([row1, row2], h.fleet.visits[-1])
            assert row2["meter_start"] == register_at_cut
            boots = h.actions("CP1").count("BootNotification")
            assert boots == 2

    run(scenario())


def test_hard_reset_mid_session_stops_then_reboots(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx()
            await ctx.arrive_and_start(Ev(SPEC, soc=0.3, id_tag=TAG), "test")
            tx1 = ctx.tx()
            await ctx.charge_for(10 * 60)
            lives = ctx.charger.lives
            done = await asyncio.to_thread(h.gw.cmd, "CP1", "reset", "hard")
            assert done.returncode == 0, done.stderr + done.stdout
            await ctx.wait_for(
                "charger rebooted", lambda: ctx.charger.lives > lives and ctx.charger.registered(), 40
            )
            row1 = await h.stopped_tx(tx1)
            assert row1["stop_reason"] == "HardReset"
            await ctx.recover_after_reboot()
            tx2 = ctx.tx()
            assert tx2 is not None and tx2 > tx1
            await ctx.charge_for(10 * 60)
            await ctx.finish(stop_by_tap=False)
            row2 = await h.stopped_tx(tx2)
            assert_tx_matches_visit([row1, row2], h.fleet.visits[-1])

    run(scenario())


def test_whole_session_offline_is_delivered_in_order_on_reconnect(gateway_factory: Any) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def scenario() -> None:
        host, port = "127.0.0.1", gw.port
        link = await NetLink(host, port).start()
        try:
            url = f"ws://127.0.0.1:{link.port}/ocpp/CP1"
            async with site(gw, [creds(gw, url=url)]) as h:
                ctx = h.ctx()
                # online first: the card gets into the agent's authorization cache
                await ctx.arrive_and_start(Ev(SPEC, soc=0.3, id_tag=TAG), "online")
                await ctx.charge_for(5 * 60)
                await ctx.finish(stop_by_tap=False)
                online_tx = h.fleet.visits[-1]
                # cut only once the gateway has recorded everything: this test is about the offline session
                # (a cut while the gateway is still writing is a different test)
                await ctx.wait_for("queue empty", lambda: ctx.charger.queue_length() == 0)
                await h.wait_db(
                    "online session stopped, connector Available",
                    "SELECT (SELECT COUNT(*) FROM transactions WHERE state = 'stopped') AS n, "
                    "(SELECT status FROM connector_status WHERE charger_id = 'CP1' AND connector_id = 1) AS st",
                    pred=lambda rows: rows[0]["n"] == 1 and rows[0]["st"] == "Available",
                )
                assert online_tx.energy_wh > 0
                before = {r["id"] for r in h.gw.query("SELECT id FROM transactions")}

                link.cut()
                await h.wait_db(
                    "CP1 disconnected",
                    "SELECT connected FROM chargers WHERE id = 'CP1'",
                    pred=lambda rows: bool(rows) and rows[0]["connected"] == 0,
                )
                # the whole session happens offline
                ctx.arrive(Ev(SPEC, soc=0.4, id_tag=TAG), "offline")
                await ctx.wait_status("Preparing")
                ctx.tap()
                await ctx.wait_status("Charging")
                local = ctx.tx()
                assert local is not None and local < 0  # provisional id: the gateway has not answered
                await ctx.charge_for(20 * 60)  # 2 s real at sample interval 1 s: MeterValues queue up
                ctx.leave()
                await ctx.wait_status("Available")
                queued = ctx.charger.queue_length()
                assert queued is not None and queued >= 3  # Start, MeterValues..., Stop
                assert {r["id"] for r in h.gw.query("SELECT id FROM transactions")} == before
                n_frames = len(h.frames)

                link.restore()
                await ctx.wait_for("offline queue delivered", lambda: ctx.charger.queue_length() == 0, 60)
                rows = await h.wait_db(
                    "the offline transaction",
                    "SELECT * FROM transactions WHERE state = 'stopped' AND id > ?",
                    (max(before),),
                )
                assert len(rows) == 1
                row = rows[0]
                assert row["stop_reason"] == "EVDisconnected"
                assert_tx_matches_visit([row], h.fleet.visits[-1])
                samples = h.gw.query(
                    "SELECT COUNT(*) AS n FROM meter_samples WHERE transaction_id = ?", (row["id"],)
                )
                assert samples[0]["n"] >= 1
                # after reconnecting: BootNotification, then the queue strictly in order
                sent = [json.loads(t) for cid, d, t in h.frames[n_frames:] if d == "tx"]
                tx_msgs = [
                    m[2]
                    for m in sent
                    if m[0] == 2 and m[2] in ("StartTransaction", "MeterValues", "StopTransaction")
                ]
                assert tx_msgs[0] == "StartTransaction" and tx_msgs[-1] == "StopTransaction"
                assert set(tx_msgs[1:-1]) == {"MeterValues"}
                stop = next(m for m in sent if m[0] == 2 and m[2] == "StopTransaction")
                assert stop[3]["transactionId"] == row["id"]  # the provisional id was mapped to the real one
        finally:
            await link.close()

    run(scenario())
