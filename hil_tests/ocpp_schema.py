"""Check OCPP-J 1.6 frames against the official 1.6 JSON schemas shipped in the `ocpp` package.

Usable from any system test or benchmark:

    checker = FrameChecker()
    checker.check(TO_GATEWAY, '[2,"1","Heartbeat",{}]')      # a charge point sends a CALL
    checker.check(FROM_GATEWAY, '[3,"1",{"currentTime":"..."}]')  # the gateway answers
    assert checker.problems == []

What is checked, per frame:
- the OCPP-J envelope: a JSON array [2, id, action, {payload}] / [3, id, {payload}] /
  [4, id, errorCode, errorDescription, {details}], message id a string of 1..36 characters;
- a CALL: the action is an OCPP 1.6 action that may be sent in that direction, the payload validates against
  `<Action>.json` (including `format: date-time`, RFC 3339), the message id is not already outstanding in that
  direction;
- a CALLRESULT: it answers an outstanding CALL of the other direction (tracked by message id) and validates against
  `<Action>Response.json`;
- a CALLERROR: it answers an outstanding CALL of the other direction and its errorCode is one of the ten 1.6 codes.

A test that sends a deliberately invalid frame does not pass it to `check` but calls `expect_answer(direction, id)`,
so the CALLERROR answering it is accepted (and a CALLRESULT answering it is reported).

`validate_payload(action, payload, response=False)` validates one payload on its own.
"""

from __future__ import annotations

import decimal
import functools
import importlib.resources
import json
import re
from datetime import datetime
from typing import Any

from jsonschema import Draft4Validator, FormatChecker

# Directions, named from the charge point's point of view.
TO_GATEWAY = "cp->gw"
FROM_GATEWAY = "gw->cp"

CALL, CALLRESULT, CALLERROR = 2, 3, 4

# OCPP-J 1.6 §4.2.3 (note the spelling: FormationViolation, OccurenceConstraintViolation).
ERROR_CODES_16 = frozenset(
    {
        "NotImplemented",
        "NotSupported",
        "InternalError",
        "ProtocolError",
        "SecurityError",
        "FormationViolation",
        "PropertyConstraintViolation",
        "OccurenceConstraintViolation",
        "TypeConstraintViolation",
        "GenericError",
    }
)

# Who may initiate which action (OCPP 1.6 edition 2 + the 1.6 security whitepaper); DataTransfer goes both ways.
CP_INITIATED = frozenset(
    {
        "Authorize",
        "BootNotification",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StartTransaction",
        "StatusNotification",
        "StopTransaction",
        "LogStatusNotification",
        "SecurityEventNotification",
        "SignCertificate",
        "SignedFirmwareStatusNotification",
    }
)
CS_INITIATED = frozenset(
    {
        "CancelReservation",
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearCache",
        "ClearChargingProfile",
        "DataTransfer",
        "GetCompositeSchedule",
        "GetConfiguration",
        "GetDiagnostics",
        "GetLocalListVersion",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "ReserveNow",
        "Reset",
        "SendLocalList",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
        "UpdateFirmware",
        "CertificateSigned",
        "DeleteCertificate",
        "ExtendedTriggerMessage",
        "GetInstalledCertificateIds",
        "GetLog",
        "InstallCertificate",
        "SignedUpdateFirmware",
    }
)
ACTIONS_16 = CP_INITIATED | CS_INITIATED

# Longest message id OCPP-J 1.6 allows (§4.1.4: "maximum of 36 characters").
MAX_MESSAGE_ID = 36
# How much of an offending frame a problem message quotes.
_QUOTE = 300


# The schemas' `"format": "date-time"` (RFC 3339). jsonschema only checks it with an optional package installed, so
# it is checked here: a timestamp the gateway stores or sends must be one a CDR can be built from.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)  # type: ignore[untyped-decorator]
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports it
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # month 13, day 32, ... raise ValueError
    return True


@functools.cache
def _validator(schema_name: str) -> Draft4Validator:
    text = (importlib.resources.files("ocpp.v16") / "schemas" / f"{schema_name}.json").read_text("utf-8")
    # Decimal floats: the schemas' `multipleOf: 0.1` fails on binary floats such as 21.4 (jsonschema issue #247).
    return Draft4Validator(json.loads(text, parse_float=decimal.Decimal), format_checker=_FORMATS)


