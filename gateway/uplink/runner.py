"""A stand-alone uplink process for system tests and benchmarks: opens a Store, optionally fills the outbox with
simulated sessions and meter readings (through the real `events.emit` and the real transactions table), and
runs the Uplink until SIGTERM/SIGINT (graceful) or SIGKILL.

    python -m gateway.uplink.runner --data DIR --port 1883 --fill-sessions 20 --readings-per-session 50

Writes `<DIR>/uplink-stats.json` (Uplink.stats()) every STATS_INTERVAL_S and prints one line
`uplink-runner: ready` once the outbox is filled and the uplink is starting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from gateway import events as ev
from gateway.events import ConnectorStatus, StatusBus
from gateway.store import Store
from gateway.uplink.cdr import build_session_record
from gateway.uplink.config import UplinkSection
from gateway.uplink.service import Uplink

# How often the stats file is rewritten (tests poll it).
STATS_INTERVAL_S = 0.2


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def emit_session(conn: sqlite3.Connection, charger: str, connector: int, readings: int, t0: float) -> int:
    """One complete simulated session, as the OCPP handlers would record it: transaction row, meter samples and
    the events (started, readings, updates, stopped, record), all in the caller's transaction."""
    tx_start = 100_000 + int(t0) % 1000
    cur = conn.execute(
        "INSERT INTO transactions (charger_id, connector_id, id_tag, auth_status, auth_method, meter_start, "
        "start_ts, started_at, start_key) VALUES (?, ?, ?, 'Accepted', 'WHITELIST', ?, ?, ?, ?)",
        (charger, connector, "04A2B3C4D5E6F7", tx_start, iso(t0), t0, f"{charger}/{connector}/{t0}"),
    )
    tx = cur.lastrowid
    assert tx is not None
    # bodies shaped as gateway/csms.py records them
    ev.emit(conn, ev.SESSION_STARTED, {"tx": tx, "charger": charger, "connector": connector,
            "id_tag": "04A2B3C4D5E6F7", "meter_start_wh": tx_start, "start": iso(t0), "auth_status": "Accepted",
            "auth_method": "WHITELIST"}, charger_id=charger, charger_ts=iso(t0), now=t0)  # fmt: skip
    energy = tx_start
    t = t0
    for i in range(readings):
        t += 60
        energy += 183
        conn.execute(
            "INSERT INTO meter_samples (charger_id, connector_id, transaction_id, charger_ts, measurand, unit, "
            "value, source, received_at) VALUES (?, ?, ?, ?, 'Energy.Active.Import.Register', 'Wh', ?, 'meter', ?)",
            (charger, connector, tx, iso(t), str(energy), t),
        )
        body = {
            "tx": tx,
            "charger": charger,
            "connector": connector,
            "ts": iso(t),
            "samples": [["Energy.Active.Import.Register", "", "", "Wh", str(energy), "", ""]],
        }
        ev.emit(conn, ev.METER_READING, body, charger_id=charger, charger_ts=iso(t), droppable=True, now=t)
        if i % 10 == 9:
            update = {"tx": tx, "charger": charger, "connector": connector, "energy_wh": energy - tx_start,
                      "power_w": None, "ts": iso(t)}  # fmt: skip
            ev.emit(conn, ev.SESSION_UPDATE, update, charger_id=charger, charger_ts=iso(t), now=t)
    t += 30
    conn.execute(
        "INSERT INTO meter_samples (charger_id, connector_id, transaction_id, charger_ts, measurand, context, "
        "unit, format, value, source, received_at) VALUES (?, ?, ?, ?, 'Energy.Active.Import.Register', "
        "'Transaction.End', 'Wh', 'SignedData', ?, 'stop', ?)",
        (charger, connector, tx, iso(t), f'OCMF|{{"RD":[{{"RV":{energy}}}]}}|{{"SD":"3045"}}', t),
    )
    conn.execute(
        "UPDATE transactions SET meter_stop = ?, stop_ts = ?, stopped_at = ?, stop_reason = 'Local', "
        "energy_wh = ?, state = 'stopped' WHERE id = ?",
        (energy, iso(t), t, energy - tx_start, tx),
    )
    ev.emit(conn, ev.SESSION_STOPPED, {"tx": tx, "charger": charger, "connector": connector,
            "meter_stop_wh": energy, "energy_wh": energy - tx_start, "stop": iso(t), "reason": "Local",
            "id_tag": None},
            charger_id=charger, charger_ts=iso(t), now=t)  # fmt: skip
    ev.emit(
        conn, ev.SESSION_RECORD, build_session_record(conn, tx), charger_id=charger, charger_ts=iso(t), now=t
    )
    return tx


