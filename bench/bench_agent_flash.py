"""Agent flash wear: bytes and storage calls per charging session with the journaled offline queue,
authorization cache and running-transaction record (agent/journal.py) vs. the old policy (rewrite the whole blob
on every change), same run.

    .venv/bin/python bench/bench_agent_flash.py [--sessions 50] [--meter-values 60] [--offline-run 2] [--out FILE]

Both policies run the same deterministic script through the real agent core (agent.core.ChargePointCore) on the
simulator's hardware (firmware_sim.hal.SimHal: EV physics, meter) with a manual clock, and storage that counts every
call and byte per blob on top of the real DirStorage files in a temp directory. The policy is the core's
`AgentConfig(storage_journal=...)` switch: False rewrites the whole state of the `txqueue`/`authcache`/
`transactions` stores on every change (a compaction into the other log file plus the pointer write, agent/journal.py:
the full-rewrite policy in today's file layout, no longer byte for byte the pre-journal code path).

Script: --sessions sessions of --meter-values periodic MeterValues each (MeterValueSampleInterval --interval s,
ticked every simulated second): tap a card (one of --tags), plug an EV, charge, unplug (EVDisconnected stop).
Sessions come in runs of --offline-run online then --offline-run offline (half offline): offline the queue fills
(a run of 2 sessions x (60 + 2) messages passes QUEUE_CAP = 100, so old MeterValues are evicted) and drains when
the link comes back at the start of the next online run. The Central System is in-process and answers every CALL
at once (Accepted, real-looking transactionIds); it also records the actions the core sent, so the run checks that
both policies delivered the identical message sequence (`same_messages`).

Output (stdout and --out): per policy, totals and per-session figures for all blobs, for the offline queue and the
authorization cache (`queue_and_cache`), and for the running-transaction record (`transactions`: the record plus
one transactionData sample per MeterValues while StopTxnSampledData is set, the default), per-blob detail, then
`ratio_old_over_journal` (> 1 = the journal writes less) for each group. Blobs not journaled (`config`,
`availability`, ...) are counted in `all_blobs` and listed in `per_blob`. No timings are asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchreport import emit

from agent.compat import iso_utc
from agent.core import TX_STORAGE, AgentConfig, ChargePointCore
from agent.txqueue import QUEUE_CAP
from firmware_sim.clock import ManualTime, SimClock
from firmware_sim.ev import Ev, EvSpec
from firmware_sim.hal import SimHal
from firmware_sim.storage import DirStorage

WALL0 = 1_795_000_000.0
# A battery far from full for the whole session, so every session charges (and samples) until it is unplugged.
SPEC = EvSpec("bench-11kW", capacity_kwh=200.0, max_ac_power_w=11000.0, phases=3)


def _store_files(name: str) -> tuple[str, ...]:
    """A journaled store's blobs (agent/journal.py): its pointer and its two log files."""
    return (name, name + ".0", name + ".1")


QUEUE_AND_CACHE = _store_files("txqueue") + _store_files("authcache")
TRANSACTIONS = _store_files(TX_STORAGE)


