"""`chargegate demo --json`: the whole site (gateway process + fleet of real agents + a real mosquitto and the
simulated eMSP behind the gateway's MQTT uplink + simulated Modbus meters on ptys and the gateway's load
management) runs headless and its JSON report agrees with the gateway's database; every session the database holds
reached the eMSP, in order; the site stayed within its limit but for bounded settling after building-load steps;
the chargers got charging profiles; killed, the gateway's chargers fell back to their TxDefaultProfile current."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_sim import demo_load
from firmware_sim.broker import mosquitto_binary
from firmware_sim.demo import SITE_ID, emsp_problems
from firmware_sim.emsp import GatewayView
from hil_tests.gateway_proc import run_module

REPO = Path(__file__).resolve().parents[1]
# 30 s of scenarios plus gateway start, registration, drain and stop; generous for a loaded 2-core box.
DEMO_TIMEOUT_S = 180
# ./run setup installs mosquitto; without it the demo runs without the eMSP and says so in its report
HAVE_MOSQUITTO = mosquitto_binary() is not None
# Generous bounds on the settling after a building-load step (measured: well under 1 s; a step is seen at the next
# grid-meter poll, 0.5 s, and the charger follows the new profile at its next tick): no timing is asserted tightly.
SETTLE_BOUND_S = 5.0
ABOVE_LIMIT_SHARE = 0.2  # of the run, in total


def check_load_management(report: dict[str, Any], db_path: Path, duration: float) -> None:
    """Meters read, profiles sent, the limit held but for bounded settling, and the billing check in the report
    agrees with the gateway's database."""
    assert report["load_management"] is True
    limit = report["site_limit_a"]
    assert limit == demo_load.default_site_limit(len(report["per_charger"]))
    # the simulated meters answered and the gateway decoded them (the grid meter and every connector meter)
    assert report["grid_meter_reads"] > 0 and report["meter_reads_answered"] > report["grid_meter_reads"]
    assert report["gateway_meter_polls_ok"] > 0 and report["gateway_meter_line"]["frames_ok"] > 0
    assert report["metered_connectors"] == report["connectors"]  # a grid meter and every connector metered
    assert report["load_modes"].get("measured", 0) > 0
    # every charger got its fail-safe TxDefaultProfile, sessions got TxProfiles
    assert report["tx_default_profiles"] >= len(report["per_charger"])
    # most sessions were sized by a TxProfile (one started and stopped offline may never be)
    assert report["tx_profiles"] >= report["sessions_profiled"] >= report["sessions_started"] / 2 > 0
    assert report["set_charging_profile_frames"] == report["tx_profiles"] + report["tx_default_profiles"]
    # the limit binds (5 chargers at 63 A): some session waited at 0 A
    assert report["sessions_queued"] >= 1 and len(report["queued_transactions"]) == report["sessions_queued"]
    # ground truth: above the limit only briefly (settling after a step), reported
    assert report["site_longest_excursion_s"] < SETTLE_BOUND_S, report["site_excursion_list"]
    assert report["site_above_limit_s"] < ABOVE_LIMIT_SHARE * duration, report["site_excursion_list"]
    assert report["site_peak_a"] < 1.5 * limit
    assert all(e["duration_s"] > 0 and e["peak_a"] > limit for e in report["site_excursion_list"])
    # billing: the gateway compared each session's charger figure with its Modbus meter; the report says what the
    # database says (a flag on a session delivered on time would be an error: errors == 0 is asserted)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows, flagged, compared = conn.execute(
            "SELECT COUNT(*), SUM(flagged), SUM(metered_wh IS NOT NULL AND charger_wh IS NOT NULL) "
            "FROM session_meter_energy"
        ).fetchone()
    finally:
        conn.close()
    assert rows == report["billing_sessions_metered"] == report["sessions_completed"]
    assert flagged == report["billing_flagged"] == report["billing_flagged_late"]
    assert compared == report["billing_checked"] > 0
    assert report["billing_largest_difference_wh"] <= report["billing_tolerance_wh"]
    assert report["billing_emsp_flags_agree"] is (True if HAVE_MOSQUITTO else None)


def check_emsp(report: dict[str, Any], db_path: Path) -> None:
    """The eMSP received a session record for exactly the transactions in the gateway's database (by id, read
    from the database here, not from the report), every event from seq 1 on without a gap, none out of order."""
    if not HAVE_MOSQUITTO:
        assert report["emsp_enabled"] is False and "mosquitto not found" in report["emsp_note"]
        return
    assert report["emsp_enabled"] is True
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tx_count = conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
        records = conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'session.record'").fetchone()[0]
        max_seq = conn.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
    finally:
        conn.close()
    assert tx_count > 0 and records == tx_count  # one record per transaction in the gateway's outbox
    # the demo counts an error for any transaction id the eMSP lacks or holds extra (report["errors"] == 0)
    assert report["emsp_sessions_received"] == tx_count == report["sessions_started"]
    assert report["emsp_out_of_order"] == 0
    assert report["emsp_duplicates"] >= 0
    # distinct seqs 1..last_seq, all of them: nothing lost on the way (no thinning at this size)
    assert report["emsp_events_received"] == report["emsp_last_seq"] <= max_seq


