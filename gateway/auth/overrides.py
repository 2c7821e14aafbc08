"""Operator overrides: `chargegate tokens allow UID [--until TIME] [--reason TEXT]`.

An override makes a token Accepted on the whole site until a time, whatever the eMSP list (or the eMSP online)
says: the way out when the eMSP's list is wrong and a driver is stuck. It is temporary (DEFAULT_S, at most MAX_S),
recorded (an `auth_decisions` row and an `auth.decision` event with purpose `override`, charger `*`, the reason, in
the same transaction as the change), and pushed to the chargers' local lists like any list change (with expiryDate =
its end). Precedence (gateway/auth/decision.py `merge_local`): a manual Blocked / Expired / Invalid entry (`tokens
block`, `tokens add --status ...`) beats it, the eMSP list and the eMSP's answers do not; a restriction of the
token to some chargers still holds.

Store functions take the caller's connection and run inside its transaction (`store.write_sync` from the CLI,
`store.write` from the gateway's supervisor); `parse_until` is pure.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from gateway.auth import tokenstore as ts
from gateway.auth.decision import AuthDecision, effective_status
from gateway.auth.tokens import TokenError, format_expiry

# An override lasts this long unless --until says otherwise: a day gets a stuck driver out and the eMSP a working
# day to fix its list.
DEFAULT_S: Final = 24 * 3600.0
# ... and at most this long: an override is a stop-gap, not a second token list the eMSP never hears the end of.
MAX_S: Final = 7 * 86400.0
# Most overrides live at once (each is one more entry in every charger's local list).
MAX_LIVE: Final = 1000
# Longest reason kept (it travels in the auth.decision event).
MAX_REASON_LEN: Final = 200

_DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Override:
    id: str
    until: float
    reason: str | None
    created_at: float


def parse_until(text: str | None, now: float) -> float:
    """--until: a duration (`90m`, `12h`, `2d`, optionally `+`-prefixed) or an ISO 8601 date-time (a naive one is UTC);
    None = DEFAULT_S from now. Raises TokenError unless the end lies in (now, now + MAX_S]."""
    if text is None:
        return now + DEFAULT_S
    raw = text.strip().lower()
    m = _DURATION.match(raw)
    if m:
        until = now + float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        try:
            dt = datetime.fromisoformat(text.strip())
        except ValueError:
            raise TokenError(
                f"--until {text[:40]!r}: expected a duration (90m, 12h, 2d) or an ISO 8601 date-time"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        until = dt.timestamp()
    if until <= now:
        raise TokenError(f"--until {text[:40]!r} is not in the future")
    if until - now > MAX_S:
        raise TokenError(
            f"--until {text[:40]!r}: an override lasts at most {MAX_S / 86400:g} days "
            "(ask the eMSP to fix its list, or add the token with `chargegate tokens add`)"
        )
    return until


def clean_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    r = " ".join(reason.split())
    if not r:
        return None
    if not r.isprintable():
        raise TokenError("--reason must be printable text")
    return r[:MAX_REASON_LEN]


def get(conn: sqlite3.Connection, token_id: str, now: float | None = None) -> Override | None:
    """The token's override; with `now`, only a live one."""
    r = conn.execute(
        "SELECT id, until, reason, created_at FROM auth_overrides WHERE id = ?", (token_id,)
    ).fetchone()
    if r is None or (now is not None and float(r[1]) <= now):
        return None
    return Override(str(r[0]), float(r[1]), r[2], float(r[3]))


def live(conn: sqlite3.Connection, now: float) -> list[Override]:
    return [
        Override(str(r[0]), float(r[1]), r[2], float(r[3]))
        for r in conn.execute(
            "SELECT id, until, reason, created_at FROM auth_overrides WHERE until > ? ORDER BY id", (now,)
        )
    ]


def _audit(
    conn: sqlite3.Connection, token_id: str, status: str, until: float | None, reason: str, now: float
) -> None:
    ts.record_decision(
        conn,
        AuthDecision(
            charger_id="*",
            id_tag=token_id,
            purpose="override",
            status=status,  # type: ignore[arg-type]
            expiry_date=format_expiry(until),
            parent_id_tag=None,
            source="override",
            auth_method="OPERATOR_OVERRIDE",
            reason=reason,
            decided_at=now,
        ),
        None,
    )


