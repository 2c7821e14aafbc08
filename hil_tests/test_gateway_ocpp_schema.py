"""The frame checker every gateway system test relies on must itself catch bad frames (pure, no gateway needed)."""

from __future__ import annotations

import json

import pytest

from hil_tests.ocpp_schema import FROM_GATEWAY, TO_GATEWAY, FrameChecker, validate_payload


def _pair(call: list[object], answer: list[object], call_dir: str = TO_GATEWAY) -> list[str]:
    checker = FrameChecker()
    answer_dir = FROM_GATEWAY if call_dir == TO_GATEWAY else TO_GATEWAY
    checker.check(call_dir, json.dumps(call))
    checker.check(answer_dir, json.dumps(answer))
    return checker.problems


def test_valid_exchange_has_no_problems() -> None:
    assert _pair([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "2026-11-21T10:00:00Z"}]) == []
    assert (
        _pair([2, "a", "Reset", {"type": "Hard"}], [3, "a", {"status": "Accepted"}], call_dir=FROM_GATEWAY)
        == []
    )
    assert _pair([2, "e", "Heartbeat", {}], [4, "e", "GenericError", "", {}]) == []


@pytest.mark.parametrize(
    ("call", "answer", "needle"),
    [
        ([2, "1", "Heartbeat", {}], [3, "1", {}], "currentTime"),  # response misses a required field
        ([2, "1", "Heartbeat", {}], [3, "2", {"currentTime": "x"}], "no outstanding CALL"),
        ([2, "1", "Heartbeat", {}], [4, "1", "FormatViolation", "", {}], "not an OCPP 1.6 error code"),
        ([2, "1", "Heartbeat", {}], [4, "1", "GenericError", 5, {}], "errorDescription"),
        (
            [2, "1", "BootNotification", {"chargePointVendor": "V"}],
            [4, "1", "ProtocolError", "", {}],
            "chargePointModel",
        ),
        ([2, "1", "Reset", {"type": "Hard"}], [3, "1", {"status": "Accepted"}], "direction"),
        ([2, "1", "FooBar", {}], [4, "1", "NotImplemented", "", {}], "not an OCPP 1.6 action"),
        ([2, "1" * 37, "Heartbeat", {}], [3, "1", {"currentTime": "x"}], "1..36"),
        ([2, "1", "Heartbeat"], [3, "1", {"currentTime": "x"}], "needs 4 elements"),
        ([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "yesterday"}], "date-time"),
        ([2, "1", "Heartbeat", {}], [3, "1", {"currentTime": "2026-13-01T00:00:00Z"}], "date-time"),
    ],
)
def test_problems_are_found(call: list[object], answer: list[object], needle: str) -> None:
    problems = _pair(call, answer)
    assert any(needle in p for p in problems), problems


def test_callresult_to_a_deliberately_invalid_call_is_a_problem() -> None:
    checker = FrameChecker()
    checker.expect_answer(TO_GATEWAY, "bad")
    checker.check(FROM_GATEWAY, json.dumps([3, "bad", {}]))
    assert any("expected a CALLERROR" in p for p in checker.problems)
    checker = FrameChecker()
    checker.expect_answer(TO_GATEWAY, "bad")
    assert checker.check(FROM_GATEWAY, json.dumps([4, "bad", "FormationViolation", "x", {}])) == []


def test_not_json_and_binary_are_problems() -> None:
    checker = FrameChecker()
    assert checker.check(TO_GATEWAY, "[2,")
    assert checker.check(TO_GATEWAY, b"[2]")


def test_decimal_multiple_of_is_not_a_false_alarm() -> None:
    profile = {
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
    assert validate_payload("SetChargingProfile", profile) == []
    profile["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45  # type: ignore[index]
    assert validate_payload("SetChargingProfile", profile)
