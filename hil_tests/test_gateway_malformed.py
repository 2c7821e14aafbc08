"""Malformed input from a charge point: exactly one CALLERROR with a 1.6 error code for every frame whose message id
is readable, nothing for frames without one, and the connection keeps working in every case (a Heartbeat after).
Oversize frames close the connection with 1009."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from firmware_sim.ocpp_check import ERROR_CODES_16, FROM_GATEWAY
from hil_tests.gateway_proc import GatewayProcess
from hil_tests.rawclient import RawChargePoint, assert_clean, now_iso, run_async

MAX_FRAME = 4096
MID = "bad-frame-1"

# OCPP-J 1.6 §4.2.3, table 7: NotImplemented = "Requested Action is not known by receiver",
# NotSupported = "Requested Action is recognized but not supported by the receiver".
UNKNOWN_ACTION_CODE = "NotImplemented"
KNOWN_BUT_UNHANDLED_CODE = "NotSupported"

TYPE = {"TypeConstraintViolation"}
SHAPE = {"FormationViolation", "ProtocolError", "TypeConstraintViolation"}
MISSING = {"ProtocolError", "OccurenceConstraintViolation", "FormationViolation"}
VALUE = {"PropertyConstraintViolation"}
LENGTH = {"PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation"}
EXTRA = {"FormationViolation", "OccurenceConstraintViolation", "PropertyConstraintViolation"}


def _call(action: Any, payload: Any) -> str:
    return json.dumps([2, MID, action, payload])


BOOT_OK = {"chargePointVendor": "V", "chargePointModel": "M"}

# (frame text, acceptable CALLERROR codes)
ANSWERED: dict[str, tuple[str, set[str]]] = {
    "call-without-payload": (json.dumps([2, MID, "Heartbeat"]), SHAPE),
    "call-with-extra-element": (json.dumps([2, MID, "Heartbeat", {}, {}]), SHAPE),
    "payload-not-an-object": (_call("Heartbeat", []), SHAPE),
    "action-not-a-string": (_call(42, {}), SHAPE),
    "unknown-message-type-id": (json.dumps([7, MID, "Heartbeat", {}]), set(ERROR_CODES_16)),
    "required-field-missing": (_call("BootNotification", {"chargePointVendor": "V"}), MISSING),
    "wrong-type-string-for-int": (
        _call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": "1000", "timestamp": now_iso()},
        ),
        TYPE,
    ),
    "wrong-type-int-for-string": (
        _call("BootNotification", {"chargePointVendor": "V", "chargePointModel": 12}),
        TYPE,
    ),
    "enum-value-unknown": (
        _call("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}),
        VALUE,
    ),
    "string-too-long": (_call("BootNotification", {**BOOT_OK, "chargePointVendor": "V" * 21}), LENGTH),
    "idtag-too-long": (_call("Authorize", {"idTag": "A" * 21}), LENGTH),
    "additional-property": (_call("Heartbeat", {"unexpected": 1}), EXTRA),
    # valid JSON types, values no charger can mean: capped, answered clearly, nothing stored
    "integer-beyond-64-bit": (
        _call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 2**64, "timestamp": now_iso()},
        ),
        VALUE | TYPE,
    ),
    "connector-id-negative": (
        _call(
            "StartTransaction",
            {"connectorId": -1, "idTag": "04A2B3C4D5E6F7", "meterStart": 0, "timestamp": now_iso()},
        ),
        VALUE,
    ),
    # the charger is configured with 2 connectors; a peer must not create connector rows at will
    "connector-id-beyond-configured": (
        _call("StatusNotification", {"connectorId": 1000, "errorCode": "NoError", "status": "Available"}),
        VALUE,
    ),
    "timestamp-not-a-date-time": (
        _call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 0, "timestamp": "not a date"},
        ),
        VALUE | {"FormationViolation", "TypeConstraintViolation"},
    ),
    "unknown-action": (_call("FooBarBaz", {}), {UNKNOWN_ACTION_CODE}),
    "known-16-action-not-handled": (_call("Reset", {"type": "Hard"}), {KNOWN_BUT_UNHANDLED_CODE}),
}

# frames without a readable message id, or answers to nothing: logged and dropped, no reply
DROPPED: dict[str, str | bytes] = {
    "invalid-json": '[2, "bad-frame-1", "Heartbeat", {',
    "not-a-list": '{"messageTypeId": 2}',
    "json-string": '"hello"',
    "empty-list": "[]",
    "type-id-only": "[2]",
    "callresult-for-unknown-id": json.dumps([3, "nobody-asked", {}]),
    "callerror-for-unknown-id": json.dumps([4, "nobody-asked", "GenericError", "", {}]),
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    g = GatewayProcess(tmp_path_factory.mktemp("malformed"), ocpp={"max_frame_bytes": MAX_FRAME})
    g.start()
    yield g
    crashed = g.died_unasked()
    g.stop()
    assert not crashed, g.output()


def _cp(gw: GatewayProcess) -> RawChargePoint:
    return RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1"))


def _answers_to(cp: RawChargePoint, mid: str) -> list[list[Any]]:
    out = []
    for direction, text in cp.frames:
        if direction != FROM_GATEWAY:
            continue
        try:
            msg = json.loads(text)
        except ValueError:
            continue
        if isinstance(msg, list) and len(msg) > 1 and msg[1] == mid:
            out.append(msg)
    return out


@pytest.mark.parametrize("case", list(ANSWERED))
def test_readable_id_gets_exactly_one_callerror(gw: GatewayProcess, case: str) -> None:
    frame, codes = ANSWERED[case]

    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            await cp.send_raw(frame, answer_id=MID)
            answer = await cp.wait_answer(MID)
            assert answer[0] == 4, f"expected a CALLERROR, got {answer}"
            assert answer[2] in codes, (
                f"{case}: error code {answer[2]!r}, expected one of {sorted(codes)}: {answer}"
            )
            # the connection still works, in order, and no second answer came
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert len(_answers_to(cp, MID)) == 1, _answers_to(cp, MID)
        assert_clean(cp)

    before = gw.query("SELECT id FROM transactions")
    run_async(body())
    # none of these frames may start a transaction
    after = gw.query("SELECT id, connector_id, meter_start, start_ts FROM transactions")
    assert [r for r in after if {"id": r["id"]} not in before] == []


@pytest.mark.parametrize("case", list(DROPPED))
def test_frame_without_readable_id_is_dropped(gw: GatewayProcess, case: str) -> None:
    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            await cp.send_raw(DROPPED[case])
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert "currentTime" in await cp.call("Heartbeat", {})
            assert cp.is_open
        # no frame from the gateway other than the answers to our three CALLs
        assert_clean(cp)
        assert len([d for d, _ in cp.frames if d == FROM_GATEWAY]) == 3, cp.frames

    run_async(body())


def test_many_bad_frames_in_a_row_keep_the_connection(gw: GatewayProcess) -> None:
    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            for i in range(50):
                mid = f"junk-{i}"
                await cp.send_raw(json.dumps([2, mid, "Heartbeat", {"n": i}]), answer_id=mid)
                await cp.send_raw("not json at all")
            for i in range(50):
                assert (await cp.wait_answer(f"junk-{i}"))[0] == 4
            assert "currentTime" in await cp.call("Heartbeat", {})
        assert_clean(cp)

    run_async(body())


def test_oversize_frame_closes_with_1009_and_reconnect_works(gw: GatewayProcess) -> None:
    async def body() -> None:
        async with _cp(gw) as cp:
            await cp.boot()
            # just under the cap: fine
            small = await cp.call(
                "DataTransfer", {"vendorId": "com.example", "data": "x" * (MAX_FRAME - 200)}
            )
            assert small["status"] == "UnknownVendorId"
            big = json.dumps(
                [2, "too-big", "DataTransfer", {"vendorId": "com.example", "data": "x" * (MAX_FRAME * 2)}]
            )
            await cp.send_raw(big)
            assert await cp.wait_closed() == 1009
        assert_clean(cp)
        async with _cp(gw) as again:
            assert (await again.boot())["status"] == "Accepted"
        assert_clean(again)

    run_async(body())
