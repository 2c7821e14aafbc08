"""Site authorization policies end to end: a real gateway process (`chargegate run`), raw OCPP charge points over
real websockets and the `chargegate tokens` CLI as its own process.

- `concurrent_sessions = "refuse"`: a card charging at CP1 is answered ConcurrentTx at CP2 (Authorize and
  StartTransaction; the refused start is still recorded), the same charger resending its StartTransaction after a
  reconnect gets its original answer, and the card is free again once its transactions stop;
- an operator override (`chargegate tokens allow`) lets in a card the eMSP list blocks while the gateway runs, with
  its audit events; `chargegate tokens block` ends it.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.events import decode_body
from gateway.store import Store
from hil_tests.gateway_proc import ChargerSpec, GatewayProcess, run_module
from hil_tests.rawclient import RawChargePoint, now_iso, run_async

CARD = "04A2B3C4D5E6F7"
OTHER = "04FFEEDDCCBBAA"
STUCK = "0411223344556677"


def _cp(gw: GatewayProcess, cp_id: str) -> RawChargePoint:
    return RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id))


def _start(connector: int, tag: str, ts: str | None = None) -> dict[str, Any]:
    return {"connectorId": connector, "idTag": tag, "meterStart": 1000, "timestamp": ts or now_iso()}


def _stop(tx: int) -> dict[str, Any]:
    return {"transactionId": tx, "meterStop": 2000, "timestamp": now_iso(), "reason": "Local"}


def _status(answer: dict[str, Any]) -> str:
    status: str = answer["idTagInfo"]["status"]
    return status


def _auth_events(gw: GatewayProcess) -> list[dict[str, Any]]:
    rows = gw.query("SELECT body FROM outbox WHERE kind = 'auth.decision' ORDER BY seq")
    return [decode_body(r["body"]) for r in rows]


def test_concurrent_tx_across_two_chargers(tmp_path: Path) -> None:
    gw = GatewayProcess(
        tmp_path / "gw",
        chargers=[ChargerSpec("CP1"), ChargerSpec("CP2")],
        allow=[CARD, OTHER],
        auth={"concurrent_sessions": "refuse"},
    )
    gw.start()
    try:

        async def body() -> dict[str, int]:
            cp1, cp2 = _cp(gw, "CP1"), _cp(gw, "CP2")
            await cp1.connect()
            await cp2.connect()
            try:
                assert (await cp1.boot())["status"] == (await cp2.boot())["status"] == "Accepted"
                first = _start(1, CARD)
                s1 = await cp1.call("StartTransaction", first)
                assert _status(s1) == "Accepted"
                tx1 = s1["transactionId"]

                assert _status(await cp2.call("Authorize", {"idTag": CARD})) == "ConcurrentTx"
                assert _status(await cp2.call("Authorize", {"idTag": CARD.lower()})) == "ConcurrentTx"
                assert _status(await cp2.call("Authorize", {"idTag": OTHER})) == "Accepted"
                # the charger started anyway (e.g. its own local list): recorded, answered ConcurrentTx
                s2 = await cp2.call("StartTransaction", _start(1, CARD))
                assert _status(s2) == "ConcurrentTx"

                # CP1 loses its connection and resends the very same StartTransaction: its original answer
                await cp1.close()
                cp1 = _cp(gw, "CP1")
                await cp1.connect()
                await cp1.boot()
                again = await cp1.call("StartTransaction", first)
                assert (again["transactionId"], _status(again)) == (tx1, "Accepted")

                assert await cp1.call("StopTransaction", _stop(tx1)) == {}
                # tx2 (refused, still running on CP2) keeps the card busy for other chargers, not for CP2
                assert _status(await cp1.call("Authorize", {"idTag": CARD})) == "ConcurrentTx"
                assert _status(await cp2.call("Authorize", {"idTag": CARD})) == "Accepted"
                assert await cp2.call("StopTransaction", _stop(s2["transactionId"])) == {}
                # no active transaction left: the card is free again everywhere
                assert _status(await cp1.call("Authorize", {"idTag": CARD})) == "Accepted"
                return {"tx1": tx1, "tx2": s2["transactionId"]}
            finally:
                await cp1.close()
                await cp2.close()

        txs = run_async(body())
    finally:
        gw.stop()

    rows = {r["id"]: r for r in gw.query("SELECT id, charger_id, auth_status, state FROM transactions")}
    assert len(rows) == 2  # the resend created nothing
    assert (rows[txs["tx2"]]["auth_status"], rows[txs["tx2"]]["state"]) == ("ConcurrentTx", "stopped")
    starts = {
        b["tx"]: b["auth_status"]
        for b in (
            decode_body(r["body"]) for r in gw.query("SELECT body FROM outbox WHERE kind = 'session.started'")
        )
    }
    assert starts == {txs["tx1"]: "Accepted", txs["tx2"]: "ConcurrentTx"}
    refused = [e for e in _auth_events(gw) if e["status"] == "ConcurrentTx"]
    assert [(e["purpose"], e["charger_id"]) for e in refused] == [
        ("authorize", "CP2"),
        ("authorize", "CP2"),
        ("start", "CP2"),
        ("authorize", "CP1"),
    ]
    assert all(f"already in transaction {txs['tx1']} at CP1 connector 1" in e["reason"] for e in refused[:3])
    assert f"already in transaction {txs['tx2']} at CP2 connector 1" in refused[3]["reason"]


def _tokens(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("gateway.cli", "tokens", *args, "--config", str(gw.config_path))


def test_operator_override_beats_the_emsp_list_while_the_gateway_runs(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", chargers=[ChargerSpec("CP1")], allow=[])

    async def emsp_list() -> None:
        # the eMSP's list (applied through the same call the uplink makes) wrongly blocks the card
        store = Store.open(gw.data_dir)
        try:
            svc = AuthService(store, AuthSection())
            ok, msg = await svc.apply_token_list("full", 1, None, [{"id": STUCK, "status": "Blocked"}])
            assert ok, msg
        finally:
            store.close()

    asyncio.run(emsp_list())
    gw.start()
    try:

        async def body() -> None:
            async with _cp(gw, "CP1") as cp:
                await cp.boot()
                assert _status(await cp.call("Authorize", {"idTag": STUCK})) == "Blocked"

                proc = _tokens(
                    gw, "allow", STUCK, "--until", "2h", "--reason", "eMSP list wrong, ticket 4711"
                )
                assert proc.returncode == 0, proc.stderr
                assert "operator override of listed Blocked" in proc.stdout
                auth = await cp.call("Authorize", {"idTag": STUCK})
                assert _status(auth) == "Accepted"
                until = datetime.fromisoformat(auth["idTagInfo"]["expiryDate"])
                assert timedelta(minutes=118) < until - datetime.now(UTC) <= timedelta(hours=2)
                start = await cp.call("StartTransaction", _start(1, STUCK))
                assert _status(start) == "Accepted"
                assert await cp.call("StopTransaction", _stop(start["transactionId"])) == {}

                proc = _tokens(gw, "block", STUCK, "--note", "eMSP confirmed the block")
                assert proc.returncode == 0, proc.stderr
                assert _status(await cp.call("Authorize", {"idTag": STUCK})) == "Blocked"

        run_async(body())
    finally:
        gw.stop()

    [tx] = gw.query("SELECT auth_method FROM transactions")
    assert tx["auth_method"] == "OPERATOR_OVERRIDE"
    audit = [(e["purpose"], e["status"], e["source"]) for e in _auth_events(gw)]
    assert audit == [
        ("authorize", "Blocked", "local_list"),
        ("override", "Accepted", "override"),
        ("authorize", "Accepted", "override"),
        ("start", "Accepted", "override"),
        ("override", "Expired", "override"),
        ("authorize", "Blocked", "local_list"),
    ]
    granted = _auth_events(gw)[1]
    assert granted["charger_id"] == "*" and "eMSP list wrong, ticket 4711" in granted["reason"]
    assert "ended early: tokens block: eMSP confirmed the block" in _auth_events(gw)[4]["reason"]
