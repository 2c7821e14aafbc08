"""SetChargingProfile payloads validate against the official OCPP 1.6 schema shipped with the ocpp package."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ocpp
import pytest

from gateway.loadmgmt.profiles import ocpp_limit, tx_default_profile, tx_profile

SCHEMA = json.loads((Path(ocpp.__file__).parent / "v16" / "schemas" / "SetChargingProfile.json").read_text())


def validate(payload: dict[str, object]) -> None:
    jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(payload)


@pytest.mark.parametrize("amps", [0.0, 6.0, 6.7, 13.3, 31.99, 63.0])
def test_profiles_are_schema_valid(amps: float) -> None:
    validate(tx_default_profile(amps))
    p = tx_profile(2, 1234, amps, 1_763_700_000.0, 120)
    validate(p)
    cs = p["csChargingProfiles"]
    assert isinstance(cs, dict)
    assert cs["transactionId"] == 1234 and cs["chargingProfilePurpose"] == "TxProfile"
    assert cs["chargingSchedule"]["duration"] == 120
    assert cs["chargingSchedule"]["startSchedule"] == "2025-11-21T04:40:00Z"


def test_limit_is_whole_amps_and_rejects_nonsense() -> None:
    assert ocpp_limit(6.99) == 6.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            ocpp_limit(bad)


def test_schema_check_is_real() -> None:
    bad = tx_default_profile(6.0)
    bad["csChargingProfiles"]["chargingProfilePurpose"] = "Whatever"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
