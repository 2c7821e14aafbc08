"""OCPP server benchmark: many lightweight charge points against a real gateway process, and the same load against a
plain `websockets` echo server (the ceiling), measured in the same run.

    .venv/bin/python bench/bench_ocpp.py --chargers 1000 --rate 500 --duration 20 --max-duration 10

Phases, each run against the gateway and then against the echo server:
  connect  N charge points connect (HTTP Basic, ocpp1.6) and send BootNotification, StatusNotification and
           StartTransaction (one open transaction each, so MeterValues are real session data);
  rate     open loop at --rate msgs/s for --duration s: a message is due every 1/rate s and goes out on a charge point
           with no CALL outstanding (OCPP allows one per direction); latency = send to answer;
  max      closed loop for --max-duration s: every charge point sends its next CALL as soon as the last is answered.
The mix is MeterValues (durable: stored before the answer) and Authorize (--authorize-share). After the run the
stored meter samples are counted to confirm that every answered MeterValues was committed.

--tls: both servers listen on wss:// with the same certificate (EC P-256, made with the openssl CLI in a temporary
directory; the gateway at security profile 2, Basic over TLS): the connect phase then measures a reconnect storm's
TLS handshakes, `connect.server_cpu_s` the server's CPU for it (per charger: `server_cpu_ms_per_charger`).

Measured: connections held, msgs/s, p50/p99/max round trip, gateway CPU (utime+stime from /proc/<pid>/stat) per
phase, gateway peak RSS (VmHWM), load-generator CPU (to show whether the generator was the limit). Output: one JSON
document on stdout (and --out FILE). Targets: 1000 connected, >= 2000 durable msgs/s on one core, p99 <= 20 ms at
500 msgs/s, RSS <= 100 MB with 1000 connections.

CPU placement on a 2-core box: the server under test (gateway or echo) is pinned to --server-cpu, the load
generators to the other cores (all generator processes share them). Both numbers are in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import multiprocessing as mp
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchreport import emit  # noqa: E402  (bench/ is the script's directory)

from hil_tests.certs import SERVER_EXT, make_ca, make_leaf  # noqa: E402
from hil_tests.gateway_proc import (  # noqa: E402
    ChargerSpec,
    GatewayProcess,
    cpu_seconds,
    peak_rss_mb,
    raise_nofile_limit,
)

TAG = "04A2B3C4D5E6F7"
# Concurrent handshakes while connecting the fleet (a real site's chargers come up after a power cut all at once, but
# an unbounded burst only measures the listen backlog).
CONNECT_CONCURRENCY = 100
# Per-CALL answer timeout in the load generator; an answer later than this counts as an error.
ANSWER_TIMEOUT = 30.0
# Time for a phase's outstanding CALLs to drain after the phase ends.
DRAIN_TIMEOUT = 30.0
# The echo server process answers with its URL right after binding; if it died instead, do not wait forever.
ECHO_START_TIMEOUT = 60.0
BASE_TS = 1_767_225_600  # 2026-01-01T00:00:00Z: meter timestamps count up from here, one second per sample


# ---------------------------------------------------------------------------------------------------------------
# load generator (runs in its own processes)
# ---------------------------------------------------------------------------------------------------------------
class LoadCP:
    """One lightweight charge point: a websocket, at most one outstanding CALL, no schema checks."""

    __slots__ = ("answer", "cid", "mid", "password", "reader", "seq", "tx", "ws")

    def __init__(self, cid: str, password: str) -> None:
        self.cid = cid
        self.password = password
        self.ws: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.answer: asyncio.Future[list[Any]] | None = None
        self.mid = ""
        self.seq = itertools.count(1)
        self.tx = 0

    async def connect(self, url: str, tls: ssl.SSLContext | None) -> None:
        from websockets.asyncio.client import connect

        auth = base64.b64encode(f"{self.cid}:{self.password}".encode()).decode()
        self.ws = await connect(
            url + self.cid,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Basic {auth}"},
            compression=None,
            ping_interval=None,
            open_timeout=ANSWER_TIMEOUT,
            close_timeout=2,
            **({"ssl": tls} if tls is not None else {}),
        )
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                msg = json.loads(text)
                if msg[1] == self.mid and self.answer is not None and not self.answer.done():
                    self.answer.set_result(msg)
                elif msg[0] == 2:  # a gateway CALL (not expected during the benchmark): refuse politely
                    await self.ws.send(json.dumps([4, msg[1], "NotImplemented", "bench charge point", {}]))
        except Exception:  # connection lost: the pending CALL fails below
            pass
        finally:
            if self.answer is not None and not self.answer.done():
                self.answer.set_exception(ConnectionError("closed"))

    async def call(self, action: str, payload: dict[str, Any]) -> tuple[list[Any], float]:
        self.mid = f"{next(self.seq)}"
        self.answer = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        await self.ws.send(json.dumps([2, self.mid, action, payload], separators=(",", ":")))
        msg = await asyncio.wait_for(self.answer, ANSWER_TIMEOUT)
        return msg, time.perf_counter() - t0

    def next_message(self, authorize: bool) -> tuple[str, dict[str, Any]]:
        if authorize:
            return "Authorize", {"idTag": TAG}
        n = next(self.seq)
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_TS + n))
        return "MeterValues", {
            "connectorId": 1,
            "transactionId": self.tx,
            "meterValue": [
                {
                    "timestamp": ts,
                    "sampledValue": [
                        {"value": str(n * 10), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
                    ],
                }
            ],
        }


class Tally:
    def __init__(self) -> None:
        self.lat = array("d")
        self.ok = {"MeterValues": 0, "Authorize": 0}
        self.errors = 0
        self.error_samples: list[str] = []
        self.not_sent = 0  # due in the open loop while every charge point had a CALL outstanding

    def record(self, action: str, msg: list[Any] | None, latency: float, echo: bool, err: str = "") -> None:
        good = msg is not None and (msg[0] == 3 or (echo and msg[0] == 2))
        if good:
            self.ok[action] += 1
            self.lat.append(latency)
        else:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(err or json.dumps(msg)[:200])

    def result(self) -> dict[str, Any]:
        return {
            "lat": self.lat.tobytes(),
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "not_sent": self.not_sent,
        }


async def _timed(cp: LoadCP, authorize: bool, tally: Tally, echo: bool) -> None:
    action, payload = cp.next_message(authorize)
    try:
        msg, lat = await cp.call(action, payload)
    except (ConnectionError, TimeoutError, OSError) as e:
        tally.record(action, None, 0.0, echo, f"{type(e).__name__}: {e}")
        return
    tally.record(action, msg, lat, echo)


async def _connect_fleet(cps: list[LoadCP], url: str, echo: bool, ca: str | None) -> dict[str, Any]:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tls = ssl.create_default_context(cafile=ca) if ca else None
    failures: list[str] = []

    async def one(i: int, cp: LoadCP) -> None:
        async with sem:
            try:
                await cp.connect(url, tls)
                boot, _ = await cp.call(
                    "BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "LoadCP"}
                )
                await cp.call(
                    "StatusNotification",
                    {
                        "connectorId": 1,
                        "errorCode": "NoError",
                        "status": "Charging",
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                )
                start, _ = await cp.call(
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": TAG,
                        "meterStart": 0,
                        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    },
                )
                if echo:
                    cp.tx = i + 1
                else:
                    if boot[0] != 3 or boot[2].get("status") != "Accepted" or start[0] != 3:
                        raise RuntimeError(f"boot/start refused: {boot} {start}")
                    cp.tx = start[2]["transactionId"]
            except Exception as e:
                if len(failures) < 5:
                    failures.append(f"{cp.cid}: {type(e).__name__}: {e}")
                else:
                    failures.append("")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, cp) for i, cp in enumerate(cps)))
    return {
        "seconds": time.perf_counter() - t0,
        "failed": len(failures),
        "failures": [f for f in failures if f],
    }


async def _rate_phase(cps: list[LoadCP], rate: float, duration: float, auth_every: int, echo: bool) -> Tally:
    loop = asyncio.get_running_loop()
    tally = Tally()
    free = deque(cp for cp in cps if cp.tx and cp.reader is not None and not cp.reader.done())
    tasks: set[asyncio.Task[None]] = set()
    counter = itertools.count()

    def done(cp: LoadCP, t: asyncio.Task[None]) -> None:
        tasks.discard(t)
        free.append(cp)

    start = loop.time()
    sent = 0
    while True:
        now = loop.time()
        if now - start >= duration:
            break
        due = int((now - start) * rate) - sent
        for _ in range(due):
            sent += 1
            if not free:
                tally.not_sent += 1
                continue
            cp = free.popleft()
            t = asyncio.create_task(_timed(cp, next(counter) % auth_every == auth_every - 1, tally, echo))
            tasks.add(t)
            t.add_done_callback(lambda t, cp=cp: done(cp, t))
        await asyncio.sleep(max(0.0, start + (sent + 1) / rate - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
    return tally


async def _max_phase(cps: list[LoadCP], duration: float, auth_every: int, echo: bool) -> Tally:
    loop = asyncio.get_running_loop()
    tally = Tally()
    deadline = loop.time() + duration
    counter = itertools.count()

    async def drive(cp: LoadCP) -> None:
        while loop.time() < deadline and cp.reader is not None and not cp.reader.done():
            await _timed(cp, next(counter) % auth_every == auth_every - 1, tally, echo)

    await asyncio.gather(*(drive(cp) for cp in cps if cp.tx))
    return tally


async def _worker_loop(pipe: Any, charger_ids: list[tuple[str, str]]) -> None:
    loop = asyncio.get_running_loop()
    cps = [LoadCP(cid, pw) for cid, pw in charger_ids]
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        op = cmd["op"]
        if op == "connect":
            result: dict[str, Any] = await _connect_fleet(cps, cmd["url"], cmd["echo"], cmd.get("ca"))
        elif op == "rate":
            result = (
                await _rate_phase(cps, cmd["rate"], cmd["duration"], cmd["auth_every"], cmd["echo"])
            ).result()
        elif op == "max":
            result = (await _max_phase(cps, cmd["duration"], cmd["auth_every"], cmd["echo"])).result()
        elif op == "held":
            result = {"open": sum(1 for cp in cps if cp.reader is not None and not cp.reader.done())}
        elif op == "close":
            await asyncio.gather(*(cp.ws.close() for cp in cps if cp.ws is not None), return_exceptions=True)
            for cp in cps:
                if cp.reader is not None:
                    cp.reader.cancel()
            cps = [LoadCP(cid, pw) for cid, pw in charger_ids]
            result = {}
        elif op == "exit":
            pipe.send({})
            return
        else:
            result = {"error": f"unknown op {op}"}
        result["cpu_s"] = time.process_time() - cpu0
        result["wall_s"] = time.perf_counter() - t0
        pipe.send(result)


def worker_main(pipe: Any, charger_ids: list[tuple[str, str]], cpus: list[int] | None) -> None:
    raise_nofile_limit()
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    asyncio.run(_worker_loop(pipe, charger_ids))


# ---------------------------------------------------------------------------------------------------------------
# echo server (the ceiling): same websockets library, same settings, no OCPP
# ---------------------------------------------------------------------------------------------------------------
def echo_main(pipe: Any, cpu: int | None, cert: tuple[str, str] | None) -> None:
    raise_nofile_limit()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        from websockets.asyncio.server import serve

        async def echo(ws: Any) -> None:
            async for msg in ws:
                await ws.send(msg)

        tls = None
        if cert is not None:  # the gateway's settings (gateway.ocpp.tls): TLS 1.2+, Python's default suites
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(*cert)
        async with serve(
            echo,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6"],
            compression=None,
            max_size=65536,
            max_queue=32,
            **({"ssl": tls} if tls is not None else {}),
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            scheme = "wss" if tls is not None else "ws"
            pipe.send({"url": f"{scheme}://127.0.0.1:{port}/ocpp/", "pid": os.getpid()})
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # wait for "stop"

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------------------------
class Workers:
    def __init__(self, ctx: Any, chargers: list[tuple[str, str]], procs: int, cpus: list[int] | None) -> None:
        self.pipes = []
        self.procs = []
        for k in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, chargers[k::procs], cpus), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def all(self, cmd: dict[str, Any], per_worker: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send({**cmd, **(per_worker or {})})
        return [pipe.recv() for pipe in self.pipes]

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send({"op": "exit"})
                pipe.recv()
            except (EOFError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def _pct(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 3)


def _merge(results: list[dict[str, Any]], server_cpu_s: float) -> dict[str, Any]:
    lat: list[float] = []
    for r in results:
        a = array("d")
        a.frombytes(r["lat"])
        lat.extend(x * 1000 for x in a)
    lat.sort()
    wall = max(r["wall_s"] for r in results)
    ok = {k: sum(r["ok"][k] for r in results) for k in results[0]["ok"]}
    answered = sum(ok.values())
    return {
        "answered": answered,
        "answered_by_action": ok,
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:5],
        "due_but_every_cp_busy": sum(r.get("not_sent", 0) for r in results),
        "wall_s": round(wall, 3),
        "msgs_per_s": round(answered / wall, 1) if wall else None,
        "rtt_ms": {
            "p50": _pct(lat, 0.50),
            "p90": _pct(lat, 0.90),
            "p99": _pct(lat, 0.99),
            "max": round(lat[-1], 3) if lat else None,
            "mean": round(statistics.fmean(lat), 3) if lat else None,
        },
        "server_cpu_util": round(server_cpu_s / wall, 3) if wall else None,
        "loadgen_cpu_util": round(sum(r["cpu_s"] for r in results) / wall, 3) if wall else None,
    }


def run_target(
    name: str,
    url: str,
    pid: int,
    workers: Workers,
    args: argparse.Namespace,
    auth_every: int,
    ca: str | None = None,
) -> dict[str, Any]:
    echo = name == "echo"
    out: dict[str, Any] = {}
    c0 = cpu_seconds(pid)
    conn = workers.all({"op": "connect", "url": url, "echo": echo, "ca": ca})
    server_cpu = cpu_seconds(pid) - c0
    out["connect"] = {
        "seconds": round(max(r["seconds"] for r in conn), 2),
        "failed": sum(r["failed"] for r in conn),
        "failures": [f for r in conn for f in r["failures"]][:5],
        "tls": ca is not None,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_ms_per_charger": round(server_cpu * 1000 / max(1, args.chargers), 3),
    }
    out["connections_held_after_connect"] = sum(r["open"] for r in workers.all({"op": "held"}))
    per_worker_rate = args.rate / len(workers.pipes)
    c0, t0 = cpu_seconds(pid), _cpu_ticks()
    res = workers.all(
        {
            "op": "rate",
            "rate": per_worker_rate,
            "duration": args.duration,
            "auth_every": auth_every,
            "echo": echo,
        }
    )
    out["rate"] = {"offered_msgs_per_s": args.rate, **_merge(res, cpu_seconds(pid) - c0)}
    out["rate"]["cpu_busy_all_processes"] = _cpu_busy(t0)
    c0, t0 = cpu_seconds(pid), _cpu_ticks()
    res = workers.all({"op": "max", "duration": args.max_duration, "auth_every": auth_every, "echo": echo})
    out["max"] = _merge(res, cpu_seconds(pid) - c0)
    out["max"]["cpu_busy_all_processes"] = _cpu_busy(t0)
    out["connections_held_at_end"] = sum(r["open"] for r in workers.all({"op": "held"}))
    out["peak_rss_mb"] = round(peak_rss_mb(pid), 1)
    workers.all({"op": "close"})
    return out


def _cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat: how busy each core was, whoever used it."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + v[4]  # idle + iowait
                out[name] = (sum(v) - idle, sum(v))
    return out


def _cpu_busy(before: dict[str, tuple[int, int]]) -> dict[str, float]:
    after = _cpu_ticks()
    return {
        k: round((after[k][0] - before[k][0]) / max(1, after[k][1] - before[k][1]), 3)
        for k in after
        if k in before
    }


def _committed(gw: GatewayProcess) -> int:
    conn = sqlite3.connect(gw.db_path, timeout=30)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM meter_samples").fetchone()[0])
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=500.0, help="offered msgs/s in the open-loop phase")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of the open-loop phase")
    ap.add_argument(
        "--max-duration", type=float, default=10.0, help="seconds of the closed-loop (max rate) phase"
    )
    ap.add_argument("--authorize-share", type=float, default=0.2, help="share of Authorize in the mix")
    ap.add_argument("--procs", type=int, default=1, help="load generator processes")
    ap.add_argument(
        "--server-cpu", type=int, default=0, help="CPU the server under test is pinned to (-1: none)"
    )
    ap.add_argument("--no-validate", action="store_true", help="gateway [ocpp].validate_schemas = false")
    ap.add_argument("--skip-echo", action="store_true")
    ap.add_argument(
        "--tls", action="store_true", help="wss:// (security profile 2) for the gateway and the echo"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    nofile = raise_nofile_limit()
    ncpu = os.cpu_count() or 1
    server_cpu = None if args.server_cpu < 0 or ncpu < 2 else args.server_cpu
    gen_cpus = [c for c in sorted(os.sched_getaffinity(0)) if c != server_cpu] or None
    need_fds = args.chargers // max(1, args.procs) + 100
    if nofile < need_fds or nofile < args.chargers + 100:
        print(f"RLIMIT_NOFILE {nofile} is below what {args.chargers} connections need", file=sys.stderr)
        return 2
    auth_every = max(1, round(1 / args.authorize_share)) if args.authorize_share > 0 else 10**9

    chargers = [ChargerSpec(f"B{i:05d}", connectors=1) for i in range(args.chargers)]
    ids = [(c.id, c.secret) for c in chargers]
    ctx = mp.get_context("spawn")
    report: dict[str, Any] = {
        "benchmark": "ocpp",
        "params": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}},
        "machine": {
            "cpus": ncpu,
            "server_cpu": server_cpu,
            "loadgen_cpus": gen_cpus,
            "loadgen_procs": args.procs,
            "rlimit_nofile": nofile,
            "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg(),
        },
        "notes": [
            "server under test pinned to one CPU, load generators on the other(s); other processes on the box "
            "(concurrent builds/tests) add noise -- see loadavg_at_start",
            "rtt = websocket send to answer received, measured in the load generator (open loop: charge points with "
            "a CALL outstanding are skipped, counted in due_but_every_cp_busy)",
            "loadgen_cpu_util near 1.0 per generator CPU means the generator, not the server, was the limit",
            "cpu_busy_all_processes: how busy each core was during the phase, whoever used it (/proc/stat); "
            "busy well above server+loadgen utilisation means other work on the box competed",
        ],
    }
    workers = Workers(ctx, ids, args.procs, gen_cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ocpp-") as tmp:
            ocpp: dict[str, Any] = {"heartbeat_interval": 3600, "validate_schemas": not args.no_validate}
            ca = cert = None
            if args.tls:
                certs = Path(tmp) / "certs"
                certs.mkdir()
                make_ca(certs, "ca")
                make_leaf(certs, "gateway", "/CN=127.0.0.1", "ca", SERVER_EXT)
                ca, cert = str(certs / "ca.pem"), (str(certs / "gateway.pem"), str(certs / "gateway.key"))
                ocpp.update(host="127.0.0.1", tls_cert=cert[0], tls_key=cert[1])
            gw = GatewayProcess(
                Path(tmp) / "gw",
                chargers=chargers,
                ocpp=ocpp,
                allow=[TAG],
                cpu=server_cpu,
                env={"PYTHONWARNINGS": "ignore"},
            )
            gw.start(timeout=120)
            try:
                rss_idle = peak_rss_mb(gw.pid)
                samples_before = _committed(gw)
                g = run_target("gateway", gw.ocpp_url, gw.pid, workers, args, auth_every, ca)
                g["peak_rss_mb_before_connect"] = round(rss_idle, 1)
                g["gateway_cpu_total_s"] = round(cpu_seconds(gw.pid), 2)
                answered_mv = (
                    g["rate"]["answered_by_action"]["MeterValues"]
                    + g["max"]["answered_by_action"]["MeterValues"]
                )
                committed = _committed(gw) - samples_before
                g["durability_check"] = {
                    "meter_values_answered": answered_mv,
                    "meter_samples_committed": committed,
                    "all_answered_are_committed": committed >= answered_mv,
                }
                report["gateway"] = g
            finally:
                gw.stop()
                stderr_tail = [ln for ln in gw.output().splitlines() if "ERROR" in ln or "Traceback" in ln][
                    :10
                ]
                if stderr_tail:
                    report["gateway_errors"] = stderr_tail
            if not args.skip_echo:
                parent, child = ctx.Pipe()
                ep = ctx.Process(target=echo_main, args=(child, server_cpu, cert), daemon=True)
                ep.start()
                if not parent.poll(ECHO_START_TIMEOUT):
                    raise RuntimeError(f"the echo server did not start within {ECHO_START_TIMEOUT} s")
                info = parent.recv()
                try:
                    report["echo"] = run_target(
                        "echo", info["url"], info["pid"], workers, args, auth_every, ca
                    )
                finally:
                    parent.send("stop")
                    ep.join(timeout=10)
                    if ep.is_alive():
                        ep.kill()
    finally:
        workers.stop()

    g = report["gateway"]
    if "echo" in report:
        e = report["echo"]
        report["ratio_to_echo"] = {
            "max_msgs_per_s": round(g["max"]["msgs_per_s"] / e["max"]["msgs_per_s"], 3)
            if e["max"]["msgs_per_s"]
            else None,
            "rate_p99": round(g["rate"]["rtt_ms"]["p99"] / e["rate"]["rtt_ms"]["p99"], 2)
            if g["rate"]["rtt_ms"]["p99"] and e["rate"]["rtt_ms"]["p99"]
            else None,
            "peak_rss": round(g["peak_rss_mb"] / e["peak_rss_mb"], 2) if e["peak_rss_mb"] else None,
            "connect_server_cpu": round(g["connect"]["server_cpu_s"] / e["connect"]["server_cpu_s"], 2)
            if e["connect"]["server_cpu_s"]
            else None,
        }
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    p99 = g["rate"]["rtt_ms"]["p99"]
    max_util = g["max"]["server_cpu_util"] or 0
    report["targets"] = {
        "connected_1000": {
            "target": 1000,
            "measured": g["connections_held_at_end"],
            "met": g["connections_held_at_end"] >= 1000,
        },
        "durable_msgs_per_s_one_core": {
            "target": 2000,
            "measured": g["max"]["msgs_per_s"],
            "met": bool(g["max"]["msgs_per_s"] and g["max"]["msgs_per_s"] >= 2000 and max_util <= 1.05),
            "server_cpu_util": max_util,
        },
        "p99_ms_at_500": {
            "target": 20,
            "measured": p99,
            "offered": args.rate,
            "met": bool(p99 is not None and p99 <= 20 and args.rate >= 500),
        },
        "rss_mb_with_1000": {
            "target": 100,
            "measured": g["peak_rss_mb"],
            "met": g["peak_rss_mb"] <= 100 and args.chargers >= 1000,
        },
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
