"""The registration gate (OCPP 1.6 §4.2) against a real gateway process: raw charge points over real websockets,
every frame schema-checked, the outcome read from the gateway's SQLite store; and a real agent that is answered
Pending (docs/ocpp.md has the rules)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agent.core import ChargePointCore
from firmware_sim.ev import Ev
from hil_tests.gateway_proc import DEFAULT_TAG, ChargerSpec, GatewayFactory, GatewayProcess
from hil_tests.rawclient import OcppCallError, RawChargePoint, assert_clean, meter_values, now_iso, run_async
from hil_tests.test_fleet_sessions import SPEC, assert_tx_matches_visit, creds, site

TAG = DEFAULT_TAG
REFUSAL = "SecurityError"
# 1 s is the shortest Pending retry interval the config takes; a raw charger waits it (plus a margin for the
# gateway's 0.9 tolerance) before it boots again, as a real one would.
RETRY_S = 1
RETRY_WAIT_S = RETRY_S + 0.2
# How long a test waits for a CALL the gateway sends on its own (TriggerMessage) -- and, to show that one does
# NOT come, how long it waits before concluding so.
GATEWAY_CALL_TIMEOUT_S = 10.0
NO_CALL_WAIT_S = 0.5


def _cp(gw: GatewayProcess, cp_id: str = "CP1") -> RawChargePoint:
    return RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id))


def start_payload(connector: int = 1, meter_start: int = 1000, ts: str = "2026-11-21T10:00:00.000Z") -> Any:
    return {"connectorId": connector, "idTag": TAG, "meterStart": meter_start, "timestamp": ts}


async def refused(cp: RawChargePoint, action: str, payload: dict[str, Any]) -> str:
    """The CALL gets exactly a CALLERROR SecurityError; returns its description."""
    with pytest.raises(OcppCallError) as e:
        await cp.call(action, payload)
    assert e.value.code == REFUSAL, e.value
    return e.value.description


def recorded(gw: GatewayProcess, charger: str) -> dict[str, int]:
    """What the gateway stored for a charger beyond its connection and boot records."""
    q = {
        "transactions": "SELECT COUNT(*) AS n FROM transactions WHERE charger_id = ?",
        "samples": "SELECT COUNT(*) AS n FROM meter_samples WHERE charger_id = ?",
        "status": "SELECT COUNT(*) AS n FROM connector_status WHERE charger_id = ?",
        "events": "SELECT COUNT(*) AS n FROM outbox WHERE charger_id = ? "
        "AND kind NOT IN ('charger.connection', 'charger.boot')",
        "auth": "SELECT COUNT(*) AS n FROM auth_decisions WHERE charger_id = ?",
    }
    return {k: int(gw.query(sql, (charger,))[0]["n"]) for k, sql in q.items()}


NOTHING = {"transactions": 0, "samples": 0, "status": 0, "events": 0, "auth": 0}


def refusals(gw: GatewayProcess) -> dict[str, Any]:
    answer = gw.control({"op": "status"})
    assert answer["ok"], answer
    ocpp: dict[str, Any] = answer["result"]["ocpp"]
    return ocpp


async def no_gateway_call(cp: RawChargePoint) -> None:
    with pytest.raises(TimeoutError):
        await cp.next_gateway_call(timeout=NO_CALL_WAIT_S)


# -- raw charge points ------------------------------------------------------------------------------------------
def test_pending_charger_is_refused_then_the_same_start_is_accepted(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ocpp={"boot_status": "Pending", "pending_retry_interval": RETRY_S})

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Pending"
            description = await refused(cp, "StartTransaction", start_payload())
            assert "Pending" in description and "BootNotification" in description
            await refused(cp, "MeterValues", meter_values(1, 1, 1500))
            await refused(
                cp, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
            )
            await refused(cp, "Authorize", {"idTag": TAG})
            await refused(cp, "Heartbeat", {})
            await refused(
                cp, "StopTransaction", {"transactionId": 1, "meterStop": 2000, "timestamp": now_iso()}
            )
            assert recorded(gw, "CP1") == NOTHING
            stats = refusals(gw)
            assert stats["refused_unregistered"] == 6 and stats["refused_unregistered_by_charger"] == {
                "CP1": 6
            }
            # it booted on this connection: the gateway has no reason to ask it to boot
            await no_gateway_call(cp)
            assert cp.is_open

            await asyncio.sleep(RETRY_WAIT_S)  # the charger waits the interval, boots again
            assert (await cp.boot())["status"] == "Accepted"
            # its queued StartTransaction, retried: now accepted and recorded
            answer = await cp.call("StartTransaction", start_payload())
            assert answer["idTagInfo"]["status"] == "Accepted"
            assert await cp.call("MeterValues", meter_values(1, answer["transactionId"], 1500)) == {}
            assert refusals(gw)["refused_unregistered"] == 6
            [row] = gw.query("SELECT id, meter_start, state FROM transactions WHERE charger_id = 'CP1'")
            assert (row["id"], row["meter_start"], row["state"]) == (answer["transactionId"], 1000, "active")
        assert_clean(cp)

    run_async(body())


def test_rejected_charger_is_refused_and_stays_connected(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", boot_status="Rejected")])

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Rejected"
            assert "Rejected" in await refused(cp, "StartTransaction", start_payload())
            await refused(cp, "Heartbeat", {})
            await refused(cp, "DataTransfer", {"vendorId": "acme"})
            assert cp.is_open
            assert (await cp.boot())["status"] == "Rejected"  # still answered: the connection is up
            await no_gateway_call(cp)
        assert_clean(cp)

    run_async(body())
    assert recorded(gw, "CP1") == NOTHING
    [row] = gw.query("SELECT boot_status FROM chargers WHERE id = 'CP1'")
    assert row["boot_status"] == "Rejected"


def test_reconnect_without_boot_after_accepted_keeps_working(gateway_factory: GatewayFactory) -> None:
    """A network cut, no reboot: the charger reconnects and goes on with its queue without a BootNotification --
    also across a gateway restart, and even when the config now says Pending (the stored answer decides)."""
    gw = gateway_factory()

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Accepted"
        async with _cp(gw) as cp:  # reconnect, no BootNotification
            tx = (await cp.call("StartTransaction", start_payload()))["transactionId"]
            assert await cp.call("MeterValues", meter_values(1, tx, 1500)) == {}
            await no_gateway_call(cp)
        gw.kill()
        gw.write_config(boot_status="Pending")
        gw.start()
        async with _cp(gw) as cp:
            assert await cp.call("MeterValues", meter_values(1, tx, 1800)) == {}
            stop = {"transactionId": tx, "meterStop": 2000, "timestamp": now_iso(), "reason": "Local"}
            assert await cp.call("StopTransaction", stop) == {}
            assert refusals(gw)["refused_unregistered"] == 0
            await no_gateway_call(cp)
        assert_clean(cp)
        [row] = gw.query("SELECT state, energy_wh FROM transactions WHERE id = ?", (tx,))
        assert (row["state"], row["energy_wh"]) == ("stopped", 1000)
        assert len(gw.query("SELECT id FROM meter_samples WHERE transaction_id = ?", (tx,))) == 2

    run_async(body())


def test_never_booted_charger_lenient_when_accepted_by_config_strict_otherwise(
    gateway_factory: GatewayFactory,
) -> None:
    """No BootNotification ever (a replaced gateway, a wiped data directory): CP1 would be Accepted by its boot,
    so its queued messages are taken; CP2's boot would be Pending, so it is refused and asked to boot (once), and
    its retried StartTransaction gets through after the registration."""
    gw = gateway_factory(
        ocpp={"pending_retry_interval": RETRY_S},
        chargers=[ChargerSpec("CP1"), ChargerSpec("CP2", boot_status="Pending")],
    )

    async def body() -> None:
        async with _cp(gw, "CP1") as cp1, _cp(gw, "CP2") as cp2:
            assert (await cp1.call("StartTransaction", start_payload()))["idTagInfo"]["status"] == "Accepted"
            assert "never booted" in await refused(cp2, "StartTransaction", start_payload())
            action, payload = await cp2.next_gateway_call(timeout=GATEWAY_CALL_TIMEOUT_S)
            assert (action, payload) == ("TriggerMessage", {"requestedMessage": "BootNotification"})
            await refused(cp2, "StartTransaction", start_payload())  # a retry before it booted
            await no_gateway_call(cp2)  # asked once per connection
            assert recorded(gw, "CP2") == NOTHING
            # the triggered boot, then the retry interval
            assert (await cp2.boot())["status"] == "Pending"
            await refused(cp2, "StartTransaction", start_payload())
            await asyncio.sleep(RETRY_WAIT_S)
            assert (await cp2.boot())["status"] == "Accepted"
            assert (await cp2.call("StartTransaction", start_payload()))["idTagInfo"]["status"] == "Accepted"
            await no_gateway_call(cp1)
            assert refusals(gw)["refused_unregistered_by_charger"] == {"CP2": 3}
        assert_clean(cp1, cp2)
        assert [r["charger_id"] for r in gw.query("SELECT charger_id FROM transactions ORDER BY id")] == [
            "CP1",
            "CP2",
        ]

    run_async(body())


def test_stored_pending_reconnect_without_boot_is_refused_and_asked_to_boot(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(ocpp={"boot_status": "Pending", "pending_retry_interval": 60})

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Pending"
        async with _cp(gw) as cp:  # reconnect, no BootNotification: the stored Pending applies
            assert "no BootNotification on this connection" in await refused(cp, "Heartbeat", {})
            action, payload = await cp.next_gateway_call(timeout=GATEWAY_CALL_TIMEOUT_S)
            assert (action, payload) == ("TriggerMessage", {"requestedMessage": "BootNotification"})
            assert (await cp.boot())["status"] == "Pending"  # a new connection starts its Pending anew
        assert_clean(cp)

    run_async(body())
    assert recorded(gw, "CP1") == NOTHING


def test_a_message_the_gateway_triggers_while_pending_is_taken_once(gateway_factory: GatewayFactory) -> None:
    """1.6 §4.2: while Pending the Central System may retrieve information; the triggered message is its answer."""
    gw = gateway_factory(ocpp={"boot_status": "Pending", "pending_retry_interval": 60})

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Pending"
            done = await asyncio.to_thread(gw.cmd, "CP1", "trigger", "StatusNotification", "--connector", "1")
            assert done.returncode == 0 and "Accepted" in done.stdout, done.stderr + done.stdout
            assert await cp.status(1, "Available") == {}  # what was asked for
            await refused(
                cp, "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
            )
        assert_clean(cp)

    run_async(body())
    assert gw.query("SELECT status FROM connector_status WHERE charger_id = 'CP1'") == [
        {"status": "Available"}
    ]
    assert refusals(gw)["refused_unregistered"] == 1


# -- a real agent -----------------------------------------------------------------------------------------------
def test_agent_answered_pending_keeps_its_session_and_delivers_it_once_accepted(
    gateway_factory: GatewayFactory,
) -> None:
    """The agent (agent/core.py) sends nothing but BootNotification until it is Accepted: a session it runs while
    Pending waits in its persisted queue and arrives complete once the gateway accepts it. The gateway is
    restarted with `boot_status = "Pending"` (retry interval long enough that it cannot accept during the
    session), then with Accepted."""
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)], allow=[TAG])

    async def restart(**ocpp: Any) -> None:
        await asyncio.to_thread(gw.kill)
        gw.write_config(**ocpp)
        await asyncio.to_thread(gw.start)

    async def scenario() -> None:
        async with site(gw, [creds(gw)]) as h:
            ctx = h.ctx()

            def core() -> ChargePointCore:
                """The agent core of the charger's current life."""
                got = ctx.charger.core
                assert got is not None, "the charger is between lives"
                return got

            # online first: the card gets into the agent's authorization cache
            await ctx.arrive_and_start(Ev(SPEC, soc=0.3, id_tag=TAG), "online")
            await ctx.charge_for(5 * 60)
            await ctx.finish(stop_by_tap=False)
            await ctx.wait_for("queue empty", lambda: ctx.charger.queue_length() == 0)
            await h.wait_db(
                "online session stopped",
                "SELECT COUNT(*) AS n FROM transactions WHERE state = 'stopped'",
                pred=lambda rows: rows[0]["n"] == 1,
            )
            before = {r["id"] for r in gw.query("SELECT id FROM transactions")}

            n_frames = len(h.frames)
            await restart(boot_status="Pending", pending_retry_interval=3600)
            await ctx.wait_for(
                "answered Pending",
                lambda: ctx.charger.core is not None and ctx.charger.core.registration_status == "Pending",
            )
            ctx.arrive(Ev(SPEC, soc=0.4, id_tag=TAG), "pending")
            await ctx.wait_status("Preparing")
            ctx.tap()
            await ctx.wait_status("Charging")
            await ctx.charge_for(10 * 60)
            ctx.leave()
            await ctx.wait_status("Available")
            queued = [e["action"] for e in core().queue.entries]
            assert queued[0] == "StartTransaction" and queued[-1] == "StopTransaction", queued
            assert {r["id"] for r in gw.query("SELECT id FROM transactions")} == before
            assert core().registration_status == "Pending"
            stats = refusals(gw)
            assert stats["refused_unregistered"] == 0, stats  # it never tried: nothing for the gate to refuse

            await restart(boot_status="Accepted")
            await ctx.wait_for("queue delivered", lambda: ctx.charger.queue_length() == 0, 60)
            rows = await h.wait_db(
                "the session run while Pending",
                "SELECT * FROM transactions WHERE state = 'stopped' AND id > ?",
                (max(before),),
            )
            assert len(rows) == 1
            assert_tx_matches_visit(rows, h.fleet.visits[-1])
            assert refusals(gw)["refused_unregistered"] == 0

            # on the wire: after the restart nothing but BootNotification until a BootNotification was Accepted
            calls: dict[str, str] = {}
            registration = None
            early = []
            boots = {"Pending": 0, "Accepted": 0}
            for _cid, direction, text in h.frames[n_frames:]:
                msg = json.loads(text)
                if direction == "tx" and msg[0] == 2:
                    calls[msg[1]] = msg[2]
                    if registration != "Accepted" and msg[2] != "BootNotification":
                        early.append(msg[2])
                elif direction == "rx" and msg[0] == 3 and calls.get(msg[1]) == "BootNotification":
                    registration = msg[2]["status"]
                    boots[registration] += 1
            assert not early, early
            assert boots["Pending"] >= 1 and boots["Accepted"] == 1, boots

    asyncio.run(scenario())
