"""Central-system behaviour for every Core-profile message a charger sends.

Each handler takes the charger id and the validated camelCase payload and returns the response payload. Every state
change and the uplink events it causes are written in ONE store operation (one SQLite transaction) before the handler
returns, so the charger never gets an answer for something that is not on disk. Work that must talk back to the
charger (local list sync, default charging profiles) is returned as `after` callbacks that the server runs as tasks
once the answer is sent: a handler never issues a CALL itself.

The server asks `admit()` before it dispatches a CALL to `handle()`: the registration gate (OCPP 1.6 §4.2, rules in
gateway/ocpp/registration.py and docs/ocpp.md) refuses everything but BootNotification from a charger that is not
Accepted, before any handler runs.

Session progress: a MeterValues of a running transaction also emits `session.update` (energy so far, power, charger
time), in the same transaction as the reading, at most once per `[uplink] session_update_interval_s` of charger
time per transaction (docs/uplink.md). What was last reported per running transaction is kept in the
`session_progress` table, so resends, restarts and out-of-order readings never repeat it or make it go backwards.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from gateway import events
from gateway.auth.decision import AuthDecision, Purpose
from gateway.config import SiteConfig
from gateway.errors import ChargegateError
from gateway.events import ConnectorStatus, StatusBus
from gateway.logutil import mask_token
from gateway.ocpp import registration
from gateway.store import Store, register_migrations

log = logging.getLogger("chargegate.csms")

register_migrations(
    "csms",
    [
        """
        -- the last session.update per running transaction (deleted when it stops)
        CREATE TABLE session_progress (
            transaction_id INTEGER PRIMARY KEY,
            charger_s REAL NOT NULL,      -- charger time of the reading it reported, epoch seconds
            energy_wh INTEGER NOT NULL    -- what it reported; never reported lower again
        );
        """,
    ],
)

# Default of `[uplink] session_update_interval_s` when the uplink section is not registered (the CSMS runs
# without the uplink package, e.g. in unit tests): the MeterValueSampleInterval chargers ship with.
DEFAULT_SESSION_UPDATE_INTERVAL_S: Final = 60.0
ENERGY_REGISTER: Final = "Energy.Active.Import.Register"
# A register beyond 1 TWh is not a charger's meter: such a reading is stored but drives no session.update (and
# cannot overflow an SQLite integer).
MAX_REGISTER_WH: Final = 1e12

AfterAction = Callable[[], Awaitable[None]]


class Authorizer(Protocol):
    async def decide(
        self,
        charger_id: str,
        id_tag: str,
        *,
        purpose: Purpose,
        transaction_id: int | None = None,
        connector_id: int | None = None,
        start_ts: str | None = None,
    ) -> Any: ...

    def confirm_start(
        self,
        conn: sqlite3.Connection,
        decision: Any,
        *,
        connector_id: int | None = None,
        start_ts: str | None = None,
    ) -> Any:
        """In the StartTransaction's transaction, before its row is written: the decision to store and answer (the
        ConcurrentTx check again, serialized with every other start)."""
        ...

    def record(
        self, conn: sqlite3.Connection, decision: Any, *, transaction_id: int | None = None
    ) -> None: ...

    async def record_authorize(self, decision: Any) -> None:
        """Record an Authorize decision: durably before returning when it created state (an offline or eMSP
        acceptance), otherwise queued to the store's next commit (docs/authorization.md)."""
        ...


class SessionMeterCheck(Protocol):
    """Optional: a connector meter's view of each session (gateway/meters/session_energy.py)."""

    def on_start(
        self, conn: sqlite3.Connection, tx_id: int, charger_id: str, connector_id: int, now: float
    ) -> None: ...

    def on_stop(
        self,
        conn: sqlite3.Connection,
        tx_id: int,
        charger_id: str,
        connector_id: int,
        charger_wh: float | None,
        now: float,
    ) -> dict[str, Any] | None: ...


class SessionRecordBuilder(Protocol):
    def __call__(self, conn: sqlite3.Connection, transaction_id: int) -> dict[str, Any]: ...


