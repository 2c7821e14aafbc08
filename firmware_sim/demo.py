"""`chargegate demo`: a whole site on this machine in about a minute.

Writes a temporary site config for N chargers (generated passwords, allow-listed cards, a temp data dir), starts
the real gateway as a separate process, runs a fleet of real agents on simulated hardware through a scenario mix
(arrive/tap/charge/leave, idle after full, remote start, power cut mid-session), shows a live table, and ends with
the session record the gateway kept in its SQLite database, checked against the energy the simulated meters
integrated.

When a `mosquitto` binary is installed (`./run setup` installs it), the demo also starts a private broker on a free
loopback port, enables the gateway's MQTT uplink (docs/uplink.md) and runs a simulated eMSP (firmware_sim/emsp.py)
in this process: the sessions must arrive there too, each exactly once after de-duplication and in seq order.
`--no-emsp` runs without it.

The site has a grid connection with a limit and a building behind it (firmware_sim/demo_load.py): simulated Modbus
meters on ptys (a grid meter and one per connector, several catalog models) follow the chargers' actual draw and a
stepping building load, and the gateway's load management shares the limit among the sessions with charging
profiles. The table shows the site current (ground truth and what the grid meter answered) against the limit and,
per connector, the current the charger offers next to what its EV draws; the summary reports the peak, the time
above the limit, the profiles sent, the sessions queued at 0 A and the gateway's billing check of the chargers'
energy against their meters. `--no-load-management` runs without meters and limit.

    chargegate demo                           # 5 chargers, live table
    chargegate demo --chargers 8 --duration 30 --json     # headless: one JSON object, exit 1 on any error
    chargegate demo --no-emsp                 # no MQTT broker, no eMSP
    chargegate demo --site-limit 32           # a tighter grid connection (A per phase)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from firmware_sim import demo_load
from firmware_sim.broker import Mosquitto, mosquitto_binary
from firmware_sim.demo_load import DemoSite, Outage, connector_phases
from firmware_sim.emsp import GatewayView, SimEmsp
from firmware_sim.fleet import ChargerCreds, Fleet, mask_token
from firmware_sim.gateway_runner import GatewayRunner, GatewayStartError
from gateway.aio import within

log = logging.getLogger("chargegate.demo")

# The live table's refresh period (s).
REFRESH_S = 0.5
# Without a terminal (piped output, not --json), print one status line this often (s).
PLAIN_PROGRESS_S = 5.0
# At the end, the gateway must have recorded every StopTransaction within this long (s) after the agents went idle.
DB_SETTLE_S = 15.0
# All chargers must have connected and been accepted within this long (s) after the gateway is ready.
REGISTER_TIMEOUT_S = 30.0
# MeterValueSampleInterval the demo sets on every charger (real seconds), so short sessions have samples too.
DEMO_SAMPLE_INTERVAL_S = 5

# At the end, the eMSP must hold a session record for every transaction in the database within this long (s)
# after the database settled. The uplink publishes an event as soon as it is committed, so this only has to cover
# a reconnect (backoff capped at DEMO_UPLINK_RECONNECT_MAX_S) and the backlog a restarted gateway re-sends.
EMSP_DRAIN_S = 20.0
# The demo's [uplink] reconnect_max (s): the broker is local and always up, so a gateway restarted after SIGKILL
# should not sit in a long backoff (the contract default, 60 s, is for a remote eMSP).
DEMO_UPLINK_RECONNECT_MAX_S = 2
# The simulated eMSP must have connected and subscribed within this long (s) after the broker listens; it
# subscribes before the gateway starts, so it sees every event from the first one.
EMSP_CONNECT_TIMEOUT_S = 10.0
# How often (s) the drain wait compares the eMSP's sessions with the database.
EMSP_POLL_S = 0.2

DB_NAME = "chargegate.db"
SITE_ID = "demo-site"  # also the uplink's gateway id (chargegate/v1/demo-site/...)


def site_chargers(chargers: int, connectors: int) -> list[ChargerCreds]:
    """CP01..CPnn with generated passwords; odd ones have `connectors` connectors, even ones one fewer."""
    return [
        ChargerCreds(f"CP{i:02d}", secrets.token_urlsafe(24), connectors if i % 2 else max(1, connectors - 1))
        for i in range(1, chargers + 1)
    ]


def new_token(rng: secrets.SystemRandom) -> str:
    """A 7-byte ISO 14443 UID as 14 hex digits, like most RFID cards."""
    return "04" + "".join(f"{rng.randrange(256):02X}" for _ in range(6))


def write_site(
    workdir: Path,
    chargers: int,
    connectors: int,
    tokens_per_charger: int = 2,
    mqtt_port: int | None = None,
    site: DemoSite | None = None,
) -> tuple[Path, list[ChargerCreds], list[str]]:
    """The site config; with `site`, its meters and [load] (the site's chargers must be `site_chargers(...)`)."""
    rng = secrets.SystemRandom()
    creds = site.creds if site is not None else site_chargers(chargers, connectors)
    tokens = sorted({new_token(rng) for _ in range(chargers * tokens_per_charger)})
    data_dir = workdir / "data"
    lines = [
        "# written by `chargegate demo`",
        "[site]",
        f"id = {json.dumps(SITE_ID)}",
        f"data_dir = {json.dumps(str(data_dir))}",
        "",
        "[ocpp]",
        'host = "127.0.0.1"',
        "port = 0",
        "heartbeat_interval = 60",
        "",
        "[auth]",
        "allow = [" + ", ".join(json.dumps(t) for t in tokens) + "]",
    ]
    for c in creds:
        lines += [
            "",
            "[[chargers]]",
            f'id = "{c.id}"',
            f"password = {json.dumps(c.password)}",
            f"connectors = {c.connectors}",
        ]
    if mqtt_port is not None:
        lines += [
            "",
            "[uplink]",
            "enabled = true",
            'host = "127.0.0.1"',
            f"port = {mqtt_port}",
            f"reconnect_max = {DEMO_UPLINK_RECONNECT_MAX_S}",
        ]
    if site is not None:
        lines += site.config_lines()
    path = workdir / "site.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the chargers' passwords
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, creds, tokens


# -- the gateway's record ---------------------------------------------------------------------------------------
def read_db(db_path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        txs = [dict(r) for r in conn.execute("SELECT * FROM transactions ORDER BY id")]
        samples = conn.execute("SELECT COUNT(*) FROM meter_samples").fetchone()[0]
    finally:
        conn.close()
    return {"transactions": txs, "meter_samples": int(samples)}


def active_sessions(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM transactions WHERE state = 'active'").fetchone()[0])
    finally:
        conn.close()


def check_energy(fleet: Fleet, txs: list[dict[str, Any]]) -> list[str]:
    """Per connector, the energy the gateway recorded must equal what the simulated meter integrated over the
    visits. Tolerance: 1 Wh per transaction (the agent reads the register an instant before the contactor opens,
    and the register counts whole Wh)."""
    problems = []
    sim: Counter[tuple[str, int]] = Counter()
    for v in fleet.visits:
        sim[(v.charger_id, v.connector_id)] += v.energy_wh
    db: Counter[tuple[str, int]] = Counter()
    count: Counter[tuple[str, int]] = Counter()
    for t in txs:
        key = (t["charger_id"], int(t["connector_id"]))
        count[key] += 1
        if t["state"] == "stopped":
            if t["energy_wh"] is None:
                problems.append(f"transaction {t['id']} ({key[0]}/{key[1]}) stopped without energy")
            else:
                db[key] += int(t["energy_wh"])
    for key in sorted(set(sim) | set(db)):
        if abs(sim[key] - db[key]) > count[key]:
            problems.append(
                f"{key[0]}/{key[1]}: gateway recorded {db[key]} Wh in {count[key]} transactions, "
                f"the simulated meter delivered {sim[key]} Wh"
            )
    return problems


# -- the eMSP side ----------------------------------------------------------------------------------------------
class DemoEmsp:
    """A private mosquitto on a free loopback port and a simulated eMSP subscribed to it, in this process."""

    def __init__(self, workdir: Path) -> None:
        self.broker = Mosquitto(workdir)
        self.emsp = SimEmsp("127.0.0.1", self.broker.port)

    @property
    def port(self) -> int:
        return self.broker.port

    async def start(self) -> None:
        await asyncio.to_thread(self.broker.start)
        self.emsp.start()
        await self.emsp.wait_connected(EMSP_CONNECT_TIMEOUT_S)

    async def stop(self) -> None:
        await self.emsp.stop()
        # SIGTERM; blocks at most the broker's STOP_TIMEOUT_S, and only at the very end
        self.broker.stop()

    def view(self) -> GatewayView | None:
        return self.emsp.gateways.get(SITE_ID)

    def stats(self) -> dict[str, Any]:
        v = self.view()
        if v is None:
            v = GatewayView()
        return {
            "events": len(v.events),
            "last_seq": max(v.events) if v.events else None,
            "sessions": len(v.sessions),
            "duplicates": v.duplicates,
            "out_of_order": v.out_of_order,
            "online": (v.presence or {}).get("online"),
        }

    def sessions(self) -> dict[int, dict[str, Any]]:
        v = self.view()
        return dict(v.sessions) if v is not None else {}

    def line(self) -> str:
        st = self.stats()
        online = {True: "online", False: "OFFLINE", None: "not seen"}[st["online"]]
        last = "-" if st["last_seq"] is None else str(st["last_seq"])
        return (
            f"eMSP (MQTT 127.0.0.1:{self.port})  gateway {online}  events {st['events']}  last seq {last}  "
            f"sessions {st['sessions']}  duplicates {st['duplicates']}  out of order {st['out_of_order']}"
        )

    async def drain(self, db_path: Path, timeout: float = EMSP_DRAIN_S) -> bool:
        """Wait until the eMSP holds a session record for every transaction in the database and has every event
        the gateway had queued when last looked; False after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            tx_ids, max_seq = db_progress(db_path)
            st = self.stats()
            if set(self.sessions()) >= tx_ids and (max_seq is None or (st["last_seq"] or 0) >= max_seq):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(EMSP_POLL_S)

    def check(self, txs: list[dict[str, Any]]) -> list[str]:
        return emsp_problems(self.view(), self.emsp.malformed, txs)


def emsp_problems(view: GatewayView | None, malformed: list[str], txs: list[dict[str, Any]]) -> list[str]:
    """The eMSP must hold exactly the sessions the database holds (by transaction id), with the same energy,
    received in seq order, every re-sent event identical to its first copy, nothing unreadable."""
    problems = []
    got = dict(view.sessions) if view is not None else {}
    db = {int(t["id"]): t for t in txs}
    missing = sorted(set(db) - set(got))
    extra = sorted(set(got) - set(db))
    if missing:
        problems.append(
            f"the eMSP did not receive the session records of transactions {missing} "
            f"(waited up to {EMSP_DRAIN_S:.0f} s at the end)"
        )
    if extra:
        problems.append(f"the eMSP received session records of transactions the database lacks: {extra}")
    for tx in sorted(set(db) & set(got)):
        want, have = db[tx]["energy_wh"], got[tx].get("total_energy_wh")
        if want != have:
            problems.append(f"session {tx}: the eMSP's record says {have} Wh, the database {want} Wh")
    if view is not None and view.out_of_order:
        problems.append(f"the eMSP received {view.out_of_order} events out of seq order")
    if view is not None and view.duplicate_mismatches:
        problems.append(f"{view.duplicate_mismatches} re-sent events differed from their first copy")
    for m in malformed[:5]:
        problems.append(f"the eMSP could not read a message: {m}")
    return problems


def db_progress(db_path: Path) -> tuple[set[int], int | None]:
    """Transaction ids and the highest outbox seq in the gateway's database (read-only; the gateway writes)."""
    if not db_path.exists():
        return set(), None
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        ids = {int(r[0]) for r in conn.execute("SELECT id FROM transactions")}
        max_seq = conn.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
    finally:
        conn.close()
    return ids, None if max_seq is None else int(max_seq)


def emsp_fields(emsp: DemoEmsp | None, note: str | None) -> dict[str, Any]:
    if emsp is None:
        return {
            "emsp_enabled": False,
            "emsp_note": note,
            "emsp_sessions_received": None,
            "emsp_events_received": None,
            "emsp_duplicates": None,
            "emsp_out_of_order": None,
            "emsp_last_seq": None,
        }
    st = emsp.stats()
    return {
        "emsp_enabled": True,
        "emsp_sessions_received": st["sessions"],
        "emsp_events_received": st["events"],
        "emsp_duplicates": st["duplicates"],
        "emsp_out_of_order": st["out_of_order"],
        "emsp_last_seq": st["last_seq"],
    }


def summarize(fleet: Fleet, db: dict[str, Any], errors: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    txs = db["transactions"]
    stopped = [t for t in txs if t["state"] == "stopped"]
    per: dict[str, dict[str, Any]] = {}
    report = fleet.report()
    for c in fleet.chargers:
        mine = [t for t in stopped if t["charger_id"] == c.id]
        per[c.id] = {
            "sessions": len(mine),
            "energy_kwh": round(sum(int(t["energy_wh"] or 0) for t in mine) / 1000.0, 3),
            **{k: report.chargers[c.id][k] for k in ("sim_energy_kwh", "visits", "reboots", "agent_crashes")},
        }
    return {
        "sessions_started": len(txs),
        "sessions_completed": len(stopped),
        "energy_kwh": round(sum(int(t["energy_wh"] or 0) for t in stopped) / 1000.0, 3),
        "sim_energy_kwh": round(report.energy_wh / 1000.0, 3),
        "errors": len(errors),
        "error_messages": errors[:50],
        "stop_reasons": dict(Counter(t["stop_reason"] or "Local" for t in stopped)),
        "scenarios": dict(Counter(v.scenario for v in fleet.visits)),
        "visits": len(fleet.visits),
        "meter_samples": db["meter_samples"],
        "frames": report.frames,
        "schema_problems": report.schema_problems,
        "charger_reboots": sum(c.hal.reboots for c in fleet.chargers),
        "power_cuts": sum(v.notes.count("power cut") for v in fleet.visits),
        "network_outages": sum(v.notes.count("network cut") for v in fleet.visits),
        "per_charger": per,
        **extra,
    }


# -- display ----------------------------------------------------------------------------------------------------
def render_table(
    fleet: Fleet,
    elapsed: float,
    duration: float,
    ansi: bool,
    title: str = "chargegate demo",
    emsp: DemoEmsp | None = None,
    site: DemoSite | None = None,
) -> str:
    """The live table; with `site`, the site current against its limit, the grid meter and the gateway's
    allocation. Per connector, `offer A` is the current the charger offers on the pilot (its charging profiles'
    limit) and `draw A` what the EV takes (highest phase)."""
    rows = fleet.rows()
    chargers = {c.id: c for c in fleet.chargers}
    total_kw = sum(r["kw"] for r in rows)
    sim_h = fleet.clock.sim() / 3600.0
    head = (
        f"{title}  {elapsed:5.1f}/{duration:.0f} s real  {sim_h:5.2f} h simulated (x{fleet.clock.speed:g})  "
        f"site load {total_kw:6.1f} kW  visits {len(fleet.visits)}  errors {len(fleet.problems)}"
    )
    lines = [head]
    if emsp is not None:
        lines.append(emsp.line())
    if site is not None:
        lines += site.table_lines(ansi)
    lines.append("")
    lines.append(
        f"{'charger':<8} {'conn':>4}  {'status':<14} {'token':<12} {'kW':>6} {'kWh':>7} {'SoC':>5}  {'tx':>5}"
        f"  {'offer A':>7} {'draw A':>6}"
    )
    for r in rows:
        status = r["status"] or "-"
        if ansi:
            color = {
                "Charging": "32",
                "SuspendedEV": "33",
                "SuspendedEVSE": "33",
                "Preparing": "36",
                "Finishing": "36",
                "Faulted": "31",
                "Rebooting": "35",
            }.get(status)
            shown = f"\x1b[{color}m{status:<14}\x1b[0m" if color else f"{status:<14}"
        else:
            shown = f"{status:<14}"
        soc = "" if r["soc"] is None else f"{r['soc'] * 100:4.0f}%"
        tx = "" if r["tx"] is None else str(r["tx"])
        sc = chargers[r["charger"]].hal.connector(r["connector"])
        offer = f"{sc.offered_amps:7.1f}"
        if ansi and r["tx"] is not None and sc.offered_amps < demo_load.MIN_CURRENT_A:
            offer = f"\x1b[33m{offer}\x1b[0m"  # a session queued at 0 A (or paused by its profile)
        lines.append(
            f"{r['charger']:<8} {r['connector']:>4}  {shown} {r['token']:<12} {r['kw']:6.1f} {r['kwh']:7.2f} {soc:>5}  {tx:>5}"
            f"  {offer} {max(connector_phases(sc)):6.1f}"
        )
    return "\n".join(lines)


async def live_display(
    fleet: Fleet,
    started: float,
    duration: float,
    out: TextIO,
    stop: asyncio.Event,
    title: str = "chargegate demo",
    emsp: DemoEmsp | None = None,
    site: DemoSite | None = None,
) -> None:
    ansi = out.isatty()
    last_plain = 0.0
    while not stop.is_set():
        elapsed = time.monotonic() - started
        if ansi:
            out.write(
                "\x1b[H\x1b[2J" + render_table(fleet, elapsed, duration, True, title, emsp, site) + "\n"
            )
            out.flush()
        elif elapsed - last_plain >= PLAIN_PROGRESS_S:
            last_plain = elapsed
            rows = fleet.rows()
            charging = sum(1 for r in rows if r["status"] == "Charging")
            at_emsp = ""
            if emsp is not None:
                st = emsp.stats()
                at_emsp = f", eMSP {st['sessions']} sessions / {st['events']} events"
            if site is not None:
                at_emsp += f", site {max(site.sample.site):.1f}/{site.limit:g} A"
            out.write(
                f"[{elapsed:5.1f} s] {charging}/{len(rows)} connectors charging, "
                f"{sum(r['kw'] for r in rows):.1f} kW, {len(fleet.visits)} visits{at_emsp}, "
                f"{len(fleet.problems)} errors\n"
            )
            out.flush()
        with contextlib.suppress(TimeoutError):
            await within(stop.wait(), REFRESH_S)


def charger_duration(t: dict[str, Any]) -> float | None:
    """Session length by the charger's own timestamps (right for sessions delivered late from an offline
    queue, unlike the gateway's receive times); whole seconds, as OCPP timestamps are."""
    try:
        start = datetime.fromisoformat(str(t["start_ts"]).replace("Z", "+00:00"))
        stop = datetime.fromisoformat(str(t["stop_ts"]).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return (stop - start).total_seconds()


def print_summary(
    summary: dict[str, Any],
    txs: list[dict[str, Any]],
    out: TextIO,
    speed: float,
    emsp_sessions: dict[int, dict[str, Any]] | None = None,
) -> None:
    """`emsp_sessions`: the session records the eMSP received (None: the demo ran without an eMSP)."""
    with_emsp = emsp_sessions is not None
    out.write(
        "\nSessions recorded by the gateway (SQLite; durations by the charger's clock)"
        + (", and the session records the eMSP received over MQTT" if with_emsp else "")
        + ":\n"
    )
    out.write(
        f"{'tx':>4} {'charger':<8} {'conn':>4} {'token':<12} {'real':>7} {'simulated':>9} {'kWh':>8}  {'stop reason':<15}"
        + (f" {'eMSP kWh':>9}" if with_emsp else "")
        + "\n"
    )
    for t in txs:
        real = charger_duration(t)
        if real is None:
            dur = ""
        else:
            sim_min = int(real * speed / 60)
            dur = f"{real:6.0f}s {sim_min // 60:6d}:{sim_min % 60:02d}"
        kwh = "" if t["energy_wh"] is None else f"{t['energy_wh'] / 1000:8.3f}"
        reason = t["stop_reason"] or ("(active)" if t["state"] == "active" else "Local")
        at_emsp = ""
        if emsp_sessions is not None:
            rec = emsp_sessions.get(int(t["id"]))
            if rec is None:
                at_emsp = f" {'MISSING':>9}"
            else:
                wh = rec.get("total_energy_wh")
                at_emsp = f" {'-' if wh is None else f'{wh / 1000:.3f}':>9}"
        out.write(
            f"{t['id']:>4} {t['charger_id']:<8} {t['connector_id']:>4} {mask_token(t['id_tag']):<12} {dur:>17} {kwh:>8}  {reason:<15}{at_emsp}\n"
        )
    if emsp_sessions is not None:
        for tx in sorted(set(emsp_sessions) - {int(t["id"]) for t in txs}):
            out.write(f"{tx:>4} (at the eMSP only: {emsp_sessions[tx].get('charger_id')})\n")
    out.write(
        f"\n{summary['sessions_completed']} sessions completed ({summary['sessions_started']} started), "
        f"{summary['energy_kwh']:.3f} kWh recorded by the gateway, {summary['sim_energy_kwh']:.3f} kWh metered by the "
        f"simulated chargers; {summary['meter_samples']} meter samples, {summary['frames']} OCPP frames "
        f"(all schema-checked: {summary['schema_problems']} problems), {summary['charger_reboots']} charger reboots "
        f"({summary['power_cuts']} power cuts), {summary['network_outages']} network outages.\n"
    )
    if summary.get("emsp_enabled"):
        out.write(
            f"eMSP: {summary['emsp_sessions_received']} session records received for the "
            f"{summary['sessions_started']} sessions in the database; {summary['emsp_events_received']} events "
            f"(last seq {summary['emsp_last_seq']}), {summary['emsp_duplicates']} duplicates dropped, "
            f"{summary['emsp_out_of_order']} out of order.\n"
        )
    elif summary.get("emsp_note"):
        out.write(f"eMSP: {summary['emsp_note']}\n")
    print_load_summary(summary, out)
    if summary["errors"]:
        out.write(f"\n{summary['errors']} ERRORS:\n")
        for e in summary["error_messages"]:
            out.write(f"  - {e}\n")
    else:
        out.write("No errors.\n")
    out.flush()


def print_load_summary(summary: dict[str, Any], out: TextIO) -> None:
    if not summary.get("load_management"):
        if summary.get("load_management_note"):
            out.write(f"Load management: {summary['load_management_note']}\n")
        return
    steps = ", ".join(f"{a:g} A at {t:g} s" for t, a in summary["building_load_steps"])
    out.write(
        f"\nLoad management: site limit {summary['site_limit_a']:g} A per phase; building load (L1) {steps}.\n"
        f"  Site current (ground truth, sampled every {demo_load.SAMPLE_S:g} s): peak {summary['site_peak_a']:.1f} A "
        f"at {summary['site_peak_at_s']} s; above the limit {summary['site_above_limit_s']:.1f} s in "
        f"{summary['site_excursions']} excursion(s) while the gateway ran, the longest "
        f"{summary['site_longest_excursion_s']:.1f} s (settling: the gateway sees a step at its next meter reading, "
        "then the chargers follow the new profile)"
        + (
            f"; {summary['site_above_limit_gateway_down_s']:.1f} s while the gateway was down"
            if summary["site_excursions_gateway_down"]
            else ""
        )
        + ".\n"
    )
    for e in summary["site_excursion_list"]:
        after = "; ".join(e["after"]) or "nothing else in the preceding seconds"
        down = " (gateway down)" if e["gateway_down"] else ""
        out.write(
            f"    {e['at_s']:6.1f} s  {e['duration_s']:5.2f} s up to {e['peak_a']:.1f} A{down}, after: {after}\n"
        )
    queued = summary["queued_transactions"]
    out.write(
        f"  {summary['set_charging_profile_frames']} SetChargingProfile received by the chargers "
        f"({summary['tx_profiles']} TxProfile for {summary['sessions_profiled']} sessions, "
        f"{summary['tx_default_profiles']} TxDefaultProfile); "
        f"{summary['sessions_queued']} sessions queued at 0 A at some point"
        + (
            f" (tx {', '.join(str(t) for t in queued[:12])}{', ...' if len(queued) > 12 else ''})"
            if queued
            else ""
        )
        + f"; the gateway's allocation rounds seen: {summary['load_modes'] or 'none'}.\n"
    )
    polls = summary["gateway_meter_polls_ok"]
    out.write(
        f"  Meters: grid + {summary['meters'] - 1} charger meters ({', '.join(summary['meter_models'])}) for "
        f"{summary['metered_connectors']} connectors answered {summary['meter_reads_answered']} Modbus reads"
        + (
            f"; the gateway counted {polls} good polls"
            + (" since its restart" if summary["gateway_restarts"] else "")
            + f", line counters {summary['gateway_meter_line']}"
            if polls is not None
            else ""
        )
        + ".\n"
    )
    for o in summary["gateway_outages"]:
        if o["fell_back_after_s"] is not None:
            out.write(
                f"  Gateway killed at {o['killed_at_s']} s: every charger fell back to its TxDefaultProfile "
                f"({demo_load.SAFE_CURRENT_A:g} A) {o['fell_back_after_s']} s later ({o['drawing_at_fallback']} "
                f"connectors drawing); back after {o['down_s']} s. Worst case with the gateway down: every connector "
                f"at that current plus the building's peak = {summary['fail_safe_worst_case_a']:g} A, "
                + (
                    "within the limit"
                    if summary["fail_safe_worst_case_a"] <= summary["site_limit_a"]
                    else "above the limit (the gateway warns about that at start)"
                )
                + ".\n"
            )
        else:
            out.write(
                f"  Gateway killed at {o['killed_at_s']} s: NOT every charger fell back: {o['not_fallen_back']}\n"
            )
    if "billing_checked" in summary:
        late = summary["billing_flagged_late"]
        out.write(
            f"  Billing check (the charger's own meter against its Modbus meter, per session, by the gateway; "
            f"tolerance {summary['billing_tolerance_wh']:.0f} Wh: the gateway's default "
            f"{demo_load.BILLING_BASE_TOLERANCE_WH:g} Wh plus what a connector delivers at "
            f"{demo_load.CONNECTOR_MAX_A * 230 * 3 / 1000:.0f} kW at x{summary['speed']:g} between two readings): "
            f"{summary['billing_checked']} sessions checked, {summary['billing_within_tolerance']} within tolerance "
            f"(largest difference {summary['billing_largest_difference_wh']:.0f} Wh), {summary['billing_flagged']} flagged"
            + (
                f" ({late} delivered late from an offline queue: the meter was read at another moment)"
                if late
                else ""
            )
            + f", {summary['billing_no_meter_reading']} without a fresh meter reading at start or stop"
            + f", {summary['billing_no_charger_figure']} billed by the meter (the charger reported 0 -> 0 Wh)"
            + (
                ""
                if summary["billing_emsp_flags_agree"] is None
                else f"; the eMSP's session.stopped flags {'agree' if summary['billing_emsp_flags_agree'] else 'DISAGREE'}"
            )
            + ".\n"
        )


# -- the run ----------------------------------------------------------------------------------------------------
async def start_emsp(
    args: argparse.Namespace, workdir: Path
) -> tuple[DemoEmsp | None, str | None, str | None]:
    """(the eMSP side or None, a note on why there is none, an error)."""
    if args.no_emsp:
        return None, "not started (--no-emsp)", None
    if mosquitto_binary() is None:
        note = "mosquitto not found (PATH, /usr/sbin/mosquitto): running without the MQTT uplink and eMSP"
        print(f"chargegate demo: {note} (./run setup installs it; --no-emsp silences this)", file=sys.stderr)
        return None, note, None
    emsp = DemoEmsp(workdir)
    try:
        await emsp.start()
    except (RuntimeError, OSError, TimeoutError) as e:
        await emsp.stop()
        return (
            None,
            "the broker or the eMSP did not start",
            f"the MQTT broker / simulated eMSP did not start: {e}",
        )
    return emsp, None, None


async def run_demo(args: argparse.Namespace, workdir: Path, out: TextIO) -> dict[str, Any]:
    emsp, note, error = await start_emsp(args, workdir)
    try:
        return await run_site(args, workdir, out, emsp, note, [error] if error else [])
    finally:
        if emsp is not None:
            await emsp.stop()


async def run_site(
    args: argparse.Namespace,
    workdir: Path,
    out: TextIO,
    emsp: DemoEmsp | None,
    emsp_note: str | None,
    errors: list[str],
) -> dict[str, Any]:
    site: DemoSite | None = None
    if not args.no_load_management:
        site = DemoSite(
            site_chargers(args.chargers, args.connectors),
            args.site_limit if args.site_limit is not None else demo_load.default_site_limit(args.chargers),
            args.duration,
            args.speed,
        )
        site.open_buses()
    try:
        return await run_gateway_and_fleet(args, workdir, out, emsp, emsp_note, errors, site)
    finally:
        if site is not None:
            await site.close()


async def run_gateway_and_fleet(
    args: argparse.Namespace,
    workdir: Path,
    out: TextIO,
    emsp: DemoEmsp | None,
    emsp_note: str | None,
    errors: list[str],
    site: DemoSite | None,
) -> dict[str, Any]:
    config_path, creds, tokens = write_site(
        workdir, args.chargers, args.connectors, mqtt_port=emsp.port if emsp is not None else None, site=site
    )
    load_off = demo_load.no_load_fields("off (--no-load-management)")
    if emsp is not None:
        emsp.emsp.tokens = {t: "Accepted" for t in tokens}  # the gateway may ask it online
    gateway = GatewayRunner(config_path, workdir / "gateway.log")
    t0 = time.monotonic()
    try:
        await gateway.start()
    except GatewayStartError as e:
        return {
            "sessions_started": 0,
            "sessions_completed": 0,
            "energy_kwh": 0.0,
            "sim_energy_kwh": 0.0,
            "errors": 1 + len(errors),
            "error_messages": [*errors, str(e)],
            "meter_samples": 0,
            "frames": 0,
            "schema_problems": 0,
            "charger_reboots": 0,
            "gateway_restarts": 0,
            **emsp_fields(emsp, emsp_note),
            **(site.fields() if site is not None else load_off),
        }
    fleet = Fleet(
        creds,
        gateway.ocpp_url,
        tokens,
        speed=args.speed,
        state_dir=workdir / "flash",
        control_socket=gateway.control_socket,
        seed=args.seed,
        scenarios=args.scenario,
        links=True,  # every charger has its own network, so outages and power cuts drop only its TCP link
        frame_hook_factory=site.frame_hook if site is not None else None,
    )
    display_stop = asyncio.Event()
    display: asyncio.Task[None] | None = None
    watchdog = asyncio.create_task(_watch_gateway(gateway, fleet))
    load_status: asyncio.Task[None] | None = None
    if site is not None:
        site.attach(fleet)
        load_status = asyncio.create_task(
            site.poll_load_status(lambda: gateway.control_socket if gateway.running() else None)
        )
    restarts: list[float] = []
    killer: asyncio.Task[None] | None = None
    if args.kill_gateway_at is not None:
        # a restarted gateway must listen where the chargers look for it: pin the port it picked
        pin_port(config_path, gateway.ocpp_url)
    try:
        await fleet.start()
        if await fleet.wait_registered(REGISTER_TIMEOUT_S):
            await fleet.change_configuration("MeterValueSampleInterval", str(args.sample_interval))
            started = time.monotonic()
            if site is not None:
                site.begin()
            if not args.json:
                display = asyncio.create_task(
                    live_display(fleet, started, args.duration, out, display_stop, emsp=emsp, site=site)
                )
            if args.kill_gateway_at is not None:
                killer = asyncio.create_task(
                    _kill_and_restart(gateway, fleet, args.kill_gateway_at, restarts, site)
                )
            await fleet.run_scenarios(args.duration)
            if killer is not None:
                await killer
            await fleet.drain()
            db_path = workdir / "data" / DB_NAME
            settle_end = time.monotonic() + DB_SETTLE_S
            while True:  # the gateway is another process: poll its database
                if not active_sessions(db_path) or time.monotonic() >= settle_end:
                    break
                await asyncio.sleep(0.2)
            if emsp is not None and gateway.running():
                await emsp.drain(db_path)  # what it lacks after the wait is reported by emsp.check()
            if site is not None and gateway.running():
                await site.read_meters_status(gateway.control_socket)
    finally:
        if site is not None:
            site.end()
        if load_status is not None:
            load_status.cancel()
            await asyncio.gather(load_status, return_exceptions=True)
        display_stop.set()
        if display is not None:
            await display
            if out.isatty():
                table = render_table(
                    fleet, time.monotonic() - t0, args.duration, True, "chargegate demo", emsp, site
                )
                out.write("\x1b[H\x1b[2J" + table + "\n")
        if killer is not None and not killer.done():
            killer.cancel()
            await asyncio.gather(killer, return_exceptions=True)
        await fleet.close()
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        crashed = (
            gateway.proc is not None
            and gateway.returncode is not None
            and not gateway.ended_on_purpose(gateway.proc)
        )
        rc = await gateway.stop()
        if crashed:
            errors.append(
                f"the gateway died during the demo (exit code {rc}):\n" + "\n".join(list(gateway.lines)[-20:])
            )
        elif rc != 0:
            errors.append(
                f"the gateway exited with code {rc} on SIGTERM:\n" + "\n".join(list(gateway.lines)[-20:])
            )
    db = read_db(workdir / "data" / DB_NAME)
    errors = fleet.report().errors + errors
    for t in db["transactions"]:
        if t["state"] != "stopped":
            errors.append(f"session {t['id']} on {t['charger_id']}/{t['connector_id']} did not end")
    errors += check_energy(fleet, db["transactions"])
    if emsp is not None:
        errors += emsp.check(db["transactions"])
    load = load_off
    if site is not None:
        load = site.fields()
        errors += load_problems(load, len(db["transactions"]))
        view = emsp.view() if emsp is not None else None
        billing, problems = demo_load.billing_check(
            db["transactions"],
            demo_load.read_billing(workdir / "data" / DB_NAME),
            site.tolerance_wh,
            None if emsp is None else list(view.events.values()) if view is not None else [],
        )
        load.update(billing)
        errors += problems
    summary = summarize(
        fleet,
        db,
        errors,
        {
            "chargers": len(creds),
            "connectors": sum(c.connectors for c in creds),
            "speed": args.speed,
            "duration_s": round(time.monotonic() - t0, 1),
            "simulated_hours": round(fleet.clock.sim() / 3600.0, 2),
            "gateway_restarts": len(restarts),
            "gateway_downtime_s": round(sum(restarts), 2),
            **emsp_fields(emsp, emsp_note),
            **load,
        },
    )
    summary["_transactions"] = db["transactions"]
    summary["_emsp_sessions"] = emsp.sessions() if emsp is not None else None
    return summary


def load_problems(load: dict[str, Any], sessions: int) -> list[str]:
    """What the demo counts as a load-management error (time above the limit is reported, not an error: a
    building-load step takes a meter reading and a profile round trip to absorb)."""
    problems = []
    if load["grid_meter_reads"] == 0:
        problems.append("the gateway never read the grid meter")
    if load["gateway_meter_polls_ok"] == 0:
        problems.append("the gateway counted no good meter poll")
    if sessions and load["tx_profiles"] == 0:
        problems.append(f"load management sent no TxProfile for {sessions} sessions")
    for o in load["gateway_outages"]:
        if o["fell_back_after_s"] is None:
            problems.append(
                f"with the gateway down, not every charger fell back to its TxDefaultProfile current within "
                f"{demo_load.FALLBACK_WAIT_S:.0f} s: {o['not_fallen_back'][:10]}"
            )
    return problems


async def _watch_gateway(gateway: GatewayRunner, fleet: Fleet) -> None:
    """Report a gateway that dies on its own (a kill by `--kill-gateway-at` is on purpose)."""
    while True:
        proc = gateway.proc
        assert proc is not None
        rc = await proc.wait()
        if not gateway.ended_on_purpose(proc):
            fleet.problems.add(f"the gateway process exited unexpectedly with code {rc}")
            return
        await gateway.ready.wait()  # restarted


async def _kill_and_restart(
    gateway: GatewayRunner, fleet: Fleet, after: float, downtimes: list[float], site: DemoSite | None = None
) -> None:
    """SIGKILL the gateway mid-run (a power cut of the site controller) and start it again: sessions go on
    offline on the chargers and must all end up in the database anyway. Without load management it restarts at
    once; with it, it stays down until the chargers' TxProfile leases have run out and every one applies its
    TxDefaultProfile current (the fail-safe; at most demo_load.FALLBACK_WAIT_S)."""
    await asyncio.sleep(after)
    t = time.monotonic()
    await gateway.kill()
    outage: Outage | None = None
    if site is not None:
        outage = site.gateway_killed()
        await site.wait_fallback(outage)
    try:
        await gateway.start()
    except GatewayStartError as e:
        fleet.problems.add(f"the gateway did not come back after SIGKILL: {e}")
        return
    downtimes.append(time.monotonic() - t)
    if site is not None and outage is not None:
        site.gateway_back(outage, downtimes[-1])


def pin_port(config_path: Path, ocpp_url: str) -> None:
    port = int(ocpp_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    text = config_path.read_text()
    assert "\nport = 0\n" in text
    config_path.write_text(text.replace("\nport = 0\n", f"\nport = {port}\n"))


def build_parser() -> argparse.ArgumentParser:
    from firmware_sim.scenarios import SCENARIOS

    p = argparse.ArgumentParser(prog="chargegate demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--chargers", type=int, default=5, help="number of chargers (default 5)")
    p.add_argument("--connectors", type=int, default=2, help="connectors per charger, odd ones (default 2)")
    p.add_argument("--duration", type=float, default=40.0, help="real seconds of scenarios (default 40)")
    p.add_argument(
        "--speed", type=float, default=300.0, help="simulated seconds per real second (default 300)"
    )
    p.add_argument(
        "--sample-interval",
        type=int,
        default=DEMO_SAMPLE_INTERVAL_S,
        help=f"MeterValueSampleInterval set on every charger, s (default {DEMO_SAMPLE_INTERVAL_S})",
    )
    p.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="restrict the mix (repeatable)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed the scenario randomness")
    p.add_argument(
        "--kill-gateway-at",
        type=float,
        metavar="SECONDS",
        help="SIGKILL the gateway this many seconds into the run and restart it (durability demo)",
    )
    p.add_argument(
        "--site-limit",
        type=float,
        metavar="AMPS",
        help="the grid connection's limit per phase for load management (default: 10 A per charger, at least 40)",
    )
    p.add_argument(
        "--no-load-management",
        action="store_true",
        help="no Modbus meters and no site limit (the default simulates both and enables [load])",
    )
    p.add_argument(
        "--no-emsp",
        action="store_true",
        help="no MQTT broker and simulated eMSP (the default starts them when mosquitto is installed)",
    )
    p.add_argument("--json", action="store_true", help="headless: print one JSON object at the end")
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (config, database, logs)"
    )
    p.add_argument(
        "--workdir", type=Path, help="use this (new or empty) directory instead of a temp dir; kept"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    if not 1 <= args.chargers <= 500:
        problems.append("--chargers must be 1..500")
    if not 1 <= args.connectors <= 4:
        problems.append("--connectors must be 1..4")
    if not args.duration > 0 or not args.speed > 0:
        problems.append("--duration and --speed must be > 0")
    if args.sample_interval < 0:
        problems.append("--sample-interval must be >= 0")
    if args.kill_gateway_at is not None and not 0 <= args.kill_gateway_at < args.duration:
        problems.append("--kill-gateway-at must be within --duration")
    if args.site_limit is not None and not demo_load.MIN_CURRENT_A <= args.site_limit <= 10000:
        problems.append(f"--site-limit must be {demo_load.MIN_CURRENT_A:g}..10000 A")
    if args.site_limit is not None and args.no_load_management:
        problems.append("--site-limit needs load management (drop --no-load-management)")
    if problems:
        print("chargegate demo: " + "; ".join(problems), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.workdir is not None:
        workdir = args.workdir
        if workdir.exists() and any(workdir.iterdir()):
            print(f"chargegate demo: --workdir {workdir} is not empty", file=sys.stderr)
            return 2
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        args.keep = True
    else:
        workdir = Path(tempfile.mkdtemp(prefix="chargegate-demo-"))
    out = sys.stdout
    try:
        summary = asyncio.run(run_demo(args, workdir, out))
    except KeyboardInterrupt:
        print("\nchargegate demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"chargegate demo: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    txs = summary.pop("_transactions", [])
    emsp_sessions = summary.pop("_emsp_sessions", None)
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary, txs, out, args.speed, emsp_sessions)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
