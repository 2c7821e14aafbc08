"""Issue #5: the gateway is killed (SIGKILL) mid-session; the chargers fall back to their default profile current.

Everything is real except the EVs and the meters' physics: the gateway is a separate `chargegate run` process
(hil_tests.gateway_proc.GatewayProcess) with `[load] enabled`; its MeterHub opens the slave side of a pty pair as
its RS-485 port, served from this test process by the simulated Modbus RTU slave (firmware_sim.modbus_meter, wire
timing emulated) with a grid meter and one meter per charger whose values follow the chargers' actual draw; four
real agents (firmware_sim.fleet: the agent core a device runs, over real websockets) charge simulated EVs that want
32 A each.

Site: 48 A per phase, building base load 5 A, safe current 6 A (4 x 6 A + building reserve 16 A = 40 A <= 48 A, so
the fail-safe is valid). The metered fair share is (48 - 1 margin - 5) / 4 = 10.5 A per session (7.7 A on the static
split), so every session runs clearly above the safe current before the kill.

1. Sessions run under the allocation: every charger offers more than the safe current.
2. SIGKILL: no renewals any more. Within `profile_lease_s` + FALLBACK_SLACK_S every charger offers exactly its
   TxDefaultProfile current (6 A) and keeps charging (the transaction is not stopped); the site total (ground
   truth from the simulation, not the meters) never exceeds the site limit while the gateway is gone, and once all
   have fallen back stays within 4 x 6 A + the building load.
3. Restart (`gw.start()`, same port, config and data dir): the load manager re-registers the transactions the
   killed process left active, the agents reconnect (their own backoff) and every charger gets a session limit
   above the safe current again, for the same transaction ids.

Bounds are deadlines of polling loops (the conditions are checked, the time it took is only printed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.smartcharging import STORAGE_NAME as AGENT_PROFILE_STORAGE
from firmware_sim.ev import MODELS, Ev
from firmware_sim.fleet import ChargerCreds, Fleet
from firmware_sim.modbus_meter import PtyMeterBus, SimMeter
from gateway.meters.catalog import load_catalog
from hil_tests.gateway_proc import ChargerSpec, GatewayFactory, GatewayProcess

Phases = tuple[float, float, float]

IDS = [f"CP{i}" for i in range(1, 5)]
TAGS = [f"FS{i:04d}" for i in range(1, 5)]
PASSWORD = "failsafe-test-password-01"
LIMIT = 48.0  # site limit per phase (A)
SAFE = 6.0  # safe_current_a: the TxDefaultProfile every charger gets at boot
BUILDING_A = 5.0  # the building's own load on every phase (A)
BUILDING_RESERVE = 16.0  # assumed building load while the grid meter is stale
LEASE = 10  # profile_lease_s: the shortest the config allows, so the test stays short
EV22 = next(m for m in MODELS if m.name == "suv-22kW")  # three-phase, accepts 32 A
# EV power is whole watts at 230 V x 3 phases: currents computed back from it are off by a few mA; and a charger's
# sample can straddle an offered-current change by one tick. Tolerance on every current sum.
AMPS_TOLERANCE = 0.5

# Deadlines (polling; generous because the box is shared by several test runs on 2 cores):
# agents connect and get BootNotification Accepted
REGISTER_TIMEOUT_S = 20.0
# the boot hook's TxDefaultProfile reaches every agent
DEFAULT_PROFILE_TIMEOUT_S = 10.0
# Authorize + StartTransaction on all four
SESSIONS_TIMEOUT_S = 20.0
# first allocation round with fresh meters + min_change_interval_s; the static split alone already gives 7.7 A
ALLOCATION_TIMEOUT_S = 15.0
# after the lease ends the agent evaluates its profiles on its next tick (0.1 s); the lease may have been renewed
# just before the kill, and startSchedule is truncated to whole seconds: slack for a loaded box
FALLBACK_SLACK_S = 8.0
# how long the fallen-back site is sampled before the restart (at least a few meter polls)
HOLD_FALLEN_BACK_S = 1.5
# restart: process start (imports, migrations), agents' reconnect backoff (0.5 s doubling to 30 s, jittered:
# after ~12 s of refused connections the next try is at most ~16 s away), BootNotification, then an allocation
# round; generous
RECOVERY_TIMEOUT_S = 40.0
SAMPLE_S = 0.1


def _extra_toml(port: str) -> str:
    sdm = "eastron-sdm630-v2"
    lines = [
        "[[buses]]",
        'id = "rs485"',
        f"port = {json.dumps(port)}",
        "baudrate = 115200",
        "response_timeout = 0.1",
        "poll_interval = 0.25",
        "stale_after = 1.5",
        "backoff_min = 1.0",
        "backoff_max = 2.0",
        "",
        "[[meters]]",
        'id = "grid"',
        'role = "grid"',
        'bus = "rs485"',
        "unit_id = 1",
        f"model = {json.dumps(sdm)}",
    ]
    for i, cid in enumerate(IDS):
        lines += [
            "",
            "[[meters]]",
            f"id = {json.dumps('m' + cid)}",
            'role = "charger"',
            f"charger_id = {json.dumps(cid)}",
            'bus = "rs485"',
            f"unit_id = {i + 2}",
            f"model = {json.dumps(sdm)}",
        ]
    lines += [
        "",
        "[load]",
        "enabled = true",
        f"site_limit_a = {LIMIT}",
        f"safe_current_a = {SAFE}",
        f"building_reserve_a = {BUILDING_RESERVE}",
        "min_change_interval_s = 2.0",
        "control_interval_s = 0.5",
        f"profile_lease_s = {LEASE}",
        "building_load_hold_s = 1.0",
    ]
    return "\n".join(lines) + "\n"


class Site:
    """Ground truth from the simulation: what each charger draws right now, and the grid total."""

    def __init__(self) -> None:
        self.fleet: Fleet | None = None

    def charger(self, cid: str) -> Phases:
        # Read-only on purpose: this runs on the pty thread, and the agents' ticks (every 0.1 s) keep the
        # connector's present power up to date; integrating the physics from here would race with them.
        fleet = self.fleet
        if fleet is None:
            return (0.0, 0.0, 0.0)
        c = fleet.charger(cid).hal.connector(1)
        ev = c.ev
        phases = ev.spec.phases if ev is not None else 3
        i = c.power_w / (c.voltage * phases)
        return (i, i if phases > 1 else 0.0, i if phases > 2 else 0.0)

    def grid(self) -> Phases:
        tot = [BUILDING_A] * 3
        for cid in IDS:
            for k, a in enumerate(self.charger(cid)):
                tot[k] += a
        return (tot[0], tot[1], tot[2])

    def offered(self) -> dict[str, float]:
        assert self.fleet is not None
        return {cid: self.fleet.charger(cid).hal.connector(1).offered_amps for cid in IDS}

    def drawing(self) -> dict[str, float]:
        return {cid: max(self.charger(cid)) for cid in IDS}


async def _poll(cond: Callable[[], bool], timeout: float, interval: float = SAMPLE_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(interval)
    return bool(cond())


async def _control(gw: GatewayProcess, op: str) -> dict[str, Any]:
    answer = await asyncio.to_thread(gw.control, {"op": op})
    assert answer.get("ok"), answer
    result: dict[str, Any] = answer["result"]
    return result


def test_gateway_sigkill_chargers_fall_back_to_default_profile_then_recover(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    sdm = load_catalog()["eastron-sdm630-v2"]
    site = Site()

    def meter_of(cid: str) -> Callable[[], Phases]:
        return lambda: site.charger(cid)

    sims = [SimMeter(1, sdm, site.grid)] + [SimMeter(i + 2, sdm, meter_of(cid)) for i, cid in enumerate(IDS)]

    with PtyMeterBus(sims, line_baud=115200) as pty:
        gw = gateway_factory(
            start=False,
            chargers=[ChargerSpec(cid, password=PASSWORD, connectors=1) for cid in IDS],
            allow=TAGS,
            extra_toml=_extra_toml(pty.port),
        )

        async def scenario() -> dict[str, Any]:
            r: dict[str, Any] = {}
            await asyncio.to_thread(gw.start)
            fleet = Fleet(
                [ChargerCreds(cid, PASSWORD) for cid in IDS],
                gw.ocpp_url,
                TAGS,
                speed=1.0,
                state_dir=tmp_path / "fleet",
            )
            site.fleet = fleet
            samples: list[tuple[float, float]] = []  # (monotonic, max-phase site total)

            async def sample() -> None:
                while True:
                    samples.append((time.monotonic(), max(site.grid())))
                    await asyncio.sleep(SAMPLE_S)

            sampler: asyncio.Task[None] | None = None
            try:
                await fleet.start()
                assert await fleet.wait_registered(REGISTER_TIMEOUT_S), fleet.problems.items
                r["default_profiles"] = await _poll(
                    lambda: all(
                        b"TxDefaultProfile"
                        in (fleet.charger(cid).hal.storage_read(AGENT_PROFILE_STORAGE) or b"")
                        for cid in IDS
                    ),
                    DEFAULT_PROFILE_TIMEOUT_S,
                )
                assert r["default_profiles"], "the boot hook's TxDefaultProfile did not reach every charger"
                for cid, tag in zip(IDS, TAGS, strict=True):
                    hal = fleet.charger(cid).hal
                    hal.plug_in(1, Ev(EV22, soc=0.2, id_tag=tag))
                    hal.tap(tag)
                assert await _poll(
                    # the gateway's id, not the agent's provisional negative one before StartTransaction.conf
                    lambda: all((fleet.charger(cid).transaction_id(1) or 0) > 0 for cid in IDS),
                    SESSIONS_TIMEOUT_S,
                ), {cid: fleet.charger(cid).status(1) for cid in IDS}
                r["tx_ids"] = {cid: fleet.charger(cid).transaction_id(1) for cid in IDS}
                sampler = asyncio.create_task(sample())

                # 1. under the allocation: every charger above the safe current (and the fair share is reached)
                allocated = await _poll(
                    lambda: all(v > SAFE for v in site.offered().values()), ALLOCATION_TIMEOUT_S
                )
                r["allocated_offered"] = site.offered()
                assert allocated, r["allocated_offered"]
                r["status_before_kill"] = await _control(gw, "load.status")
                # let the limits settle and at least one lease renewal (every LEASE / 3 s) go out
                await asyncio.sleep(LEASE / 3 + 1.0)
                r["offered_before_kill"] = site.offered()
                r["drawing_before_kill"] = site.drawing()

                # 2. SIGKILL
                t_kill = time.monotonic()
                await asyncio.to_thread(gw.kill)
                r["kill_returncode"] = gw.proc.returncode if gw.proc is not None else None
                fell_back = await _poll(
                    lambda: all(v == SAFE for v in site.offered().values()), LEASE + FALLBACK_SLACK_S
                )
                t_fallback = time.monotonic()
                r["fallback_after_s"] = t_fallback - t_kill
                r["offered_after_kill"] = site.offered()
                assert fell_back, r["offered_after_kill"]
                await asyncio.sleep(HOLD_FALLEN_BACK_S)
                t_restart = time.monotonic()
                r["offered_fallen_back"] = site.offered()
                r["drawing_fallen_back"] = site.drawing()
                r["tx_ids_fallen_back"] = {cid: fleet.charger(cid).transaction_id(1) for cid in IDS}
                r["down_totals"] = [v for t, v in samples if t_kill <= t < t_restart]
                r["fallen_back_totals"] = [v for t, v in samples if t_fallback <= t < t_restart]

                # 3. restart: the sessions are picked up again
                await asyncio.to_thread(gw.start)
                recovered = await _poll(
                    lambda: all(v > SAFE for v in site.offered().values()), RECOVERY_TIMEOUT_S
                )
                r["recovery_after_s"] = time.monotonic() - t_restart
                r["offered_after_restart"] = site.offered()
                r["status_after_restart"] = await _control(gw, "load.status")
                r["tx_ids_after_restart"] = {cid: fleet.charger(cid).transaction_id(1) for cid in IDS}
                r["db_active"] = gw.query(
                    "SELECT id, charger_id, connector_id FROM transactions WHERE state = 'active' ORDER BY id"
                )
                assert recovered, (r["offered_after_restart"], r["status_after_restart"], gw.output()[-3000:])
                r["after_restart_totals"] = [v for t, v in samples if t >= t_restart]
            finally:
                if sampler is not None:
                    sampler.cancel()
                await fleet.close()
                site.fleet = None
                await asyncio.to_thread(gw.stop)
            r["problems"] = list(fleet.problems.items)
            return r

        r = asyncio.run(scenario())

    print(
        f"before kill offered {r['offered_before_kill']}; fell back to {r['offered_after_kill']} "
        f"{r['fallback_after_s']:.1f} s after SIGKILL (lease {LEASE} s); site total while down max "
        f"{max(r['down_totals']):.1f} A, after fallback max {max(r['fallen_back_totals']):.1f} A; recovered to "
        f"{r['offered_after_restart']} {r['recovery_after_s']:.1f} s after restart"
    )
    n = len(IDS)
    # 1. every session ran above the safe current under the allocation, and drew it
    assert all(v > SAFE for v in r["offered_before_kill"].values()), r["offered_before_kill"]
    assert all(v > SAFE + AMPS_TOLERANCE for v in r["drawing_before_kill"].values()), r["drawing_before_kill"]
    assert r["status_before_kill"]["mode"] != "fallback", r["status_before_kill"]
    assert r["kill_returncode"] == -9  # SIGKILL, not a graceful stop
    # 2. exactly the TxDefaultProfile current, still charging, same transactions
    assert r["offered_fallen_back"] == {cid: SAFE for cid in IDS}, r["offered_fallen_back"]
    assert all(abs(v - SAFE) <= AMPS_TOLERANCE for v in r["drawing_fallen_back"].values()), r[
        "drawing_fallen_back"
    ]
    assert r["tx_ids_fallen_back"] == r["tx_ids"]
    assert max(r["down_totals"]) <= LIMIT + AMPS_TOLERANCE  # no lease ran out to the charger's maximum
    assert max(r["fallen_back_totals"]) <= n * SAFE + BUILDING_A + AMPS_TOLERANCE
    # 3. the restarted gateway picked the sessions up: same transactions, limits above the safe current again
    assert r["tx_ids_after_restart"] == r["tx_ids"]
    assert {row["id"] for row in r["db_active"]} == set(r["tx_ids"].values()), r["db_active"]
    sessions = r["status_after_restart"]["sessions"]
    assert {k: s["transaction_id"] for k, s in sessions.items()} == {
        f"{cid}/1": tx for cid, tx in r["tx_ids"].items()
    }, sessions
    assert all(s["limit_a"] is not None and s["limit_a"] > SAFE for s in sessions.values()), sessions
    assert all(v > SAFE for v in r["offered_after_restart"].values()), r["offered_after_restart"]
    assert max(r["after_restart_totals"]) <= LIMIT + AMPS_TOLERANCE
    # every OCPP frame both ways was checked against the 1.6 schemas by the fleet
    assert r["problems"] == [], r["problems"]
