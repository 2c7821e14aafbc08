"""The frame checker every system test, the fleet and the demo rely on must itself catch bad frames (pure, no
gateway needed)."""

from __future__ import annotations

import json
import sys

import pytest

from firmware_sim import ocpp_check
from firmware_sim.ocpp_check import FROM_GATEWAY, TO_GATEWAY, FrameChecker, validate_payload

START = '[2,"1","StartTransaction",{"connectorId":1,"idTag":"04A2B3C4D5E6F7","meterStart":0,"timestamp":"2026-01-01T00:00:00Z"}]'
PROFILE = {
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


def _pair(call: list[object], answer: list[object], call_dir: str = TO_GATEWAY) -> list[str]:
    checker = FrameChecker()
    answer_dir = FROM_GATEWAY if call_dir == TO_GATEWAY else TO_GATEWAY
    checker.check(call_dir, json.dumps(call))
    checker.check(answer_dir, json.dumps(answer))
    return checker.problems


def test_directions_are_the_charge_point_ports_trace_directions() -> None:
    # run_charge_point's on_frame says "tx" for charge point -> gateway: the checker plugs into it unchanged
    assert (TO_GATEWAY, FROM_GATEWAY) == ("tx", "rx")


def test_valid_exchange_has_no_problems() -> None:
    assert _pair([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "2026-11-21T10:00:00Z"}]) == []
    assert (
        _pair([2, "a", "Reset", {"type": "Hard"}], [3, "a", {"status": "Accepted"}], call_dir=FROM_GATEWAY)
        == []
    )
    assert _pair([2, "e", "Heartbeat", {}], [4, "e", "GenericError", "", {}]) == []
    assert _pair([2, "t", "Heartbeat", {}], [3, "t", {"currentTime": "2026-11-21t10:00:00.123+01:00"}]) == []


def test_on_frame_accepts_a_valid_conversation_in_both_directions() -> None:
    c = FrameChecker("CP1")
    c.on_frame("tx", START)
    c.on_frame("rx", '[3,"1",{"transactionId":5,"idTagInfo":{"status":"Accepted"}}]')
    c.on_frame("rx", '[2,"g1","Reset",{"type":"Hard"}]')
    c.on_frame("tx", '[3,"g1",{"status":"Accepted"}]')
    c.on_frame("rx", '[2,"g2","ChangeConfiguration",{"key":"MeterValueSampleInterval","value":"5"}]')
    c.on_frame("tx", '[4,"g2","NotSupported","",{}]')
    assert c.problems == [] and c.frames == 6
    assert c.outstanding(TO_GATEWAY) == {} and c.outstanding(FROM_GATEWAY) == {}


