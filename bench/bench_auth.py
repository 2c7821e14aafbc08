"""Authorization benchmark: decisions with 1,000,000 tokens in the store, applying a 1,000,000-token full list and a
10,000-token differential, and the RSS growth of applying the full list.

    .venv/bin/python bench/bench_auth.py [--tokens 1000000] [--diff 10000] [--decisions 20000] [--dir DIR]

Prints one JSON object. Targets (issue #3): decision p99 <= 5 ms; full list <= 15 s; differential <= 1 s;
RSS growth <= 150 MB. Each figure comes with the physical limit measured in the same run on the same disk:
- full list vs. a bare `executemany` INSERT of the same rows into an equivalent table in one transaction;
- decision vs. a bare primary-key SELECT on the same table.
RSS growth = peak RSS during the apply (VmHWM, reset via /proc/self/clear_refs) minus RSS before it; the input
list of dicts (built by the caller, as the MQTT downlink would) is measured apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.store import Store, connect

TARGETS = {"decision_p99_ms": 5.0, "full_list_s": 15.0, "differential_s": 1.0, "rss_growth_mb": 150.0}


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def token_id(i: int) -> str:
    return f"04{i:012X}"


def make_tokens(n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        d: dict[str, object] = {"id": token_id(i), "status": "Blocked" if i % 50 == 0 else "Accepted"}
        if i % 10 == 0:
            d["parent_id"] = f"FLEET{i % 1000}"
        if i % 7 == 0:
            d["expiry"] = "2030-01-01T00:00:00Z"
        out.append(d)
    return out


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100.0 * (len(s) - 1)))]


def raw_insert_baseline(path: Path, n: int) -> float:
    conn = connect(path)
    conn.execute(
        "CREATE TABLE raw (gen INTEGER, id TEXT, status TEXT, expiry REAL, parent_id TEXT, chargers TEXT, "
        "list_version INTEGER, PRIMARY KEY (gen, id)) WITHOUT ROWID"
    )
    rows = ((1, token_id(i), "Accepted", None, None, None, 1) for i in range(n))
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    return dt


async def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_auth_"))
    store = Store.open(base / "data")
    svc = AuthService(store, AuthSection(offline_policy="reject"))
    result: dict[str, object] = {"tokens": args.tokens, "data_dir": str(base / "data")}

    rss0 = rss_kb()
    tokens = make_tokens(args.tokens)
    result["input_list_rss_mb"] = round((rss_kb() - rss0) / 1024, 1)

    # -- full list ----------------------------------------------------------------------------------------------
    peak_ok = reset_peak()
    before = rss_kb()
    t0 = time.perf_counter()
    ok, msg = await svc.apply_token_list("full", 1, None, tokens)
    full_s = time.perf_counter() - t0
    assert ok, msg
    peak = rss_kb("VmHWM") if peak_ok else rss_kb()
    result["full_list_s"] = round(full_s, 2)
    result["rss_growth_mb"] = round((peak - before) / 1024, 1)
    result["rss_growth_kind"] = "peak (VmHWM)" if peak_ok else "after (VmRSS; clear_refs unavailable)"
    result["writer_commits_full"] = store.commits

    raw_s = raw_insert_baseline(base / "raw.db", args.tokens)
    result["raw_sqlite_insert_s"] = round(raw_s, 2)
    result["full_list_vs_raw_insert"] = round(full_s / raw_s, 2)
    del tokens

    # -- decisions with the list in place ------------------------------------------------------------------------
    rng = random.Random(1)
    ids = [token_id(rng.randrange(args.tokens)) if k % 4 else f"FF{k:012X}" for k in range(args.decisions)]
    for i in ids[:200]:  # warm the page cache and the read connection
        await svc.decide("CP1", i, purpose="authorize")
    lat: list[float] = []
    for i in ids:
        t = time.perf_counter()
        d = await svc.decide("CP1", i, purpose="start")
        lat.append((time.perf_counter() - t) * 1000.0)
        assert d.source in ("local_list", "offline_policy")
    result["decisions"] = len(lat)
    result["decision_p50_ms"] = round(statistics.median(lat), 4)
    result["decision_p99_ms"] = round(percentile(lat, 99), 4)
    result["decision_max_ms"] = round(max(lat), 3)
    raw = sqlite3.connect(store.path)
    gen = store.read(lambda c: ts.meta(c, "active_gen"))
    raw_lat = []
    for i in ids:
        t = time.perf_counter()
        raw.execute("SELECT status FROM auth_list WHERE gen = ? AND id = ?", (gen, i)).fetchone()
        raw_lat.append((time.perf_counter() - t) * 1000.0)
    raw.close()
    result["raw_pk_lookup_p50_ms"] = round(statistics.median(raw_lat), 4)
    result["decision_p50_vs_raw_lookup"] = round(statistics.median(lat) / statistics.median(raw_lat), 1)

    # -- differential ---------------------------------------------------------------------------------------------
    diff: list[dict[str, object]] = []
    for k in range(args.diff):
        if k % 3 == 0:
            diff.append({"id": token_id(k * 97 % args.tokens)})  # removal
        elif k % 3 == 1:
            diff.append({"id": token_id(k * 89 % args.tokens), "status": "Blocked"})
        else:
            diff.append({"id": f"0A{k:012X}", "status": "Accepted"})
    t0 = time.perf_counter()
    ok, msg = await svc.apply_token_list("differential", 2, 1, diff)
    diff_s = time.perf_counter() - t0
    assert ok, msg
    result["differential_tokens"] = args.diff
    result["differential_s"] = round(diff_s, 3)

    # -- decision latency while a full list is being applied (writer busy, WAL readers unaffected) ----------------
    if args.concurrent:
        tokens2 = make_tokens(args.tokens)
        task = asyncio.create_task(svc.apply_token_list("full", 3, None, tokens2))
        busy: list[float] = []
        while not task.done():
            for i in ids[:50]:
                t = time.perf_counter()
                await svc.decide("CP1", i, purpose="start")
                busy.append((time.perf_counter() - t) * 1000.0)
            await asyncio.sleep(0.01)
        assert (await task)[0]
        result["decision_during_full_apply_p99_ms"] = round(percentile(busy, 99), 3)
        result["decision_during_full_apply_n"] = len(busy)

    store.close()
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    result["targets"] = TARGETS
    result["meets"] = {
        "decision_p99_ms": result["decision_p99_ms"] <= TARGETS["decision_p99_ms"],  # type: ignore[operator]
        "full_list_s": full_s <= TARGETS["full_list_s"],
        "differential_s": diff_s <= TARGETS["differential_s"],
        "rss_growth_mb": result["rss_growth_mb"] <= TARGETS["rss_growth_mb"],  # type: ignore[operator]
    }
    result["cpu_count"] = os.cpu_count()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--diff", type=int, default=10_000)
    p.add_argument("--decisions", type=int, default=20_000)
    p.add_argument("--dir", help="where to put the store (default: a new temp dir)")
    p.add_argument("--no-concurrent", dest="concurrent", action="store_false")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
