"""`chargegate demo --json`: the whole site (gateway process + fleet of real agents + a real mosquitto and the
simulated eMSP behind the gateway's MQTT uplink) runs headless and its JSON report agrees with the gateway's
database; every session the database holds reached the eMSP, in order."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware_sim.broker import mosquitto_binary
from firmware_sim.demo import SITE_ID, emsp_problems
from firmware_sim.emsp import GatewayView

REPO = Path(__file__).resolve().parents[1]
# 30 s of scenarios plus gateway start, registration, drain and stop; generous for a loaded 2-core box.
DEMO_TIMEOUT_S = 180
# ./run setup installs mosquitto; without it the demo runs without the eMSP and says so in its report
HAVE_MOSQUITTO = mosquitto_binary() is not None


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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
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
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
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


def test_chargegate_demo_forwards_its_arguments() -> None:
    """`chargegate demo ARGS` reaches firmware_sim.demo with ARGS (checked without starting anything: a bad
    argument must come back with the demo's own message)."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--chargers", "0", "--json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "chargegate demo: --chargers must be 1..500" in proc.stderr


def test_demo_survives_a_gateway_sigkill(tmp_path: Path) -> None:
    """The site controller loses power mid-run: chargers carry on offline, and every session still ends up in
    the database with the metered energy."""
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--chargers",
            "3",
            "--duration",
            "20",
            "--kill-gateway-at",
            "6",
            "--json",
            "--seed",
            "5",
            "--workdir",
            str(workdir),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
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
