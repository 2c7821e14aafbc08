"""Offline authorization end to end: a real gateway process (`chargegate run`) with the token store wired in, the
`chargegate tokens` CLI as its own process, raw OCPP charge points and the simulated charger running the real agent
core, a real mosquitto with the simulated eMSP for the token-list contract.

- uplink absent (no broker): a listed card starts from the local list, a blocked card is refused, an unknown card
  follows each offline policy (reject / accept / accept_limited with its concurrency cap);
- the gateway is SIGKILLed: a charger holding the pushed local list starts a listed card on its own (and refuses a
  blocked one), and its offline transaction reaches the gateway's store when the gateway is back;
- a differential token list with a stale base version is refused (nothing changes) and the full list the eMSP sends
  then reaches the charger as a Full SendLocalList.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.clock import SimClock
from firmware_sim.ev import Ev, EvSpec
from firmware_sim.fleet import ChargerCreds, Problems, SimCharger
from hil_tests.gateway_proc import ChargerSpec, GatewayProcess, run_module
from hil_tests.mosquitto import Mosquitto, mosquitto_binary
from hil_tests.rawclient import RawChargePoint, now_iso, run_async

LISTED = "04A2B3C4D5E6F7"
BLOCKED = "BADC0FFEE0001"
UNKNOWN = "UNKNOWN00000001"
UNKNOWN2 = "UNKNOWN00000002"
# Bound on waiting for something that takes milliseconds to a few seconds (reconnect backoff) on a healthy box.
WAIT_S = 45.0


class AuthGateway(GatewayProcess):
    """A gateway process with the given [auth] keys; it keeps real agents' local lists in step by default."""

    def __init__(self, workdir: Path, auth: dict[str, Any], **kw: Any) -> None:
        kw.setdefault("allow", ())
        super().__init__(workdir, auth={"sync_charger_lists": True, **auth}, **kw)

    def tokens(self, *args: str) -> str:
        """`chargegate tokens ...` as its own process against this site's config."""
        proc = run_module("gateway.cli", "tokens", *args, "--config", str(self.config_path))
        assert proc.returncode == 0, f"chargegate tokens {' '.join(args)}: {proc.stderr}"
        return proc.stdout


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., AuthGateway]]:
    made: list[AuthGateway] = []

    def make(name: str, auth: dict[str, Any], **kw: Any) -> AuthGateway:
        gw = AuthGateway(tmp_path / name, auth, **kw)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def import_cards(gw: AuthGateway) -> None:
    csv_file = gw.workdir / "cards.csv"
    csv_file.write_text(f"id,status,parent_id\n{LISTED},Accepted,FLEET1\n{BLOCKED},Blocked,\n")
    assert "imported 2 tokens" in gw.tokens("import", str(csv_file))


def _cp(gw: GatewayProcess, cp_id: str = "CP1") -> RawChargePoint:
    return RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id))


async def start_tx(cp: RawChargePoint, connector: int, tag: str) -> dict[str, Any]:
    return await cp.call(
        "StartTransaction",
        {"connectorId": connector, "idTag": tag, "meterStart": 1000, "timestamp": now_iso()},
    )


def decisions(gw: GatewayProcess) -> list[dict[str, Any]]:
    return [dict(r) for r in gw.query("SELECT * FROM auth_decisions ORDER BY id")]


