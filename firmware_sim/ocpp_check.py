"""Check an OCPP-J 1.6 conversation frame by frame against the official 1.6 JSON schemas of the `ocpp` package.

This is the judge of the gateway, so it shares no code with the gateway's own validator (gateway/ocpp/framing.py
compiles the schemas with fastjsonschema for its hot path); it uses the reference `jsonschema` validator instead.

One `FrameChecker` per charge-point connection (or per agent life), fed from the charge point's side:

    checker = FrameChecker("CP1")
    checker.check(TO_GATEWAY, '[2,"1","Heartbeat",{}]')          # the charge point sends a CALL
    checker.check(FROM_GATEWAY, '[3,"1",{"currentTime":"..."}]')  # the gateway answers
    assert checker.problems == []

or plugged into agent.port_cpython.run_charge_point as `on_frame=checker.on_frame` (its directions "tx" = charge
point -> gateway and "rx" = gateway -> charge point are TO_GATEWAY and FROM_GATEWAY).

What is checked, per frame:
- the OCPP-J envelope: a JSON text frame (no NaN/Infinity) holding [2, id, action, {payload}] / [3, id, {payload}] /
  [4, id, errorCode, errorDescription, {details}], the message id a string of 1..36 characters;
- a CALL: the action is an OCPP 1.6 action that may be sent in that direction, the payload validates against
  `<Action>.json` (including `format: date-time` as RFC 3339 with a real calendar date), the message id is not
  already outstanding in that direction;
- a CALLRESULT: it answers an outstanding CALL of the other direction (tracked by message id) and validates against
  `<Action>Response.json`;
- a CALLERROR: it answers an outstanding CALL of the other direction, its errorCode is one of the ten 1.6 codes, its
  description a string and its details an object.

Numbers are compared as Decimal, so `multipleOf: 0.1` holds for 21.4 (binary floats fail it, jsonschema issue #247).

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
from typing import Any, NoReturn

from jsonschema import Draft4Validator, FormatChecker

# Directions, named from the charge point's point of view; the values are run_charge_point's on_frame directions.
TO_GATEWAY = "tx"
FROM_GATEWAY = "rx"
DIRECTIONS = (TO_GATEWAY, FROM_GATEWAY)

CALL, CALLRESULT, CALLERROR = 2, 3, 4
# Elements of each OCPP-J message type.
_SHAPE = {CALL: 4, CALLRESULT: 3, CALLERROR: 5}

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
# Unanswered CALLs remembered per direction: a peer that never answers (or a connection that dropped with calls in
# flight) must not grow a long-running checker without bound. The oldest is forgotten first; a late answer to it is
# then reported as answering nothing.
MAX_OUTSTANDING = 1024
# Problems kept in `problems` (the rest are counted in `dropped`): a gateway gone wrong in a long demo run must not
# eat the memory; one problem is already a failure.
MAX_PROBLEMS = 1000
# How much of an offending frame (or of a value in it) a problem message quotes.
_QUOTE = 300


# The schemas' `"format": "date-time"` (RFC 3339). jsonschema only checks it with an optional package installed, so
# it is checked here: a timestamp the gateway stores or sends must be one a CDR can be built from.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)  # type: ignore[untyped-decorator,unused-ignore]
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports it
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # month 13, day 32, hour 25 raise ValueError
    return True


@functools.cache
def _validator(schema_name: str) -> Draft4Validator:
    # The 1.6 schemas declare draft-04.
    text = (importlib.resources.files("ocpp.v16") / "schemas" / f"{schema_name}.json").read_text("utf-8")
    # Decimal in the schema too: `multipleOf: 0.1` must be exact.
    return Draft4Validator(json.loads(text, parse_float=decimal.Decimal), format_checker=_FORMATS)


def _decimals(value: Any) -> Any:
    """`value` with every float as the Decimal of its shortest repr (21.4 -> Decimal('21.4'))."""
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "..."


def validate_payload(action: str, payload: Any, response: bool = False) -> list[str]:
    """Problems of one payload against `<action>.json` (or `<action>Response.json`); [] when valid."""
    if action not in ACTIONS_16:
        return [f"{action!r} is not an OCPP 1.6 action"]
    name = action + ("Response" if response else "")
    errors = _validator(name).iter_errors(_decimals(payload))
    return [
        f"{name}: {'/'.join(map(str, e.absolute_path)) or '<payload>'}: {_clip(e.message)}"
        for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    ]


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _other(direction: str) -> str:
    return FROM_GATEWAY if direction == TO_GATEWAY else TO_GATEWAY


class FrameChecker:
    """Validates the frames of one connection in both directions and keeps every problem found."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.frames = 0
        self.problems: list[str] = []
        self.dropped = 0  # problems beyond MAX_PROBLEMS, counted only
        # per direction the CALL travelled: message id -> action, or None for a deliberately invalid CALL
        self._outstanding: dict[str, dict[str, str | None]] = {d: {} for d in DIRECTIONS}

    def expect_answer(self, direction: str, message_id: str, action: str | None = None) -> None:
        """A frame with this id was sent in `direction` without `check` (deliberately invalid): accept a
        CALLERROR answering it; a CALLRESULT answering it is reported as a problem when `action` is None."""
        self._remember(direction, message_id, action)

    def outstanding(self, direction: str) -> dict[str, str | None]:
        """The CALLs sent in `direction` that no frame has answered yet: message id -> action."""
        return dict(self._outstanding.get(direction, {}))

    def on_frame(self, direction: str, text: str | bytes) -> None:
        """run_charge_point's trace hook: check the frame, keep its problems."""
        self.check(direction, text)

    def check(self, direction: str, text: str | bytes) -> list[str]:
        """Validate one frame; returns its problems and records them (with direction and frame) in `problems`."""
        self.frames += 1
        found = self._check(direction, text)
        quoted = _clip(text if isinstance(text, str) else repr(text))
        prefix = f"{self.label} {direction}" if self.label else direction
        for p in found:
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(f"{prefix}: {p} | frame: {quoted}")
            else:
                self.dropped += 1
        return found

    def _remember(self, direction: str, message_id: str, action: str | None) -> None:
        mine = self._outstanding[direction]
        if len(mine) >= MAX_OUTSTANDING:
            del mine[next(iter(mine))]
        mine[message_id] = action

    def _check(self, direction: str, text: str | bytes) -> list[str]:
        if direction not in DIRECTIONS:
            return [f"unknown direction {direction!r} (expected one of {DIRECTIONS})"]
        if isinstance(text, bytes):
            return ["binary websocket frame (OCPP-J uses text frames)"]
        try:
            msg = json.loads(text, parse_float=decimal.Decimal, parse_constant=_no_constant)
        except ValueError as e:  # JSONDecodeError, NaN/Infinity
            return [f"not JSON: {e}"]
        except RecursionError:
            return ["not JSON: nested too deeply"]
        if not isinstance(msg, list) or not msg:
            return ["not a non-empty JSON array"]
        kind = msg[0]
        if type(kind) is not int or kind not in _SHAPE:  # not 2.0, not true, not a list
            return [f"unknown MessageTypeId {kind!r}"]
        if len(msg) != _SHAPE[kind]:
            return [f"MessageTypeId {kind} needs {_SHAPE[kind]} elements, got {len(msg)}"]
        mid = msg[1]
        if not isinstance(mid, str) or not 1 <= len(mid) <= MAX_MESSAGE_ID:
            return [f"message id must be a string of 1..{MAX_MESSAGE_ID} characters, got {mid!r}"]
        if kind == CALL:
            return self._check_call(direction, mid, msg[2], msg[3])
        answered = self._outstanding[_other(direction)]
        known = mid in answered
        action = answered.pop(mid, None)
        if kind == CALLRESULT:
            payload = msg[2]
            if not isinstance(payload, dict):
                return ["CALLRESULT payload is not an object"]
            if not known:
                return [f"CALLRESULT to message id {mid!r} that has no outstanding CALL"]
            if action is None:
                return [f"CALLRESULT answering an invalid CALL (id {mid!r}); expected a CALLERROR"]
            return validate_payload(action, payload, response=True)
        code, description, details = msg[2], msg[3], msg[4]
        problems = []
        if not known:
            problems.append(f"CALLERROR to message id {mid!r} that has no outstanding CALL")
        if not isinstance(code, str) or code not in ERROR_CODES_16:
            problems.append(f"errorCode {code!r} is not an OCPP 1.6 error code")
        if not isinstance(description, str):
            problems.append("errorDescription is not a string")
        if not isinstance(details, dict):
            problems.append("errorDetails is not an object")
        return problems

    def _check_call(self, direction: str, mid: str, action: Any, payload: Any) -> list[str]:
        if mid in self._outstanding[direction]:
            return [f"message id {mid!r} reused while a CALL with it is outstanding"]
        if not isinstance(action, str) or action not in ACTIONS_16:
            self._remember(direction, mid, None)  # only a CALLERROR can answer it
            return [f"action {action!r} is not an OCPP 1.6 action"]
        self._remember(direction, mid, action)
        allowed = CP_INITIATED if direction == TO_GATEWAY else CS_INITIATED
        if action not in allowed:
            return [f"{action} may not be sent in this direction"]
        if not isinstance(payload, dict):
            return ["CALL payload is not an object"]
        return validate_payload(action, payload)