def test_demo_json_headless(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = run_module(
        "gateway.cli",
        "demo",
        "--chargers",
        "5",
        "--duration",
        "30",
        "--json",
        "--seed",
        "3",
        "--workdir",
        str(workdir),
        timeout=DEMO_TIMEOUT_S,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr}"
    report = json.loads(lines[-1])
    assert report["errors"] == 0, json.dumps(report.get("error_messages"), indent=1) + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["sessions_completed"] > 0
    assert report["sessions_started"] == report["sessions_completed"]
    assert report["energy_kwh"] > 0
    assert report["schema_problems"] == 0 and report["frames"] > 0
    assert set(report["scenarios"]) == {
        "arrive_tap_charge_leave",
        "idle_after_full",
        "remote_start",
        "reboot_mid_session",
        "network_outage",
    }
    assert report["charger_reboots"] > 0 and report["stop_reasons"].get("PowerLoss", 0) > 0
    assert report["power_cuts"] > 0 and report["network_outages"] > 0
    assert len(report["per_charger"]) == 5
    assert abs(sum(c["energy_kwh"] for c in report["per_charger"].values()) - report["energy_kwh"]) < 0.01

    # the report agrees with the gateway's database, and with what the simulated meters integrated
    conn = sqlite3.connect(f"file:{workdir / 'data' / 'chargegate.db'}?mode=ro", uri=True)
    try:
        stopped, active, wh = conn.execute(
            "SELECT SUM(state = 'stopped'), SUM(state = 'active'), SUM(energy_wh) FROM transactions"
        ).fetchone()
        samples = conn.execute("SELECT COUNT(*) FROM meter_samples").fetchone()[0]
    finally:
        conn.close()
    assert active == 0
    assert stopped == report["sessions_completed"]
    assert round(wh / 1000.0, 3) == report["energy_kwh"]
    # 1 Wh per session tolerance: the agent reads the register an instant before its contactor opens
    assert abs(report["energy_kwh"] - report["sim_energy_kwh"]) * 1000 <= report["sessions_completed"] + 0.5
    assert samples == report["meter_samples"] > 0
    # the config the demo wrote holds passwords: private
    assert (os.stat(workdir / "site.toml").st_mode & 0o077) == 0
    check_emsp(report, workdir / "data" / "chargegate.db")
    check_load_management(report, workdir / "data" / "chargegate.db", 30.0)


def test_chargegate_demo_forwards_its_arguments() -> None:
    """`chargegate demo ARGS` reaches firmware_sim.demo with ARGS (checked without starting anything: a bad
    argument must come back with the demo's own message)."""
    proc = run_module("gateway.cli", "demo", "--chargers", "0", "--json")
    assert proc.returncode == 2
    assert "chargegate demo: --chargers must be 1..500" in proc.stderr
    proc = run_module("gateway.cli", "demo", "--site-limit", "5", "--json")
    assert proc.returncode == 2
    assert "chargegate demo: --site-limit must be 6..10000 A" in proc.stderr


def test_demo_survives_a_gateway_sigkill(tmp_path: Path) -> None:
    """The site controller loses power mid-run: chargers carry on offline, and every session still ends up in
    the database with the metered energy."""
    workdir = tmp_path / "demo"
    proc = run_module(
        "gateway.cli",
        "demo",
        "--chargers",
        "3",
        "--duration",
        "20",
        "--kill-gateway-at",
        "3",
        "--json",
        "--seed",
        "5",
        "--workdir",
        str(workdir),
        timeout=DEMO_TIMEOUT_S,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr}"
    report = json.loads(lines[-1])
    assert report["errors"] == 0, json.dumps(report.get("error_messages"), indent=1) + proc.stderr[-3000:]
    assert proc.returncode == 0
    assert report["gateway_restarts"] == 1
    assert report["sessions_completed"] == report["sessions_started"] > 0
    assert abs(report["energy_kwh"] - report["sim_energy_kwh"]) * 1000 <= report["sessions_completed"] + 0.5
    # the gateway died with its MQTT connection: every session still reached the eMSP, in order
    check_emsp(report, workdir / "data" / "chargegate.db")
    # with the gateway down the chargers' TxProfile leases ran out and each applied its TxDefaultProfile current
    # (the demo counts anything else as an error); the gateway stayed down until then
    (outage,) = report["gateway_outages"]
    assert outage["not_fallen_back"] == [], outage
    assert outage["fell_back_after_s"] is not None
    assert outage["fell_back_after_s"] <= demo_load.FALLBACK_WAIT_S
    assert outage["down_s"] >= outage["fell_back_after_s"]
    assert report["gateway_downtime_s"] >= outage["fell_back_after_s"]
    # while it ran, the limit held but for settling (time above it with the gateway down is reported apart)
    assert report["site_longest_excursion_s"] < SETTLE_BOUND_S, report["site_excursion_list"]
    assert report["tx_default_profiles"] >= 3 and report["tx_profiles"] > 0


def test_demo_counts_what_the_emsp_lacks() -> None:
    """The demo's end check against the eMSP (pure): a missing, an extra or a differing session record, events
    out of order and re-sent events that changed are each an error; an exact match is none."""
    txs = [{"id": 1, "energy_wh": 1000}, {"id": 2, "energy_wh": 2000}, {"id": 3, "energy_wh": 3000}]
    view = GatewayView()
    view.sessions = {1: {"total_energy_wh": 1000}, 2: {"total_energy_wh": 2000}, 3: {"total_energy_wh": 3000}}
    assert emsp_problems(view, [], txs) == []

    view.sessions = {1: {"total_energy_wh": 1000}, 2: {"total_energy_wh": 2001}, 4: {"total_energy_wh": 1}}
    view.out_of_order = 2
    view.duplicate_mismatches = 1
    problems = emsp_problems(view, [f"chargegate/v1/{SITE_ID}/events: bad"], txs)
    assert len(problems) == 6, problems
    assert "transactions [3]" in problems[0] and "lacks: [4]" in problems[1]
    assert "2001 Wh" in problems[2] and "2 events out of seq order" in problems[3]
    assert "differed" in problems[4] and "could not read" in problems[5]
    assert emsp_problems(None, [], txs)[0].startswith(
        "the eMSP did not receive the session records of transactions [1, 2, 3]"
    )


def test_demo_billing_check_counts_what_is_unexplained() -> None:
    """The demo's reading of the gateway's billing check (pure): a session the gateway flagged although its start
    and stop arrived on time is an error; one delivered late from an offline queue is reported, not an error; an
    eMSP whose session.stopped flag differs from the database is an error."""
    tol = 500.0

    def tx(i: int, late_s: float = 0.4) -> dict[str, Any]:
        start = 1_800_000_000.0 + 100 * i
        return {
            "id": i,
            "charger_id": "CP01",
            "connector_id": 1,
            "state": "stopped",
            "start_ts": datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "started_at": start + late_s,
            "stop_ts": datetime.fromtimestamp(start + 50, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "stopped_at": start + 50.3,
        }

    def row(charger: float, metered: float | None, flagged: bool) -> dict[str, Any]:
        diff = None if metered is None else charger - metered
        return {
            "charger_wh": charger,
            "metered_wh": metered,
            "discrepancy_wh": diff,
            "flagged": int(flagged),
            "checked_at": 1.0,
        }

    txs = [tx(1), tx(2), tx(3, late_s=30.0), tx(4)]
    metered = {
        1: row(5000, 4900, False),
        2: row(5000, 3000, True),  # on time: unexplained
        3: row(5000, 2000, True),  # started offline: the meter was read 30 s later
        4: row(5000, None, False),  # no fresh meter reading
    }
    fields, errors = demo_load.billing_check(txs, metered, tol, None)
    assert len(errors) == 1 and "session 2 " in errors[0], errors
    assert fields["billing_checked"] == 3 and fields["billing_within_tolerance"] == 1
    assert fields["billing_flagged"] == 2 and fields["billing_flagged_late_transactions"] == [3]
    assert fields["billing_no_meter_reading"] == 1
    assert fields["billing_largest_difference_wh"] == 2000  # the late session's difference is not counted

    events = [
        {
            "kind": "session.stopped",
            "body": {"tx": i, "metered_wh": 1, "energy_flagged": bool(metered[i]["flagged"])},
        }
        for i in (1, 2, 3, 4)
    ]
    assert demo_load.billing_check(txs, metered, tol, events)[0]["billing_emsp_flags_agree"] is True
    events[0]["body"]["energy_flagged"] = True
    fields, errors = demo_load.billing_check(txs, metered, tol, events)
    assert fields["billing_emsp_flags_agree"] is False and "transactions [1]" in errors[-1]


def test_demo_meter_plan() -> None:
    """A grid meter first, then a meter per connector (one per single-connector charger), 16 per bus, catalog
    models in turn, capped at METERED_CONNECTORS_MAX connectors."""
    from firmware_sim.demo import site_chargers

    plan = demo_load.plan_meters(site_chargers(3, 2))
    assert [(p.id, p.bus, p.unit_id, p.connector_id) for p in plan] == [
        ("grid", 0, 1, 0),
        ("CP01-1-m", 0, 2, 1),
        ("CP01-2-m", 0, 3, 2),
        ("CP02-m", 0, 4, 0),
        ("CP03-1-m", 0, 5, 1),
        ("CP03-2-m", 0, 6, 2),
    ]
    assert plan[0].model == demo_load.GRID_MODEL
    assert {p.model for p in plan[1:]} == set(demo_load.CHARGER_METER_MODELS)
    big = demo_load.plan_meters(site_chargers(40, 2))
    assert sum(len(p.connectors) for p in big) == demo_load.METERED_CONNECTORS_MAX
    assert max(p.unit_id for p in big) <= demo_load.METERS_PER_BUS and big[-1].bus == 2
    assert len({(p.bus, p.unit_id) for p in big}) == len(big)