def validate_payload(action: str, payload: Any, response: bool = False) -> list[str]:
    """Problems of one payload against `<action>.json` (or `<action>Response.json`); [] when valid."""
    if action not in ACTIONS_16:
        return [f"{action!r} is not an OCPP 1.6 action"]
    validator = _validator(action + ("Response" if response else ""))
    payload = json.loads(json.dumps(payload, default=str), parse_float=decimal.Decimal)
    return [
        f"{action}{'Response' if response else ''}: {'/'.join(map(str, e.absolute_path)) or '<payload>'}: {e.message}"
        for e in sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _other(direction: str) -> str:
    return FROM_GATEWAY if direction == TO_GATEWAY else TO_GATEWAY


class FrameChecker:
    """Validates a stream of frames in both directions of one connection and keeps every problem found."""

    def __init__(self) -> None:
        # (direction the CALL travelled, message id) -> action, or None for a deliberately invalid CALL
        self._outstanding: dict[tuple[str, str], str | None] = {}
        self.problems: list[str] = []

    def expect_answer(self, direction: str, message_id: str, action: str | None = None) -> None:
        """A frame with this id was sent in `direction` without `check` (deliberately invalid): accept a
        CALLERROR answering it; a CALLRESULT answering it is reported as a problem when `action` is None."""
        self._outstanding[(direction, message_id)] = action

    def outstanding(self, direction: str) -> dict[str, str | None]:
        return {mid: a for (d, mid), a in self._outstanding.items() if d == direction}

    def check(self, direction: str, text: str | bytes) -> list[str]:
        """Validate one frame; returns (and records) its problems."""
        found = self._check(direction, text)
        quoted = text if isinstance(text, str) else repr(text)
        if len(quoted) > _QUOTE:
            quoted = quoted[:_QUOTE] + "..."
        found = [f"{direction} {p} | frame: {quoted}" for p in found]
        self.problems.extend(found)
        return found

    def _check(self, direction: str, text: str | bytes) -> list[str]:
        if isinstance(text, bytes):
            return ["binary websocket frame (OCPP-J uses text frames)"]
        try:
            msg = json.loads(text, parse_float=decimal.Decimal)
        except ValueError as e:
            return [f"not JSON: {e}"]
        if not isinstance(msg, list) or not msg:
            return ["not a non-empty JSON array"]
        kind = msg[0]
        shape = {CALL: 4, CALLRESULT: 3, CALLERROR: 5}
        if isinstance(kind, bool) or kind not in shape:
            return [f"unknown MessageTypeId {kind!r}"]
        if len(msg) != shape[kind]:
            return [f"MessageTypeId {kind} needs {shape[kind]} elements, got {len(msg)}"]
        mid = msg[1]
        if not isinstance(mid, str) or not 1 <= len(mid) <= MAX_MESSAGE_ID:
            return [f"message id must be a string of 1..{MAX_MESSAGE_ID} characters, got {mid!r}"]
        if kind == CALL:
            return self._check_call(direction, mid, msg[2], msg[3])
        key = (_other(direction), mid)
        if key not in self._outstanding:
            return [f"answer to message id {mid!r} that has no outstanding CALL"]
        action = self._outstanding.pop(key)
        if kind == CALLRESULT:
            if action is None:
                return [f"CALLRESULT answering an invalid CALL (id {mid!r}); expected a CALLERROR"]
            if not isinstance(msg[2], dict):
                return ["CALLRESULT payload is not an object"]
            return validate_payload(action, msg[2], response=True)
        code, description, details = msg[2], msg[3], msg[4]
        problems = []
        if code not in ERROR_CODES_16:
            problems.append(f"errorCode {code!r} is not an OCPP 1.6 error code")
        if not isinstance(description, str):
            problems.append("errorDescription is not a string")
        if not isinstance(details, dict):
            problems.append("errorDetails is not an object")
        return problems

    def _check_call(self, direction: str, mid: str, action: Any, payload: Any) -> list[str]:
        if (direction, mid) in self._outstanding:
            return [f"message id {mid!r} reused while a CALL with it is outstanding"]
        if not isinstance(action, str) or action not in ACTIONS_16:
            self._outstanding[(direction, mid)] = None  # only a CALLERROR can answer it
            return [f"action {action!r} is not an OCPP 1.6 action"]
        self._outstanding[(direction, mid)] = action
        allowed = CP_INITIATED if direction == TO_GATEWAY else CS_INITIATED
        if action not in allowed:
            return [f"{action} may not be sent in this direction"]
        if not isinstance(payload, dict):
            return ["CALL payload is not an object"]
        return validate_payload(action, payload)
