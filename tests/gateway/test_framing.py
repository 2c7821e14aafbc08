"""The OCPP-J framing layer: every inbound frame class gets the right outcome and only 1.6 error codes."""

import json

import pytest

from gateway.csms import HANDLED_ACTIONS
from gateway.ocpp import framing
from gateway.ocpp.framing import (
    ERROR_CODES_16,
    Drop,
    InboundCall,
    InboundError,
    InboundResult,
    Reject,
    parse_frame,
)

BOOT = {"chargePointVendor": "v", "chargePointModel": "m"}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        "[]",
        '"x"',
        "[2]",
        '[2, 17, "Heartbeat", {}]',
        '[2, "", "Heartbeat", {}]',
        json.dumps([2, "x" * 37, "Heartbeat", {}]),
        b'[2,"1","Heartbeat",{}]',
    ],
)
def test_frames_without_a_readable_id_are_dropped(text):
    assert isinstance(parse_frame(text, HANDLED_ACTIONS), Drop)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ([2, "1", "Heartbeat"], "ProtocolError"),
        ([2, "1", "Heartbeat", {}, 5], "ProtocolError"),
        ([2, "1", 7, {}], "FormationViolation"),
        ([2, "1", "Heartbeat", []], "FormationViolation"),
        ([2, "1", "NoSuchAction", {}], "NotImplemented"),
        ([2, "1", "RemoteStartTransaction", {"idTag": "A"}], "NotSupported"),  # a CSMS->CP action
        ([2, "1", "BootNotification", {}], "OccurenceConstraintViolation"),
        ([2, "1", "BootNotification", {**BOOT, "chargePointVendor": 5}], "TypeConstraintViolation"),
        ([2, "1", "BootNotification", {**BOOT, "chargePointVendor": "v" * 21}], "TypeConstraintViolation"),
        ([2, "1", "BootNotification", {**BOOT, "extra": 1}], "FormationViolation"),
        (
            [2, "1", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}],
            "PropertyConstraintViolation",
        ),
        ([9, "1", "Heartbeat", {}], "ProtocolError"),
    ],
)
def test_invalid_calls_with_an_id_get_one_1_6_error(frame, code):
    parsed = parse_frame(json.dumps(frame), HANDLED_ACTIONS)
    assert isinstance(parsed, Reject)
    assert parsed.unique_id == "1"
    assert parsed.code == code
    assert parsed.code in ERROR_CODES_16
    wire = json.loads(parsed.frame())
    assert wire[:3] == [4, "1", code] and isinstance(wire[3], str) and wire[4] == {}


def test_valid_call_result_and_error():
    assert parse_frame(json.dumps([2, "a", "BootNotification", BOOT]), HANDLED_ACTIONS) == InboundCall(
        "a", "BootNotification", BOOT
    )
    assert parse_frame('[3,"b",{"status":"Accepted"}]', HANDLED_ACTIONS) == InboundResult(
        "b", {"status": "Accepted"}
    )
    err = parse_frame('[4,"c","NotSupported","no",{}]', HANDLED_ACTIONS)
    assert err == InboundError("c", "NotSupported", "no", {})


def test_validation_can_be_switched_off():
    assert isinstance(
        parse_frame(json.dumps([2, "1", "BootNotification", {}]), HANDLED_ACTIONS, validate=False),
        InboundCall,
    )


def test_decimal_schemas_accept_one_decimal_limits():
    payload = {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.4}],
            },
        },
    }
    assert framing.validate_payload(framing.CALL, "SetChargingProfile", payload) is None
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45
    assert (
        framing.validate_payload(framing.CALL, "SetChargingProfile", payload)[0]
        == "PropertyConstraintViolation"
    )


def test_builders_roundtrip():
    assert json.loads(framing.call("u", "Reset", {"type": "Hard"})) == [2, "u", "Reset", {"type": "Hard"}]
    assert json.loads(framing.call_result("u", {})) == [3, "u", {}]
    with pytest.raises(AssertionError):
        framing.call_error("u", "FormatViolation", "2.0.1 only")


def test_integers_beyond_64_bits_are_a_type_violation_not_a_crash():
    frame = json.dumps(
        [
            2,
            "1",
            "StartTransaction",
            {"connectorId": 1, "idTag": "A", "meterStart": 2**70, "timestamp": "2026-11-21T10:00:00Z"},
        ]
    )
    parsed = parse_frame(frame, HANDLED_ACTIONS)
    assert isinstance(parsed, Reject) and parsed.code == "TypeConstraintViolation"


@pytest.mark.parametrize(
    "ts", ["2026-11-21T10:00:00Z", "2026-11-21T10:00:00.123456+01:00", "2026-11-21T10:00:00"]
)
def test_real_world_timestamps_pass(ts):
    frame = json.dumps(
        [2, "1", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": ts}]
    )
    assert isinstance(parse_frame(frame, HANDLED_ACTIONS), InboundCall)


def test_garbage_timestamp_is_a_type_violation():
    frame = json.dumps([2, "1", "Heartbeat", {}])
    assert isinstance(parse_frame(frame, HANDLED_ACTIONS), InboundCall)
    frame = json.dumps(
        [
            2,
            "1",
            "StartTransaction",
            {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "not a date"},
        ]
    )
    parsed = parse_frame(frame, HANDLED_ACTIONS)
    assert isinstance(parsed, Reject) and parsed.code == "TypeConstraintViolation"
