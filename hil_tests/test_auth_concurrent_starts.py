"""`concurrent_sessions = "refuse"` under a true race: a real gateway process (`chargegate run`), two raw OCPP charge
points over real websockets on loopback sending StartTransaction for the same card at the same moment
(asyncio.gather), round after round. Exactly one of the two starts is Accepted each round, the other ConcurrentTx,
and what the store recorded (transactions.auth_status, the session.started and auth.decision outbox events) is what
each charger was answered.

The check decide() makes on the event loop reads the card's active transactions before the StartTransaction is
written; the one that decides is repeated on the store's writer thread, in the start's own transaction
(AuthService.confirm_start)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.events import decode_body
from hil_tests.gateway_proc import ChargerSpec, GatewayProcess
from hil_tests.rawclient import RawChargePoint, now_iso, run_async

CARD = "04C0FFEE000001"
ROUNDS = 20


def _cp(gw: GatewayProcess, cp_id: str) -> RawChargePoint:
    return RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id))


def _start(tag: str) -> dict[str, Any]:
    return {"connectorId": 1, "idTag": tag, "meterStart": 1000, "timestamp": now_iso()}


def _stop(tx: int) -> dict[str, Any]:
    return {"transactionId": tx, "meterStop": 1500, "timestamp": now_iso(), "reason": "Local"}


def test_two_simultaneous_starts_of_one_card_accept_exactly_one(tmp_path: Path) -> None:
    gw = GatewayProcess(
        tmp_path / "gw",
        chargers=[ChargerSpec("CP1"), ChargerSpec("CP2")],
        allow=[CARD],
        auth={"concurrent_sessions": "refuse"},
    )
    gw.start()
    try:

        async def body() -> list[dict[str, tuple[int, str]]]:
            cps = [_cp(gw, "CP1"), _cp(gw, "CP2")]
            for cp in cps:
                await cp.connect()
            try:
                for cp in cps:
                    assert (await cp.boot())["status"] == "Accepted"
                rounds: list[dict[str, tuple[int, str]]] = []
                for _ in range(ROUNDS):
                    answers = await asyncio.gather(*(cp.call("StartTransaction", _start(CARD)) for cp in cps))
                    rounds.append(
                        {
                            cp.charger_id: (a["transactionId"], a["idTagInfo"]["status"])
                            for cp, a in zip(cps, answers, strict=True)
                        }
                    )
                    # both sessions end before the next round: the card is free again
                    stops = await asyncio.gather(
                        *(
                            cp.call("StopTransaction", _stop(a["transactionId"]))
                            for cp, a in zip(cps, answers, strict=True)
                        )
                    )
                    assert stops == [{}, {}]
                return rounds
            finally:
                for cp in cps:
                    await cp.close()

        rounds = run_async(body())
    finally:
        gw.stop()

    both_accepted = sum(1 for r in rounds if all(status == "Accepted" for _, status in r.values()))
    statuses = [sorted(status for _, status in r.values()) for r in rounds]
    assert both_accepted == 0, f"{both_accepted} of {ROUNDS} rounds accepted both starts: {statuses}"
    assert statuses == [["Accepted", "ConcurrentTx"]] * ROUNDS

    answered = {tx: status for r in rounds for tx, status in r.values()}
    stored = {r["id"]: r["auth_status"] for r in gw.query("SELECT id, auth_status FROM transactions")}
    assert stored == answered
    started = {
        b["tx"]: b["auth_status"]
        for b in (
            decode_body(r["body"]) for r in gw.query("SELECT body FROM outbox WHERE kind = 'session.started'")
        )
    }
    assert started == answered
    decisions = [
        decode_body(r["body"]) for r in gw.query("SELECT body FROM outbox WHERE kind = 'auth.decision'")
    ]
    start_decisions = {d["transaction_id"]: d["status"] for d in decisions if d["purpose"] == "start"}
    assert start_decisions == answered
    rows = gw.query("SELECT transaction_id, status FROM auth_decisions WHERE purpose = 'start'")
    assert {r["transaction_id"]: r["status"] for r in rows} == answered
    # the refused start names the transaction it lost to
    for r in rounds:
        (won,) = [tx for tx, status in r.values() if status == "Accepted"]
        (lost,) = [tx for tx, status in r.values() if status == "ConcurrentTx"]
        (reason,) = [
            d["reason"] for d in decisions if d["transaction_id"] == lost and d["purpose"] == "start"
        ]
        assert f"already in transaction {won} " in reason