# -- 1. uplink absent ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["reject", "accept", "accept_limited"])
def test_uplink_absent_listed_blocked_and_unknown_cards(
    gateways: Callable[..., AuthGateway], policy: str
) -> None:
    gw = gateways(policy, {"offline_policy": policy, "limited_max_concurrent": 1})
    import_cards(gw)  # written while the gateway is not running
    gw.start()
    expect_unknown = "Invalid" if policy == "reject" else "Accepted"

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Accepted"
            listed = await start_tx(cp, 1, LISTED)
            assert listed["idTagInfo"] == {"status": "Accepted", "parentIdTag": "FLEET1"}
            assert (await cp.call("Authorize", {"idTag": BLOCKED}))["idTagInfo"]["status"] == "Blocked"
            assert (await start_tx(cp, 2, BLOCKED))["idTagInfo"]["status"] == "Blocked"
            assert (await cp.call("Authorize", {"idTag": UNKNOWN}))["idTagInfo"]["status"] == expect_unknown
            unknown_start = await start_tx(cp, 2, UNKNOWN)
            assert unknown_start["idTagInfo"]["status"] == expect_unknown
            if policy == "accept_limited":
                # the one allowed limited session is running: a second unknown card is refused
                assert (await cp.call("Authorize", {"idTag": UNKNOWN2}))["idTagInfo"]["status"] == "Invalid"
            # a card added with the CLI while the gateway runs counts at once
            gw.tokens("add", "LATE0001")
            assert (await cp.call("Authorize", {"idTag": "late0001"}))["idTagInfo"]["status"] == "Accepted"

    run_async(body())
    # Authorize answers from the list go out before their audit record commits (it lands with the next group
    # commit); a clean stop flushes what is queued, so the store is read once it is final.
    assert gw.stop() == 0
    rows = decisions(gw)
    assert len(rows) == 7 if policy == "accept_limited" else 6
    by = {(r["id_tag"], r["purpose"]): r for r in rows}
    listed_start = by[(LISTED, "start")]
    assert (listed_start["status"], listed_start["source"], listed_start["auth_method"]) == (
        "Accepted",
        "manual",
        "WHITELIST",
    )
    print(
        f"\n[{policy}] listed card StartTransaction decided in {listed_start['latency_ms']:.3f} ms (budget 2000 ms)"
    )
    assert by[(BLOCKED, "start")]["status"] == "Blocked"
    assert (by[(UNKNOWN, "start")]["source"], by[(UNKNOWN, "start")]["auth_method"]) == (
        "offline_policy",
        "OFFLINE_UNKNOWN",
    )
    assert "eMSP unreachable" in by[(UNKNOWN, "start")]["reason"]
    # the session record says how it was authorized; every decision has its outbox event
    [tx] = gw.query("SELECT auth_method, parent_id_tag FROM transactions WHERE id_tag = ?", (LISTED,))
    assert (tx["auth_method"], tx["parent_id_tag"]) == ("WHITELIST", "FLEET1")
    events = gw.query("SELECT COUNT(*) AS n FROM outbox WHERE kind = 'auth.decision'")
    assert events[0]["n"] == len(rows)
    if policy != "reject":
        [off] = gw.query("SELECT limited, state FROM auth_offline_sessions")
        assert (off["limited"], off["state"]) == (int(policy == "accept_limited"), "pending")


# -- 2. gateway killed: the charger authorizes from its pushed local list ------------------------------------------
def sim_charger(gw: GatewayProcess, tmp: Path, frames: list[tuple[str, str]]) -> tuple[SimCharger, Problems]:
    problems = Problems()
    creds = ChargerCreds("CP1", gw.password("CP1"), connectors=1)
    charger = SimCharger(
        creds, gw.ocpp_url, SimClock(), tmp / "charger-state", problems,
        extra_frame_hook=lambda d, t: frames.append((d, t)),
    )  # fmt: skip
    return charger, problems


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def list_pushed(gw: GatewayProcess, charger_id: str = "CP1") -> bool:
    try:
        rows = gw.query(
            "SELECT l.revision AS have, (SELECT value FROM auth_meta WHERE key = 'revision') AS want "
            "FROM auth_charger_lists l WHERE charger_id = ?",
            (charger_id,),
        )
    except Exception:  # the table is read while the gateway writes: try again
        return False
    return bool(rows) and rows[0]["have"] is not None and rows[0]["have"] == rows[0]["want"]


async def with_charger(charger: SimCharger, body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(charger.run(stop))
    try:
        await body()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 15)
        except TimeoutError:
            task.cancel()