def fill(store: Store, sessions: int, readings: int, chargers: int) -> int:
    t0 = time.time()
    for i in range(sessions):
        charger = f"CP{i % chargers + 1}"
        store.write_sync(lambda c, ch=charger, k=i: emit_session(c, ch, 1, readings, t0 + k))  # type: ignore[misc]
    n: int = store.read(
        lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    )
    return n


async def amain(args: argparse.Namespace) -> int:
    data = Path(args.data)
    store = Store.open(data)
    if args.fill_sessions:
        fill(store, args.fill_sessions, args.readings_per_session, args.chargers)
    cfg = UplinkSection(
        enabled=True,
        host=args.host,
        port=args.port,
        protocol=5 if args.protocol == "5" else "3.1.1",
        username=args.username or "",
        password=os.environ.get("UPLINK_PASSWORD", ""),
        tls=bool(args.tls_ca),
        tls_ca=args.tls_ca or "",
        tls_cert=args.tls_cert or "",
        tls_key=args.tls_key or "",
        encoding=args.encoding,
        batch_max=args.batch_max,
        outbox_budget_mb=args.budget_mb,
        reconnect_max=args.reconnect_max,
    )
    bus = StatusBus()
    uplink = Uplink(cfg, store, bus, args.gateway_id)
    stats_path = data / "uplink-stats.json"

    async def write_stats() -> None:
        while True:
            s = await uplink.stats()
            tmp = stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(s))
            tmp.replace(stats_path)
            await asyncio.sleep(STATS_INTERVAL_S)

    async def live(n: int) -> None:
        # sessions recorded while the uplink runs (broker outages mid-stream)
        for i in range(n):
            t0 = time.time() + i

            def record(c: sqlite3.Connection, t0: float = t0) -> int:
                return emit_session(c, "CP9", 2, args.readings_per_session, t0)

            await store.write(record)
            uplink.wake()
            bus.publish_status(ConnectorStatus("CP9", 2, "Charging" if i % 2 else "Available", "NoError", None,
                                               iso(time.time()), time.time()))  # fmt: skip
            await asyncio.sleep(args.live_interval)

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    bus.publish_presence("CP1", True)
    bus.publish_status(ConnectorStatus("CP1", 1, "Available", "NoError", None, iso(time.time()), time.time()))
    print("uplink-runner: ready", flush=True)
    tasks = [asyncio.create_task(uplink.run()), asyncio.create_task(write_stats())]
    if args.live_sessions:
        tasks.append(asyncio.create_task(live(args.live_sessions)))
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        pass
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gateway.uplink.runner")
    p.add_argument("--data", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gateway-id", default="gw-test")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--username")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--encoding", choices=["cbor", "json"], default="cbor")
    p.add_argument("--batch-max", type=int, default=500)
    p.add_argument("--budget-mb", type=float, default=256.0)
    p.add_argument("--reconnect-max", type=float, default=60.0)
    p.add_argument("--fill-sessions", type=int, default=0)
    p.add_argument("--readings-per-session", type=int, default=20)
    p.add_argument("--chargers", type=int, default=4)
    p.add_argument("--live-sessions", type=int, default=0)
    p.add_argument("--live-interval", type=float, default=0.2)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
