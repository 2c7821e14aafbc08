"""Authorization over OCPP websockets (issue #3): Authorize round trip against a real gateway process with an empty
token store and with 1,000,000 tokens in it, under 200 msgs/s of other traffic; the time to apply a 1,000,000-token
full list and a 10,000-token differential to the running gateway's store, and the gateway's RSS.

    .venv/bin/python bench/bench_auth_ws.py [--tokens 1000000] [--diff 10000] [--duration 30] [--out FILE]

Setup: a real gateway (`python -m gateway.cli run`, hil_tests.gateway_proc.GatewayProcess) pinned to --server-cpu;
one load-generator process (bench_ocpp.LoadCP charge points) pinned to the other CPU(s). --chargers charge points
connect (BootNotification, StatusNotification, StartTransaction); --auth-chargers of them send Authorize (open loop,
--auth-rate/s; 3 in 4 for a random token of the list, 1 in 4 for an unknown token), the others send the background
traffic (open loop, --rate/s; 3 MeterValues : 1 Heartbeat). Traffic runs through all phases:

  warmup             discarded
  baseline_empty     empty token store (only the config's allow-list token): the same-run baseline
  during_full_apply  while the full list is applied
  input_list_release the benchmark frees its own input list (a million dicts: ~60 ms of the applying process's event
                     loop; not part of the apply, reported apart)
  loaded             the list in the store (1,000,000 tokens by default)
  during_diff_apply  while the differential is applied
  after_diff         the list after the differential

How the lists get into the running gateway: without a broker in the benchmark no downlink token-list command reaches
the gateway process (the MQTT path is measured by hil_tests/test_uplink_token_lists.py), and the control socket has
no token-list op. By default
(--applier gateway) the benchmark puts a sitecustomize.py on the gateway's PYTHONPATH that registers ONE extra
control op calling the gateway's own `AuthService.apply_token_list` on its event loop -- the call the downlink makes;
nothing else in the gateway changes. The input list is built inside the gateway beforehand, untimed (the downlink
would hand over a decoded list; MQTT transfer and decode are not included). --applier process applies from a helper
process on the gateway's SQLite file instead (two writers taking turns on SQLite's lock, like `chargegate tokens
import`). Either way the list is live for the very next Authorize (checked: listed tokens are answered
Accepted/Blocked in `loaded`, Invalid in `baseline_empty`).
RSS: the gateway's VmRSS/VmHWM (/proc/<pid>/status) at each step; the apply's own memory growth is the applying
process's peak (VmHWM reset via clear_refs when the apply starts) minus its VmRSS before the apply, the input list
measured apart. Same-run floors: a bare durable SQLite commit in the same directory, and the same load against a
plain websockets echo server (bench_ocpp.echo_main) on the gateway's CPU (--skip-echo), 1,000 4 KiB fsyncs.
Where an Authorize's time goes (--applier gateway): the same sitecustomize.py times Csms.authorize, the decision's
lookups and every store operation's queue wait / run / commit inside the gateway (GatewayProbe, timing only), per
phase; `authorize_breakdown_loaded` prints them next to the loaded phase's Authorize round trip and the floors.

Prints one JSON object (and --out FILE). Targets (issue #3): Authorize p99 <= 5 ms with the list in place; full list
<= 15 s; differential <= 1 s; RSS growth from the token list <= 150 MB. During the full apply: Authorize p99 <= 10 ms
and other traffic p99 <= 50 ms; `during_full_apply_vs_idle` puts them next to the same run's idle phases (ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import itertools
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_ocpp  # noqa: E402
from bench_auth import make_tokens, reset_peak, rss_kb, token_id  # noqa: E402
from bench_ocpp import TAG, LoadCP, Workers, _connect_fleet, _cpu_ticks, _pct  # noqa: E402

from hil_tests.gateway_proc import ChargerSpec, GatewayProcess, cpu_seconds, raise_nofile_limit  # noqa: E402

TARGETS = {
    "authorize_p99_ms": 5.0,
    "full_list_s": 15.0,
    "differential_s": 1.0,
    "rss_growth_mb": 150.0,
    # a driver tapping a card while the eMSP pushes a list must not wait (issue: list apply stalls chargers)
    "authorize_p99_ms_during_full_apply": 10.0,
    "other_p99_ms_during_full_apply": 50.0,
}
# Outstanding CALLs of a phase may finish after the next phase began; at the end they get this long to drain.
DRAIN_TIMEOUT = bench_ocpp.DRAIN_TIMEOUT
# Share of Authorize requests for tokens that are not in the list (answered by the offline policy: reject).
UNKNOWN_EVERY = 4
# Control-socket wait for building / applying a list inside the gateway (a 1M list takes ~10-20 s on a busy box).
APPLY_TIMEOUT = 600.0
LIST_APPLY_METHOD = {
    "gateway": "AuthService.apply_token_list of the running gateway, on its event loop, called through one extra "
    "control-socket op a sitecustomize.py registers in the gateway process (no broker in this benchmark, and the "
    "control socket has no token-list op); input list built in the gateway beforehand, untimed (no MQTT decode)",
    "process": "AuthService.apply_token_list in a helper process on the running gateway's SQLite file (WAL), pinned "
    "to the gateway's CPU: two writers taking turns on SQLite's write lock",
}
CATEGORIES = ("Authorize_listed", "Authorize_unknown", "MeterValues", "Heartbeat")


# ---------------------------------------------------------------------------------------------------------------
# load generator (its own process)
# ---------------------------------------------------------------------------------------------------------------
class PhaseTally:
    def __init__(self) -> None:
        self.lat: dict[str, array[float]] = {c: array("d") for c in CATEGORIES}
        self.status: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES if c.startswith("Authorize")}
        self.errors = 0
        self.error_samples: list[str] = []
        self.not_sent = {"auth": 0, "traffic": 0}
        self.echo = False

    def result(self) -> dict[str, Any]:
        return {
            "lat": {c: a.tobytes() for c, a in self.lat.items()},
            "status": {c: dict(s) for c, s in self.status.items()},
            "errors": self.errors,
            "error_samples": self.error_samples,
            "not_sent": self.not_sent,
        }


class Phases:
    """The tally of the current phase; a CALL counts in the phase it was sent in."""

    def __init__(self) -> None:
        self.tallies: dict[str, PhaseTally] = {}
        self.current: PhaseTally = PhaseTally()
        self.echo = False  # against the echo server: a good answer is the CALL itself

    def begin(self, name: str) -> None:
        self.current = self.tallies[name] = PhaseTally()
        self.current.echo = self.echo


Message = tuple[str, dict[str, Any], str]  # action, payload, category


class Mix:
    """What the charge points send: Authorize for random listed tokens (every UNKNOWN_EVERY-th unknown), and
    background traffic of 3 MeterValues (of the charge point's open transaction) : 1 Heartbeat."""

    def __init__(self, seed: int, n_tokens: int) -> None:
        self.rng = random.Random(seed)
        self.n_tokens = n_tokens
        self.n_auth = 0
        self.n_traffic = 0

    def authorize(self, cp: LoadCP) -> Message:
        self.n_auth += 1
        if self.n_auth % UNKNOWN_EVERY == 0:
            return "Authorize", {"idTag": f"FF{self.rng.getrandbits(48):012X}"}, "Authorize_unknown"
        return "Authorize", {"idTag": token_id(self.rng.randrange(self.n_tokens))}, "Authorize_listed"

    def traffic(self, cp: LoadCP) -> Message:
        self.n_traffic += 1
        if self.n_traffic % 4 == 0:
            return "Heartbeat", {}, "Heartbeat"
        action, payload = cp.next_message(False)
        return action, payload, action


async def _one(cp: LoadCP, message: Message, tally: PhaseTally) -> None:
    action, payload, cat = message
    try:
        msg, lat = await cp.call(action, payload)
    except (ConnectionError, TimeoutError, OSError) as e:
        tally.errors += 1
        if len(tally.error_samples) < 5:
            tally.error_samples.append(f"{action}: {type(e).__name__}: {e}")
        return
    if msg[0] != 3 and not (tally.echo and msg[0] == 2):
        tally.errors += 1
        if len(tally.error_samples) < 5:
            tally.error_samples.append(json.dumps(msg)[:200])
        return
    tally.lat[cat].append(lat)
    if cat in tally.status and msg[0] == 3:
        tally.status[cat][str(msg[2].get("idTagInfo", {}).get("status"))] += 1


async def _open_loop(
    cps: list[LoadCP],
    rate: float,
    make: Callable[[LoadCP], Message],
    group: str,
    phases: Phases,
    stop: asyncio.Event,
) -> None:
    """A message falls due every 1/rate s and goes out on a charge point with no CALL outstanding (as
    bench_ocpp's rate phase); due messages finding every charge point busy are counted, not delayed."""
    loop = asyncio.get_running_loop()
    free = deque(cp for cp in cps if cp.tx)
    inflight: set[asyncio.Task[None]] = set()

    def done(cp: LoadCP, t: asyncio.Task[None]) -> None:
        inflight.discard(t)
        free.append(cp)

    start = loop.time()
    sent = 0
    while not stop.is_set():
        due = int((loop.time() - start) * rate) - sent
        for _ in range(due):
            sent += 1
            tally = phases.current
            if not free:
                tally.not_sent[group] += 1
                continue
            cp = free.popleft()
            t = asyncio.create_task(_one(cp, make(cp), tally))
            inflight.add(t)
            t.add_done_callback(functools.partial(done, cp))
        await asyncio.sleep(max(0.0, start + (sent + 1) / rate - loop.time()))
    if inflight:
        await asyncio.wait(inflight, timeout=DRAIN_TIMEOUT)


async def _worker_loop(
    pipe: Any, traffic_ids: list[tuple[str, str]], auth_ids: list[tuple[str, str]]
) -> None:
    loop = asyncio.get_running_loop()
    traffic = [LoadCP(cid, pw) for cid, pw in traffic_ids]
    auth = [LoadCP(cid, pw) for cid, pw in auth_ids]
    phases = Phases()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    cpu0 = time.process_time()
    while True:
        cmd = await loop.run_in_executor(None, pipe.recv)
        op = cmd["op"]
        result: dict[str, Any] = {}
        if op == "connect":
            result = await _connect_fleet(traffic + auth, cmd["url"], False, None)
        elif op == "echo_connect":
            await asyncio.gather(
                *(cp.ws.close() for cp in traffic + auth if cp.ws is not None), return_exceptions=True
            )
            traffic = [LoadCP(cid, pw) for cid, pw in traffic_ids]
            auth = [LoadCP(cid, pw) for cid, pw in auth_ids]
            phases.echo = True
            result = await _connect_fleet(traffic + auth, cmd["url"], True, None)
        elif op == "start":
            stop = asyncio.Event()
            mix = Mix(cmd["seed"], cmd["tokens"])
            phases.begin(cmd["phase"])
            cpu0 = time.process_time()
            tasks = [
                asyncio.create_task(_open_loop(auth, cmd["auth_rate"], mix.authorize, "auth", phases, stop)),
                asyncio.create_task(_open_loop(traffic, cmd["rate"], mix.traffic, "traffic", phases, stop)),
            ]
        elif op == "phase":
            phases.begin(cmd["phase"])
        elif op == "stop":
            stop.set()
            await asyncio.gather(*tasks)
            result = {
                "phases": {name: t.result() for name, t in phases.tallies.items()},
                "cpu_s": time.process_time() - cpu0,
            }
        elif op == "held":
            result = {
                "open": sum(1 for cp in traffic + auth if cp.reader is not None and not cp.reader.done())
            }
        elif op == "exit":
            await asyncio.gather(
                *(cp.ws.close() for cp in traffic + auth if cp.ws is not None), return_exceptions=True
            )
            pipe.send({})
            return
        pipe.send(result)


def worker_main(
    pipe: Any, traffic_ids: list[tuple[str, str]], auth_ids: list[tuple[str, str]], cpus: list[int] | None
) -> None:
    raise_nofile_limit()
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    asyncio.run(_worker_loop(pipe, traffic_ids, auth_ids))


# ---------------------------------------------------------------------------------------------------------------
# list applier (its own process, on the running gateway's store)
# ---------------------------------------------------------------------------------------------------------------
def make_differential(n_tokens: int, n_diff: int) -> list[dict[str, object]]:
    """Same mix as bench_auth.py: 1/3 removals, 1/3 status changes of listed tokens, 1/3 new tokens."""
    diff: list[dict[str, object]] = []
    for k in range(n_diff):
        if k % 3 == 0:
            diff.append({"id": token_id(k * 97 % n_tokens)})
        elif k % 3 == 1:
            diff.append({"id": token_id(k * 89 % n_tokens), "status": "Blocked"})
        else:
            diff.append({"id": f"0A{k:012X}", "status": "Accepted"})
    return diff


class ListApplier:
    """Builds the input lists (untimed; the downlink would hand apply_token_list a decoded list) and applies them
    with an AuthService, measuring time and this process's memory."""

    def __init__(self, apply: Callable[..., Any]) -> None:
        self.apply_token_list = apply
        self.lists: dict[str, list[dict[str, object]]] = {}
        # applied input lists, freed by release() (not at the end of apply(): freeing a million dicts takes ~60 ms
        # on the event loop, which would count as list-apply time of the gateway; release() is its own phase)
        self.spent: list[list[dict[str, object]]] = []

    def prepare(self, n_tokens: int, n_diff: int) -> dict[str, Any]:
        r0 = rss_kb()
        t0 = time.perf_counter()
        self.lists["full"] = make_tokens(n_tokens)
        self.lists["differential"] = make_differential(n_tokens, n_diff)
        return {
            "pid": os.getpid(),
            "build_s": round(time.perf_counter() - t0, 2),
            "input_lists_rss_mb": round((rss_kb() - r0) / 1024, 1),
        }

    async def apply(self, kind: str, version: int, base_version: int | None) -> dict[str, Any]:
        tokens = self.lists.pop(kind)
        peak_ok = reset_peak()
        before = rss_kb()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        ok, msg = await self.apply_token_list(kind, version, base_version, tokens)
        seconds = time.perf_counter() - t0
        peak = rss_kb("VmHWM") if peak_ok else rss_kb()
        entries = len(tokens)
        self.spent.append(tokens)
        del tokens
        return {
            "pid": os.getpid(),
            "ok": ok,
            "message": msg,
            "entries": entries,
            "seconds": round(seconds, 3),
            "process_cpu_s": round(time.process_time() - cpu0, 2),
            "rss_growth_mb": round((peak - before) / 1024, 1),
            "rss_growth_kind": "peak (VmHWM after clear_refs) minus VmRSS before the apply"
            if peak_ok
            else "VmRSS after minus before (clear_refs unavailable)",
        }

    def release(self) -> dict[str, Any]:
        """Free the applied input lists (timed: the bench's own cost, on the applying process's event loop)."""
        t0 = time.perf_counter()
        n = sum(len(x) for x in self.spent)
        self.spent.clear()
        return {"entries": n, "ms": round((time.perf_counter() - t0) * 1000.0, 1)}


# In the gateway process (--applier gateway): the benchmark puts a sitecustomize.py on the gateway's PYTHONPATH that
# calls install_gateway_hook(), which registers one extra control-socket op calling the gateway's own
# AuthService.apply_token_list on its event loop -- what the MQTT downlink's TokenListSink calls. Nothing else in the
# gateway changes.
GATEWAY_OP = "bench_token_list"
SITECUSTOMIZE = (
    "import sys\n"
    f"sys.path.insert(0, {str(REPO / 'bench')!r})\n"
    "import bench_auth_ws\n"
    "bench_auth_ws.install_gateway_hook()\n"
)


PROBE_OP = "bench_probe"
# Labels of the store operations the probe tells apart (a context variable set by the code that submits them).
LABEL_AUTHORIZE, LABEL_LIST, LABEL_OTHER = "authorize", "list_apply", "other"
STORE_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("bench_store_label", default=LABEL_OTHER)


class GatewayProbe:
    """Inside the gateway process (bench only, installed by install_gateway_hook): where an Authorize's time goes.

    - handler_ms: Csms.authorize from call to return (decision + whatever it awaits before answering);
    - lookup_ms: AuthService._facts, the decision's SQLite lookups (list, manual, cache) on the event loop;
    - decision_ms: the decision's own latency_ms (lookup + evaluate);
    - store ops, per label (an Authorize's decision record, the list apply's chunks, everything else):
      queue_wait_ms = submitted -> its fn starts on the writer thread (waiting behind the commit in flight and the
      ops before it), run_ms = the fn itself, commit_wait_ms = fn done -> future settled (the rest of its group +
      COMMIT, i.e. the fsync), submit_to_commit_ms = the whole;
    - commits / ops of the store (group commit: ops per commit).
    Each take() returns the figures since the previous one and starts afresh (one per phase)."""

    def __init__(self) -> None:
        self.store: Any = None
        self.data: dict[str, list[float]] = {}
        self.commits0 = 0
        self.ops0 = 0

    def add(self, key: str, ms: float) -> None:
        d = self.data
        lst = d.get(key)
        if lst is None:
            lst = d[key] = []
        lst.append(ms)

    def take(self) -> dict[str, Any]:
        data, self.data = self.data, {}
        out: dict[str, Any] = {k: _summary(v) for k, v in sorted(data.items())}
        if self.store is not None:
            commits, ops = self.store.commits, self.store.ops
            out["store_commits"] = commits - self.commits0
            out["store_ops"] = ops - self.ops0
            out["store_ops_per_commit"] = (
                round((ops - self.ops0) / (commits - self.commits0), 2) if commits > self.commits0 else None
            )
            self.commits0, self.ops0 = commits, ops
        return out


def _install_probe() -> GatewayProbe:
    import gateway.auth.service as service
    import gateway.csms as csms
    import gateway.store as store_mod

    probe = GatewayProbe()
    label = STORE_LABEL
    clock = time.perf_counter

    orig_submit = store_mod.Store.submit

    def submit(self: Any, fn: Any) -> Any:
        what = label.get()
        t_submit = clock()
        times = [0.0, 0.0]

        def timed(conn: Any) -> Any:
            times[0] = clock()
            try:
                return fn(conn)
            finally:
                times[1] = clock()

        fut = orig_submit(self, timed)

        def settled(_f: Any) -> None:
            t = clock()
            if times[0]:
                probe.add(f"store_{what}_queue_wait_ms", (times[0] - t_submit) * 1000.0)
                probe.add(f"store_{what}_run_ms", (times[1] - times[0]) * 1000.0)
                probe.add(f"store_{what}_commit_wait_ms", (t - times[1]) * 1000.0)
                probe.add(f"store_{what}_submit_to_commit_ms", (t - t_submit) * 1000.0)

        fut.add_done_callback(settled)
        return fut

    store_mod.Store.submit = submit  # type: ignore[method-assign]

    orig_authorize = csms.Csms.authorize

    async def authorize(self: Any, st: Any, p: Any) -> Any:
        token = label.set(LABEL_AUTHORIZE)
        t0 = clock()
        try:
            return await orig_authorize(self, st, p)
        finally:
            probe.add("handler_ms", (clock() - t0) * 1000.0)
            label.reset(token)

    csms.Csms.authorize = authorize  # type: ignore[method-assign]

    orig_facts = service.AuthService._facts

    def facts(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = clock()
        try:
            return orig_facts(self, *a, **kw)
        finally:
            if label.get() == LABEL_AUTHORIZE:
                probe.add("lookup_ms", (clock() - t0) * 1000.0)

    service.AuthService._facts = facts  # type: ignore[method-assign]

    orig_decide = service.AuthService.decide

    async def decide(self: Any, *a: Any, **kw: Any) -> Any:
        d = await orig_decide(self, *a, **kw)
        if label.get() == LABEL_AUTHORIZE:
            probe.add("decision_ms", d.latency_ms)
        return d

    service.AuthService.decide = decide  # type: ignore[method-assign]
    return probe


def install_gateway_hook() -> None:
    import gateway.app as app

    original = app.Gateway.__init__
    import gateway.auth.service as service

    chunk = os.environ.get("BENCH_LIST_CHUNK")
    if chunk:  # diagnostic (--list-chunk): the full list's rows per write transaction
        service.LIST_CHUNK = int(chunk)  # type: ignore[misc]
    parse_slice = os.environ.get("BENCH_PARSE_SLICE")
    if parse_slice:  # diagnostic (--parse-slice): entries validated between two yields to the event loop
        service.PARSE_SLICE = int(parse_slice)  # type: ignore[misc]

    probe = _install_probe()

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        applier = ListApplier(self.auth.apply_token_list)
        probe.store = self.store
        probe.commits0, probe.ops0 = self.store.commits, self.store.ops

        async def op(req: dict[str, Any]) -> Any:
            if req["action"] == "prepare":
                return applier.prepare(req["tokens"], req["diff"])
            if req["action"] == "release":
                return applier.release()
            token = STORE_LABEL.set(LABEL_LIST)
            try:
                return await applier.apply(req["kind"], req["version"], req.get("base_version"))
            finally:
                STORE_LABEL.reset(token)

        async def take(req: dict[str, Any]) -> Any:
            return probe.take()

        self.control.register(GATEWAY_OP, op)
        self.control.register(PROBE_OP, take)

    app.Gateway.__init__ = init  # type: ignore[method-assign]


# In a helper process (--applier process) on the running gateway's store file: what a second process writing the
# same SQLite file (like `chargegate tokens import`) does to the gateway.
def applier_main(pipe: Any, data_dir: str, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    from gateway.auth.service import AuthService
    from gateway.auth.settings import AuthSection
    from gateway.store import Store

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = Store.open(Path(data_dir))
        applier = ListApplier(AuthService(store, AuthSection()).apply_token_list)
        try:
            while True:
                cmd = await loop.run_in_executor(None, pipe.recv)
                if cmd["op"] == "prepare":
                    pipe.send(applier.prepare(cmd["tokens"], cmd["diff"]))
                elif cmd["op"] == "release":
                    pipe.send(applier.release())
                elif cmd["op"] == "apply":
                    pipe.send(await applier.apply(cmd["kind"], cmd["version"], cmd["base_version"]))
                else:
                    pipe.send({})
                    return
        finally:
            store.close()

    asyncio.run(main())


class ProcessApplier:
    def __init__(self, ctx: Any, data_dir: Path, cpu: int | None) -> None:
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=applier_main, args=(child, str(data_dir), cpu), daemon=True)
        self.proc.start()

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.pipe.send(cmd)
        result: dict[str, Any] = self.pipe.recv()
        return result

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.request({"op": "exit"})
            except (EOFError, OSError):
                pass
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.proc.kill()


class GatewayApplier:
    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        req = {**cmd, "action": cmd["op"], "op": GATEWAY_OP}
        answer = self.gw.control(req, timeout=APPLY_TIMEOUT)
        if not answer.get("ok"):
            raise RuntimeError(f"gateway refused {GATEWAY_OP}: {answer}")
        result: dict[str, Any] = answer["result"]
        return result

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------------------------
class LoadWorkers(Workers):
    """bench_ocpp.Workers (all/stop) with this benchmark's worker: one process, two groups of charge points."""

    def __init__(
        self, ctx: Any, traffic: list[tuple[str, str]], auth: list[tuple[str, str]], cpus: list[int] | None
    ) -> None:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker_main, args=(child, traffic, auth, cpus), daemon=True)
        p.start()
        self.pipes = [parent]
        self.procs = [p]


# Single-row commits / fsyncs of the same-run disk floors (issue #3 analysis: 1,000 of each).
FLOOR_SAMPLES = 1000


def durable_commit_floor(directory: Path, n: int = FLOOR_SAMPLES, name: str = "floor.db") -> dict[str, Any]:
    """A bare one-row INSERT + COMMIT on a SQLite file set up like the gateway's store (WAL, synchronous=FULL) in
    the same directory: the floor under any answer that is stored durably before it is sent (MeterValues its
    samples, an Authorize that must be durable its decision)."""
    import sqlite3

    conn = sqlite3.connect(directory / name, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(200),))
        conn.execute("COMMIT")
        ms.append((time.perf_counter() - t0) * 1000.0)
    conn.close()
    return _summary(ms)