def test_charger_starts_listed_card_while_gateway_is_dead_and_syncs_later(
    gateways: Callable[..., AuthGateway], tmp_path: Path
) -> None:
    gw = gateways("killed", {"offline_policy": "reject"}, chargers=[ChargerSpec("CP1", connectors=1)])
    import_cards(gw)
    gw.start()
    frames: list[tuple[str, str]] = []
    charger, problems = sim_charger(gw, tmp_path, frames)

    async def body() -> None:
        await wait_for(charger.registered, "the charger to boot")
        await wait_for(lambda: list_pushed(gw), "the local list to reach the charger")
        core = charger.core
        assert core is not None
        assert core.auth.lookup(LISTED, True, False) == {"status": "Accepted", "parentIdTag": "FLEET1"}
        assert core.auth.lookup(BLOCKED, True, False) == {"status": "Blocked"}

        gw.kill()
        await wait_for(
            lambda: not getattr(charger.core, "_online", True), "the charger to notice the gateway is gone"
        )
        charger.hal.plug_in(1, Ev(EvSpec(), soc=0.3))
        charger.hal.tap(BLOCKED)
        await asyncio.sleep(1.0)  # the agent ticks every 0.1 s: the blocked tap has been handled
        assert charger.status(1) != "Charging"
        assert charger.transaction_id(1) is None
        charger.hal.tap(LISTED)
        await wait_for(lambda: charger.status(1) == "Charging", "the offline start of the listed card")
        assert charger.hal.connector(1).relay_closed

        gw.start()  # same port and data dir: the charger reconnects and delivers its queued StartTransaction
        await wait_for(
            lambda: bool(
                gw.query("SELECT id FROM transactions WHERE charger_id = 'CP1' AND id_tag = ?", (LISTED,))
            ),
            "the offline transaction to reach the gateway",
        )
        [tx] = gw.query("SELECT id, auth_status, auth_method FROM transactions WHERE id_tag = ?", (LISTED,))
        assert (tx["auth_status"], tx["auth_method"]) == ("Accepted", "WHITELIST")
        await wait_for(
            lambda: charger.transaction_id(1) == tx["id"], "the charger to learn the transaction id"
        )

    run_async(with_charger(charger, body))
    assert problems.items == []
    assert BLOCKED not in {r["id_tag"] for r in gw.query("SELECT id_tag FROM transactions")}


# -- 3. stale differential -> refused, full resync reaches the charger -------------------------------------------
@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_stale_differential_is_refused_and_full_resync_reaches_the_charger(
    gateways: Callable[..., AuthGateway], tmp_path: Path
) -> None:
    from firmware_sim.emsp import SimEmsp

    with Mosquitto(tmp_path / "broker") as broker:
        uplink = (
            f'[uplink]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\ngateway_id = "gw-auth"\n'
        )
        gw = gateways(
            "emsp",
            {"offline_policy": "reject"},
            chargers=[ChargerSpec("CP1", connectors=1)],
            extra_toml=uplink,
        )
        gw.start()
        frames: list[tuple[str, str]] = []
        charger, _ = sim_charger(gw, tmp_path, frames)

        def sendlocallists() -> list[dict[str, Any]]:
            out = []
            for direction, text in frames:
                msg = json.loads(text)
                if direction == "rx" and msg[0] == 2 and msg[2] == "SendLocalList":
                    out.append(msg[3])
            return out

        async def body() -> None:
            emsp = SimEmsp("127.0.0.1", broker.port)
            emsp.start()
            try:
                await emsp.wait_connected()
                full1 = [{"id": "CARD0001", "status": "Accepted"}, {"id": "CARD0002", "status": "Accepted"}]
                deadline = time.monotonic() + WAIT_S
                while True:  # until the gateway's uplink has subscribed
                    try:
                        args = {"kind": "full", "version": 1, "tokens": full1}
                        res = await emsp.command("gw-auth", "token_list", args, timeout=2.0)
                        break
                    except TimeoutError:
                        assert time.monotonic() < deadline, "the gateway's uplink never answered"
                assert res["ok"], res
                await wait_for(charger.registered, "the charger to boot")
                await wait_for(lambda: list_pushed(gw), "the first list to reach the charger")
                res = await emsp.send_token_list(
                    "gw-auth", "differential", 2, [{"id": "CARD0002", "status": "Blocked"}], base_version=1
                )
                assert res["ok"], res
                await wait_for(lambda: list_pushed(gw), "the differential to reach the charger")
                assert sendlocallists()[-1]["updateType"] == "Differential"
                sent_before = len(sendlocallists())

                # stale base: the eMSP thinks the gateway holds version 3
                res = await emsp.send_token_list(
                    "gw-auth", "differential", 4, [{"id": "CARD0001", "status": "Blocked"}], base_version=3
                )
                assert not res["ok"]
                assert res["error"]["code"] == "token_list_refused"
                assert "full resync required" in res["error"]["message"]
                [v] = gw.query("SELECT value FROM auth_meta WHERE key = 'list_version'")
                assert v["value"] == 2  # nothing changed
                assert len(sendlocallists()) == sent_before
                assert charger.core is not None
                assert charger.core.auth.lookup("CARD0001", True, False) == {"status": "Accepted"}

                # the eMSP resyncs with a full list: the charger gets a Full list
                full4 = [{"id": "CARD0001", "status": "Blocked"}, {"id": "CARD0003", "status": "Accepted"}]
                res = await emsp.send_token_list("gw-auth", "full", 4, full4)
                assert res["ok"], res
                await wait_for(lambda: list_pushed(gw), "the full resync to reach the charger")
                assert sendlocallists()[-1]["updateType"] == "Full"
                assert charger.core.auth.lookup("CARD0001", True, False) == {"status": "Blocked"}
                assert charger.core.auth.lookup("CARD0002", True, False) is None
                assert charger.core.auth.lookup("CARD0003", True, False) == {"status": "Accepted"}
            finally:
                await emsp.stop()

        run_async(with_charger(charger, body))


