"""OCPP-J 1.6 message framing: pure functions, no I/O.

A frame is a JSON array: CALL [2, id, action, payload], CALLRESULT [3, id, payload],
CALLERROR [4, id, errorCode, errorDescription, errorDetails]. `decode` turns text into a Frame or raises
FrameError carrying the 1.6 error code to answer with (and the message id when one could be recovered).
"""

import json

from agent.compat import const, is_int

try:
    from typing import Any
except ImportError:
    pass

CALL = const(2)
CALLRESULT = const(3)
CALLERROR = const(4)

# OCPP-J 1.6 §4.2.3: the unique id is at most 36 characters.
MAX_ID_LEN = const(36)
# Cap on one inbound frame (a full SendLocalList or SetChargingProfile stays far below this).
MAX_FRAME_CHARS = const(65536)

# OCPP-J 1.6 §4.2.3 error codes (the spec spells "Occurence" this way).
NOT_IMPLEMENTED = "NotImplemented"
NOT_SUPPORTED = "NotSupported"
INTERNAL_ERROR = "InternalError"
PROTOCOL_ERROR = "ProtocolError"
SECURITY_ERROR = "SecurityError"
FORMATION_VIOLATION = "FormationViolation"
PROPERTY_CONSTRAINT_VIOLATION = "PropertyConstraintViolation"
OCCURENCE_CONSTRAINT_VIOLATION = "OccurenceConstraintViolation"
TYPE_CONSTRAINT_VIOLATION = "TypeConstraintViolation"
GENERIC_ERROR = "GenericError"

ERROR_CODES = (
    NOT_IMPLEMENTED,
    NOT_SUPPORTED,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    SECURITY_ERROR,
    FORMATION_VIOLATION,
    PROPERTY_CONSTRAINT_VIOLATION,
    OCCURENCE_CONSTRAINT_VIOLATION,
    TYPE_CONSTRAINT_VIOLATION,
    GENERIC_ERROR,
)


class FrameError(Exception):
    """A frame that cannot be used. `unique_id` is None when no id could be recovered (nothing to answer)."""

    def __init__(self, code: str, description: str, unique_id: "str | None" = None, is_call: bool = False):
        super().__init__(description)
        self.code = code
        self.description = description
        self.unique_id = unique_id
        self.is_call = is_call


class Frame:
    """One decoded frame. For CALL: action+payload; CALLRESULT: payload; CALLERROR: error_code/description/details."""

    def __init__(
        self,
        kind: int,
        unique_id: str,
        action: "str | None" = None,
        payload: "Any" = None,
        error_code: "str | None" = None,
        error_description: str = "",
        error_details: "Any" = None,
    ):
        self.kind = kind
        self.unique_id = unique_id
        self.action = action
        self.payload = payload
        self.error_code = error_code
        self.error_description = error_description
        self.error_details = error_details


def _dumps(obj: "Any") -> str:
    return json.dumps(obj, separators=(",", ":"))


def encode_call(unique_id: str, action: str, payload: "dict[str, Any]") -> str:
    return _dumps([CALL, unique_id, action, payload])


def encode_result(unique_id: str, payload: "dict[str, Any]") -> str:
    return _dumps([CALLRESULT, unique_id, payload])


def encode_error(
    unique_id: str, code: str, description: str = "", details: "dict[str, Any] | None" = None
) -> str:
    if code not in ERROR_CODES:
        code = GENERIC_ERROR
    return _dumps([CALLERROR, unique_id, code, description[:255], details if details is not None else {}])


def decode(text: "Any") -> Frame:
    """Parse one frame. Raises FrameError with a 1.6 error code and, when recoverable, the message id."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode()
        except Exception:
            raise FrameError(FORMATION_VIOLATION, "frame is not UTF-8") from None
    if not isinstance(text, str):
        raise FrameError(FORMATION_VIOLATION, "frame is not text")
    if len(text) > MAX_FRAME_CHARS:
        raise FrameError(FORMATION_VIOLATION, f"frame longer than {MAX_FRAME_CHARS} characters")
    try:
        msg = json.loads(text)
    except ValueError:
        raise FrameError(FORMATION_VIOLATION, "frame is not valid JSON") from None
    if not isinstance(msg, list) or len(msg) < 3:
        raise FrameError(FORMATION_VIOLATION, "frame is not a JSON array of at least 3 elements")
    kind = msg[0]
    uid = msg[1]
    if not isinstance(uid, str) or not uid or len(uid) > MAX_ID_LEN:
        raise FrameError(
            FORMATION_VIOLATION, "message id must be a non-empty string of at most 36 characters"
        )
    if not is_int(kind) or kind not in (CALL, CALLRESULT, CALLERROR):
        # An unknown message type with a usable id: answer so the peer does not wait for a timeout.
        raise FrameError(PROTOCOL_ERROR, "unknown message type", uid, True)
    if kind == CALL:
        if len(msg) != 4:
            raise FrameError(FORMATION_VIOLATION, "CALL must have exactly 4 elements", uid, True)
        action = msg[2]
        if not isinstance(action, str) or not action:
            raise FrameError(FORMATION_VIOLATION, "CALL action must be a non-empty string", uid, True)
        if not isinstance(msg[3], dict):
            raise FrameError(FORMATION_VIOLATION, "CALL payload must be a JSON object", uid, True)
        return Frame(CALL, uid, action=action, payload=msg[3])
    if kind == CALLRESULT:
        if len(msg) != 3 or not isinstance(msg[2], dict):
            raise FrameError(FORMATION_VIOLATION, "CALLRESULT must be [3, id, {payload}]", uid)
        return Frame(CALLRESULT, uid, payload=msg[2])
    if len(msg) != 5 or not isinstance(msg[2], str) or not isinstance(msg[3], str):
        raise FrameError(FORMATION_VIOLATION, "CALLERROR must be [4, id, code, description, {details}]", uid)
    return Frame(CALLERROR, uid, error_code=msg[2], error_description=msg[3], error_details=msg[4])
