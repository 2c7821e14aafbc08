"""Issue #4's "must show" against the real gateway process: `chargegate run` (GatewayProcess) with `[uplink]`
pointing at a real mosquitto on a free port, raw OCPP charge points (every frame schema-checked) doing real
sessions, and the simulated eMSP (firmware_sim.emsp) as the consumer.

1. broker down for several whole sessions, then up: every event arrives, in seq order, contiguous, each session's
   started/stopped/record exactly once, energies as the chargers sent them;
2. gateway SIGKILLed while draining a backlog, then restarted: nothing lost, duplicates byte-identical (SimEmsp
   compares decoded duplicates; ByteCheckingEmsp below also compares each event's bytes as they travelled);
3. broker restarted twice while chargers keep sending (once mid-stream, once while the first outage's backlog
   drains): nothing lost, order kept;
4. connector status reaches the eMSP (retained, latest wins) while a large backlog is still draining.

The eMSP subscribes with a persistent session registered before the gateway ever publishes (the contract's
guarantee ends at the broker's PUBACK; the consumer must have a persistent session for it to reach the eMSP).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest

from firmware_sim.emsp import SimEmsp
from gateway.uplink.contract import encode_message
from hil_tests.gateway_proc import DEFAULT_TAG, ChargerSpec, GatewayFactory, GatewayProcess
from hil_tests.mosquitto import Mosquitto, mosquitto_binary
from hil_tests.rawclient import RawChargePoint, assert_clean, gather_closing, run_async

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto not installed (apt-get install mosquitto)"
)

TAG = DEFAULT_TAG
GW_ID = "site-uplink"
# Gateway reconnect backoff cap for these tests: a broker that comes back is found within about this long.
RECONNECT_MAX_S = 1
# Generous bound for a whole backlog (thousands of events) to reach the eMSP once the broker is up; a healthy
# gateway needs a fraction of it. Only a gateway that loses or stalls events waits this long.
DELIVERY_TIMEOUT_S = 45.0
# Bound for the gateway's outbox to hold what the chargers produced (the gateway answered each CALL after COMMIT,
# so this is only the time to read the store).
STORE_TIMEOUT_S = 10.0
# Bound for a retained connector status to reach the eMSP after the StatusNotification was answered.
STATUS_TIMEOUT_S = 10.0
# Bound for the broker to publish the gateway's last will after a SIGKILL (keepalive is not involved: the
# broker sees the TCP connection close at once).
LAST_WILL_TIMEOUT_S = 10.0
# Once the gateway has marked every outbox row sent (PUBACKed), the broker still forwards the last of them to the
# eMSP: an event missing after this long was lost.
IN_FLIGHT_GRACE_S = 5.0
# How often the tests poll the eMSP (in this process: cheap).
POLL_S = 0.005
# How often the tests poll the gateway's store or control socket (a new SQLite connection / socket each time).
STORE_POLL_S = 0.05
# Readings per MeterValues CALL when building a backlog: one meterValue entry = one meter.reading event; ~150
# bytes each, so a CALL stays far under the gateway's 64 KiB frame limit.
READINGS_PER_CALL = 200


# -- the eMSP, with per-event payload bytes -----------------------------------------------------------------------
def _array_head(buf: bytes, pos: int) -> tuple[int, int]:
    """(length, position after the head) of the definite-length CBOR array starting at `pos`."""
    ib = buf[pos]
    if ib >> 5 != 4:
        raise ValueError(f"expected a CBOR array at byte {pos}")
    ai = ib & 0x1F
    if ai < 24:
        return ai, pos + 1
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(ai)
    if width is None:
        raise ValueError("indefinite-length CBOR array in a batch")
    return int.from_bytes(buf[pos + 1 : pos + 1 + width], "big"), pos + 1 + width


def _item_spans(buf: bytes, pos: int, count: int) -> list[tuple[int, int]]:
    """Byte spans of `count` consecutive CBOR items starting at `pos`."""
    fp = io.BytesIO(buf)
    spans = []
    for _ in range(count):
        fp.seek(pos)
        cbor2.CBORDecoder(fp).decode()
        spans.append((pos, fp.tell()))
        pos = fp.tell()
    return spans


def event_bytes(payload: bytes) -> list[tuple[int, bytes]]:
    """(seq, bytes) per event of a CBOR batch: the event's absolute seq, gateway ms and charger id (the batch
    encodes them relative to the batch) followed by the exact bytes of its kind, charger_ts and body as they
    travelled. Two copies of one event are identical iff these bytes are."""
    n, pos = _array_head(payload, 0)
    if n != 6:
        raise ValueError("not a 6-element CBOR batch")
    head = _item_spans(payload, pos, 6)
    base_seq, base_ms, chargers = (cbor2.loads(payload[a:b]) for a, b in head[2:5])
    count, pos = _array_head(payload, head[5][0])
    seq, ms = base_seq, base_ms
    out = []
    for _ in range(count):
        m, fpos = _array_head(payload, pos)
        if m != 6:
            raise ValueError("event is not a 6-element array")
        spans = _item_spans(payload, fpos, 6)
        dseq, dms, cidx = (cbor2.loads(payload[a:b]) for a, b in (spans[0], spans[1], spans[3]))
        seq += dseq
        ms += dms
        charger = chargers[cidx] if cidx is not None else None
        raw = b"".join(payload[a:b] for a, b in (spans[2], spans[4], spans[5]))
        out.append((seq, bytes(cbor2.dumps([seq, ms, charger])) + raw))
        pos = spans[5][1]
    return out


class ByteCheckingEmsp(SimEmsp):
    """SimEmsp (de-duplicates by (gateway, seq) and compares the *decoded* duplicate with the first copy) plus a
    comparison of every duplicate's payload bytes with the first copy's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_bytes: dict[tuple[str, int], bytes] = {}
        self.raw_duplicates = 0
        self.raw_mismatches: list[tuple[str, int]] = []

    def _on_batch(self, gw: str, payload: bytes) -> None:
        for seq, blob in event_bytes(payload):
            old = self.first_bytes.get((gw, seq))
            if old is None:
                self.first_bytes[(gw, seq)] = blob
            else:
                self.raw_duplicates += 1
                if old != blob:
                    self.raw_mismatches.append((gw, seq))
        super()._on_batch(gw, payload)