class CountingStorage(DirStorage):
    """DirStorage that counts calls and bytes per blob (writes = storage_write, appends = storage_append)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.per_blob: dict[str, dict[str, int]] = {}

    def _count(self, name: str, kind: str, n: int) -> None:
        c = self.per_blob.setdefault(
            name, {"write_calls": 0, "write_bytes": 0, "append_calls": 0, "append_bytes": 0}
        )
        c[kind + "_calls"] += 1
        c[kind + "_bytes"] += n

    def write(self, name: str, data: bytes) -> None:
        self._count(name, "write", len(data))
        super().write(name, data)

    def append(self, name: str, data: bytes) -> None:
        self._count(name, "append", len(data))
        super().append(name, data)


class InstantCentral:
    """Answers every CALL of the core at once; records the actions (the message sequence to compare)."""

    def __init__(self, core: ChargePointCore, hal: SimHal) -> None:
        self.core = core
        self.hal = hal
        self.actions: list[str] = []
        self.next_tx = 1000
        self.connected = False

    def connect(self) -> None:
        self.connected = True
        self.core.on_connected()
        self.pump()

    def disconnect(self) -> None:
        self.connected = False
        self.core.on_disconnected()
        self.core.outgoing()

    def pump(self) -> None:
        for _ in range(1000):
            frames = self.core.outgoing()
            if not frames:
                return
            if not self.connected:
                continue
            for text in frames:
                msg = json.loads(text)
                if msg[0] == 2:
                    self.actions.append(msg[2])
                    self.core.receive(json.dumps([3, msg[1], self.answer(msg[2])]))
        raise RuntimeError("the core keeps producing frames")

    def answer(self, action: str) -> dict[str, Any]:
        now = iso_utc(self.hal.wall_time())
        accepted = {"status": "Accepted"}
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            return {"idTagInfo": accepted}
        if action == "StartTransaction":
            self.next_tx += 1
            return {"transactionId": self.next_tx, "idTagInfo": accepted}
        if action == "StopTransaction":
            return {"idTagInfo": accepted}
        return {}


def run_policy(journal: bool, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t = ManualTime()
    clock = SimClock(1.0, monotonic=t, wall=lambda: WALL0 + t.now)
    flash = work / ("journal" if journal else "rewrite")
    hal = SimHal("CP1", 1, flash, clock)
    storage = CountingStorage(flash)
    hal.storage = storage
    core = ChargePointCore(AgentConfig("CP1", storage_journal=journal), hal)
    central = InstantCentral(core, hal)

    def tick(seconds: int) -> None:
        for _ in range(seconds):
            t.advance(1.0)
            core.tick()
            central.pump()

    central.connect()
    tick(2)
    core.cfg.change("MeterValueSampleInterval", str(args.interval))
    core.cfg.change("AllowOfflineTxForUnknownId", "true")
    max_queue = 0
    dropped = 0
    for i in range(args.sessions):
        offline = (i // args.offline_run) % 2 == 1
        if offline and central.connected:
            central.disconnect()
        elif not offline and not central.connected:
            central.connect()
            tick(2)
        hal.tap(f"04BENCH{i % args.tags:06d}")
        tick(1)
        hal.plug_in(1, Ev(SPEC, soc=0.1))
        for _ in range(args.meter_values * args.interval):
            tick(1)
            max_queue = max(max_queue, len(core.queue))
        hal.unplug(1)
        dropped += core.queue.dropped_meter_values
        core.queue.dropped_meter_values = 0
        tick(3)
    if not central.connected:
        central.connect()
    tick(5)
    assert len(core.queue) == 0, "the queue did not drain"

    def totals(names: list[str]) -> dict[str, Any]:
        names = [n for n in names if n in storage.per_blob]
        wc = sum(storage.per_blob[n]["write_calls"] for n in names)
        ac = sum(storage.per_blob[n]["append_calls"] for n in names)
        b = sum(storage.per_blob[n]["write_bytes"] + storage.per_blob[n]["append_bytes"] for n in names)
        s = args.sessions
        return {
            "bytes": b,
            "write_calls": wc,
            "append_calls": ac,
            "storage_calls": wc + ac,
            "bytes_per_session": round(b / s, 1),
            "storage_calls_per_session": round((wc + ac) / s, 2),
        }

    names = sorted(storage.per_blob)
    return {
        "all_blobs": totals(names),
        "queue_and_cache": totals(list(QUEUE_AND_CACHE)),
        "transactions": totals(list(TRANSACTIONS)),
        "per_blob": {n: storage.per_blob[n] for n in names},
        "messages_sent": len(central.actions),
        "meter_values_sampled": central.actions.count("MeterValues") + dropped,
        "meter_values_sent": central.actions.count("MeterValues"),
        "meter_values_dropped_queue_full": dropped,
        "max_queue_length": max_queue,
        "final_blob_bytes": {n: (flash / n).stat().st_size for n in names if (flash / n).exists()},
        "_actions": central.actions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--meter-values", type=int, default=60, help="periodic MeterValues per session")
    ap.add_argument("--interval", type=int, default=10, help="MeterValueSampleInterval, s")
    ap.add_argument("--offline-run", type=int, default=2, help="sessions per online run and per offline run")
    ap.add_argument("--tags", type=int, default=20, help="distinct RFID cards")
    ap.add_argument("--out", help="also write the JSON report here")
    args = ap.parse_args()
    if (
        args.sessions < 1
        or args.meter_values < 1
        or args.interval < 1
        or args.offline_run < 1
        or args.tags < 1
    ):
        ap.error("every count must be >= 1")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-agent-flash-") as tmp:
        journal = run_policy(True, args, Path(tmp))
        rewrite = run_policy(False, args, Path(tmp))
    same = journal.pop("_actions") == rewrite.pop("_actions")

    def ratio(key: str, metric: str) -> float | None:
        new = journal[key][metric]
        return round(rewrite[key][metric] / new, 2) if new else None

    report = {
        "benchmark": "agent_flash",
        "params": {
            "sessions": args.sessions,
            "meter_values_per_session": args.meter_values,
            "sample_interval_s": args.interval,
            "offline_run": args.offline_run,
            "offline_sessions": sum(1 for i in range(args.sessions) if (i // args.offline_run) % 2 == 1),
            "tags": args.tags,
            "queue_cap": QUEUE_CAP,
        },
        "journal": journal,
        "old_full_rewrite": rewrite,
        "same_messages": same,
        "ratio_old_over_journal": {
            "queue_and_cache_bytes": ratio("queue_and_cache", "bytes"),
            "queue_and_cache_storage_calls": ratio("queue_and_cache", "storage_calls"),
            "transactions_bytes": ratio("transactions", "bytes"),
            "transactions_storage_calls": ratio("transactions", "storage_calls"),
            "all_blobs_bytes": ratio("all_blobs", "bytes"),
            "all_blobs_storage_calls": ratio("all_blobs", "storage_calls"),
        },
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