def grant(
    conn: sqlite3.Connection, token_id: str, until: float, reason: str | None, now: float
) -> tuple[Override, str | None]:
    """Grant (or replace: a new end, a new reason) the override of a normalized token, with its audit record and a
    list revision, in the caller's transaction. Returns (the override, what it overrides: e.g. 'listed Blocked', or
    None when nothing refuses the token). Raises TokenError, changing nothing, when a manual entry refuses the token
    (the operator's own block wins: remove it first) or MAX_LIVE other overrides are live."""
    if not now < until <= now + MAX_S:
        raise TokenError(f"an override must end within {MAX_S / 86400:g} days from now")
    reason = clean_reason(reason)
    entries = ts.lookup_local(conn, token_id)
    for e in entries:
        status = effective_status(e.status, e.expiry, now)
        if e.source == "manual" and status != "Accepted":
            raise TokenError(
                f"{token_id} is {status} by a manual entry, which wins over an override: "
                f"`chargegate tokens remove {token_id}` (or `tokens add {token_id}`) first"
            )
    existing = get(conn, token_id, now)
    if existing is None:
        n = conn.execute("SELECT COUNT(*) FROM auth_overrides WHERE until > ?", (now,)).fetchone()[0]
        if int(n) >= MAX_LIVE:
            raise TokenError(f"{MAX_LIVE} overrides are live: end some (`tokens allow ID --end`) first")
    listed = sorted(
        {
            status
            for e in entries
            if e.source == "local_list"
            and (status := effective_status(e.status, e.expiry, now)) != "Accepted"
        }
    )
    overrides = ("listed " + "/".join(listed)) if listed else None
    conn.execute(
        "INSERT INTO auth_overrides (id, until, reason, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
        "SET until = excluded.until, reason = excluded.reason, created_at = excluded.created_at",
        (token_id, until, reason, now),
    )
    conn.execute("DELETE FROM auth_cache WHERE id = ?", (token_id,))
    what = "operator override granted until " + (format_expiry(until) or "?")
    if overrides:
        what += f" (overrides {overrides})"
    if existing is not None:
        what += " (replaces the one until " + (format_expiry(existing.until) or "?") + ")"
    _audit(conn, token_id, "Accepted", until, what + (f": {reason}" if reason else ""), now)
    ts.bump_revision(conn, [token_id])
    return Override(token_id, until, reason, now), overrides


def end(conn: sqlite3.Connection, token_id: str, why: str, now: float) -> Override | None:
    """End the token's override now (recorded); returns it, or None when there was none. (One past its end that the
    gateway's supervisor has not deleted yet is deleted, and recorded as ended at its end.)"""
    o = get(conn, token_id)
    if o is None:
        return None
    conn.execute("DELETE FROM auth_overrides WHERE id = ?", (token_id,))
    if o.until <= now:
        _audit(conn, token_id, "Expired", o.until, "operator override ended (its end has passed)", now)
    else:
        _audit(conn, token_id, "Expired", o.until, f"operator override ended early: {why}", now)
    ts.bump_revision(conn, [token_id])
    return o


def any_due(conn: sqlite3.Connection, now: float) -> bool:
    return (
        conn.execute("SELECT 1 FROM auth_overrides WHERE until <= ? LIMIT 1", (now,)).fetchone() is not None
    )


def expire_due(conn: sqlite3.Connection, now: float) -> list[str]:
    """Delete the overrides whose end has passed, each with its audit record, and bump the list revision so the
    chargers' lists return to what the eMSP list says. Returns their ids."""
    rows = conn.execute(
        "SELECT id, until FROM auth_overrides WHERE until <= ? ORDER BY until LIMIT ?", (now, MAX_LIVE)
    ).fetchall()
    ids = [str(r[0]) for r in rows]
    for tid, until in rows:
        _audit(conn, tid, "Expired", float(until), "operator override ended (its end has passed)", now)
    if ids:
        conn.executemany("DELETE FROM auth_overrides WHERE id = ?", ((i,) for i in ids))
        ts.bump_revision(conn, ids)
    return ids
