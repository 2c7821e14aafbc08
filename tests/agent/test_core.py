"""Runs the shared agent-core cases (cases_core.py, also run under MicroPython) on CPython, validating every
frame the core sends or receives against the official OCPP 1.6 JSON schemas shipped with the `ocpp` package."""

import json
import os
import sys
from datetime import datetime
from pathlib import Path

import jsonschema
import ocpp.v16
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import agentfakes
from cases_core import *  # noqa: F403
from cases_phase2 import *  # noqa: F403

SCHEMA_DIR = Path(ocpp.v16.__file__).parent / "schemas"
# jsonschema checks "date-time" only with optional extras installed: check it here, strictly (RFC 3339).
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
        raise ValueError("not an RFC 3339 date-time: " + value)
    datetime.fromisoformat(value)
    return True


_validators: dict[str, jsonschema.protocols.Validator] = {}


def _validator(name: str) -> jsonschema.protocols.Validator:
    v = _validators.get(name)
    if v is None:
        schema = json.loads((SCHEMA_DIR / (name + ".json")).read_text())
        cls = jsonschema.validators.validator_for(schema)
        v = cls(schema, format_checker=FORMATS)
        _validators[name] = v
    return v


def validate_frame(direction: str, action: str, kind: str, payload: dict) -> None:
    """Outbound CALLs and CALLRESULTs must be valid; inbound ones are checked too so the fakes stay honest."""
    name = action if kind == "call" else action + "Response"
    _validator(name).validate(payload)


@pytest.fixture(autouse=True)
def _schema_hook():
    agentfakes.FRAME_HOOK[0] = validate_frame
    yield
    agentfakes.FRAME_HOOK[0] = None


def test_schema_hook_catches_invalid_frames() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_frame(
            "tx",
            "StatusNotification",
            "call",
            {"connectorId": 1, "status": "Sleeping", "errorCode": "NoError"},
        )
    with pytest.raises(jsonschema.ValidationError):
        validate_frame("tx", "StartTransaction", "call", {"connectorId": 1, "idTag": "A", "meterStart": 0})
    with pytest.raises(jsonschema.ValidationError):
        validate_frame(
            "tx",
            "StartTransaction",
            "call",
            {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "today"},
        )
