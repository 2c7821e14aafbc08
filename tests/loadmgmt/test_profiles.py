"""SetChargingProfile payloads validate against the official OCPP 1.6 schema shipped with the ocpp package."""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import jsonschema
import ocpp
import pytest

from gateway.loadmgmt.profiles import ocpp_limit, tx_default_profile, tx_profile

# Numbers as Decimal, as the gateway (gateway/ocpp/framing.py) and the simulated chargers (firmware_sim/ocpp_check.py)
# check them: `multipleOf: 0.1` fails on binary floats (31.9 / 0.1 = 318.99999999999994).
SCHEMA = json.loads(
    (Path(ocpp.__file__).parent / "v16" / "schemas" / "SetChargingProfile.json").read_text(),
    parse_float=decimal.Decimal,
)


def validate(payload: dict[str, object]) -> None:
    instance = json.loads(json.dumps(payload), parse_float=decimal.Decimal)  # what goes over the wire
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(instance)


@pytest.mark.parametrize("amps", [0.0, 6.0, 6.7, 13.3, 21.4, 31.99, 63.0, 0.30000000000000004])
def test_profiles_are_schema_valid(amps: float) -> None:
    validate(tx_default_profile(amps))
    validate(tx_default_profile(amps, 0, 1))
    p = tx_profile(2, 1234, amps, 1_763_700_000.0, 120)
    validate(p)
    validate(tx_profile(2, 1234, amps, 1_763_700_000.0, 120, number_phases=1))
    cs = p["csChargingProfiles"]
    assert isinstance(cs, dict)
    assert cs["transactionId"] == 1234 and cs["chargingProfilePurpose"] == "TxProfile"
    assert cs["chargingSchedule"]["duration"] == 120
    assert cs["chargingSchedule"]["startSchedule"] == "2025-11-21T04:40:00Z"


def test_limit_is_tenths_rounded_down_and_rejects_nonsense() -> None:
    assert ocpp_limit(6.99) == 6.9
    assert ocpp_limit(6.3) == 6.3 and json.dumps(ocpp_limit(6.3)) == "6.3"  # 6.3 * 10 = 62.99999999999999
    assert ocpp_limit(21.4) == 21.4 and ocpp_limit(31.99) == 31.9 and ocpp_limit(0.05) == 0.0
    for tenths in range(0, 1000):  # every value goes out with one decimal, never above what was asked
        amps = tenths / 10
        assert json.dumps(ocpp_limit(amps)) == json.dumps(amps)
        assert ocpp_limit(amps + 0.0999) == amps
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            ocpp_limit(bad)


def test_number_phases_only_when_given() -> None:
    period = tx_profile(1, 1, 16.0, 1_763_700_000.0, 60)["csChargingProfiles"]["chargingSchedule"]
    assert "numberPhases" not in period["chargingSchedulePeriod"][0]
    single = tx_profile(1, 1, 16.0, 1_763_700_000.0, 60, number_phases=1)["csChargingProfiles"]
    assert single["chargingSchedule"]["chargingSchedulePeriod"][0] == {
        "startPeriod": 0,
        "limit": 16.0,
        "numberPhases": 1,
    }
    with pytest.raises(ValueError):
        tx_profile(1, 1, 16.0, 1_763_700_000.0, 60, number_phases=4)


def test_schema_check_is_real() -> None:
    bad = tx_default_profile(6.0)
    bad["csChargingProfiles"]["chargingProfilePurpose"] = "Whatever"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
