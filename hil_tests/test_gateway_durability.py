"""Durability: SIGKILL the gateway mid-session while charge points keep queueing transaction messages; after the
restart every session ends with the right energy, no message lost or counted twice, transactionIds never reused."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from websockets.exceptions import InvalidHandshake

from hil_tests.gateway_proc import DEFAULT_TAG, ChargerSpec, GatewayFactory, GatewayProcess
from hil_tests.rawclient import RawChargePoint, assert_clean, meter_values, run_async

# Pause between reconnect attempts while the gateway is down (a real charger backs off for seconds; tests hurry).
RECONNECT_PAUSE = 0.1

BASE = datetime(2026, 11, 21, 15, 0, 0)


class Progress:
    """Counts answered messages across charge points; lets the test wait for the n-th without polling."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def tick(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, n: int) -> None:
        while self.count < n:
            self._changed.clear()
            await self._changed.wait()


Payload = Callable[[], dict[str, Any]]


class QueueingChargePoint:
    """Delivers its transaction-related messages in order, one at a time; the head of the queue is resent after a
    reconnect until it is answered (OCPP 1.6 §4.7: transaction-related messages are queued and retried)."""

    def __init__(self, gw: GatewayProcess, cp_id: str, progress: Progress) -> None:
        self.gw = gw
        self.progress = progress
        self.cp_id = cp_id
        self.queue: deque[tuple[str, Payload]] = deque()
        self.delivered: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.tx: int | None = None
        self.start_answers: list[int] = []
        self.clients: list[RawChargePoint] = []
        self.cp: RawChargePoint | None = None
        self.resends = 0
        self.wake = asyncio.Event()

    def enqueue(self, action: str, payload: Payload) -> None:
        self.queue.append((action, payload))
        self.wake.set()

    async def _connect(self) -> RawChargePoint:
        while True:
            cp = RawChargePoint(self.gw.url(self.cp_id), self.cp_id, self.gw.password(self.cp_id))
            try:
                await cp.connect()
                boot = await cp.boot()
                assert boot["status"] == "Accepted", boot
                self.clients.append(cp)
                return cp
            except (OSError, InvalidHandshake, TimeoutError, ConnectionError):
                await cp.close()
                await asyncio.sleep(RECONNECT_PAUSE)

    async def pump(self, until_empty: asyncio.Event) -> None:
        while True:
            if not self.queue:
                if until_empty.is_set():
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.cp is None or not self.cp.is_open:
                if self.cp is not None:
                    await self.cp.close()
                self.cp = await self._connect()
            action, make = self.queue[0]
            payload = make()
            try:
                result = await self.cp.call(action, payload)
            except (ConnectionError, TimeoutError):
                self.resends += 1
                continue  # gateway gone: reconnect and resend the same message
            self.queue.popleft()
            self.delivered.append((action, payload, result))
            self.progress.tick()
            if action == "StartTransaction":
                self.tx = result["transactionId"]
                self.start_answers.append(result["transactionId"])

    async def close(self) -> None:
        if self.cp is not None:
            await self.cp.close()


def _wh(cp_index: int, step: int) -> int:
    return 10_000 * cp_index + 100 * step