@pytest.mark.parametrize(
    ("call", "answer", "needle"),
    [
        ([2, "1", "Heartbeat", {}], [3, "1", {}], "currentTime"),  # response misses a required field
        ([2, "1", "Heartbeat", {}], [3, "2", {"currentTime": "x"}], "no outstanding CALL"),
        ([2, "1", "Heartbeat", {}], [4, "1", "FormatViolation", "", {}], "not an OCPP 1.6 error code"),
        ([2, "1", "Heartbeat", {}], [4, "1", ["GenericError"], "", {}], "not an OCPP 1.6 error code"),
        ([2, "1", "Heartbeat", {}], [4, "1", "GenericError", 5, {}], "errorDescription"),
        ([2, "1", "Heartbeat", {}], [4, "1", "GenericError", "", []], "errorDetails"),
        (
            [2, "1", "BootNotification", {"chargePointVendor": "V"}],
            [4, "1", "ProtocolError", "", {}],
            "chargePointModel",
        ),
        ([2, "1", "Reset", {"type": "Hard"}], [3, "1", {"status": "Accepted"}], "direction"),
        ([2, "1", "FooBar", {}], [4, "1", "NotImplemented", "", {}], "not an OCPP 1.6 action"),
        ([2, "1", 7, {}], [4, "1", "NotImplemented", "", {}], "not an OCPP 1.6 action"),
        ([2, "1" * 37, "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "1..36"),
        ([2, "", "Heartbeat", {}], [3, "", {"currentTime": "x"}], "1..36"),
        ([2, 1, "Heartbeat", {}], [3, 1, {"currentTime": "x"}], "1..36"),
        ([2, "1", "Heartbeat"], [3, "1", {"currentTime": "x"}], "needs 4 elements"),
        ([2, "1", "Heartbeat", []], [3, "1", {"currentTime": "x"}], "CALL payload is not an object"),
        ([2, "1", "Heartbeat", {}], [3, "1", []], "CALLRESULT payload is not an object"),
        ([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "yesterday"}], "date-time"),
        ([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "2026-13-01T00:00:00Z"}], "date-time"),
        ([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "2026-11-21 10:00:00Z"}], "date-time"),
        (
            [2, "1", "Heartbeat", {}],
            [3, "1", {"currentTime": "2026-11-21T10:00:00"}],
            "date-time",
        ),  # no offset
        ([2.0, "1", "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "unknown MessageTypeId"),
        ([True, "1", "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "unknown MessageTypeId"),
        ([[2], "1", "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "unknown MessageTypeId"),
        ([5, "1", "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "unknown MessageTypeId"),
    ],
)
def test_problems_are_found(call: list[object], answer: list[object], needle: str) -> None:
    problems = _pair(call, answer)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([START.replace("2026-01-01T00:00:00Z", "yesterday")], "date-time"),
        ([START.replace('"meterStart":0', '"meterStart":"0"')], "not of type 'integer'"),
        ([START, '[3,"1",{"transactionId":5}]'], "'idTagInfo' is a required property"),
        (['[3,"nope",{}]'], "no outstanding CALL"),
        (['[4,"1","Oops","",{}]'], "not an OCPP 1.6 error code"),  # checked even when it answers nothing
        (["not json"], "not JSON"),
        (['[2,"1","DataTransfer",{"vendorId":NaN}]'], "not JSON"),
        (['{"a":1}'], "not a non-empty JSON array"),
        (["[]"], "not a non-empty JSON array"),
        (['[2,"' + "x" * 40 + '","Heartbeat",{}]'], "1..36"),
        (['[2,"1","Heartbeat",{"extra":1}]'], "Additional properties"),
        ([START, START], "reused while a CALL with it is outstanding"),
    ],
)
def test_on_frame_reports_violations(frames: list[str], expected: str) -> None:
    c = FrameChecker("CP1")
    for i, f in enumerate(frames):
        c.on_frame("tx" if i == 0 or f == frames[0] else "rx", f)
    assert any(expected in p for p in c.problems), c.problems
    assert all(p.startswith("CP1 ") and "| frame: " in p for p in c.problems)


def test_check_returns_the_bare_problems_and_records_them_with_the_frame() -> None:
    c = FrameChecker("CP7#2")
    found = c.check(TO_GATEWAY, '[2,"1","Heartbeat",{"extra":1}]')
    assert len(found) == 1 and "Additional properties" in found[0] and "frame" not in found[0]
    assert c.problems == [f'CP7#2 tx: {found[0]} | frame: [2,"1","Heartbeat",{{"extra":1}}]']
    long = '[2,"2","DataTransfer",{"vendorId":"' + "v" * 1000 + '"}]'
    c.check(TO_GATEWAY, long)
    # the long value and the long frame are quoted, not copied
    assert len(c.problems[-1]) < 2 * ocpp_check._QUOTE + 100 and c.problems[-1].endswith("...")


def test_callresult_to_a_deliberately_invalid_call_is_a_problem() -> None:
    checker = FrameChecker()
    checker.expect_answer(TO_GATEWAY, "bad")
    checker.check(FROM_GATEWAY, json.dumps([3, "bad", {}]))
    assert any("expected a CALLERROR" in p for p in checker.problems)
    checker = FrameChecker()
    checker.expect_answer(TO_GATEWAY, "bad")
    assert checker.check(FROM_GATEWAY, json.dumps([4, "bad", "FormationViolation", "x", {}])) == []
    # an unknown action is invalid too: only a CALLERROR may answer it
    checker = FrameChecker()
    checker.check(TO_GATEWAY, json.dumps([2, "u", "FooBar", {}]))
    assert any("expected a CALLERROR" in p for p in checker.check(FROM_GATEWAY, json.dumps([3, "u", {}])))


def test_an_answer_is_only_taken_from_the_other_direction_and_only_once() -> None:
    c = FrameChecker()
    c.check(TO_GATEWAY, '[2,"1","Heartbeat",{}]')
    assert any("no outstanding CALL" in p for p in c.check(TO_GATEWAY, '[3,"1",{"currentTime":"x"}]'))
    ok = '[3,"1",{"currentTime":"2026-11-21T10:00:00Z"}]'
    assert c.check(FROM_GATEWAY, ok) == []
    assert any("no outstanding CALL" in p for p in c.check(FROM_GATEWAY, ok))  # answered twice


def test_not_json_binary_and_unknown_direction_are_problems() -> None:
    checker = FrameChecker()
    assert checker.check(TO_GATEWAY, "[2,")
    assert any("binary" in p for p in checker.check(TO_GATEWAY, b"[2]"))
    assert any("unknown direction" in p for p in checker.check("up", '[2,"1","Heartbeat",{}]'))
    assert checker.check(TO_GATEWAY, "[" * (sys.getrecursionlimit() + 10))  # a problem, not a crash


def test_decimal_multiple_of_is_not_a_false_alarm() -> None:
    profile = json.loads(json.dumps(PROFILE))
    assert validate_payload("SetChargingProfile", profile) == []
    profile["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45
    assert validate_payload("SetChargingProfile", profile)


def test_decimal_multiple_of_in_frames() -> None:
    # multipleOf 0.1 must hold for 21.4 in a frame too (binary floats would fail it; so would floats as strings)
    c = FrameChecker()
    c.on_frame("rx", json.dumps([2, "p", "SetChargingProfile", PROFILE]))
    c.on_frame("tx", '[3,"p",{"status":"Accepted"}]')
    assert c.problems == []
    bad = json.loads(json.dumps(PROFILE))
    bad["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45
    assert any("multiple of" in p for p in c.check("rx", json.dumps([2, "q", "SetChargingProfile", bad])))


def test_validate_payload_names_an_unknown_action() -> None:
    assert validate_payload("FooBar", {}) == ["'FooBar' is not an OCPP 1.6 action"]
    assert validate_payload("Heartbeat", {}, response=True) == [
        "HeartbeatResponse: <payload>: 'currentTime' is a required property"
    ]


def test_unanswered_calls_and_problems_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocpp_check, "MAX_OUTSTANDING", 3)
    monkeypatch.setattr(ocpp_check, "MAX_PROBLEMS", 2)
    c = FrameChecker()
    for i in range(5):
        c.check(TO_GATEWAY, f'[2,"{i}","Heartbeat",{{}}]')
    assert list(c.outstanding(TO_GATEWAY)) == ["2", "3", "4"]  # the oldest forgotten first
    for _ in range(4):
        c.check(TO_GATEWAY, "not json")
    assert len(c.problems) == 2 and c.dropped == 2
