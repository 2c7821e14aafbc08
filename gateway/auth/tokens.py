"""Token records: normalization and validation of idTags and of token entries from the eMSP or an import file.

Pure code, no I/O. Everything a peer (eMSP list, import file, CLI argument) sends passes through `parse_entry`
before it reaches the store, so bad input gets a clear answer and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from gateway.logutil import mask_token as mask

__all__ = [
    "MAX_ID_LEN",
    "MAX_LIST_TOKENS",
    "TOKEN_STATUSES",
    "TokenError",
    "TokenSpec",
    "TokenStatus",
    "decode_chargers",
    "encode_chargers",
    "format_expiry",
    "mask",
    "normalize_id",
    "parse_entry",
    "parse_expiry",
]

TokenStatus = Literal["Accepted", "Blocked", "Expired", "Invalid"]
TOKEN_STATUSES: tuple[TokenStatus, ...] = ("Accepted", "Blocked", "Expired", "Invalid")

# OCPP 1.6 IdToken is CiString20.
MAX_ID_LEN = 20
# A token may be restricted to at most this many chargers (a peer-controlled list: capped).
MAX_CHARGERS_PER_TOKEN = 64
MAX_CHARGER_ID_LEN = 48
# Most tokens one list (full snapshot or differential) may carry.
MAX_LIST_TOKENS = 2_000_000


class TokenError(ValueError):
    """A token id or entry is invalid; the message says which field and why."""


def normalize_id(raw: object) -> str:
    """The canonical form of an idTag: surrounding blanks removed, letters upper case (idTags compare
    case-insensitively), 1..20 printable ASCII characters without spaces."""
    if not isinstance(raw, str):
        raise TokenError(f"token id must be a string, got {type(raw).__name__}")
    s = raw.strip().upper()
    if not s:
        raise TokenError("token id is empty")
    if len(s) > MAX_ID_LEN:
        raise TokenError(f"token id longer than {MAX_ID_LEN} characters")
    if not (s.isascii() and s.isprintable()) or " " in s:
        raise TokenError("token id must be printable ASCII without spaces")
    return s


def parse_expiry(raw: object) -> float | None:
    """None, a UNIX time (number) or an ISO 8601 date-time (a naive one is taken as UTC) -> UNIX seconds."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise TokenError("expiry must be an ISO 8601 date-time or a UNIX time")
    if isinstance(raw, int | float):
        value = float(raw)
        if not math.isfinite(value) or value < 0:
            raise TokenError("expiry must be a non-negative finite UNIX time")
        return value
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise TokenError(f"expiry {raw[:40]!r} is not an ISO 8601 date-time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise TokenError("expiry must be an ISO 8601 date-time or a UNIX time")


def format_expiry(ts: float | None) -> str | None:
    """UNIX seconds -> the OCPP dateTime form (UTC, 'Z')."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """One validated token entry, as a list or an import file gives it. `status` None = remove (differential)."""

    id: str
    status: TokenStatus | None
    expiry: float | None = None
    parent_id: str | None = None
    chargers: tuple[str, ...] | None = None  # None = valid at every charger of the site


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            return d[k]
    return None


def parse_entry(raw: object, *, allow_remove: bool = False) -> TokenSpec:
    """Validate one token entry. Accepted keys: id|idTag|uid, status, expiry|expiryDate, parent_id|parentIdTag,
    chargers (list of charger ids), remove (bool). In a differential (`allow_remove`), an entry with no status or
    with remove=true deletes the token (the OCPP SendLocalList convention: idTagInfo absent = delete)."""
    if not isinstance(raw, dict):
        raise TokenError("token entry must be an object")
    d = cast(dict[str, Any], raw)
    tid = normalize_id(d["id"] if "id" in d else _first(d, "idTag", "uid"))
    # fast path, the common shape of a list entry: {"id", "status"} with a canonical status and nothing else
    if len(d) == 2:
        st = d.get("status")
        if st in TOKEN_STATUSES:
            return TokenSpec(id=tid, status=cast(TokenStatus, st))
    try:
        remove = d.get("remove", False)
        if not isinstance(remove, bool):
            raise TokenError("remove must be true or false")
        status_raw = d.get("status")
        if remove or status_raw is None or status_raw == "":
            if not allow_remove:
                raise TokenError("status is required (Accepted, Blocked, Expired or Invalid)")
            return TokenSpec(id=tid, status=None)
        if not isinstance(status_raw, str):
            raise TokenError("status must be a string")
        status = status_raw.strip().capitalize()
        if status not in TOKEN_STATUSES:
            raise TokenError(f"status {status_raw[:20]!r} is not one of {', '.join(TOKEN_STATUSES)}")
        expiry = parse_expiry(_first(d, "expiry", "expiryDate", "expiry_date"))
        parent_raw = _first(d, "parent_id", "parentIdTag", "parent")
        parent = None if parent_raw in (None, "") else normalize_id(parent_raw)
        chargers_raw = d.get("chargers")
        chargers: tuple[str, ...] | None = None
        if chargers_raw not in (None, "", []):
            if isinstance(chargers_raw, str):
                chargers_raw = [c for c in chargers_raw.replace(";", " ").replace(",", " ").split() if c]
            if not isinstance(chargers_raw, list) or len(chargers_raw) > MAX_CHARGERS_PER_TOKEN:
                raise TokenError(f"chargers must be a list of at most {MAX_CHARGERS_PER_TOKEN} charger ids")
            for c in chargers_raw:
                if not isinstance(c, str) or not 0 < len(c) <= MAX_CHARGER_ID_LEN or "," in c:
                    raise TokenError("chargers must hold charger ids of 1..48 characters without ','")
            chargers = tuple(sorted(set(chargers_raw)))
    except TokenError as e:
        raise TokenError(f"token {mask(tid)}: {e}") from None
    return TokenSpec(id=tid, status=status, expiry=expiry, parent_id=parent, chargers=chargers)


def encode_chargers(chargers: tuple[str, ...] | None) -> str | None:
    return None if chargers is None else ",".join(chargers)


def decode_chargers(raw: str | None) -> tuple[str, ...] | None:
    return None if raw is None else tuple(raw.split(","))