def test_sigkill_mid_session_loses_and_doubles_nothing(gateway_factory: GatewayFactory) -> None:
    ids = [f"CP{i}" for i in range(1, 5)]
    gw = gateway_factory(chargers=[ChargerSpec(i, connectors=1) for i in ids])
    steps_before, steps_after = 6, 6

    async def body() -> list[QueueingChargePoint]:
        progress = Progress()
        cps = [QueueingChargePoint(gw, cp_id, progress) for cp_id in ids]
        for n, q in enumerate(cps, start=1):
            q.enqueue(
                "StartTransaction",
                (
                    lambda n=n: {
                        "connectorId": 1,
                        "idTag": DEFAULT_TAG,
                        "meterStart": _wh(n, 0),
                        "timestamp": f"2026-11-21T12:00:0{n}.000Z",
                    }
                ),
            )
            for s in range(1, steps_before + 1):
                q.enqueue(
                    "MeterValues",
                    (
                        lambda q=q, n=n, s=s: meter_values(
                            1, q.tx, _wh(n, s), f"2026-11-21T12:{s:02d}:00.000Z"
                        )
                    ),
                )
        drained = asyncio.Event()
        pumps = [asyncio.create_task(q.pump(drained)) for q in cps]
        try:
            # SIGKILL once a third of the first batch is answered: some messages are in flight, some not yet sent
            total = len(cps) * (1 + steps_before)
            await progress.reach(total // 3)
            await asyncio.to_thread(gw.kill)
            # queued while the gateway is down
            for n, q in enumerate(cps, start=1):
                for s in range(steps_before + 1, steps_before + steps_after + 1):
                    q.enqueue(
                        "MeterValues",
                        (
                            lambda q=q, n=n, s=s: meter_values(
                                1, q.tx, _wh(n, s), f"2026-11-21T12:{s:02d}:00.000Z"
                            )
                        ),
                    )
                last = steps_before + steps_after
                q.enqueue(
                    "StopTransaction",
                    (
                        lambda q=q, n=n, last=last: {
                            "transactionId": q.tx,
                            "meterStop": _wh(n, last) + 7,
                            "timestamp": "2026-11-21T13:00:00.000Z",
                            "reason": "EVDisconnected",
                        }
                    ),
                )
            await asyncio.sleep(0.5)
            await asyncio.to_thread(gw.start)
            drained.set()
            await asyncio.gather(*pumps)
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for q in cps:
                await q.close()
        return cps

    cps = run_async(body())
    print(
        "resends after the kill:",
        {q.cp_id: q.resends for q in cps},
        "delivered:",
        {q.cp_id: len(q.delivered) for q in cps},
    )
    for n, q in enumerate(cps, start=1):
        for c in q.clients:
            assert_clean(c)
        assert len(set(q.start_answers)) == 1, (
            f"{q.cp_id}: resent StartTransaction got new ids {q.start_answers}"
        )
        rows = gw.query("SELECT * FROM transactions WHERE charger_id = ?", (q.cp_id,))
        assert len(rows) == 1, rows
        row = rows[0]
        last = steps_before + steps_after
        assert row["id"] == q.tx
        assert row["state"] == "stopped"
        assert (row["meter_start"], row["meter_stop"]) == (_wh(n, 0), _wh(n, last) + 7)
        assert row["energy_wh"] == _wh(n, last) + 7 - _wh(n, 0)
        samples = gw.query(
            "SELECT value FROM meter_samples WHERE transaction_id = ? AND measurand = 'Energy.Active.Import.Register' "
            "ORDER BY charger_ts",
            (q.tx,),
        )
        assert [int(s["value"]) for s in samples] == [_wh(n, s) for s in range(1, last + 1)], q.cp_id
        for kind in ("session.started", "session.stopped"):
            events = gw.query("SELECT seq FROM outbox WHERE kind = ? AND charger_id = ?", (kind, q.cp_id))
            assert len(events) == 1, f"{q.cp_id}: {kind} events {events}"
    all_ids = [q.tx for q in cps]
    assert len(set(all_ids)) == len(all_ids)


def test_transaction_ids_unique_across_restarts(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1", connectors=1)])

    async def one_session(minute: int, stop: bool) -> int:
        async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1")) as cp:
            await cp.boot()
            start = {
                "connectorId": 1,
                "idTag": DEFAULT_TAG,
                "meterStart": minute * 10,
                "timestamp": f"2026-11-21T14:{minute:02d}:00.000Z",
            }
            tx: int = (await cp.call("StartTransaction", start))["transactionId"]
            if stop:
                await cp.call(
                    "StopTransaction",
                    {
                        "transactionId": tx,
                        "meterStop": minute * 10 + 5,
                        "timestamp": f"2026-11-21T14:{minute:02d}:30.000Z",
                    },
                )
        assert_clean(cp)
        return tx

    seen = [run_async(one_session(1, stop=True))]
    gw.stop()  # graceful
    gw.start()
    seen.append(run_async(one_session(2, stop=False)))
    gw.kill()  # answered, then power cut: the row must be there and its id never handed out again
    gw.start()
    seen.append(run_async(one_session(3, stop=True)))
    gw.kill()
    gw.start()
    seen.append(run_async(one_session(4, stop=True)))
    assert len(set(seen)) == len(seen), seen
    rows = gw.query("SELECT id, state FROM transactions ORDER BY id")
    assert [r["id"] for r in rows] == sorted(seen)
    assert {r["id"]: r["state"] for r in rows}[seen[1]] == "active"  # never stopped


def test_durable_before_answer_under_concurrent_load(gateway_factory: GatewayFactory) -> None:
    """Every answered MeterValues is in the store after a SIGKILL at an arbitrary moment."""
    ids = [f"CP{i}" for i in range(1, 4)]
    gw = gateway_factory(chargers=[ChargerSpec(i, connectors=1) for i in ids])

    async def body() -> dict[str, tuple[int, list[int]]]:
        answered: dict[str, tuple[int, list[int]]] = {}
        progress = Progress()
        cps = []
        for i, cp_id in enumerate(ids):
            cp = await RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id)).connect()
            cps.append(cp)
            await cp.boot()
            tx = (
                await cp.call(
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": DEFAULT_TAG,
                        "meterStart": 0,
                        "timestamp": f"2026-11-21T15:00:0{i}.000Z",
                    },
                )
            )["transactionId"]
            answered[cp_id] = (tx, [])

        async def flood(cp: RawChargePoint) -> None:
            tx, acked = answered[cp.charger_id]
            for s in range(1, 100_000):
                try:
                    ts = (BASE + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                    await cp.call("MeterValues", meter_values(1, tx, s, ts))
                except ConnectionError:
                    return
                acked.append(s)
                progress.tick()

        tasks = [asyncio.create_task(flood(cp)) for cp in cps]
        await progress.reach(150)
        await asyncio.to_thread(gw.kill)
        await asyncio.gather(*tasks)
        for cp in cps:
            await cp.close()
        return answered

    answered = run_async(body())
    print("answered before the kill:", {k: len(v[1]) for k, v in answered.items()})
    for cp_id, (tx, acked) in answered.items():
        stored = {
            int(r["value"])
            for r in gw.query("SELECT value FROM meter_samples WHERE transaction_id = ?", (tx,))
        }
        missing = sorted(set(acked) - stored)
        assert not missing, f"{cp_id}: answered but not stored after SIGKILL: {missing[:20]}"
