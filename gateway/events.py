"""Uplink events: written to the outbox in the same SQLite transaction as the state change that causes them.

`emit()` is called from inside a `Store.write(fn)` operation, on the writer thread, with that operation's
connection. The uplink's drainer (gateway/uplink) publishes outbox rows in `seq` order and marks them sent on
PUBACK. `seq` is the idempotency key the eMSP de-duplicates on.

Connector status and gateway presence do not queue behind the outbox: the `StatusBus` hands them to the uplink at
once (they are retained and coalesced on the broker, so only the latest value matters).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

# Event kinds (the contract in docs/uplink.md lists their bodies).
CHARGER_BOOT = "charger.boot"
CHARGER_FAULT = "charger.fault"
CHARGER_CONNECTION = "charger.connection"
SESSION_STARTED = "session.started"
SESSION_UPDATE = "session.update"
SESSION_STOPPED = "session.stopped"
SESSION_RECORD = "session.record"  # final CDR-shaped record
AUTH_DECISION = "auth.decision"
METER_READING = "meter.reading"  # droppable under disk pressure


def emit(
    conn: sqlite3.Connection,
    kind: str,
    body: dict[str, Any],
    *,
    charger_id: str | None = None,
    charger_ts: str | None = None,
    droppable: bool = False,
    now: float | None = None,
) -> int:
    """Append one event to the outbox inside the caller's transaction; returns its sequence number."""
    cur = conn.execute(
        "INSERT INTO outbox (kind, charger_id, droppable, created_at, charger_ts, body) VALUES (?, ?, ?, ?, ?, ?)",
        (
            kind,
            charger_id,
            1 if droppable else 0,
            time.time() if now is None else now,
            charger_ts,
            cbor2.dumps(body),
        ),
    )
    seq = cur.lastrowid
    assert seq is not None
    return seq


def decode_body(blob: bytes) -> dict[str, Any]:
    value = cbor2.loads(blob)
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True)
class ConnectorStatus:
    charger_id: str
    connector_id: int
    status: str
    error_code: str
    info: str | None
    charger_ts: str | None
    received_at: float  # gateway wall clock


StatusListener = Callable[[ConnectorStatus], None]


class StatusBus:
    """In-process fan-out of live connector status and charger presence; listeners must not block."""

    def __init__(self) -> None:
        self._status: list[StatusListener] = []
        self._presence: list[Callable[[str, bool], None]] = []

    def subscribe_status(self, fn: StatusListener) -> None:
        self._status.append(fn)

    def subscribe_presence(self, fn: Callable[[str, bool], None]) -> None:
        self._presence.append(fn)

    def publish_status(self, status: ConnectorStatus) -> None:
        for fn in self._status:
            fn(status)

    def publish_presence(self, charger_id: str, online: bool) -> None:
        for fn in self._presence:
            fn(charger_id, online)
