"""Every Core command from `chargegate cmd` (a separate process, through the control socket) to a raw charge point
and back: the CALL the charger receives and the result the CLI prints."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hil_tests.gateway_proc import GatewayFactory, GatewayProcess
from hil_tests.rawclient import NO_ANSWER, RawChargePoint, assert_clean, run_async

# (cmd words, OCPP action the charger must receive, exact payload, result the CLI must print)
CASES: list[tuple[list[str], str, dict[str, Any], dict[str, Any]]] = [
    (["reset", "hard"], "Reset", {"type": "Hard"}, {"status": "Accepted"}),
    (["reset", "soft"], "Reset", {"type": "Soft"}, {"status": "Accepted"}),
    (
        ["remote-start", "04A2B3C4D5E6F7", "--connector", "2"],
        "RemoteStartTransaction",
        {"idTag": "04A2B3C4D5E6F7", "connectorId": 2},
        {"status": "Accepted"},
    ),
    (
        ["remote-start", "04A2B3C4D5E6F7"],
        "RemoteStartTransaction",
        {"idTag": "04A2B3C4D5E6F7"},
        {"status": "Accepted"},
    ),
    (["remote-stop", "4711"], "RemoteStopTransaction", {"transactionId": 4711}, {"status": "Accepted"}),
    (["unlock", "1"], "UnlockConnector", {"connectorId": 1}, {"status": "Unlocked"}),
    (
        ["availability", "1", "inoperative"],
        "ChangeAvailability",
        {"connectorId": 1, "type": "Inoperative"},
        {"status": "Accepted"},
    ),
    (
        ["availability", "0", "operative"],
        "ChangeAvailability",
        {"connectorId": 0, "type": "Operative"},
        {"status": "Accepted"},
    ),
    (
        ["get-config", "HeartbeatInterval", "NoSuchKey"],
        "GetConfiguration",
        {"key": ["HeartbeatInterval", "NoSuchKey"]},
        {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
            "unknownKey": ["NoSuchKey"],
        },
    ),
    (
        ["set-config", "HeartbeatInterval", "60"],
        "ChangeConfiguration",
        {"key": "HeartbeatInterval", "value": "60"},
        {"status": "Accepted"},
    ),
    (["clear-cache"], "ClearCache", {}, {"status": "Accepted"}),
    (
        ["trigger", "StatusNotification", "--connector", "1"],
        "TriggerMessage",
        {"requestedMessage": "StatusNotification", "connectorId": 1},
        {"status": "Accepted"},
    ),
    (["trigger", "Heartbeat"], "TriggerMessage", {"requestedMessage": "Heartbeat"}, {"status": "Accepted"}),
    (
        ["raw", "DataTransfer", '{"vendorId": "com.example", "messageId": "ping"}'],
        "DataTransfer",
        {"vendorId": "com.example", "messageId": "ping"},
        {"status": "UnknownVendorId"},
    ),
]


@pytest.fixture(scope="module")
def cmd_gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    gw = GatewayProcess(tmp_path_factory.mktemp("cmdgw"))
    gw.start()
    yield gw
    gw.stop()


def _cp(gw: GatewayProcess) -> RawChargePoint:
    return RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1"))


@pytest.mark.parametrize(
    ("words", "action", "payload", "result"), CASES, ids=[" ".join(c[0][:2]) for c in CASES]
)
def test_command_round_trip(
    cmd_gateway: GatewayProcess,
    words: list[str],
    action: str,
    payload: dict[str, Any],
    result: dict[str, Any],
) -> None:
    gw = cmd_gateway

    async def body() -> None:
        async with _cp(gw) as cp:
            assert (await cp.boot())["status"] == "Accepted"
            proc = await asyncio.to_thread(gw.cmd, "CP1", *words)
            assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{gw.output()}"
            assert json.loads(proc.stdout) == result
            got = await cp.next_gateway_call(action)
            assert got == (action, payload)
            assert [c for c in cp.gateway_calls if c[0] == action] == [got]  # exactly one CALL per command
        assert_clean(cp)

    run_async(body())


def test_command_to_disconnected_charger_fails(cmd_gateway: GatewayProcess) -> None:
    proc = cmd_gateway.cmd("CP2", "reset", "hard")
    assert proc.returncode == 1
    assert proc.stderr.strip(), "an error message is expected on stderr"


def test_command_answered_with_callerror_fails(cmd_gateway: GatewayProcess) -> None:
    gw = cmd_gateway

    async def body() -> None:
        async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1"), responses={"Reset": None}) as cp:  # type: ignore[dict-item]
            await cp.boot()
            proc = await asyncio.to_thread(gw.cmd, "CP1", "reset", "soft")
            assert proc.returncode == 1, proc.stdout
            assert "NotImplemented" in proc.stderr
            assert [c for c in cp.gateway_calls if c[0] == "Reset"] == [("Reset", {"type": "Soft"})]
        assert_clean(cp)

    run_async(body())


def test_command_answered_with_invalid_result_fails(cmd_gateway: GatewayProcess) -> None:
    gw = cmd_gateway

    async def body() -> None:
        # "Maybe" is not a ResetStatus: the gateway must not hand a schema-invalid result to the caller
        async with RawChargePoint(
            gw.url("CP1"), "CP1", gw.password("CP1"), responses={"Reset": lambda p: {"status": "Maybe"}}
        ) as cp:
            await cp.boot()
            proc = await asyncio.to_thread(gw.cmd, "CP1", "reset", "hard")
            assert proc.returncode == 1, proc.stdout
        # our own answer was deliberately invalid; nothing else may be
        assert [p for p in cp.problems if "Maybe" not in p] == []

    run_async(body())


@pytest.mark.parametrize(
    "words",
    [
        ["raw", "Reset", '{"type": "Bogus"}'],
        ["raw", "Reset", "{}"],
        ["raw", "NoSuchAction", "{}"],
        ["raw", "BootNotification", '{"chargePointVendor": "a", "chargePointModel": "b"}'],
    ],
    ids=["bad-enum", "missing-field", "unknown-action", "charger-initiated-action"],
)
def test_invalid_command_is_refused_and_nothing_is_sent(
    cmd_gateway: GatewayProcess, words: list[str]
) -> None:
    gw = cmd_gateway

    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            proc = await asyncio.to_thread(gw.cmd, "CP1", *words)
            assert proc.returncode != 0, proc.stdout
            assert proc.stderr.strip()
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert [
                c for c in cp.gateway_calls if c[0] in ("Reset", "BootNotification", "NoSuchAction")
            ] == []
        assert_clean(cp)

    run_async(body())


def test_command_to_a_charger_that_never_answers_times_out(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ocpp={"call_timeout": 1.0})

    async def body() -> None:
        async with RawChargePoint(
            gw.url("CP1"), "CP1", gw.password("CP1"), responses={"Reset": lambda p: NO_ANSWER}
        ) as cp:
            await cp.boot()
            proc = await asyncio.to_thread(gw.cmd, "CP1", "reset", "hard")
            assert proc.returncode == 1, proc.stdout
            assert "Reset" in proc.stderr, proc.stderr  # names what was not answered
            # the connection is still usable, and the next command works
            assert "currentTime" in await cp.call("Heartbeat", {})
            cp.responses["Reset"] = lambda p: {"status": "Accepted"}
            proc = await asyncio.to_thread(gw.cmd, "CP1", "reset", "soft")
            assert proc.returncode == 0, proc.stderr + gw.output()
            assert json.loads(proc.stdout) == {"status": "Accepted"}
        assert_clean(cp)

    run_async(body())


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        ({"op": "call", "charger": "NOPE", "action": "Reset", "payload": {"type": "Hard"}}, "NOPE"),
        ({"op": "no-such-op"}, "no-such-op"),
        ({"op": "call", "charger": "CP1", "action": "Reset"}, ""),
        ({"nothing": 1}, "op"),
    ],
    ids=["unknown-charger", "unknown-op", "missing-payload", "no-op"],
)
def test_control_socket_refuses_bad_requests(
    cmd_gateway: GatewayProcess, request_: dict[str, Any], needle: str
) -> None:
    answer = cmd_gateway.control(request_)
    assert answer["ok"] is False, answer
    assert needle in answer["error"], answer
    assert cmd_gateway.control({"op": "status"})["ok"] is True


def test_concurrent_commands_to_two_chargers_get_their_own_answers(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()

    def unlock(p: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Unlocked" if p["connectorId"] == 1 else "UnlockFailed"}

    async def body() -> None:
        cps = [
            RawChargePoint(gw.url(cid), cid, gw.password(cid), responses={"UnlockConnector": unlock})
            for cid in ("CP1", "CP2")
        ]
        for cp in cps:
            await cp.connect()
            await cp.boot()
        try:
            jobs = [(cid, conn) for cid in ("CP1", "CP2") for conn in (1, 2)] * 3
            answers = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        gw.control,
                        {
                            "op": "call",
                            "charger": cid,
                            "action": "UnlockConnector",
                            "payload": {"connectorId": conn},
                        },
                    )
                    for cid, conn in jobs
                )
            )
            for (cid, conn), answer in zip(jobs, answers, strict=True):
                assert answer["ok"], answer
                assert answer["result"] == {"status": "Unlocked" if conn == 1 else "UnlockFailed"}, (
                    cid,
                    conn,
                    answer,
                )
            for cp in cps:
                assert sorted(p["connectorId"] for a, p in cp.gateway_calls if a == "UnlockConnector") == [
                    1,
                    1,
                    1,
                    2,
                    2,
                    2,
                ]
        finally:
            for cp in cps:
                await cp.close()
        for cp in cps:
            assert_clean(cp)

    run_async(body())


def test_charger_disconnecting_with_a_command_pending_fails_the_command(
    gateway_factory: GatewayFactory,
) -> None:
    # call_timeout far beyond the test: the failure must come from the disconnect, not from the timeout
    gw = gateway_factory(ocpp={"call_timeout": 300.0})

    async def body() -> None:
        cp = RawChargePoint(
            gw.url("CP1"), "CP1", gw.password("CP1"), responses={"Reset": lambda p: NO_ANSWER}
        )
        await cp.connect()
        await cp.boot()
        pending = asyncio.create_task(asyncio.to_thread(gw.cmd, "CP1", "reset", "hard"))
        await cp.next_gateway_call("Reset")
        await cp.close()
        proc = await pending
        assert proc.returncode == 1, proc.stdout
        assert "within" not in proc.stderr and "disconnect" in proc.stderr.lower(), proc.stderr

    run_async(body())