# -- 4. a session accepted offline is re-checked when the eMSP is back, and stopped when it says Blocked ------------
@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_offline_accepted_session_is_stopped_when_emsp_later_says_blocked(
    gateways: Callable[..., AuthGateway], tmp_path: Path
) -> None:
    from firmware_sim.emsp import SimEmsp
    from hil_tests.mosquitto import free_port

    port = free_port()  # the broker is down at first: the gateway's uplink keeps retrying this port
    uplink = f'[uplink]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\ngateway_id = "gw-recheck"\nreconnect_max = 1.0\n'
    gw = gateways("recheck", {"offline_policy": "accept", "invalid_action": "stop"}, extra_toml=uplink)
    gw.start()

    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            thief = await start_tx(cp, 1, UNKNOWN)
            guest = await start_tx(cp, 2, UNKNOWN2)
            assert thief["idTagInfo"]["status"] == guest["idTagInfo"]["status"] == "Accepted"
            with Mosquitto(tmp_path / "broker", port=port):
                emsp = SimEmsp("127.0.0.1", port, tokens={UNKNOWN: "Blocked", UNKNOWN2: "Accepted"})
                emsp.start()
                try:
                    _, payload = await cp.next_gateway_call("RemoteStopTransaction", timeout=WAIT_S)
                    assert payload == {"transactionId": thief["transactionId"]}
                finally:
                    await emsp.stop()

    run_async(body())
    states = {
        r["transaction_id"]: r["state"]
        for r in gw.query("SELECT transaction_id, state FROM auth_offline_sessions")
    }
    [thief_tx] = gw.query("SELECT id FROM transactions WHERE id_tag = ?", (UNKNOWN,))
    [guest_tx] = gw.query("SELECT id FROM transactions WHERE id_tag = ?", (UNKNOWN2,))
    assert states[thief_tx["id"]] == "stopping"
    # the guest's re-check may still be under way when the thief's stop arrived; it must never be stopped
    assert states[guest_tx["id"]] in ("pending", "confirmed")
    rechecks = gw.query("SELECT id_tag, status FROM auth_decisions WHERE purpose = 'recheck'")
    assert {"id_tag": UNKNOWN, "status": "Blocked"} in rechecks