async def persistent_emsp(broker: Mosquitto, client_id: str) -> ByteCheckingEmsp:
    """An eMSP whose persistent session (QoS 1 subscriptions) the broker keeps while the eMSP or the broker is
    down (mosquitto persists sessions on SIGTERM)."""
    emsp = ByteCheckingEmsp("127.0.0.1", broker.port, client_id=client_id, tokens={TAG: "Accepted"})
    emsp.start()
    await emsp.wait_connected()
    return emsp


# -- the gateway --------------------------------------------------------------------------------------------------
def uplink_toml(port: int, **extra: Any) -> str:
    lines = ["[uplink]", "enabled = true", 'host = "127.0.0.1"', f"port = {port}", f'gateway_id = "{GW_ID}"']
    lines.append(f"reconnect_max = {RECONNECT_MAX_S}")
    lines += [f"{k} = {v!r}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def chargers(n: int) -> list[ChargerSpec]:
    return [ChargerSpec(f"CP{i}") for i in range(1, n + 1)]


def uplink_stats(gw: GatewayProcess) -> dict[str, Any]:
    answer = gw.control({"op": "uplink.stats"})
    assert answer.get("ok"), answer
    result: dict[str, Any] = answer["result"]
    return result


def outbox_seqs(gw: GatewayProcess) -> tuple[int, int]:
    """(highest seq ever written, unsent rows) of the gateway's outbox."""
    [row] = gw.query(
        "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'outbox') AS high, "
        "(SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL) AS unsent"
    )
    return int(row["high"] or 0), int(row["unsent"])


async def until(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    detail: Callable[[], Any] = dict,
    poll: float = POLL_S,
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; {detail()}")
        await asyncio.sleep(poll)


async def delivered(emsp: ByteCheckingEmsp, gw: GatewayProcess, high: int, what: str) -> None:
    """Wait until the eMSP holds `high` events, or the gateway has marked every row sent and what it published
    had IN_FLIGHT_GRACE_S to arrive (then the check that follows names the events that were lost)."""
    view = emsp.gateway(GW_ID)
    await until(
        lambda: len(view.events) >= high or uplink_stats(gw)["backlog_events"] == 0,
        DELIVERY_TIMEOUT_S,
        what,
        emsp.report,
        poll=STORE_POLL_S,
    )
    with contextlib.suppress(AssertionError):  # the check that follows says what is missing
        await until(lambda: len(view.events) >= high, IN_FLIGHT_GRACE_S, "events in flight")


# -- chargers -----------------------------------------------------------------------------------------------------
class ChargerClock:
    """The charger's own clock for timestamps: strictly increasing (the gateway de-duplicates sampled values by
    timestamp, so two readings must never share one), one second per reading."""

    def __init__(self) -> None:
        self.t = datetime.now(UTC) - timedelta(hours=2)

    def tick(self) -> str:
        self.t += timedelta(seconds=1)
        return self.t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.t.microsecond // 1000:03d}Z"


@dataclass
class SessionSent:
    """What a charger sent for one transaction (the ground truth the eMSP's view is checked against)."""

    charger: str
    connector: int
    tx: int
    meter_start: int
    meter_stop: int = 0
    readings: list[int] = field(default_factory=list)


class Charger:
    def __init__(self, gw: GatewayProcess, charger_id: str) -> None:
        self.id = charger_id
        self.cp = RawChargePoint(gw.url(charger_id), charger_id, gw.password(charger_id))
        self.clock = ChargerClock()
        self.register_wh = 10_000 + 1000 * int(charger_id.removeprefix("CP") or 0)
        self.sessions: list[SessionSent] = []

    async def connect(self, connectors: int = 2) -> None:
        await self.cp.connect()
        assert (await self.cp.boot())["status"] == "Accepted"
        for c in range(connectors + 1):
            await self.status(c, "Available")

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        try:
            return await self.cp.call(action, payload)
        except TimeoutError:
            raise AssertionError(
                f"{self.id}: the gateway did not answer {action} within "
                f"{time.monotonic() - started:.1f} s (sent at monotonic {started:.3f})"
            ) from None

    async def status(self, connector: int, status: str) -> None:
        await self.call(
            "StatusNotification",
            {
                "connectorId": connector,
                "errorCode": "NoError",
                "status": status,
                "timestamp": self.clock.tick(),
            },
        )

    async def start(self, connector: int) -> SessionSent:
        await self.status(connector, "Preparing")
        res = await self.call(
            "StartTransaction",
            {
                "connectorId": connector,
                "idTag": TAG,
                "meterStart": self.register_wh,
                "timestamp": self.clock.tick(),
            },
        )
        assert res["idTagInfo"]["status"] == "Accepted", res
        s = SessionSent(self.id, connector, int(res["transactionId"]), self.register_wh)
        self.sessions.append(s)
        await self.status(connector, "Charging")
        return s

    async def meter(self, s: SessionSent, readings: int, step_wh: int = 37) -> None:
        """One MeterValues CALL carrying `readings` meterValue entries (each one meter.reading event)."""
        entries = []
        for _ in range(readings):
            self.register_wh += step_wh
            s.readings.append(self.register_wh)
            entries.append(
                {
                    "timestamp": self.clock.tick(),
                    "sampledValue": [
                        {
                            "value": str(self.register_wh),
                            "measurand": "Energy.Active.Import.Register",
                            "unit": "Wh",
                            "context": "Sample.Periodic",
                        }
                    ],
                }
            )
        await self.call(
            "MeterValues", {"connectorId": s.connector, "transactionId": s.tx, "meterValue": entries}
        )

    async def stop(self, s: SessionSent) -> None:
        self.register_wh += 11
        s.meter_stop = self.register_wh
        await self.call(
            "StopTransaction",
            {
                "transactionId": s.tx,
                "meterStop": s.meter_stop,
                "timestamp": self.clock.tick(),
                "idTag": TAG,
                "reason": "Local",
            },
        )
        await self.status(s.connector, "Finishing")
        await self.status(s.connector, "Available")

    async def session(self, connector: int, calls: int, readings_per_call: int, pause: float = 0.0) -> None:
        s = await self.start(connector)
        for _ in range(calls):
            await self.meter(s, readings_per_call)
            if pause:
                await asyncio.sleep(pause)
        await self.stop(s)


# -- checks -------------------------------------------------------------------------------------------------------
def check_stream(emsp: ByteCheckingEmsp, high_seq: int) -> None:
    """Every seq 1..high_seq arrived, first arrivals strictly in seq order, every duplicate identical to the first
    copy (decoded and byte for byte), nothing undecodable."""
    view = emsp.gateway(GW_ID)
    report = emsp.report()
    assert emsp.malformed == [], emsp.malformed
    missing = sorted(set(range(1, high_seq + 1)) - set(view.events))
    assert not missing, f"{len(missing)} events never reached the eMSP (first {missing[:10]}); {report}"
    assert sorted(view.events) == list(range(1, high_seq + 1)), report
    assert view.order == list(range(1, high_seq + 1)), f"first arrivals not in seq order; {report}"
    assert view.out_of_order == 0
    assert view.duplicate_mismatches == 0, report
    assert emsp.raw_mismatches == [], (
        f"re-sent events with different payload bytes: {emsp.raw_mismatches[:10]}"
    )
    assert emsp.raw_duplicates == view.duplicates  # both views of the stream saw the same copies


def check_sessions(emsp: ByteCheckingEmsp, sent: list[SessionSent]) -> None:
    """Each transaction: session.started, its readings, session.stopped, session.record, each exactly once and in
    that order; values and energies as the charger sent them."""
    view = emsp.gateway(GW_ID)
    by_tx: dict[int, list[dict[str, Any]]] = {}
    for seq in view.order:
        e = view.events[seq]
        body = e["body"]
        tx = body.get("tx", body.get("transaction_id"))
        if e["kind"] in ("session.started", "session.stopped", "session.record", "meter.reading"):
            assert isinstance(tx, int), e
            by_tx.setdefault(tx, []).append(e)
    assert sorted(by_tx) == sorted(s.tx for s in sent), (sorted(by_tx), [s.tx for s in sent])
    for s in sent:
        evs = by_tx[s.tx]
        kinds = [e["kind"] for e in evs]
        assert kinds == ["session.started", *["meter.reading"] * len(s.readings), "session.stopped",
                         "session.record"], (s.tx, kinds)  # fmt: skip
        started, readings, stopped, record = evs[0]["body"], evs[1:-2], evs[-2]["body"], evs[-1]["body"]
        assert (started["charger"], started["connector"], started["id_tag"]) == (s.charger, s.connector, TAG)
        assert started["meter_start_wh"] == s.meter_start
        assert [[int(v["value"]) for v in r["body"]["values"]] for r in readings] == [
            [wh] for wh in s.readings
        ]
        assert all(
            r["charger_id"] == s.charger and r["body"]["connector_id"] == s.connector for r in readings
        )
        assert stopped["meter_stop_wh"] == s.meter_stop
        assert stopped["energy_wh"] == s.meter_stop - s.meter_start
        assert record["transaction_id"] == s.tx and view.sessions[s.tx] == record
        assert (record["charger_id"], record["connector_id"]) == (s.charger, s.connector)
        assert (record["meter_start_wh"], record["meter_stop_wh"]) == (s.meter_start, s.meter_stop)
        assert record["total_energy_wh"] == s.meter_stop - s.meter_start
        assert record["complete"] is True and record["cdr_token"]["uid"] == TAG


# -- 1 ------------------------------------------------------------------------------------------------------------
def test_broker_down_for_whole_sessions_then_up_delivers_everything(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    n_chargers, sessions_each, calls, readings = 3, 2, 4, 3

    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = await persistent_emsp(broker, "emsp-outage")
        cps: list[Charger] = []
        try:
            broker.stop()  # the eMSP's session and subscriptions stay in the broker's persistence
            gw = gateway_factory(chargers=chargers(n_chargers), extra_toml=uplink_toml(broker.port))
            cps = [Charger(gw, f"CP{i}") for i in range(1, n_chargers + 1)]
            await asyncio.gather(*(c.connect() for c in cps))

            async def sessions(c: Charger) -> None:
                for k in range(sessions_each):
                    await c.session(1 + k % 2, calls, readings)

            await asyncio.gather(*(sessions(c) for c in cps))
            high, unsent = outbox_seqs(gw)
            stats = uplink_stats(gw)
            assert stats["connected"] is False and stats["sent_events"] == 0, stats
            assert unsent == high == stats["backlog_events"], (high, unsent, stats)
            assert emsp.gateway(GW_ID).events == {}

            broker.start()
            view = emsp.gateway(GW_ID)
            await delivered(emsp, gw, high, "the backlog")
            check_stream(emsp, high)
            sent = [s for c in cps for s in c.sessions]
            assert len(sent) == n_chargers * sessions_each
            check_sessions(emsp, sent)
            assert len(view.sessions) == len(sent)
            boots = [e for e in view.events.values() if e["kind"] == "charger.boot"]
            assert sorted(e["charger_id"] for e in boots) == [c.id for c in cps]
            await until(
                lambda: uplink_stats(gw)["backlog_events"] == 0,
                STORE_TIMEOUT_S,
                "all rows marked sent",
                poll=STORE_POLL_S,
            )
            assert_clean(*(c.cp for c in cps))
        finally:
            await gather_closing(*(c.cp for c in cps))
            await emsp.stop()
            broker.stop()

    run_async(body())


# -- 2 ------------------------------------------------------------------------------------------------------------
def test_gateway_sigkilled_while_draining_loses_nothing(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    # 3 chargers x (started + 6 x 200 readings + stopped + record + ...) ≈ 3,650 events. Small batches make the
    # drain take long enough for the kill to land inside it.
    n_chargers, calls = 3, 6
    kill_after = 400  # events at the eMSP when the gateway is killed (more than one batch, far from all)

    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = await persistent_emsp(broker, "emsp-kill")
        cps: list[Charger] = []
        try:
            broker.stop()
            gw = gateway_factory(
                chargers=chargers(n_chargers), extra_toml=uplink_toml(broker.port, batch_max=5)
            )
            cps = [Charger(gw, f"CP{i}") for i in range(1, n_chargers + 1)]
            await asyncio.gather(*(c.connect() for c in cps))
            await asyncio.gather(*(c.session(1, calls, READINGS_PER_CALL) for c in cps))
            high, unsent = outbox_seqs(gw)
            assert high == unsent > 3000, (high, unsent)

            view = emsp.gateway(GW_ID)
            broker.start()
            await until(lambda: len(view.events) >= kill_after, DELIVERY_TIMEOUT_S, "the drain", emsp.report)
            gw.kill()
            at_kill = len(view.events)
            _, unsent_at_kill = outbox_seqs(gw)
            print(f"SIGKILL with {at_kill} of {high} events at the eMSP, {unsent_at_kill} rows unsent")
            assert 1 <= at_kill < high, "the drain finished before the kill: the test proved nothing"
            assert unsent_at_kill > 0
            await until(
                lambda: (view.presence or {}).get("reason") == "connection_lost",
                LAST_WILL_TIMEOUT_S,
                "the gateway's last will",
                emsp.report,
            )
            assert view.presence is not None and view.presence["online"] is False
            await gather_closing(*(c.cp for c in cps))  # their websockets died with the gateway

            gw.start()  # same data dir and port: drains the rest
            await delivered(emsp, gw, high, "the rest")
            await until(
                lambda: uplink_stats(gw)["backlog_events"] == 0,
                STORE_TIMEOUT_S,
                "all rows marked sent",
                poll=STORE_POLL_S,
            )
            # the restart emitted nothing new (no charger reconnected), so the stream ends where it did
            high_after, unsent_after = outbox_seqs(gw)
            assert (high_after, unsent_after) == (high, 0)
            check_stream(emsp, high)
            check_sessions(emsp, [s for c in cps for s in c.sessions])
            assert (view.presence or {}).get("online") is True
            print(f"duplicates after restart: {view.duplicates} (all byte-identical)")
            assert_clean(*(c.cp for c in cps))
        finally:
            await gather_closing(*(c.cp for c in cps))
            await emsp.stop()
            broker.stop()

    run_async(body())


# -- 3 ------------------------------------------------------------------------------------------------------------
def test_broker_restarted_mid_stream_loses_nothing_and_keeps_order(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    """Two broker restarts while the chargers keep sending: the first while the gateway streams live events, the
    second while it drains the backlog the first one left (publishes in flight when the broker goes away)."""
    n_chargers, sessions_each, calls, readings = 3, 2, 40, 20
    pause = 0.05  # between MeterValues: the chargers keep sending throughout the broker's restarts
    first_outage_events = (
        600  # produced while the broker is down the first time: a backlog that takes a while
    )
    second_outage_events = 100

    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = await persistent_emsp(broker, "emsp-restart")
        cps: list[Charger] = []
        traffic: asyncio.Future[list[None]] | None = None
        try:
            gw = gateway_factory(
                chargers=chargers(n_chargers), extra_toml=uplink_toml(broker.port, batch_max=5)
            )
            view = emsp.gateway(GW_ID)
            await until(
                lambda: (view.presence or {}).get("online") is True, DELIVERY_TIMEOUT_S, "gateway online"
            )
            cps = [Charger(gw, f"CP{i}") for i in range(1, n_chargers + 1)]
            await asyncio.gather(*(c.connect() for c in cps))

            async def sessions(c: Charger) -> None:
                for k in range(sessions_each):
                    await c.session(1 + k % 2, calls, readings, pause)

            traffic = running = asyncio.gather(*(sessions(c) for c in cps))
            await until(lambda: len(view.events) >= 10, DELIVERY_TIMEOUT_S, "stream flowing", emsp.report)

            async def outage(events: int, connects_after: int) -> int:
                """Stop the broker until the chargers produced `events` more, start it, wait for the gateway to
                reconnect and deliver the first of them; returns the last seq before the outage."""
                await asyncio.to_thread(broker.stop)  # the chargers keep sending meanwhile
                offline_from, _ = outbox_seqs(gw)
                await until(
                    lambda: outbox_seqs(gw)[0] >= offline_from + events or running.done(),
                    DELIVERY_TIMEOUT_S,
                    "chargers sending while the broker is down",
                    poll=STORE_POLL_S,
                )
                if running.done():
                    raise AssertionError(
                        f"the chargers' traffic ended during the outage ({running.exception()!r}): it must "
                        f"outlast the restarts\n{gw.output()}"
                    )
                await asyncio.to_thread(broker.start)
                # the gateway itself reconnected (not only the eMSP receiving what the broker had kept queued
                # for it) and is delivering what was produced while the broker was down
                await until(
                    lambda: uplink_stats(gw)["connects"] >= connects_after,
                    DELIVERY_TIMEOUT_S,
                    "the gateway reconnected",
                    poll=STORE_POLL_S,
                )
                await until(
                    lambda: max(view.events, default=0) > offline_from,
                    DELIVERY_TIMEOUT_S,
                    "events produced during the outage",
                    emsp.report,
                )
                return offline_from

            offline_from = await outage(first_outage_events, connects_after=2)
            # the second restart lands while that backlog drains (in batches of 5)
            got_seq, produced = max(view.events), outbox_seqs(gw)[0]
            assert got_seq < offline_from + first_outage_events <= produced, (
                f"the backlog of the first outage was delivered before the second restart ({got_seq}, "
                f"{offline_from + first_outage_events}, {produced}): the test proves nothing"
            )
            await outage(second_outage_events, connects_after=3)
            try:
                await traffic
            except AssertionError as e:
                raise AssertionError(f"{e}\n{gw.output()}") from None
            high, _ = outbox_seqs(gw)
            await delivered(emsp, gw, high, "the whole stream")
            check_stream(emsp, high)
            check_sessions(emsp, [s for c in cps for s in c.sessions])
            stats = uplink_stats(gw)
            assert stats["connects"] == 3, stats
            assert broker.starts == 3
            print(
                f"{high} events, {view.duplicates} duplicates (byte-identical), {stats['sent_batches']} batches"
            )
            assert_clean(*(c.cp for c in cps))
        finally:
            if traffic is not None and not traffic.done():
                traffic.cancel()
                await asyncio.gather(traffic, return_exceptions=True)
            await gather_closing(*(c.cp for c in cps))
            await emsp.stop()
            broker.stop()

    run_async(body())


# -- 4 ------------------------------------------------------------------------------------------------------------
def test_connector_status_does_not_queue_behind_the_backlog(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    # ~6,000 queued meter readings drained in batches of 5: seconds of draining, against milliseconds for one
    # retained status publish on its own task.
    calls = 30
    statuses = ["Preparing", "SuspendedEV", "SuspendedEVSE"]  # the last one wins

    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        arrivals: list[tuple[str, int, str, int]] = []
        emsp = await persistent_emsp(broker, "emsp-status")
        view = emsp.gateway(GW_ID)
        emsp.status_hook = lambda msg, _t: arrivals.append(
            (msg["charger_id"], msg["connector_id"], msg["status"], len(view.events))
        )
        late: SimEmsp | None = None
        cps: list[Charger] = []
        try:
            broker.stop()
            gw = gateway_factory(chargers=chargers(2), extra_toml=uplink_toml(broker.port, batch_max=5))
            cps = [Charger(gw, "CP1"), Charger(gw, "CP2")]
            await asyncio.gather(*(c.connect() for c in cps))
            s = await cps[0].start(1)
            for _ in range(calls):
                await cps[0].meter(s, READINGS_PER_CALL)
            high, unsent = outbox_seqs(gw)
            assert high == unsent > 5000, (high, unsent)

            broker.start()
            await until(lambda: len(view.events) >= 1, DELIVERY_TIMEOUT_S, "the drain", emsp.report)
            for st in statuses:
                await cps[1].status(2, st)
            await until(
                lambda: view.status.get(("CP2", 2), {}).get("status") == statuses[-1],
                STATUS_TIMEOUT_S,
                "the latest status at the eMSP",
                lambda: (arrivals[-5:], emsp.report()),
            )
            delivered_then = len(view.events)
            print(f"status {statuses[-1]} arrived with {delivered_then} of {high} backlog events delivered")
            assert delivered_then < high, (
                f"the status arrived only after the whole backlog ({delivered_then} of {high}): it queued "
                "behind it"
            )
            got = [a for a in arrivals if a[:2] == ("CP2", 2) and a[2] in statuses]
            assert got and got[-1][2] == statuses[-1], got
            assert [a[2] for a in got] == [x for x in statuses if x in {a[2] for a in got}], got  # order kept

            # retained, latest wins: a consumer that subscribes later gets exactly the last state
            late = SimEmsp("127.0.0.1", broker.port, persistent=False)
            late.start()
            await late.wait_connected()
            lview = late.gateway(GW_ID)
            every_connector = {(c.id, n) for c in cps for n in range(3)}
            await until(
                lambda: set(lview.status) >= every_connector,
                STATUS_TIMEOUT_S,
                "every connector's retained status for a new consumer",
                lambda: sorted(lview.status),
            )
            assert lview.status[("CP2", 2)]["status"] == statuses[-1]
            assert lview.status[("CP1", 1)]["status"] == "Charging"

            # and the backlog still arrives complete, in order, behind which the status did not wait
            await delivered(emsp, gw, high, "the backlog")
            check_stream(emsp, high)
            assert_clean(*(c.cp for c in cps))
        finally:
            await gather_closing(*(c.cp for c in cps))
            if late is not None:
                await late.stop()
            await emsp.stop()
            broker.stop()

    run_async(body())


# -- 5 ------------------------------------------------------------------------------------------------------------
def test_command_sent_while_the_gateway_is_offline_runs_when_it_reconnects(
    tmp_path: Path, gateway_factory: GatewayFactory
) -> None:
    """The gateway's MQTT session outlives a crash (command_session_s): a QoS 1 command the eMSP publishes while the
    gateway is down is queued by the broker and executed, with its result, once the gateway is back."""

    async def body() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = await persistent_emsp(broker, "emsp-offline-cmd")
        try:
            gw = gateway_factory(
                chargers=chargers(1), extra_toml=uplink_toml(broker.port, command_session_s=600)
            )
            view = emsp.gateway(GW_ID)
            await until(
                lambda: (view.presence or {}).get("online") is True, STATUS_TIMEOUT_S, "gateway online"
            )
            gw.kill()
            await until(
                lambda: (view.presence or {}).get("reason") == "connection_lost",
                LAST_WILL_TIMEOUT_S,
                "the gateway's last will",
            )
            cmd = {"id": "while-offline-1", "op": "set_site_limit", "args": {"amps": 40}}
            await emsp.send_raw(GW_ID, encode_message(cmd, "cbor"))
            assert "while-offline-1" not in emsp.results  # nobody to run it yet
            gw.start()
            await until(
                lambda: "while-offline-1" in emsp.results, DELIVERY_TIMEOUT_S, "the queued command's result"
            )
            result = emsp.results["while-offline-1"]
            # this site has no load management: the command ran and was answered (not lost at the broker)
            assert result["op"] == "set_site_limit" and result["ok"] is False
            assert result["error"]["code"] == "not_supported"
        finally:
            await emsp.stop()
            broker.stop()

    run_async(body())
