"""Uplink benchmark against a local mosquitto (started here, free port).

1. Drain a backlog of --events queued meter readings (default 1,000,000) through the real Uplink (CBOR batches,
   QoS 1, marked sent on PUBACK): events/s and bytes/event, payload and on the wire (MQTT PUBLISH + PUBACK).
2. The naive baseline in the same run: the same outbox rows, one JSON message per event, QoS 1 with a window of
   in-flight publishes, marked sent on PUBACK (--baseline-events of them, default min(events, 100000)).
3. Connector-status latency, from the status arriving on the StatusBus to its delivery at a subscriber, p50/p99,
   measured while the backlog drains (the case the separate status path exists for) and idle.

Targets: >= 10,000 events/s drained; <= 40 bytes per meter reading on the wire; status p99 <= 50 ms.
Prints one JSON document.   .venv/bin/python bench/bench_uplink.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

BENCH_FILE = Path(__file__).resolve()
ROOT = BENCH_FILE.parent.parent
sys.path.insert(0, str(ROOT))

from gateway import events as ev  # noqa: E402
from gateway.events import ConnectorStatus, StatusBus  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.uplink import Uplink, UplinkSection  # noqa: E402
from gateway.uplink.contract import OutboxRow, Topics, decode_batch, decode_message, naive_event_json  # noqa: E402
from hil_tests.mosquitto import Mosquitto  # noqa: E402

GW = "site-bench"
CHARGERS = 8
READING_INTERVAL_S = 60.0  # each charger reports its energy register once a minute
CHARGER_CLOCK_SKEW_S = -0.35


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_wire_bytes(topic: str, payload_len: int, content_type: str | None) -> int:
    """Bytes of one QoS 1 PUBLISH (MQTT 5 with a content-type property) plus its PUBACK (4 bytes)."""
    props = (1 + 2 + len(content_type)) if content_type else 0
    variable = 2 + len(topic.encode()) + 2 + _varint_len(props) + props
    remaining = variable + payload_len
    return 1 + _varint_len(remaining) + remaining + 4


def fill(store: Store, n: int) -> None:
    t0 = time.time() - n * READING_INTERVAL_S / CHARGERS
    chunk = 50_000

    def rows(start: int, end: int) -> list[tuple[Any, ...]]:
        out = []
        for i in range(start, end):
            created = t0 + i * READING_INTERVAL_S / CHARGERS
            ts = created + CHARGER_CLOCK_SKEW_S
            charger_ts = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"
            )
            body = {"connector_id": 1 + i % 2, "transaction_id": 1000 + (i // 400) % 5000 + i % CHARGERS,
                    "values": [{"value": str(1_000_000 + 23 * i), "measurand": "Energy.Active.Import.Register",
                                "unit": "Wh"}]}  # fmt: skip
            out.append((ev.METER_READING, f"CP{i % CHARGERS + 1}", 1, created, charger_ts, cbor2.dumps(body)))
        return out

    for start in range(0, n, chunk):
        batch = rows(start, min(n, start + chunk))
        store.write_sync(
            lambda c, b=batch: c.executemany(  # type: ignore[misc]
                "INSERT INTO outbox (kind, charger_id, droppable, created_at, charger_ts, body) VALUES (?,?,?,?,?,?)",
                b,
            )
        )


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    broker = Mosquitto(tmp, persistence=False).start()
    store = Store.open(tmp / "data")
    result: dict[str, Any] = {"events": args.events, "batch_max": args.batch_max}
    try:
        t = time.perf_counter()
        fill(store, args.events)
        result["fill_s"] = round(time.perf_counter() - t, 2)
        topics = Topics(GW)

        # the subscriber (the eMSP side) is its own process, as it would be: keeps payloads (decoded after the
        # timing), measures status latency on arrival
        out = tmp / "subscriber"
        sub = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH_FILE), "--role", "subscriber", "--port", str(broker.port),
            "--out", str(out), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert sub.stdout is not None
        line = await asyncio.wait_for(sub.stdout.readline(), 30)
        assert b"ready" in line, line
        phase = ["drain"]

        # 1. naive baseline (first: the batched drain prunes old sent rows): same rows, one JSON message per event, QoS 1, window of in-flight publishes
        nb = min(args.baseline_events, args.events)
        naive_topic = f"{topics.prefix}/naive"
        naive_bytes = 0
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5,
                                  max_inflight_messages=64, identifier="naive-baseline") as c:  # fmt: skip
            c.pending_calls_threshold = 1000
            sem = asyncio.Semaphore(64)
            t0 = time.perf_counter()
            after = 0
            while after < nb:
                rows = store.read(
                    lambda conn, a=after: [OutboxRow(*r) for r in conn.execute(  # type: ignore[misc]
                        "SELECT seq, kind, charger_id, created_at, charger_ts, body FROM outbox "
                        "WHERE sent_at IS NULL AND seq > ? AND seq <= ? ORDER BY seq LIMIT 2000", (a, nb))]
                )  # fmt: skip

                async def one(payload: bytes) -> None:
                    async with sem:
                        await c.publish(naive_topic, payload, qos=1, timeout=60)

                payloads = [naive_event_json(GW, r) for r in rows]
                naive_bytes += sum(publish_wire_bytes(naive_topic, len(p), None) for p in payloads)
                await asyncio.gather(*(one(p) for p in payloads))
                first, last = rows[0].seq, rows[-1].seq
                await store.write(
                    lambda conn, f=first, l_=last: conn.execute(  # type: ignore[misc]
                        "UPDATE outbox SET sent_at = 1 WHERE seq BETWEEN ? AND ?", (f, l_)
                    )
                )
                after = last
            naive_s = time.perf_counter() - t0
        store.write_sync(lambda c: c.execute("UPDATE outbox SET sent_at = NULL"))

        # 2. batched drain through the real Uplink
        bus = StatusBus()
        cfg = UplinkSection(
            enabled=True, port=broker.port, batch_max=args.batch_max, outbox_budget_mb=100_000
        )
        uplink = Uplink(cfg, store, bus, GW)
        up_task = asyncio.create_task(uplink.run())

        async def statuses(stop: asyncio.Event) -> None:
            i = 0
            while not stop.is_set():
                bus.publish_status(ConnectorStatus(f"CP{i % CHARGERS + 1}", 1, "Charging" if i % 2 else "SuspendedEV",
                                                   "NoError", f"bench-{phase[0]}", None, time.time()))  # fmt: skip
                i += 1
                await asyncio.sleep(args.status_interval)

        while not uplink.connected:  # noqa: ASYNC110 - polling the uplink's state from outside, on purpose
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        stop = asyncio.Event()
        st_task = asyncio.create_task(statuses(stop))
        while uplink.drainer.stats.sent_events < args.events:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        drain_s = time.perf_counter() - t0
        stop.set()
        await st_task
        # idle status latency
        phase[0] = "idle"
        stop2 = asyncio.Event()
        st2 = asyncio.create_task(statuses(stop2))
        await asyncio.sleep(args.idle_status_s)
        stop2.set()
        await st2
        await asyncio.sleep(0.2)
        s = uplink.drainer.stats
        up_task.cancel()
        try:
            await up_task
        except asyncio.CancelledError:
            pass
        result["batched"] = {
            "events_per_s": round(args.events / drain_s),
            "seconds": round(drain_s, 2),
            "publishes": s.sent_batches,
            "payload_bytes_per_event": round(s.sent_bytes / args.events, 2),
        }

        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish(f"{topics.prefix}/bench-end", json.dumps({"events": args.events, "naive": nb}).encode(),
                            qos=1)  # fmt: skip
        await asyncio.wait_for(sub.wait(), 600)
        report = json.loads((out.with_suffix(".json")).read_text())
        # verify at the subscriber: every event arrived, in order; bytes as received
        seqs_ok, n_events, n_bytes, wire, expect = True, 0, 0, 0, 1
        blob = out.with_suffix(".bin").read_bytes()
        pos = 0
        while pos < len(blob):
            size = int.from_bytes(blob[pos : pos + 4], "big")
            p = blob[pos + 4 : pos + 4 + size]
            pos += 4 + size
            n_bytes += size
            wire += publish_wire_bytes(topics.events, size, "application/cbor")
            for e in decode_batch(p):
                seqs_ok = seqs_ok and e["seq"] == expect
                expect = e["seq"] + 1
                n_events += 1
        result["batched"].update(
            {
                "received_events": n_events,
                "in_order_complete": seqs_ok and n_events == args.events,
                "received_payload_bytes_per_event": round(n_bytes / max(1, n_events), 2),
                "wire_bytes_per_event": round(wire / max(1, n_events), 2),
            }
        )
        result["naive_json"] = {
            "events": nb,
            "events_per_s": round(nb / naive_s),
            "seconds": round(naive_s, 2),
            "wire_bytes_per_event": round(naive_bytes / nb, 2),
            "received": report["naive"],
        }
        latencies = [(ph, v) for ph, v in report["latencies"]]

        drain_lat = [v * 1000 for ph, v in latencies if ph == "drain"]
        idle_lat = [v * 1000 for ph, v in latencies if ph == "idle"]
        result["status_latency_ms"] = {
            "during_drain": {"n": len(drain_lat), "p50": round(pct(drain_lat, 50), 2), "p99": round(pct(drain_lat, 99), 2),
                             "max": round(max(drain_lat, default=float("nan")), 2)},
            "idle": {"n": len(idle_lat), "p50": round(pct(idle_lat, 50), 2), "p99": round(pct(idle_lat, 99), 2)},
        }  # fmt: skip
        b, n = result["batched"], result["naive_json"]
        result["ratio_vs_naive"] = {
            "events_per_s": round(b["events_per_s"] / n["events_per_s"], 2),
            "wire_bytes_per_event": round(b["wire_bytes_per_event"] / n["wire_bytes_per_event"], 3),
        }
        result["targets"] = {
            "drain_events_per_s>=10000": b["events_per_s"] >= 10_000,
            "wire_bytes_per_meter_reading<=40": b["wire_bytes_per_event"] <= 40,
            "status_p99_ms<=50 (during drain)": result["status_latency_ms"]["during_drain"]["p99"] <= 50,
        }
    finally:
        store.close()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # a 1M-event store is ~100 MB
    return result


async def subscriber(port: int, out: Path) -> None:
    """The eMSP side, in its own process: keep event payloads, count naive messages, time status arrivals."""
    topics = Topics(GW)
    payloads = out.with_suffix(".bin").open("wb")
    naive = 0
    events = 0
    latencies: list[tuple[str, float]] = []
    expect: dict[str, int] | None = None
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5,
                              max_queued_incoming_messages=0) as c:  # fmt: skip
        await c.subscribe([(topics.events, 1), (f"{topics.prefix}/status/#", 1), (f"{topics.prefix}/naive", 1),
                           (f"{topics.prefix}/bench-end", 1)])  # fmt: skip
        print("ready", flush=True)
        async for m in c.messages:
            now = time.time()
            topic = m.topic.value
            payload = bytes(m.payload)  # type: ignore[arg-type]
            if topic == topics.events:
                payloads.write(len(payload).to_bytes(4, "big") + payload)
                events += len(cbor2.loads(payload)[5])
            elif topic.endswith("/naive"):
                naive += 1
            elif topic.endswith("/bench-end"):
                expect = json.loads(payload)
            else:
                msg = decode_message(payload)
                info = msg.get("info") or ""
                if info.startswith("bench-"):
                    latencies.append((info[6:], now - msg["gateway_ms"] / 1000))
            if expect is not None and events >= expect["events"] and naive >= expect["naive"]:
                break
    payloads.close()
    out.with_suffix(".json").write_text(
        json.dumps({"naive": naive, "events": events, "latencies": latencies})
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--baseline-events", type=int, default=100_000)
    p.add_argument("--batch-max", type=int, default=500)
    p.add_argument("--status-interval", type=float, default=0.02)
    p.add_argument("--idle-status-s", type=float, default=2.0)
    p.add_argument("--role", choices=["bench", "subscriber"], default="bench")
    p.add_argument("--port", type=int)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.role == "subscriber":
        asyncio.run(subscriber(args.port, Path(args.out)))
        return 0
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