def fsync_floor(directory: Path, n: int = FLOOR_SAMPLES) -> dict[str, Any]:
    """A 4 KiB append + os.fsync on a plain file in the same directory: what one WAL commit must wait for."""
    fd = os.open(directory / "fsync.bin", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    block = os.urandom(4096)
    ms = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            ms.append((time.perf_counter() - t0) * 1000.0)
    finally:
        os.close(fd)
    return _summary(ms)


def run_echo(
    ctx: Any, workers: LoadWorkers, args: argparse.Namespace, common: dict[str, Any], cpu: int | None
) -> dict[str, Any]:
    """The same charge points, mix and rates against a plain `websockets` echo server (bench_ocpp.echo_main, pinned
    to the gateway's CPU after the gateway has exited): the websocket + load-generator floor under every figure."""
    parent, child = ctx.Pipe()
    ep = ctx.Process(target=bench_ocpp.echo_main, args=(child, cpu, None), daemon=True)
    ep.start()
    info = parent.recv()
    try:
        conn = workers.all({"op": "echo_connect", "url": info["url"]})[0]
        workers.all({"op": "start", "phase": "echo_warmup", **common})
        time.sleep(args.warmup)
        workers.all({"op": "phase", "phase": "echo"})
        t0, c0, k0 = time.perf_counter(), cpu_seconds(info["pid"]), _cpu_ticks()
        time.sleep(args.duration)
        t1, c1, k1 = time.perf_counter(), cpu_seconds(info["pid"]), _cpu_ticks()
        res = workers.all({"op": "stop"})[0]
        out = phase_report(res["phases"]["echo"], t1 - t0, c1 - c0, _busy_between(k0, k1))
        out["server"] = "echo (gateway_cpu_util is the echo server's)"
        out["connect_failed"] = conn["failed"]
        return out
    finally:
        parent.send("stop")
        ep.join(timeout=10)
        if ep.is_alive():
            ep.kill()


def proc_status_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def _summary(ms: list[float]) -> dict[str, Any]:
    ms.sort()
    return {
        "n": len(ms),
        "p50": _pct(ms, 0.50),
        "p90": _pct(ms, 0.90),
        "p99": _pct(ms, 0.99),
        "max": round(ms[-1], 3) if ms else None,
        "mean": round(statistics.fmean(ms), 3) if ms else None,
    }


def phase_report(
    raw: dict[str, Any], wall_s: float, gw_cpu_s: float, busy: dict[str, float]
) -> dict[str, Any]:
    lat = {}
    for c, b in raw["lat"].items():
        a = array("d")
        a.frombytes(b)
        lat[c] = [x * 1000.0 for x in a]
    auth_all = lat["Authorize_listed"] + lat["Authorize_unknown"]
    other = lat["MeterValues"] + lat["Heartbeat"]
    return {
        "wall_s": round(wall_s, 2),
        "authorize_rtt_ms": _summary(auth_all),
        "authorize_listed_rtt_ms": _summary(lat["Authorize_listed"]),
        "authorize_unknown_rtt_ms": _summary(lat["Authorize_unknown"]),
        "authorize_answers": raw["status"],
        "other_rtt_ms": _summary(other),
        "meter_values_rtt_ms": _summary(lat["MeterValues"]),
        "heartbeat_rtt_ms": _summary(lat["Heartbeat"]),
        "other_answered_by_action": {
            "MeterValues": len(lat["MeterValues"]),
            "Heartbeat": len(lat["Heartbeat"]),
        },
        "authorize_per_s": round(len(auth_all) / wall_s, 1) if wall_s else None,
        "other_msgs_per_s": round(len(other) / wall_s, 1) if wall_s else None,
        "errors": raw["errors"],
        "error_samples": raw["error_samples"],
        "due_but_every_cp_busy": raw["not_sent"],
        "gateway_cpu_util": round(gw_cpu_s / wall_s, 3) if wall_s else None,
        "cpu_busy_all_processes": busy,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tokens", type=int, default=1_000_000, help="full list size (default: the issue's 1,000,000)"
    )
    ap.add_argument("--diff", type=int, default=10_000, help="differential size")
    ap.add_argument("--chargers", type=int, default=50, help="charge points connected")
    ap.add_argument("--auth-chargers", type=int, default=10, help="of which send Authorize")
    ap.add_argument(
        "--rate", type=float, default=200.0, help="background msgs/s (MeterValues 3 : Heartbeat 1)"
    )
    ap.add_argument("--auth-rate", type=float, default=40.0, help="Authorize/s")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each measured phase")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU of the gateway and the applier (-1: none)")
    ap.add_argument(
        "--applier",
        choices=("gateway", "process"),
        default="gateway",
        help="apply the lists inside the gateway process (default) or from a helper process on its store file",
    )
    ap.add_argument("--no-validate", action="store_true", help="gateway [ocpp] validate_schemas = false")
    ap.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    ap.add_argument(
        "--list-chunk",
        type=int,
        default=0,
        help="diagnostic: override gateway.auth.service.LIST_CHUNK (rows per write transaction of a full list) "
        "in the gateway process (--applier gateway only); 0 = the gateway's own value",
    )
    ap.add_argument(
        "--parse-slice",
        type=int,
        default=0,
        help="diagnostic: override gateway.auth.service.PARSE_SLICE (entries validated between two yields to the "
        "event loop) in the gateway process (--applier gateway only); 0 = the gateway's own value",
    )
    ap.add_argument("--skip-echo", action="store_true", help="skip the echo-server floor")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not 0 < args.auth_chargers < args.chargers:
        ap.error("--auth-chargers must be between 1 and --chargers - 1")

    raise_nofile_limit()
    ncpu = os.cpu_count() or 1
    server_cpu = None if args.server_cpu < 0 or ncpu < 2 else args.server_cpu
    gen_cpus = [c for c in sorted(os.sched_getaffinity(0)) if c != server_cpu] or None
    if gen_cpus:
        os.sched_setaffinity(0, set(gen_cpus))  # this orchestrator (mostly idle) stays off the gateway's CPU

    chargers = [ChargerSpec(f"A{i:04d}", connectors=1) for i in range(args.chargers)]
    ids = [(c.id, c.secret) for c in chargers]
    auth_ids, traffic_ids = ids[: args.auth_chargers], ids[args.auth_chargers :]
    ctx = mp.get_context("spawn")
    report: dict[str, Any] = {
        "benchmark": "auth_ws",
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": ncpu,
            "gateway_and_applier_cpu": server_cpu,
            "loadgen_cpus": gen_cpus,
            "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg(),
        },
        "method": {
            "gateway": "real process (python -m gateway.cli run), [auth] offline_policy=reject, no [uplink] "
            "(no eMSP), sync_charger_lists=false",
            "list_apply": LIST_APPLY_METHOD[args.applier],
            "rtt": "websocket send to answer received, in the load generator (open loop)",
            "authorize_tokens": f"random tokens of the list, every {UNKNOWN_EVERY}th unknown",
        },
    }
    marks: list[tuple[str, float, float, dict[str, tuple[int, int]]]] = []
    probes: dict[str, Any] = {}

    with tempfile.TemporaryDirectory(prefix="bench-auth-ws-") as tmp:
        env = {"PYTHONWARNINGS": "ignore"}
        if args.applier == "gateway":
            hook_dir = Path(tmp) / "hook"
            hook_dir.mkdir()
            (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
            env["PYTHONPATH"] = f"{hook_dir}{os.pathsep}{REPO}"
            if args.list_chunk:
                env["BENCH_LIST_CHUNK"] = str(args.list_chunk)
            if args.parse_slice:
                env["BENCH_PARSE_SLICE"] = str(args.parse_slice)
        gw = GatewayProcess(
            Path(tmp),
            chargers=chargers,
            ocpp={"heartbeat_interval": 3600, "validate_schemas": not args.no_validate},
            log_level=args.log_level,
            allow=[TAG],
            cpu=server_cpu,
            env=env,
        )
        report["fsync_floor_ms"] = fsync_floor(Path(tmp))
        report["durable_commit_floor_ms"] = durable_commit_floor(Path(tmp))
        gw.start(timeout=120)
        report["gateway_pid"] = gw.pid
        workers: LoadWorkers | None = None
        echo_workers: LoadWorkers | None = None
        common: dict[str, Any] = {}
        applier: ProcessApplier | GatewayApplier = (
            GatewayApplier(gw) if args.applier == "gateway" else ProcessApplier(ctx, gw.data_dir, server_cpu)
        )
        try:
            rss: dict[str, Any] = {"gateway_idle": proc_status_mb(gw.pid)}
            report["input_lists"] = applier.request(
                {"op": "prepare", "tokens": args.tokens, "diff": args.diff}
            )
            report["input_lists"]["built_in"] = (
                "gateway" if report["input_lists"]["pid"] == gw.pid else "helper"
            )
            rss["gateway_after_input_lists"] = proc_status_mb(gw.pid)

            workers = LoadWorkers(ctx, traffic_ids, auth_ids, gen_cpus)
            conn = workers.all({"op": "connect", "url": gw.ocpp_url})[0]
            report["connect"] = {k: conn[k] for k in ("seconds", "failed", "failures")}
            report["connect"]["seconds"] = round(report["connect"]["seconds"], 2)
            rss["gateway_connected"] = proc_status_mb(gw.pid)

            def mark(name: str) -> None:
                marks.append((name, time.perf_counter(), cpu_seconds(gw.pid), _cpu_ticks()))
                # the gateway-side breakdown since the previous mark belongs to the phase that just ended
                took = gw.control({"op": PROBE_OP})
                if len(marks) > 1 and took.get("ok"):
                    probes[marks[-2][0]] = took["result"]

            common = {
                "rate": args.rate,
                "auth_rate": args.auth_rate,
                "tokens": args.tokens,
                "seed": args.seed,
            }
            workers.all({"op": "start", "phase": "warmup", **common})
            mark("warmup")
            time.sleep(args.warmup)

            workers.all({"op": "phase", "phase": "baseline_empty"})
            mark("baseline_empty")
            time.sleep(args.duration)

            rss["gateway_before_list"] = proc_status_mb(gw.pid)
            workers.all({"op": "phase", "phase": "during_full_apply"})
            mark("during_full_apply")
            full = applier.request({"op": "apply", "kind": "full", "version": 1, "base_version": None})
            rss["gateway_after_full_apply"] = proc_status_mb(gw.pid)

            # the bench's own input list (a million dicts) is freed in a phase of its own
            workers.all({"op": "phase", "phase": "input_list_release"})
            mark("input_list_release")
            report["input_list_release"] = applier.request({"op": "release"})
            time.sleep(1.0)

            workers.all({"op": "phase", "phase": "loaded"})
            mark("loaded")
            time.sleep(args.duration)
            rss["gateway_after_loaded_phase"] = proc_status_mb(gw.pid)

            workers.all({"op": "phase", "phase": "during_diff_apply"})
            mark("during_diff_apply")
            diff = applier.request({"op": "apply", "kind": "differential", "version": 2, "base_version": 1})

            workers.all({"op": "phase", "phase": "after_diff"})
            mark("after_diff")
            time.sleep(max(5.0, args.duration / 3))
            mark("end")
            stopped = workers.all({"op": "stop"})[0]
            rss["gateway_end"] = proc_status_mb(gw.pid)
            report["connections_held_at_end"] = workers.all({"op": "held"})[0]["open"]
            report["loadgen_cpu_util"] = round(stopped["cpu_s"] / (marks[-1][1] - marks[0][1]), 3)

            active_gen = gw.query("SELECT value FROM auth_meta WHERE key = 'active_gen'")[0]["value"]
            report["store_check"] = {
                "auth_list_rows_live": gw.query(
                    "SELECT COUNT(*) AS n FROM auth_list WHERE gen = ?", (active_gen,)
                )[0]["n"],
                "list_version": gw.query("SELECT value FROM auth_meta WHERE key = 'list_version'")[0][
                    "value"
                ],
            }
            echo_workers = None if args.skip_echo else workers
        finally:
            applier.close()
            gw.stop()
            # the disk floor again, after the run (the same disk, other engineers' load may have changed)
            report["durable_commit_floor_after_ms"] = durable_commit_floor(Path(tmp), name="floor_after.db")
            try:
                if echo_workers is not None:
                    report["echo"] = run_echo(ctx, echo_workers, args, common, server_cpu)
            finally:
                if workers is not None:
                    workers.stop()
            errs = [ln for ln in gw.output().splitlines() if "ERROR" in ln or "Traceback" in ln][:10]
            if errs:
                report["gateway_errors"] = errs

    phases: dict[str, Any] = {}
    for (name, t0, c0, k0), (_, t1, c1, _k1) in itertools.pairwise(marks):
        if name == "warmup":
            continue
        # per-core busy share from the ticks at the phase start to the next mark (approximated at the end)
        phases[name] = phase_report(stopped["phases"][name], t1 - t0, c1 - c0, {})
        phases[name]["cpu_busy_all_processes"] = _busy_between(k0, _k1)
        if name in probes:
            phases[name]["gateway_breakdown"] = probes[name]
    report["phases"] = phases
    report["full_list"] = full
    report["differential"] = diff
    report["rss_mb"] = rss

    base = phases["baseline_empty"]["authorize_rtt_ms"]
    loaded = phases["loaded"]["authorize_rtt_ms"]
    listed = phases["loaded"]["authorize_listed_rtt_ms"]
    gw_growth_rss = rss["gateway_after_loaded_phase"]["VmRSS"] - rss["gateway_before_list"]["VmRSS"]
    # the full apply resets the gateway's VmHWM (clear_refs) when it starts: VmHWM after the loaded phase is the
    # peak since the apply began
    gw_growth_hwm = rss["gateway_after_loaded_phase"]["VmHWM"] - rss["gateway_before_list"]["VmRSS"]
    report["rss_growth_from_list_mb"] = {
        "gateway_vmrss_before_list_to_after_loaded": round(gw_growth_rss, 1),
        "gateway_peak_vmhwm_since_full_apply_minus_vmrss_before": round(gw_growth_hwm, 1),
        "gateway_vmrss_idle_to_after_loaded_incl_input_list": round(
            rss["gateway_after_loaded_phase"]["VmRSS"] - rss["gateway_idle"]["VmRSS"], 1
        ),
        "apply_peak_full": full["rss_growth_mb"],
        "apply_peak_differential": diff["rss_growth_mb"],
        "apply_ran_in": "gateway" if full["pid"] == report["gateway_pid"] else "helper process",
    }
    floor = report["durable_commit_floor_ms"]
    report["ratio_loaded_authorize_to_bare_durable_commit"] = {
        "p50": round(loaded["p50"] / floor["p50"], 2) if loaded["p50"] and floor["p50"] else None,
        "p99": round(loaded["p99"] / floor["p99"], 2) if loaded["p99"] and floor["p99"] else None,
    }
    if "echo" in report:
        e = report["echo"]["authorize_rtt_ms"]
        report["ratio_loaded_authorize_to_echo"] = {
            "p50": round(loaded["p50"] / e["p50"], 2) if loaded["p50"] and e["p50"] else None,
            "p99": round(loaded["p99"] / e["p99"], 2) if loaded["p99"] and e["p99"] else None,
        }
    report["authorize_breakdown_loaded"] = breakdown(report, phases["loaded"])
    report["ratio_loaded_to_empty_store"] = {
        "authorize_p50": round(loaded["p50"] / base["p50"], 2) if loaded["p50"] and base["p50"] else None,
        "authorize_p99": round(loaded["p99"] / base["p99"], 2) if loaded["p99"] and base["p99"] else None,
    }
    report["during_full_apply_vs_idle"] = during_vs_idle(phases)
    during = phases["during_full_apply"]
    worst_growth = max(gw_growth_rss, gw_growth_hwm, full["rss_growth_mb"], diff["rss_growth_mb"])
    report["targets"] = {
        "authorize_p99_ms_with_list": {
            "target": TARGETS["authorize_p99_ms"],
            "measured": loaded["p99"],
            "listed_only": listed["p99"],
            "met": loaded["p99"] is not None and loaded["p99"] <= TARGETS["authorize_p99_ms"],
        },
        "full_list_s": {
            "target": TARGETS["full_list_s"],
            "measured": full["seconds"],
            "met": bool(full["ok"]) and full["seconds"] <= TARGETS["full_list_s"],
        },
        "authorize_p99_ms_during_full_apply": {
            "target": TARGETS["authorize_p99_ms_during_full_apply"],
            "measured": during["authorize_rtt_ms"]["p99"],
            "samples": during["authorize_rtt_ms"]["n"],
            "met": during["authorize_rtt_ms"]["p99"] is not None
            and during["authorize_rtt_ms"]["p99"] <= TARGETS["authorize_p99_ms_during_full_apply"],
        },
        "other_p99_ms_during_full_apply": {
            "target": TARGETS["other_p99_ms_during_full_apply"],
            "measured": during["other_rtt_ms"]["p99"],
            "samples": during["other_rtt_ms"]["n"],
            "met": during["other_rtt_ms"]["p99"] is not None
            and during["other_rtt_ms"]["p99"] <= TARGETS["other_p99_ms_during_full_apply"],
        },
        "differential_s": {
            "target": TARGETS["differential_s"],
            "measured": diff["seconds"],
            "met": bool(diff["ok"]) and diff["seconds"] <= TARGETS["differential_s"],
        },
        "rss_growth_mb": {
            "target": TARGETS["rss_growth_mb"],
            "measured_worst": round(worst_growth, 1),
            "met": worst_growth <= TARGETS["rss_growth_mb"],
        },
    }
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def during_vs_idle(phases: dict[str, Any]) -> dict[str, Any]:
    """The figures during the full apply next to the same run's idle ones (the empty store, and the loaded store
    before the differential), with the ratios: during / idle."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    out: dict[str, Any] = {
        "_": "p50 / p99 round trip, ms; ratio = during_full_apply / idle phase of the same run"
    }
    for key, label in (("authorize_rtt_ms", "authorize"), ("other_rtt_ms", "other_traffic")):
        during = phases["during_full_apply"][key]
        row: dict[str, Any] = {
            "during_full_apply": {"p50": during["p50"], "p99": during["p99"], "n": during["n"]}
        }
        for idle in ("baseline_empty", "loaded"):
            ref = phases[idle][key]
            row[idle] = {"p50": ref["p50"], "p99": ref["p99"], "n": ref["n"]}
            row[f"ratio_to_{idle}"] = {
                "p50": ratio(during["p50"], ref["p50"]),
                "p99": ratio(during["p99"], ref["p99"]),
            }
        out[label] = row
    return out


def breakdown(report: dict[str, Any], phase: dict[str, Any]) -> dict[str, Any]:
    """The loaded phase's Authorize round trip next to its parts and floors (p50 / p99, ms): where the time goes."""

    def pp(x: dict[str, Any] | None) -> list[Any] | None:
        return None if not x or not x.get("n") else [x["p50"], x["p99"]]

    g = phase.get("gateway_breakdown", {})
    echo = report.get("echo", {})
    return {
        "_": "[p50, p99] ms; handler = Csms.authorize inside the gateway (what the answer waited for); store_authorize_* "
        "= an Authorize's decision-record op on the writer thread, whether the answer waited for it or not; floors: "
        "4 KiB fsync, bare WAL synchronous=FULL commit (same filesystem), echo server (same load)",
        "authorize_rtt_all": pp(phase["authorize_rtt_ms"]),
        "authorize_rtt_listed": pp(phase["authorize_listed_rtt_ms"]),
        "authorize_rtt_unknown": pp(phase["authorize_unknown_rtt_ms"]),
        "echo_authorize_rtt": pp(echo.get("authorize_rtt_ms")),
        "gateway_handler": pp(g.get("handler_ms")),
        "decision_lookup": pp(g.get("lookup_ms")),
        "decision_total": pp(g.get("decision_ms")),
        "store_authorize_queue_wait": pp(g.get("store_authorize_queue_wait_ms")),
        "store_authorize_commit_wait": pp(g.get("store_authorize_commit_wait_ms")),
        "store_authorize_submit_to_commit": pp(g.get("store_authorize_submit_to_commit_ms")),
        "store_other_submit_to_commit": pp(g.get("store_other_submit_to_commit_ms")),
        "store_ops_per_commit": g.get("store_ops_per_commit"),
        "fsync_4k_floor": pp(report.get("fsync_floor_ms")),
        "durable_commit_floor": pp(report.get("durable_commit_floor_ms")),
        "durable_commit_floor_after_run": pp(report.get("durable_commit_floor_after_ms")),
        "other_traffic_rtt": pp(phase["other_rtt_ms"]),
    }


def _busy_between(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    return {
        k: round((after[k][0] - before[k][0]) / max(1, after[k][1] - before[k][1]), 3)
        for k in after
        if k in before
    }


if __name__ == "__main__":
    sys.exit(main())
