"""Validate an OCPP 1.6J conversation frame by frame against the official JSON schemas shipped in the `ocpp` package.

One `FrameChecker` per websocket connection: it remembers the action of every CALL it saw in each direction so the
matching CALLRESULT is checked against `<Action>Response.json`. Plug it into run_charge_point's on_frame hook:
`on_frame=checker.on_frame` (direction "tx" = agent -> gateway, "rx" = gateway -> agent).
"""

from __future__ import annotations

import decimal
import json
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

# RFC 3339 date-time, as OCPP 1.6 timestamps must be (the schemas say "format": "date-time").
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
CALL, CALLRESULT, CALLERROR = 2, 3, 4
# OCPP-J 1.6 section 4.2.3: the error codes a CALLERROR may carry.
CALLERROR_CODES = frozenset(
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
# A message id is at most 36 characters (OCPP-J 1.6 section 4.1.3).
MAX_MESSAGE_ID = 36
# Calls a checker remembers per direction; a peer that never answers must not grow it without bound.
MAX_PENDING = 1024

_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time")  # type: ignore[untyped-decorator,unused-ignore]
def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_DATE_TIME.match(value))


@cache
def schema_validator(name: str) -> Any:
    """Validator for `ocpp/v16/schemas/<name>.json`; raises KeyError for an unknown action."""
    try:
        text = resources.files("ocpp.v16").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(name) from None
    # Decimal floats: `multipleOf: 0.1` fails on binary floats such as 21.4 (jsonschema issue #247).
    schema = json.loads(text, parse_float=decimal.Decimal)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=_FORMATS)


def check_payload(name: str, payload: Any) -> list[str]:
    try:
        validator = schema_validator(name)
    except KeyError:
        return [f"no OCPP 1.6 schema named {name}"]
    return [
        f"{name}: {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(payload)
    ]


class FrameChecker:
    def __init__(self, label: str = "") -> None:
        self.label = label
        self.frames = 0
        self.problems: list[str] = []
        # message id -> action, for the calls each side sent and awaits an answer to
        self._pending: dict[str, dict[str, str]] = {"tx": {}, "rx": {}}

    def on_frame(self, direction: str, text: str) -> None:
        self.frames += 1
        for p in self.check(direction, text):
            self.problems.append(f"{self.label} {direction}: {p} in {text[:200]}")

    def check(self, direction: str, text: str) -> list[str]:
        if direction not in ("tx", "rx"):
            return [f"unknown direction {direction!r}"]
        try:
            msg = json.loads(text, parse_float=decimal.Decimal)
        except ValueError as e:
            return [f"not JSON: {e}"]
        if not isinstance(msg, list) or len(msg) < 3 or msg[0] not in (CALL, CALLRESULT, CALLERROR):
            return ["not an OCPP-J message array"]
        kind, msg_id = msg[0], msg[1]
        if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_MESSAGE_ID:
            return [f"bad message id {msg_id!r}"]
        other = "rx" if direction == "tx" else "tx"
        if kind == CALL:
            if len(msg) != 4 or not isinstance(msg[2], str):
                return ["CALL must be [2, id, action, payload]"]
            action = msg[2]
            mine = self._pending[direction]
            if len(mine) >= MAX_PENDING:
                mine.pop(next(iter(mine)))
            mine[msg_id] = action
            return check_payload(action, msg[3])
        answered = self._pending[other].pop(msg_id, None)
        if kind == CALLRESULT:
            if len(msg) != 3:
                return ["CALLRESULT must be [3, id, payload]"]
            if answered is None:
                return [f"CALLRESULT for unknown message id {msg_id}"]
            return check_payload(answered + "Response", msg[2])
        if (
            len(msg) != 5
            or msg[2] not in CALLERROR_CODES
            or not isinstance(msg[3], str)
            or not isinstance(msg[4], dict)
        ):
            return ["CALLERROR must be [4, id, code, description, details{}] with an OCPP error code"]
        if answered is None:
            return [f"CALLERROR for unknown message id {msg_id}"]
        return []