class CallRefused(ChargegateError):
    """A schema-valid CALL whose values make no sense for this charger: answered with a CALLERROR, nothing stored."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class CsmsHooks:
    """Subsystems that react to charger events. Called after the answer is on the wire, as tasks."""

    charger_booted: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    transaction_started: list[Callable[[str, int, int], Awaitable[None]]] = field(default_factory=list)
    transaction_stopped: list[Callable[[str, int, int], Awaitable[None]]] = field(default_factory=list)
    # (charger, connector, amps): the Current.Import a charger reported, per phase (L1, L2, L3 in the charger's own
    # phase order) when it sent all three, else the highest value it sent; called after commit.
    current_reported: list[Callable[[str, int, float | tuple[float, float, float]], None]] = field(
        default_factory=list
    )


@dataclass
class Reply:
    payload: dict[str, Any]
    after: list[AfterAction] = field(default_factory=list)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ConnectionState:
    """What the CSMS remembers about one live websocket (not persisted)."""

    def __init__(self, charger_id: str, stored_registration: str | None = None) -> None:
        self.charger_id = charger_id
        # when this connection was first answered Pending (Csms.clock), to accept it after the retry interval
        self.pending_since: float | None = None
        # the answer to the last BootNotification on this connection (None: it has not sent one)
        self.registration: str | None = None
        # chargers.boot_status when the connection opened (None: never booted against this gateway)
        self.stored_registration = stored_registration
        # messages the gateway asked for with an accepted TriggerMessage, admitted once while not Accepted
        self.triggered: set[str] = set()
        # CALLs the registration gate refused on this connection; whether a BootNotification was asked for
        self.refused = 0
        self.boot_requested = False


HANDLED_ACTIONS = frozenset(
    {
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "Authorize",
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
        "DataTransfer",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    }
)


def _minimal_session_record(conn: sqlite3.Connection, transaction_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM transactions WHERE id = ?", (transaction_id,)).fetchone()
    return {k: row[k] for k in row.keys()} if row else {"id": transaction_id}


class Csms:
    def __init__(
        self,
        cfg: SiteConfig,
        store: Store,
        status_bus: StatusBus,
        authorizer: Authorizer,
        hooks: CsmsHooks | None = None,
        session_record: SessionRecordBuilder | None = None,
        session_meters: SessionMeterCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.status_bus = status_bus
        self.authorizer = authorizer
        self.hooks = hooks or CsmsHooks()
        self.session_record = session_record or _minimal_session_record
        self.session_meters = session_meters
        self.clock = clock
        self.wall = wall
        self.session_update_interval = session_update_interval(cfg)
        self._handlers: dict[str, Callable[[ConnectionState, dict[str, Any]], Awaitable[Reply]]] = {
            "BootNotification": self.boot_notification,
            "Heartbeat": self.heartbeat,
            "StatusNotification": self.status_notification,
            "Authorize": self.authorize,
            "StartTransaction": self.start_transaction,
            "MeterValues": self.meter_values,
            "StopTransaction": self.stop_transaction,
            "DataTransfer": self.data_transfer,
            "DiagnosticsStatusNotification": self.diagnostics_status,
            "FirmwareStatusNotification": self.firmware_status,
        }

    def admit(self, st: ConnectionState, action: str) -> registration.Verdict:
        """The registration gate, asked by the server before `handle` (pure: no I/O, nothing changes but the
        consumed TriggerMessage allowance)."""
        verdict = registration.decide(
            action,
            booted=st.registration,
            stored=st.stored_registration,
            configured=self.configured_boot_status(st.charger_id),
            triggered=action in st.triggered,
        )
        if verdict.triggered:
            st.triggered.discard(action)
        elif not verdict.admitted:
            st.refused += 1
        return verdict

    def configured_boot_status(self, charger_id: str) -> str:
        charger = self.cfg.charger(charger_id)
        return (charger.boot_status if charger and charger.boot_status else "") or self.cfg.ocpp.boot_status

    async def handle(self, conn_state: ConnectionState, action: str, payload: dict[str, Any]) -> Reply:
        """Dispatch one schema-valid CALL to its handler (the server has asked `admit` first)."""
        if "connectorId" in payload:
            self._check_connector(conn_state.charger_id, action, payload["connectorId"])
        return await self._handlers[action](conn_state, payload)

    def _check_connector(self, charger_id: str, action: str, connector_id: int) -> None:
        charger = self.cfg.charger(charger_id)
        highest = charger.connectors if charger else 1
        # connector 0 is the charge point itself: allowed where OCPP allows it, never for a transaction
        lowest = 1 if action == "StartTransaction" else 0
        if not lowest <= connector_id <= highest:
            raise CallRefused(
                "PropertyConstraintViolation",
                f"connectorId {connector_id} out of range {lowest}..{highest} for {charger_id}",
            )

    # -- connection lifecycle ---------------------------------------------------------------------------------
    async def charger_connected(self, charger_id: str) -> str | None:
        """Records the connection; returns the charger's persisted registration (its last BootNotification
        answer, None if it never booted here) for the registration gate of this connection."""
        now = self.wall()

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT boot_status FROM chargers WHERE id = ?", (charger_id,)).fetchone()
            conn.execute(
                "INSERT INTO chargers (id, first_seen, last_seen, connected) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, connected = 1",
                (charger_id, now, now),
            )
            events.emit(
                conn,
                events.CHARGER_CONNECTION,
                {"charger": charger_id, "online": True},
                charger_id=charger_id,
                now=now,
            )
            return str(row["boot_status"]) if row is not None and row["boot_status"] else None

        stored = await self.store.write(op)
        self.status_bus.publish_presence(charger_id, True)
        return stored

    async def charger_disconnected(self, charger_id: str) -> None:
        now = self.wall()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE chargers SET connected = 0, last_seen = ? WHERE id = ?", (now, charger_id))
            events.emit(
                conn,
                events.CHARGER_CONNECTION,
                {"charger": charger_id, "online": False},
                charger_id=charger_id,
                now=now,
            )

        await self.store.write(op)
        self.status_bus.publish_presence(charger_id, False)

    # -- Core profile -----------------------------------------------------------------------------------------
    async def boot_notification(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        configured = self.configured_boot_status(st.charger_id)
        status = configured
        if configured == "Pending":
            # Pending once per connection, then Accepted once the retry interval has passed: it lets an installer
            # see a new charger arrive before it may start sessions.
            now_m = self.clock()
            if st.pending_since is None:
                st.pending_since = now_m
            elif now_m - st.pending_since >= self.cfg.ocpp.pending_retry_interval * 0.9:
                status = "Accepted"
        interval = (
            self.cfg.ocpp.heartbeat_interval if status == "Accepted" else self.cfg.ocpp.pending_retry_interval
        )
        now = self.wall()
        cid = st.charger_id

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO chargers (id, vendor, model, serial, firmware, boot_status, first_seen, last_boot, "
                "last_seen, connected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET "
                "vendor = excluded.vendor, model = excluded.model, serial = excluded.serial, "
                "firmware = excluded.firmware, boot_status = excluded.boot_status, last_boot = excluded.last_boot, "
                "last_seen = excluded.last_seen, connected = 1",
                (
                    cid,
                    p["chargePointVendor"],
                    p["chargePointModel"],
                    p.get("chargePointSerialNumber"),
                    p.get("firmwareVersion"),
                    status,
                    now,
                    now,
                    now,
                ),
            )
            events.emit(
                conn,
                events.CHARGER_BOOT,
                {
                    "charger": cid,
                    "vendor": p["chargePointVendor"],
                    "model": p["chargePointModel"],
                    "serial": p.get("chargePointSerialNumber"),
                    "firmware": p.get("firmwareVersion"),
                    "status": status,
                },
                charger_id=cid,
                now=now,
            )

        await self.store.write(op)
        # the gate follows the answer only once it is on disk (a failed write answers InternalError instead)
        st.registration = status
        reply = Reply({"status": status, "currentTime": now_iso(), "interval": interval})
        if status == "Accepted":
            reply.after = [self._bind(h, cid) for h in self.hooks.charger_booted]
        return reply

    @staticmethod
    def _bind(fn: Callable[..., Awaitable[None]], *args: Any) -> AfterAction:
        async def run() -> None:
            await fn(*args)

        return run

    async def heartbeat(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        now = self.wall()
        await self.store.write(
            lambda conn: conn.execute("UPDATE chargers SET last_seen = ? WHERE id = ?", (now, st.charger_id))
        )
        return Reply({"currentTime": now_iso()})

    async def status_notification(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        now = self.wall()
        cid = st.charger_id
        connector = int(p["connectorId"])
        status, error_code = p["status"], p["errorCode"]
        info, vendor_error, ts = p.get("info"), p.get("vendorErrorCode"), p.get("timestamp")

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO connector_status (charger_id, connector_id, status, error_code, info, "
                "vendor_error_code, charger_ts, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (charger_id, connector_id) DO UPDATE SET status = excluded.status, "
                "error_code = excluded.error_code, info = excluded.info, "
                "vendor_error_code = excluded.vendor_error_code, charger_ts = excluded.charger_ts, "
                "received_at = excluded.received_at",
                (cid, connector, status, error_code, info, vendor_error, ts, now),
            )
            conn.execute(
                "INSERT INTO status_history (charger_id, connector_id, status, error_code, info, charger_ts, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, connector, status, error_code, info, ts, now),
            )
            if status == "Faulted" or error_code != "NoError":
                events.emit(
                    conn,
                    events.CHARGER_FAULT,
                    {
                        "charger": cid,
                        "connector": connector,
                        "status": status,
                        "error_code": error_code,
                        "info": info,
                        "vendor_error_code": vendor_error,
                    },
                    charger_id=cid,
                    charger_ts=ts,
                    now=now,
                )

        await self.store.write(op)
        self.status_bus.publish_status(ConnectorStatus(cid, connector, status, error_code, info, ts, now))
        return Reply({})

    async def authorize(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        id_tag = p["idTag"]
        decision = await self.authorizer.decide(st.charger_id, id_tag, purpose="authorize")
        await self.authorizer.record_authorize(decision)
        log.info(
            "%s Authorize %s -> %s (%s)", st.charger_id, mask_token(id_tag), decision.status, decision.source
        )
        return Reply({"idTagInfo": decision.id_tag_info()})

    async def start_transaction(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        cid = st.charger_id
        connector, id_tag = int(p["connectorId"]), p["idTag"]
        meter_start, ts = int(p["meterStart"]), p["timestamp"]
        # A charger whose answer was lost resends the very same request: it must get the same transactionId.
        start_key = f"{cid}|{connector}|{id_tag}|{meter_start}|{ts}"
        decided: AuthDecision = await self.authorizer.decide(
            cid, id_tag, purpose="start", connector_id=connector, start_ts=ts
        )
        now = self.wall()

        def op(conn: sqlite3.Connection) -> tuple[int, dict[str, Any], bool]:
            row = conn.execute(
                "SELECT id, auth_status, parent_id_tag FROM transactions WHERE start_key = ?", (start_key,)
            ).fetchone()
            if row is not None:
                info = {"status": row["auth_status"]}
                if row["parent_id_tag"]:
                    info["parentIdTag"] = row["parent_id_tag"]
                return int(row["id"]), info, False
            # decided before this write; a start of the same card stored meanwhile may make it ConcurrentTx
            decision: AuthDecision = self.authorizer.confirm_start(
                conn, decided, connector_id=connector, start_ts=ts
            )
            cur = conn.execute(
                "INSERT INTO transactions (charger_id, connector_id, id_tag, parent_id_tag, auth_status, "
                "auth_method, reservation_id, meter_start, start_ts, started_at, start_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cid,
                    connector,
                    id_tag,
                    decision.parent_id_tag,
                    decision.status,
                    decision.auth_method,
                    p.get("reservationId"),
                    meter_start,
                    ts,
                    now,
                    start_key,
                ),
            )
            tx_id = cur.lastrowid
            assert tx_id is not None
            self.authorizer.record(conn, decision, transaction_id=tx_id)
            if self.session_meters is not None:
                self.session_meters.on_start(conn, tx_id, cid, connector, now)
            started: dict[str, Any] = {
                "tx": tx_id,
                "charger": cid,
                "connector": connector,
                "id_tag": id_tag,
                "meter_start_wh": meter_start,
                "start": ts,
                "auth_status": decision.status,
                "auth_method": decision.auth_method,
            }
            if p.get("reservationId") is not None:
                started["reservation_id"] = p["reservationId"]  # the reservation this start consumed
            events.emit(
                conn,
                events.SESSION_STARTED,
                started,
                charger_id=cid,
                charger_ts=ts,
                now=now,
            )
            return tx_id, decision.id_tag_info(), True

        tx_id, info, created = await self.store.write(op)
        log.info(
            "%s StartTransaction connector %d %s -> tx %d %s%s",
            cid,
            connector,
            mask_token(id_tag),
            tx_id,
            info["status"],
            "" if created else " (resent)",
        )
        reply = Reply({"transactionId": tx_id, "idTagInfo": info})
        if created:
            reply.after = [self._bind(h, cid, connector, tx_id) for h in self.hooks.transaction_started]
        return reply

    @staticmethod
    def _insert_samples(
        conn: sqlite3.Connection,
        cid: str,
        connector: int,
        tx_id: int | None,
        meter_values: list[dict[str, Any]],
        source: str,
        now: float,
    ) -> list[dict[str, Any]]:
        """Insert each sampled value once; returns the meterValue entries that had at least one new sample."""
        fresh: list[dict[str, Any]] = []
        for mv in meter_values:
            ts = mv["timestamp"]
            new_samples = []
            for sv in mv["sampledValue"]:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO meter_samples (charger_id, connector_id, transaction_id, charger_ts, "
                    "measurand, phase, location, context, unit, format, value, source, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        connector,
                        tx_id,
                        ts,
                        sv.get("measurand", "Energy.Active.Import.Register"),
                        sv.get("phase", ""),
                        sv.get("location", ""),
                        sv.get("context", "Sample.Periodic"),
                        sv.get("unit"),
                        sv.get("format"),
                        sv["value"],
                        source,
                        now,
                    ),
                )
                if cur.rowcount:
                    new_samples.append(sv)
            if new_samples:
                fresh.append({"timestamp": ts, "sampledValue": new_samples})
        return fresh

    async def meter_values(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        cid = st.charger_id
        connector = int(p["connectorId"])
        tx_id = p.get("transactionId")
        now = self.wall()
        interval = self.session_update_interval

        def op(conn: sqlite3.Connection) -> None:
            fresh = self._insert_samples(conn, cid, connector, tx_id, p["meterValue"], "meter_values", now)
            for mv in fresh:
                events.emit(
                    conn,
                    events.METER_READING,
                    {
                        "tx": tx_id,
                        "charger": cid,
                        "connector": connector,
                        "ts": mv["timestamp"],
                        "samples": [_compact_sample(sv) for sv in mv["sampledValue"]],
                    },
                    charger_id=cid,
                    charger_ts=mv["timestamp"],
                    droppable=True,
                    now=now,
                )
            if fresh and tx_id is not None and interval > 0:
                _emit_session_updates(conn, cid, int(tx_id), fresh, interval, now)

        await self.store.write(op)
        if self.hooks.current_reported:
            amps = _current_import(p["meterValue"])
            if amps is not None:
                for hook in self.hooks.current_reported:
                    hook(cid, connector, amps)
        return Reply({})

    async def stop_transaction(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        cid = st.charger_id
        tx_id = int(p["transactionId"])
        meter_stop, ts = int(p["meterStop"]), p["timestamp"]
        reason = p.get("reason", "Local")
        stop_tag = p.get("idTag")
        decision: AuthDecision | None = None
        if stop_tag is not None:
            decision = await self.authorizer.decide(cid, stop_tag, purpose="stop", transaction_id=tx_id)
        now = self.wall()

        def op(conn: sqlite3.Connection) -> tuple[str, int | None]:
            row = conn.execute("SELECT * FROM transactions WHERE id = ?", (tx_id,)).fetchone()
            if row is None or row["charger_id"] != cid:
                log.warning("%s StopTransaction for unknown transaction %d: recorded as orphan", cid, tx_id)
                events.emit(
                    conn,
                    events.CHARGER_FAULT,
                    {
                        "charger": cid,
                        "connector": None,
                        "status": "OrphanStop",
                        "error_code": "OtherError",
                        "info": f"StopTransaction for unknown transactionId {tx_id}",
                        "meter_stop_wh": meter_stop,
                        "stop": ts,
                        "reason": reason,
                    },
                    charger_id=cid,
                    charger_ts=ts,
                    now=now,
                )
                return "orphan", None
            connector = int(row["connector_id"])
            if row["state"] == "stopped":
                return "resent", connector
            energy = meter_stop - int(row["meter_start"])
            conn.execute(
                "UPDATE transactions SET meter_stop = ?, stop_ts = ?, stopped_at = ?, stop_reason = ?, "
                "stop_id_tag = ?, energy_wh = ?, state = 'stopped' WHERE id = ?",
                (meter_stop, ts, now, reason, stop_tag, energy, tx_id),
            )
            # no session.update after session.stopped: a stopped transaction gets none (state check), and its
            # progress row goes
            conn.execute("DELETE FROM session_progress WHERE transaction_id = ?", (tx_id,))
            self._insert_samples(
                conn, cid, connector, tx_id, p.get("transactionData", []), "stop_tx_data", now
            )
            if decision is not None:
                self.authorizer.record(conn, decision, transaction_id=tx_id)
            stopped: dict[str, Any] = {
                "tx": tx_id,
                "charger": cid,
                "connector": connector,
                "meter_stop_wh": meter_stop,
                "energy_wh": energy,
                "stop": ts,
                "reason": reason,
                "id_tag": stop_tag,
            }
            if self.session_meters is not None:
                # A charger without a meter of its own reports 0 -> 0: then the connector meter bills.
                charger_wh = None if meter_stop == 0 and int(row["meter_start"]) == 0 else energy
                metered = self.session_meters.on_stop(conn, tx_id, cid, connector, charger_wh, now)
                if metered is not None:
                    stopped.update(metered)
            events.emit(
                conn,
                events.SESSION_STOPPED,
                stopped,
                charger_id=cid,
                charger_ts=ts,
                now=now,
            )
            events.emit(
                conn,
                events.SESSION_RECORD,
                self.session_record(conn, tx_id),
                charger_id=cid,
                charger_ts=ts,
                now=now,
            )
            return "stopped", connector

        outcome, connector = await self.store.write(op)
        log.info("%s StopTransaction tx %d (%s) -> %s", cid, tx_id, reason, outcome)
        reply = Reply({"idTagInfo": decision.id_tag_info()} if decision is not None else {})
        if outcome == "stopped" and connector is not None:
            reply.after = [self._bind(h, cid, connector, tx_id) for h in self.hooks.transaction_stopped]
        return reply

    async def data_transfer(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        log.info("%s DataTransfer from unknown vendor %r", st.charger_id, p["vendorId"][:64])
        return Reply({"status": "UnknownVendorId"})

    async def diagnostics_status(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        await self._note_charger_status(st.charger_id, "diagnostics_status", p["status"])
        return Reply({})

    async def firmware_status(self, st: ConnectionState, p: dict[str, Any]) -> Reply:
        await self._note_charger_status(st.charger_id, "firmware_status", p["status"])
        return Reply({})

    async def _note_charger_status(self, cid: str, column: str, status: str) -> None:
        assert column in ("diagnostics_status", "firmware_status")
        await self.store.write(
            lambda conn: conn.execute(f"UPDATE chargers SET {column} = ? WHERE id = ?", (status, cid))
        )


def session_update_interval(cfg: SiteConfig) -> float:
    """`[uplink] session_update_interval_s` (0 disables session.update). Read through the registered section so
    the CSMS does not import the uplink package."""
    value = getattr(
        cfg.sections.get("uplink"), "session_update_interval_s", DEFAULT_SESSION_UPDATE_INTERVAL_S
    )
    return float(value) if isinstance(value, int | float) else DEFAULT_SESSION_UPDATE_INTERVAL_S


def charger_seconds(ts: str) -> float | None:
    """Epoch seconds of a charger timestamp (ISO 8601; no zone = UTC, as only differences matter); None if it
    does not parse."""
    try:
        dt = datetime.fromisoformat(ts)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        value = dt.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return value if math.isfinite(value) else None


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def register_wh(sampled: list[dict[str, Any]]) -> float | None:
    """The Energy.Active.Import.Register total of one meterValue in Wh: no phase, at the outlet, not signed
    data, unit Wh or kWh (the same selection as the session record's charging periods); None if it has none."""
    for sv in sampled:
        if (
            sv.get("measurand", ENERGY_REGISTER) != ENERGY_REGISTER
            or sv.get("phase")
            or sv.get("location", "Outlet") != "Outlet"
            or sv.get("format") == "SignedData"
        ):
            continue
        value = _number(sv.get("value"))
        unit = sv.get("unit", "Wh")
        if value is None or unit not in ("Wh", "kWh"):
            continue
        wh = value * 1000.0 if unit == "kWh" else value
        if abs(wh) <= MAX_REGISTER_WH:
            return wh
    return None


def power_w(sampled: list[dict[str, Any]]) -> float | None:
    """Power.Active.Import of one meterValue in W: the total, else the sum of the per-phase values; None if
    absent."""
    total: float | None = None
    phases: dict[str, float] = {}
    for sv in sampled:
        if sv.get("measurand") != "Power.Active.Import" or sv.get("location", "Outlet") != "Outlet":
            continue
        value = _number(sv.get("value"))
        unit = sv.get("unit", "W")
        if value is None or unit not in ("W", "kW"):
            continue
        w = value * 1000.0 if unit == "kW" else value
        phase = sv.get("phase", "")
        if not phase:
            total = w
        elif phase in ("L1", "L2", "L3", "L1-N", "L2-N", "L3-N"):
            phases[phase[:2]] = w
    if total is None and phases:
        total = sum(phases.values())
    return None if total is None or abs(total) > MAX_REGISTER_WH else round(total, 1)


def _emit_session_updates(
    conn: sqlite3.Connection,
    cid: str,
    tx_id: int,
    fresh: list[dict[str, Any]],
    interval: float,
    now: float,
) -> None:
    """session.update for the newly stored readings of a running transaction, inside the caller's transaction.

    A reading with an energy register reports when it is at least `interval` seconds of charger time after the
    last report of this transaction (the first such reading always reports). Charger time, not arrival time: a
    queue delivered in a burst after an outage reports its history at the same resolution, ending at most one
    interval behind its newest reading. energy_wh = register - meterStart, never negative and never lower than
    the last report (a meter glitch or swap does not make a session shrink). Resent readings are not fresh, so
    they report nothing; a stopped or unknown transaction, or one of another charger, reports nothing."""
    tx = conn.execute(
        "SELECT charger_id, connector_id, meter_start, state FROM transactions WHERE id = ?", (tx_id,)
    ).fetchone()
    if tx is None or tx["charger_id"] != cid or tx["state"] != "active":
        return
    last = conn.execute(
        "SELECT charger_s, energy_wh FROM session_progress WHERE transaction_id = ?", (tx_id,)
    ).fetchone()
    last_s: float | None = float(last["charger_s"]) if last is not None else None
    last_wh = int(last["energy_wh"]) if last is not None else 0
    reported = False
    for mv in fresh:
        reg = register_wh(mv["sampledValue"])
        if reg is None:
            continue
        ts = mv["timestamp"]
        at = charger_seconds(ts)
        if at is None:
            at = now  # only without schema validation: fall back to the gateway's clock
        if last_s is not None and at - last_s < interval:
            continue
        energy = max(last_wh, round(reg) - int(tx["meter_start"]), 0)
        events.emit(
            conn,
            events.SESSION_UPDATE,
            {
                "tx": tx_id,
                "charger": cid,
                "connector": int(tx["connector_id"]),
                "energy_wh": energy,
                "power_w": power_w(mv["sampledValue"]),
                "ts": ts,
            },
            charger_id=cid,
            charger_ts=ts,
            now=now,
        )
        last_s, last_wh, reported = at, energy, True
    if reported:
        conn.execute(
            "INSERT INTO session_progress (transaction_id, charger_s, energy_wh) VALUES (?, ?, ?) "
            "ON CONFLICT (transaction_id) DO UPDATE SET charger_s = excluded.charger_s, "
            "energy_wh = excluded.energy_wh",
            (tx_id, last_s, last_wh),
        )


def _current_import(meter_values: list[dict[str, Any]]) -> float | tuple[float, float, float] | None:
    """Current.Import (A) of the newest sampled values that carry it: (L1, L2, L3) when all three phases are there,
    else the highest value (a charger that sends no phase, or not all three, says too little to place it)."""
    for mv in reversed(meter_values):
        per_phase: dict[str, float] = {}
        best: float | None = None
        for sv in mv["sampledValue"]:
            if sv.get("measurand") == "Current.Import" and sv.get("unit", "A") == "A":
                value = _number(sv["value"])  # None for text, "NaN", "inf"
                if value is None:
                    continue
                best = value if best is None else max(best, value)
                phase = sv.get("phase")
                if phase in ("L1", "L2", "L3"):
                    per_phase[phase] = max(value, per_phase.get(phase, value))
        if len(per_phase) == 3:
            return (per_phase["L1"], per_phase["L2"], per_phase["L3"])
        if best is not None:
            return best
    return None


def _compact_sample(sv: dict[str, Any]) -> list[Any]:
    """[measurand, phase, location, unit, value, context, format] with defaults as empty strings."""
    return [
        sv.get("measurand", "Energy.Active.Import.Register"),
        sv.get("phase", ""),
        sv.get("location", ""),
        sv.get("unit", ""),
        sv["value"],
        sv.get("context", ""),
        sv.get("format", ""),
    ]
