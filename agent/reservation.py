"""Reservations (OCPP 1.6 Reservation profile, ReserveNow/CancelReservation), pure: no I/O, no clock.

A reservation holds one connector for one idTag (or any idTag of its parentIdTag group) until `expiry` (UNIX
seconds on the Central System's clock, as the core's wall_time()). It is a small list
[reservation_id, id_tag, parent_id_tag or None, expiry] kept per connector by the core, persisted (`encode`/
`decode`) so a restart keeps it. The core applies the answers; this module decides them.
"""

import json

try:
    from typing import Any
except ImportError:
    pass

# ReserveNow answers (OCPP 1.6 ReservationStatus)
ACCEPTED = "Accepted"
FAULTED = "Faulted"
OCCUPIED = "Occupied"
REJECTED = "Rejected"
UNAVAILABLE = "Unavailable"

STORAGE_NAME = "reservations"

# Indices into a reservation
ID = 0
TAG = 1
PARENT = 2
EXPIRY = 3


def make(reservation_id: int, id_tag: str, parent: "str | None", expiry: int) -> "list[Any]":
    return [reservation_id, id_tag, parent or None, expiry]


def reserve_status(
    connector_id: int,
    connectors: int,
    zero_supported: bool,
    status: "str | None",
    busy: bool,
    held_by: "int | None",
    reservation_id: int,
    expiry: "int | None",
    now: float,
) -> str:
    """The answer to ReserveNow on `connector_id` of `connectors`: `status` its current ChargePointStatus,
    `busy` a transaction runs or an id is being authorized/waiting for the cable there, `held_by` the id of the
    reservation already on it (None: none), `expiry` the requested expiry (None: unusable), `now` wall time."""
    if connector_id < 0 or connector_id > connectors or (connector_id == 0 and not zero_supported):
        return REJECTED
    if expiry is None or expiry <= now:
        return REJECTED
    if status == "Faulted":
        return FAULTED
    if status == "Unavailable":
        return UNAVAILABLE
    if held_by is not None:
        return ACCEPTED if held_by == reservation_id else OCCUPIED  # the same id replaces its reservation
    if busy or status != "Available":
        return OCCUPIED
    return ACCEPTED


def admits(res: "list[Any] | None", id_tag: "str | None", parent: "str | None") -> bool:
    """May `id_tag` (of group `parent`, when known) start on a connector holding `res`?"""
    if res is None:
        return True
    if id_tag is None:
        return False
    if id_tag == res[TAG]:
        return True
    return res[PARENT] is not None and parent == res[PARENT]


def expired(res: "list[Any]", now: float) -> bool:
    return bool(now >= res[EXPIRY])


def encode(held: "dict[str, Any]") -> bytes:
    """{str(connector id): reservation} -> storage bytes."""
    return json.dumps(held).encode()


def decode(raw: "Any", connectors: int) -> "dict[str, Any]":
    """Storage bytes -> {str(connector id): reservation}; unusable entries (and a damaged blob) are dropped."""
    out = {}  # type: dict[str, Any]
    if not raw:
        return out
    try:
        blob = json.loads(raw)
    except ValueError:
        return out
    if not isinstance(blob, dict):
        return out
    for key in blob:
        r = blob[key]
        if (
            isinstance(key, str)
            and key.isdigit()
            and 1 <= int(key) <= connectors
            and isinstance(r, list)
            and len(r) == 4
            and isinstance(r[ID], int)
            and isinstance(r[TAG], str)
            and (r[PARENT] is None or isinstance(r[PARENT], str))
            and isinstance(r[EXPIRY], int)
        ):
            out[key] = r
    return out
