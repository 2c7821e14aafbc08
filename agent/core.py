"""The charge-point firmware core: OCPP 1.6J client logic, sans I/O.

The port feeds it inbound frames (`receive`), connection events (`on_connected`/`on_disconnected`) and calls
`tick()` periodically; the core polls the HAL, runs the connector state machines and timers, and leaves the
frames to send in `outgoing()`. Runs unchanged on CPython and MicroPython (common subset only).

Outbound CALLs go one at a time (OCPP-J: no new CALL before the previous one is answered or timed out).
Two sources feed them, merged by sequence number: non-transaction messages (Authorize, Heartbeat,
StatusNotification, ...; dropped while offline) and the persisted transaction-message queue (TxQueue).
"""

import json

from agent import configkeys, connector, ocppj, reservation
from agent.compat import const, is_int, iso_utc, mask_token, parse_iso
from agent.journal import Journal, bulk_of, bulk_view, dumps_compact
from agent.localauth import LocalAuth, clean_id_tag_info, effective_status
from agent.txqueue import METER, QUEUE_CAP, START, STOP, TxQueue

try:
    from typing import Any
except ImportError:
    pass

try:
    import sys

    _MICROPYTHON = sys.implementation.name == "micropython"
except (ImportError, AttributeError):
    _MICROPYTHON = False

try:
    from agent.smartcharging import SmartCharging
except ImportError:  # the core works without the SmartCharging profile (e.g. a flash-constrained build)
    SmartCharging = None  # type: ignore[assignment,misc,unused-ignore]

# An answer to our CALL that has not arrived after 30 s is considered lost (OCPP-J leaves the timeout to the
# implementation; the gateway answers in milliseconds, 30 s covers a congested cellular link).
CALL_TIMEOUT_MS = const(30000)
# BootNotification retry when the gateway gives interval 0 with Pending/Rejected, or did not answer.
BOOT_RETRY_DEFAULT_S = const(30)
# After Reset.conf: wait at least this long so the answer leaves before the reboot...
RESET_GRACE_MS = const(1000)
# ...and at most this long for the StopTransactions to be delivered (they are persisted anyway).
RESET_MAX_WAIT_MS = const(10000)
# A port restarts within moments of hal.reboot() (MicroPython: machine.reset() does not return; the CPython port
# drops the core as soon as the tick that asked returns). A core still being ticked this long after asking did not
# get its reset: the request is repeated (ResetRetries), a soft one finally escalated to hard.
RESET_CONFIRM_MS = const(15000)
# The Central System's currentTime (BootNotification/Heartbeat answers) has whole-second resolution and arrives
# one network transit after it was read: a difference below this is resolution and transit noise, not a wrong
# clock, and following it would make timestamps step back and forth by a second.
CLOCK_MIN_CORRECTION_S = const(2)
# Cap on waiting non-transaction messages (StatusNotification bursts, triggered messages).
MAX_DIRECT = const(32)
# Cap on meter samples kept for StopTransaction.transactionData (first = Transaction.Begin is kept).
MAX_TXN_DATA = const(16)
# Cap on frames waiting in outgoing() (the port drains it every tick).
MAX_OUTGOING = const(64)

# Capacity defaults (AgentConfig), sized for the platform's heap. Under MicroPython (an ESP32 without PSRAM has
# ~110 kB of heap, ~74 kB of it taken by this code as .mpy) an authorization cache entry costs ~75 bytes (200:
# ~15 kB), and a SendLocalList is held whole while it is handled (its text, its parsed form and the validated
# changes: ~360 bytes per entry, 20: ~7 kB). The offline queue (~36 bytes per message: the payloads stay on
# flash) and the local list (on flash) keep their CPython sizes. A smaller SendLocalListMaxLength costs flash:
# the Central System sends more, smaller updates, and each rewrites the list file (docs/agent_ram.md).
DEFAULT_CACHE_CAP = 200 if _MICROPYTHON else 1000
DEFAULT_SEND_LIST_MAX = 20 if _MICROPYTHON else 200
DEFAULT_LIST_MAX = 1000

TX_STORAGE = "transactions"
# Appended transaction records that trigger a compaction mid-session (a stop that leaves no transaction running
# compacts anyway, to a header of a few bytes). A running transaction's state is ~3 kB with MAX_TXN_DATA samples
# of one measurand (~6 kB with three), so a long session rewrites it once per ~16 kB of ~190-byte sample records
# (~1.2x the records' bytes; the old policy wrote the whole record per sample); boot replays them record by record.
TX_JOURNAL_MAX_BYTES = const(16384)
AVAIL_STORAGE = "availability"

# Known 1.6 actions this charge point does not support (answered NotSupported, not NotImplemented).
UNSUPPORTED_ACTIONS = ("GetDiagnostics", "UpdateFirmware")
TRIGGERABLE = (
    "BootNotification",
    "DiagnosticsStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "StatusNotification",
)

# Inbound payload specs: field -> (type, required, enum or max length or None)
_I, _S, _B, _D, _L, _A = "int", "str", "bool", "dict[str, Any]", "list[Any]", "any"
SPECS = {  # type: dict[str, dict[str, tuple[str, bool, Any]]]
    "RemoteStartTransaction": {
        "connectorId": (_I, False, None),
        "idTag": (_S, True, 20),
        "chargingProfile": (_D, False, None),
    },
    "RemoteStopTransaction": {"transactionId": (_I, True, None)},
    "Reset": {"type": (_S, True, ("Hard", "Soft"))},
    "UnlockConnector": {"connectorId": (_I, True, None)},
    "ChangeAvailability": {"connectorId": (_I, True, None), "type": (_S, True, ("Inoperative", "Operative"))},
    "GetConfiguration": {"key": (_L, False, None)},
    "ChangeConfiguration": {"key": (_S, True, 50), "value": (_S, True, 500)},
    "ClearCache": {},
    "TriggerMessage": {"requestedMessage": (_S, True, TRIGGERABLE), "connectorId": (_I, False, None)},
    "DataTransfer": {"vendorId": (_S, True, 255), "messageId": (_S, False, 50), "data": (_A, False, None)},
    "GetLocalListVersion": {},
    "SendLocalList": {
        "listVersion": (_I, True, None),
        "updateType": (_S, True, ("Differential", "Full")),
        "localAuthorizationList": (_L, False, None),
    },
    "SetChargingProfile": {"connectorId": (_I, True, None), "csChargingProfiles": (_D, True, None)},
    "ClearChargingProfile": {
        "id": (_I, False, None),
        "connectorId": (_I, False, None),
        "chargingProfilePurpose": (_S, False, ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")),
        "stackLevel": (_I, False, None),
    },
    "ReserveNow": {
        "connectorId": (_I, True, None),
        "expiryDate": (_S, True, 40),
        "idTag": (_S, True, 20),
        "parentIdTag": (_S, False, 20),
        "reservationId": (_I, True, None),
    },
    "CancelReservation": {"reservationId": (_I, True, None)},
    "GetCompositeSchedule": {
        "connectorId": (_I, True, None),
        "duration": (_I, True, None),
        "chargingRateUnit": (_S, False, ("A", "W")),
    },
}


def check_payload(payload: "dict[str, Any]", spec: "dict[str, Any]") -> "tuple[str, str] | None":
    """(error code, description) when `payload` does not match `spec`, else None. Unknown fields are ignored."""
    for name in spec:
        kind, required, extra = spec[name]
        if name not in payload:
            if required:
                return ocppj.OCCURENCE_CONSTRAINT_VIOLATION, "missing " + name
            continue
        v = payload[name]
        ok = (
            (kind == _I and is_int(v))
            or (kind == _S and isinstance(v, str))
            or (kind == _B and isinstance(v, bool))
            or (kind == _D and isinstance(v, dict))
            or (kind == _L and isinstance(v, list))
            or kind == _A
        )
        if not ok:
            return ocppj.TYPE_CONSTRAINT_VIOLATION, name + " must be " + kind
        if kind == _S and extra is not None:
            if isinstance(extra, tuple):
                if v not in extra:
                    return ocppj.PROPERTY_CONSTRAINT_VIOLATION, name + " has an unknown value"
            elif len(v) > extra:
                return ocppj.PROPERTY_CONSTRAINT_VIOLATION, name + " is too long"
    return None


def _valid_tx_record(tx: "Any") -> bool:
    return (
        isinstance(tx, dict)
        and is_int(tx.get("local"))
        and isinstance(tx.get("id_tag"), str)
        and is_int(tx.get("meter_start"))
    )


def _valid_start_answer(payload: "Any") -> bool:
    return is_int(payload.get("transactionId")) and clean_id_tag_info(payload.get("idTagInfo")) is not None


class TransactionLog:
    """The persisted records of the running transactions: {str(connector id): record} (`records`), and for each
    the transactionData samples (`data(cid)`), in the journal `transactions` (agent/journal.py).

    The record (see ChargePointCore._start_tx) is what a restart after a power cut needs to send a correct
    StopTransaction: its provisional id, idTag, meterStart and the transactionData samples (at most
    MAX_TXN_DATA, Transaction.Begin kept). The samples stay on flash: RAM holds where each one's record is
    (offset, length), and `data()` reads them back when the StopTransaction is built. A sample changes the
    state on every StopTxnSampledData/StopTxnAlignedData sample: one record appended to the current file; a
    compaction rewrites the state to the other file when a stop leaves no transaction running (a header only),
    when the appended records would pass TX_JOURNAL_MAX_BYTES (a long session), and at boot after the recovery
    stopped what it found. Every change goes through `_apply`, live and on replay, so a reload gives exactly the
    persisted records. journal=False: the whole state rewritten on every change (the policy before the journal).
    The older layouts (a snapshot {connector id: record with "data"}, plus the journal of the same records with
    their samples inline) are still read.

    Records ("c" = str(connector id)):
      {"o": "h"}                                 header
      {"o": "b", "c": c, "x": record, "d": 1}    a transaction started (its record without samples; with "d", its
                                                 Transaction.Begin sample is the bulk)
      {"o": "m", "c": c} + bulk sample           a transactionData sample (the oldest after Begin dropped past the
                                                 cap; Transaction.Begin is the first); older layout: "v": sample
      {"o": "u", "c": c, "k": {field: v}}        fields set on the record (the StartTransaction answer: id, invalid)
      {"o": "e", "c": c}                         the transaction stopped (its StopTransaction is in the offline queue)
    """

    def __init__(self, hal: "Any", journal: bool = True):
        self.records = {}  # type: dict[str, Any]
        # key -> where each sample is: (offset, length) of the record whose bulk it is, or the sample itself (not
        # on flash yet, or read from the older layout)
        self.samples = {}  # type: dict[str, list[Any]]
        self.replay_stopped = None  # type: str | None  # journal.TORN/CORRUPT/...: why the last replay stopped
        self.unreadable = 0  # samples that could not be read back from flash (left out of transactionData)
        self._journal = Journal(hal, TX_STORAGE, TX_JOURNAL_MAX_BYTES, journal)

    def load(self) -> None:
        self.records = {}
        self.samples = {}
        self._journal.load(self._apply, self)
        self.replay_stopped = self._journal.stopped

    @property
    def dirty(self) -> bool:
        """The last load found damage or the older layout: fold it in (save) before appending."""
        return self._journal.dirty_at_boot

    def save(self) -> None:
        """Compaction: the whole state to the other file, then switch to it: each transaction's record with its
        first sample, then one record per later sample."""
        j = self._journal
        j.begin({})
        new = {}  # type: dict[str, list[Any]]
        for key in self.records:
            rec = {"o": "b", "c": key, "x": self.records[key]}  # type: dict[str, Any]
            locs = []  # type: list[Any]
            for loc in self.samples.get(key, []):
                if isinstance(loc, dict):
                    bulk = dumps_compact(loc)  # type: Any
                else:
                    r = j.read(loc[0], loc[1])
                    bulk = None if r is None else bulk_view(r)
                    if bulk is None:
                        self.unreadable += 1
                        continue
                if not locs:
                    rec["d"] = 1  # the first sample rides with the record
                locs.append((j.put(rec, bulk), j.last_len))
                rec = {"o": "m", "c": key}
            if not locs:
                j.put(rec)
            new[key] = locs
        j.commit()
        self.samples = new

    def _apply(self, rec: "dict[str, Any]", off: int, length: int) -> None:
        op = rec["o"]
        if op == "h":
            return
        key = rec["c"]
        if not isinstance(key, str):
            raise ValueError("bad transaction record")
        if op == "b":
            tx = rec["x"]
            if not isinstance(tx, dict):
                raise ValueError("bad transaction record")
            data = tx.pop("data", None)  # the older layouts: the samples inside the record
            self.records[key] = tx
            if "v" in rec:  # inline Transaction.Begin sample (about to be compacted)
                data = [rec["v"]]
            elif rec.get("d"):  # the Transaction.Begin sample is this record's bulk
                if off < 0:
                    raise ValueError("sample without data")
                data = [(off, length)]
            self.samples[key] = list(data) if isinstance(data, list) else []
        elif op == "m":
            data = self.samples[key]
            if "v" in rec:  # inline: the older layout, or a sample about to be compacted
                data.append(rec["v"])
            elif off >= 0:
                data.append((off, length))
            else:
                raise ValueError("sample without data")
            if len(data) > MAX_TXN_DATA:
                data.pop(1)  # keep Transaction.Begin
        elif op == "u":
            tx = self.records[key]
            fields = rec["k"]
            for k in fields:
                tx[k] = fields[k]
        elif op == "e":
            del self.records[key]
            self.samples.pop(key, None)
        else:
            raise ValueError("unknown journal record")

    def _change(self, rec: "dict[str, Any]", bulk: "Any" = None) -> None:
        j = self._journal
        off = j.append(rec, None if bulk is None else dumps_compact(bulk))
        if off >= 0:
            self._apply(rec, off, j.last_len)
            return
        if bulk is not None:
            rec["v"] = bulk
        self._apply(rec, -1, 0)
        self.save()  # journal off, not started yet, or full: write the whole state instead

    def begin(self, cid: int, tx: "dict[str, Any]", first_sample: "dict[str, Any] | None") -> None:
        """Persist the new transaction's record (and its Transaction.Begin sample); `tx` itself becomes the live
        record (changed only through here)."""
        rec = {"o": "b", "c": str(cid), "x": tx}  # type: dict[str, Any]
        if first_sample is not None:
            rec["d"] = 1
        self._change(rec, first_sample)

    def sample(self, cid: int, meter_value: "dict[str, Any]") -> None:
        self._change({"o": "m", "c": str(cid)}, meter_value)

    def data(self, cid: int) -> "list[Any]":
        """The transaction's persisted samples, read back from flash (a damaged one is left out)."""
        out = []
        for loc in self.samples.get(str(cid), []):
            if isinstance(loc, dict):
                out.append(loc)
                continue
            rec = self._journal.read(loc[0], loc[1])
            v = None
            if rec is not None:
                try:
                    v = bulk_of(rec)
                except ValueError:
                    v = None
            if isinstance(v, dict):
                out.append(v)
            else:
                self.unreadable += 1
        return out

    def update(self, cid: int, fields: "dict[str, Any]") -> None:
        self._change({"o": "u", "c": str(cid), "k": fields})

    def end(self, cid: int) -> None:
        key = str(cid)
        if key not in self.records:
            return
        if len(self.records) == 1:
            del self.records[key]
            self.samples.pop(key, None)
            self.save()  # nothing left running: a header only, and the journal restarts empty
        else:
            self._change({"o": "e", "c": key})


class AgentConfig:
    def __init__(
        self,
        charge_point_id,
        connectors=1,
        vendor="chargegate",
        model="agent-sim",
        serial="",
        firmware="0.1.0",
        max_current_a=32,
        voltage_v=230,
        phases=3,
        storage_journal=True,
        queue_cap=None,
        cache_cap=None,
        list_max=None,
        send_list_max=None,
    ):
        # type: (str, int, str, str, str, str, int, int, int, bool, int | None, int | None, int | None, int | None) -> None
        self.charge_point_id = charge_point_id
        self.connectors = connectors
        self.vendor = vendor
        self.model = model
        self.serial = serial
        self.firmware = firmware
        self.max_current_a = max_current_a  # per phase, the connector's rating
        self.voltage_v = voltage_v
        self.phases = phases
        # Journal the offline queue, the authorization cache and the running transactions' records
        # (agent/journal.py); False = rewrite their whole blob on every change (the pre-journal policy: ports
        # whose storage cannot append, the flash benchmark).
        self.storage_journal = storage_journal
        # Capacities (None: the platform's default, see DEFAULT_*): RAM is what bounds them on a device.
        # queue_cap: offline queue (messages); cache_cap: authorization cache (entries); list_max: the local
        # list (LocalAuthListMaxLength); send_list_max: entries per SendLocalList (SendLocalListMaxLength).
        self.queue_cap = QUEUE_CAP if queue_cap is None else queue_cap
        self.cache_cap = DEFAULT_CACHE_CAP if cache_cap is None else cache_cap
        self.list_max = DEFAULT_LIST_MAX if list_max is None else list_max
        self.send_list_max = DEFAULT_SEND_LIST_MAX if send_list_max is None else send_list_max


class _Connector:
    def __init__(self, cid: int):
        self.cid = cid
        self.status = None  # type: str | None  # set in ChargePointCore.__init__, recomputed every tick
        self.notified = None  # type: str | None  # last status sent in a StatusNotification
        self.error_code = "NoError"
        self.pilot = "A"
        self.operative = True
        self.tx = None  # type: dict[str, Any] | None  # persisted record of the running transaction
        self.waiting = None  # type: dict[str, Any] | None  # {"id_tag", "deadline"}: authorized, waiting for the cable
        self.authorizing = None  # type: str | None  # idTag with an Authorize in flight for this connector
        self.remote_profile = None  # type: dict[str, Any] | None  # TxProfile from RemoteStartTransaction
        self.reservation = None  # type: list[Any] | None  # agent/reservation.py: [id, idTag, parent, expiry]
        self.relay = None  # type: bool | None
        self.limit = None  # type: float | None
        self.last_sample_ms = 0


def _default_id_gen(seed: int) -> "Any":
    state = [0]

    def gen():  # type: () -> str
        state[0] += 1
        return str(seed) + "-" + str(state[0])

    return gen


class ChargePointCore:
    def __init__(self, config: AgentConfig, hal: "Any", id_gen: "Any" = None):
        self.config = config
        self.hal = hal
        self.registration_status = None  # type: str | None
        # None, or True/False (hard/soft) once the core asked the HAL to reboot: the port then replaces the core
        self.reboot_requested = None  # type: bool | None
        self.log = None  # type: Any  # optional callable(str) set by the port
        self._id_gen = id_gen if id_gen is not None else _default_id_gen(hal.ticks_ms() % 1000000)
        self._out = []  # type: list[str]
        self._connected = False
        self._online = False  # connected and BootNotification accepted on this connection
        self._boot_due = None  # type: int | None
        self._inflight = None  # type: dict[str, Any] | None
        self._direct = []  # type: list[dict[str, Any]]
        self._last_call_ms = hal.ticks_ms()
        self._reset = None  # type: dict[str, Any] | None
        # Central System time minus hal.wall_time(), from BootNotification/Heartbeat answers (not persisted: a
        # charger without RTC gets it again with the next BootNotification after a restart)
        self._clock_offset = 0.0
        self.clock_synced = False  # True once a currentTime was received (and applied when it differed)
        self._next_aligned = None  # type: float | None
        self._cp_operative = True
        # An id authorized on a multi-connector charger before any EV was plugged: the first connector that
        # gets an EV takes it ({"id_tag", "deadline"}); `_floating_authorizing`: its Authorize is in flight.
        self._floating = None  # type: dict[str, Any] | None
        self._floating_authorizing = None  # type: str | None
        self._floating_profile = None  # type: dict[str, Any] | None
        self.cfg = configkeys.Configuration(
            hal,
            config.connectors,
            {
                "LocalAuthListMaxLength": getattr(config, "list_max", DEFAULT_LIST_MAX),
                "SendLocalListMaxLength": getattr(config, "send_list_max", DEFAULT_SEND_LIST_MAX),
            },
        )
        journal = getattr(config, "storage_journal", True)
        self.queue = TxQueue(hal, journal, getattr(config, "queue_cap", QUEUE_CAP))
        self.queue.log = self._log
        self.auth = LocalAuth(hal, getattr(config, "cache_cap", DEFAULT_CACHE_CAP), journal)
        self.auth.entries.log = self._log
        self.transactions = TransactionLog(hal, journal=journal)
        self.smart = SmartCharging(hal, config) if SmartCharging is not None else None
        self.connectors = [_Connector(i + 1) for i in range(config.connectors)]
        self._load_availability()
        held = reservation.decode(self.hal.storage_read(reservation.STORAGE_NAME), config.connectors)
        for c in self.connectors:
            c.reservation = held.get(str(c.cid))
        for c in self.connectors:
            # a first answer for status() before the first tick (which computes the real one and notifies)
            c.status = connector.AVAILABLE if c.operative and self._cp_operative else connector.UNAVAILABLE
        self._recover_transactions()
        self.queue.prune()

    # ==================================================================================================
    # public API (see /tmp/agent_api.md)
    # ==================================================================================================
    def on_connected(self) -> None:
        self._connected = True
        self._online = False
        self._boot_due = self.hal.ticks_ms()
        self._pump()

    def on_disconnected(self) -> None:
        self._connected = False
        self._online = False
        self._boot_due = None
        inflight = self._inflight
        self._inflight = None
        if inflight is not None and inflight["source"] == "direct":
            self._call_failed(inflight)
        direct = self._direct
        self._direct = []
        for entry in direct:
            self._call_failed(entry)

    def receive(self, text: "Any") -> None:
        try:
            frame = ocppj.decode(text)
        except ocppj.FrameError as e:
            self._log("bad frame: " + e.description)
            if e.unique_id is not None and e.is_call:
                self._emit(ocppj.encode_error(e.unique_id, e.code, e.description))
            return
        if frame.kind == ocppj.CALL:
            self._on_call(frame)
        else:
            self._on_answer(frame)
        self._pump()

    def tick(self) -> None:
        now = self.hal.ticks_ms()
        card = self.hal.read_card()
        if card is not None:
            self._on_card(card, now)
        for c in self.connectors:
            self._poll_connector(c, now)
        self._timers(now)
        self._pump()

    def outgoing(self) -> "list[str]":
        out = self._out
        self._out = []
        return out

    def status(self, connector_id: int) -> "str | None":
        if connector_id == 0:
            return connector.AVAILABLE if self._cp_operative else connector.UNAVAILABLE
        return self.connectors[connector_id - 1].status

    def transaction_id(self, connector_id: int) -> "int | None":
        tx = self.connectors[connector_id - 1].tx
        if tx is None:
            return None
        real = self.queue.real_id(tx["local"])
        return real if real is not None else tx["local"]

    # ==================================================================================================
    # persistence
    # ==================================================================================================
    def _load_availability(self) -> None:
        raw = self.hal.storage_read(AVAIL_STORAGE)
        if not raw:
            return
        try:
            blob = json.loads(raw)
            self._cp_operative = bool(blob.get("0", True))
            for c in self.connectors:
                c.operative = bool(blob.get(str(c.cid), True))
        except (ValueError, AttributeError):
            pass

    def _save_availability(self) -> None:
        blob = {"0": self._cp_operative}
        for c in self.connectors:
            blob[str(c.cid)] = c.operative
        self.hal.storage_write(AVAIL_STORAGE, json.dumps(blob).encode())

    def _save_reservations(self) -> None:
        held = {}  # type: dict[str, Any]
        for c in self.connectors:
            if c.reservation is not None:
                held[str(c.cid)] = c.reservation
        self.hal.storage_write(reservation.STORAGE_NAME, reservation.encode(held))

    def _end_reservation(self, c: _Connector, why: str) -> None:
        res = c.reservation
        if res is None:
            return
        c.reservation = None
        self._save_reservations()
        self._log("reservation " + str(res[reservation.ID]) + " on " + str(c.cid) + " " + why)

    def _recover_transactions(self) -> None:
        """A transaction found in storage was interrupted by a power loss (Reset stops them before rebooting):
        stop it now with reason PowerLoss so the gateway gets a complete record."""
        log = self.transactions
        log.load()
        if log.replay_stopped is not None:
            self._log("transaction journal: replay stopped (" + log.replay_stopped + ")")
        found = log.records
        for c in self.connectors:
            tx = found.get(str(c.cid))  # type: Any
            if _valid_tx_record(tx):
                if self._stop_queued(tx["local"]):
                    # the power went after its StopTransaction was queued, before the record was removed
                    self._log("transaction " + str(tx["local"]) + " was already stopped")
                    if self.smart is not None:
                        self.smart.transaction_ended(c.cid, tx["local"])
                    continue
                c.tx = tx
                self._stop_tx(c, "PowerLoss", None)
            elif tx is not None:
                self._log("unusable transaction record on connector " + str(c.cid) + " dropped")
        if log.records or log.dirty:
            log.records = {}  # unusable records, connectors this charger no longer has
            log.samples = {}
            log.save()

    def _stop_queued(self, local: int) -> bool:
        return self.queue.has_stop(local)

    # ==================================================================================================
    # outbound CALLs
    # ==================================================================================================
    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    # ==================================================================================================
    # clock
    # ==================================================================================================
    def wall_time(self) -> float:
        """UNIX seconds on the Central System's clock (as far as known): every OCPP timestamp comes from here."""
        return self._wall()

    def _wall(self) -> float:
        return float(self.hal.wall_time()) + self._clock_offset

    def _sync_clock(self, current_time: "Any") -> None:
        """Follow the Central System's clock (currentTime of a BootNotification or Heartbeat answer).

        Timestamps already taken (queued messages, the running transactions' start) are left as they are: they
        were the charger's best knowledge when the event happened, and OCPP 1.6 has no way to flag them."""
        t = parse_iso(current_time)
        if t is None:
            self._log("unusable currentTime ignored")
            return
        self.clock_synced = True
        diff = t - self._wall()
        if -CLOCK_MIN_CORRECTION_S < diff < CLOCK_MIN_CORRECTION_S:
            return
        set_rtc = getattr(
            self.hal, "set_wall_time", None
        )  # optional (a HAL not derived from hal.Hal may lack it)
        if set_rtc is not None:
            set_rtc(t)
        self._clock_offset = t - self.hal.wall_time()
        self._next_aligned = None  # clock-aligned sampling restarts on the new timeline
        self._log("clock corrected by " + str(int(diff)) + " s")

    def _emit(self, frame: str) -> None:
        if len(self._out) >= MAX_OUTGOING:
            self._out.pop(0)
            self._log("outgoing overflow: oldest frame dropped")
        self._out.append(frame)

    def _send_direct(self, action: str, payload: "dict[str, Any]", ctx: "Any" = None) -> None:
        """Queue a non-transaction CALL (sent when online, in sequence with the transaction queue)."""
        entry = {
            "action": action,
            "payload": payload,
            "ctx": ctx,
            "seq": self.queue.next_seq(),
            "source": "direct",
        }
        if action != "BootNotification" and not self._online:
            self._call_failed(entry)
            return
        if len(self._direct) >= MAX_DIRECT:
            # StatusNotifications are re-sent whole after every boot; the oldest waiting message goes first
            self._call_failed(self._direct.pop(0))
        self._direct.append(entry)

    def _pump(self) -> None:
        """Send the next CALL when nothing is in flight."""
        if not self._connected or self._inflight is not None:
            return
        now = self.hal.ticks_ms()
        if not self._online:
            if self._boot_due is not None and now >= self._boot_due:
                self._boot_due = None
                self._start_call("BootNotification", self._boot_payload(), "direct", None, now)
            return
        head = self.queue.head()
        payload = None
        while head is not None:
            payload = self.queue.payload_for_send(head)
            if payload is not None:
                break
            # its StartTransaction was given up: the gateway cannot place this message (or it is unreadable)
            self.queue.pop_head()
            self.queue.discarded += 1
            head = self.queue.head()
        direct = self._direct[0] if self._direct else None
        use_queue = head is not None and now >= head["not_before"]
        if use_queue and direct is not None and head is not None and direct["seq"] < head["seq"]:
            use_queue = False
        if use_queue and head is not None:
            self._start_call(head["action"], payload or {}, "queue", head, now)
            self.queue.sent(head)  # the frame is built: the parsed payload is read back only for a resend
        elif direct is not None:
            self._direct.pop(0)
            self._start_call(direct["action"], direct["payload"], "direct", direct.get("ctx"), now)

    def _start_call(self, action: str, payload: "dict[str, Any]", source: str, ctx: "Any", now: int) -> None:
        uid = self._id_gen()
        self._inflight = {"uid": uid, "action": action, "source": source, "ctx": ctx, "sent": now}
        self._last_call_ms = now
        self._emit(ocppj.encode_call(uid, action, payload))

    def _on_answer(self, frame: "Any") -> None:
        inflight = self._inflight
        if inflight is None or frame.unique_id != inflight["uid"]:
            self._log("answer to an unknown message id ignored")
            return
        self._inflight = None
        now = self.hal.ticks_ms()
        if frame.kind == ocppj.CALLERROR:
            self._log("CALLERROR " + str(frame.error_code) + " for " + inflight["action"])
            if inflight["source"] == "queue":
                self._queue_failed(inflight["ctx"], now)
            else:
                self._call_failed(inflight)
            return
        handler = getattr(self, "_conf_" + inflight["action"], None)
        if inflight["source"] == "queue":
            entry = inflight["ctx"]  # type: dict[str, Any]
            if entry is not self.queue.head():
                return
            if inflight["action"] == START and not _valid_start_answer(frame.payload):
                # without a usable transactionId the transaction cannot be placed: count it as a failed attempt
                self._log("bad StartTransaction answer")
                self._queue_failed(entry, now)
                return
            self.queue.pop_head()
            try:
                if handler is not None:
                    handler(frame.payload, entry)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                self._log("bad " + inflight["action"] + " answer: " + repr(e))
            return
        try:
            if handler is not None:
                handler(frame.payload, inflight.get("ctx"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # a malformed answer counts as no answer (Boot retried later, Authorize decided offline)
            self._log("bad " + inflight["action"] + " answer: " + repr(e))
            self._call_failed(inflight)

    def _queue_failed(self, entry: "dict[str, Any]", now: int) -> None:
        """A transaction message was answered with CALLERROR: retry per TransactionMessageAttempts/RetryInterval."""
        if entry is not self.queue.head():
            return
        entry["attempts"] += 1
        if entry["attempts"] >= self.cfg.get("TransactionMessageAttempts"):
            self.queue.pop_head()
            self.queue.discarded += 1
            self._log("giving up " + entry["action"] + " after " + str(entry["attempts"]) + " attempts")
            if entry["action"] == START:
                self.queue.drop_transaction(entry["tx"])
            return
        entry["not_before"] = now + self.cfg.get("TransactionMessageRetryInterval") * 1000 * entry["attempts"]
        self.queue.note_attempt(entry)

    def _call_failed(self, entry: "dict[str, Any]") -> None:
        """A non-transaction CALL could not be delivered (offline, CALLERROR, timeout)."""
        action = entry["action"]
        ctx = entry.get("ctx")
        if action == "BootNotification" and self._connected and not self._online:
            self._boot_due = self.hal.ticks_ms() + BOOT_RETRY_DEFAULT_S * 1000
        elif action == "Authorize" and ctx is not None:
            self._authorize_offline(ctx["cid"], ctx["id_tag"])

    def _boot_payload(self) -> "dict[str, Any]":
        p = {"chargePointVendor": self.config.vendor[:20], "chargePointModel": self.config.model[:20]}
        if self.config.serial:
            p["chargePointSerialNumber"] = self.config.serial[:25]
        if self.config.firmware:
            p["firmwareVersion"] = self.config.firmware[:50]
        return p

    # -- answers to our CALLs ---------------------------------------------------------------------------
    def _conf_BootNotification(self, payload: "dict[str, Any]", ctx: "Any") -> None:
        status = payload["status"]
        interval = payload["interval"]
        if status not in ("Accepted", "Pending", "Rejected") or not is_int(interval) or interval < 0:
            raise ValueError("bad BootNotification.conf")
        self._sync_clock(payload.get("currentTime"))
        self.registration_status = status
        if status == "Accepted":
            if interval > 0 and interval != self.cfg.get("HeartbeatInterval"):
                self.cfg.set("HeartbeatInterval", interval)
            was_online = self._online
            self._online = True
            self._last_call_ms = self.hal.ticks_ms()
            if not was_online:
                for c in self.connectors:
                    c.notified = None  # the gateway learns every status again after a boot
                self._notify_status(0)
        else:
            self._online = False
            wait_s = interval if interval > 0 else BOOT_RETRY_DEFAULT_S
            self._boot_due = self.hal.ticks_ms() + wait_s * 1000

    def _conf_Heartbeat(self, payload: "dict[str, Any]", ctx: "Any") -> None:
        self._sync_clock(payload.get("currentTime"))

    def _conf_Authorize(self, payload: "dict[str, Any]", ctx: "Any") -> None:
        info = clean_id_tag_info(payload.get("idTagInfo"))
        if info is None:
            raise ValueError("bad idTagInfo")
        c = self._clear_authorizing(ctx["cid"])
        self.auth.remember(ctx["id_tag"], info, self.cfg.get("AuthorizationCacheEnabled"))
        if effective_status(info, self._wall()) == "Accepted":
            self._authorized(c, ctx["id_tag"], info.get("parentIdTag"))
        else:
            self._log("id " + mask_token(ctx["id_tag"]) + " not accepted: " + info["status"])

    def _conf_StartTransaction(self, payload: "dict[str, Any]", entry: "dict[str, Any]") -> None:
        local = entry["tx"]
        real = payload["transactionId"]
        if not is_int(real):
            raise ValueError("transactionId must be an integer")
        self.queue.resolve(local, real)
        info = clean_id_tag_info(payload.get("idTagInfo"))
        id_tag = entry["id_tag"]
        if info is not None:
            self.auth.remember(id_tag, info, self.cfg.get("AuthorizationCacheEnabled"))
        for c in self.connectors:
            if c.tx is not None and c.tx["local"] == local:
                fields = {"id": real}  # type: dict[str, Any]
                if info is not None and info["status"] != "Accepted":
                    if self.cfg.get("StopTransactionOnInvalidId"):
                        self._stop_tx(c, "DeAuthorized", None)
                        return
                    fields["invalid"] = True  # keep the transaction, withhold energy (SuspendedEVSE)
                self.transactions.update(c.cid, fields)
        if not self._tx_alive(local):
            self.queue.forget(local)

    def _conf_StopTransaction(self, payload: "dict[str, Any]", entry: "dict[str, Any]") -> None:
        id_tag = entry.get("id_tag")
        info = clean_id_tag_info(payload.get("idTagInfo"))
        if id_tag is not None and info is not None:
            self.auth.remember(id_tag, info, self.cfg.get("AuthorizationCacheEnabled"))
        if entry["tx"] < 0 and not self._tx_alive(entry["tx"]):
            self.queue.forget(entry["tx"])

    def _tx_alive(self, local: int) -> bool:
        for c in self.connectors:
            if c.tx is not None and c.tx["local"] == local:
                return True
        return False

    # ==================================================================================================
    # inbound CALLs
    # ==================================================================================================
    def _on_call(self, frame: "Any") -> None:
        action = frame.action
        uid = frame.unique_id
        spec = SPECS.get(action)
        if spec is None:
            if action in UNSUPPORTED_ACTIONS:
                self._emit(ocppj.encode_error(uid, ocppj.NOT_SUPPORTED, action + " is not supported"))
            else:
                self._emit(ocppj.encode_error(uid, ocppj.NOT_IMPLEMENTED, "unknown action"))
            return
        problem = check_payload(frame.payload, spec)
        if problem is not None:
            self._emit(ocppj.encode_error(uid, problem[0], problem[1]))
            return
        handler = getattr(self, "_h_" + action)
        try:
            result = handler(frame.payload)
        except ocppj.FrameError as e:
            self._emit(ocppj.encode_error(uid, e.code, e.description))
            return
        except Exception as e:  # a bug must not kill the charger: answer InternalError
            self._log("internal error in " + action + ": " + repr(e))
            self._emit(ocppj.encode_error(uid, ocppj.INTERNAL_ERROR, "internal error"))
            return
        self._emit(ocppj.encode_result(uid, result[0]))
        if len(result) > 1 and result[1] is not None:
            result[1]()  # follow-up action that must come after the answer (e.g. a triggered message)

    def _h_RemoteStartTransaction(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        id_tag = p["idTag"]
        cid = p.get("connectorId")
        if cid is not None:
            if cid < 1 or cid > len(self.connectors):
                return ({"status": "Rejected"},)
            c = self.connectors[cid - 1]  # type: _Connector | None
            if c is not None and not self._can_start_on(c, id_tag):
                c = None
            if c is None:
                return ({"status": "Rejected"},)
        else:
            c = self._reserved_for(id_tag)
            ok = c is not None and self._can_start_on(c, id_tag)
            if not ok:
                ok, c = self._target_for_new_id(id_tag)
            if not ok:
                return ({"status": "Rejected"},)
        if not self._cp_operative or not self.queue.can_start():
            return ({"status": "Rejected"},)
        profile = p.get("chargingProfile")
        if profile is not None:
            if self.smart is None or not self.smart.valid_remote_profile(profile):
                return ({"status": "Rejected"},)
            if c is None:
                self._floating_profile = profile  # goes with the id to the connector that gets the EV
            else:
                c.remote_profile = profile
        if self.cfg.get("AuthorizeRemoteTxRequests"):
            self._authorize(c, id_tag)
        else:
            self._authorized(c, id_tag)
        return ({"status": "Accepted"},)

    def _h_RemoteStopTransaction(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        for c in self.connectors:
            if c.tx is not None and self.queue.real_id(c.tx["local"]) == p["transactionId"]:
                self._stop_tx(c, "Remote", None)
                return ({"status": "Accepted"},)
        return ({"status": "Rejected"},)

    def _h_Reset(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        hard = p["type"] == "Hard"
        reason = "HardReset" if hard else "SoftReset"
        self._floating = None
        for c in self.connectors:
            c.waiting = None
            if c.tx is not None:
                self._stop_tx(c, reason, None)
        # "asked": when hal.reboot() was last called (None: not yet); "tries": reboot requests of this kind so far
        self._reset = {"hard": hard, "at": self.hal.ticks_ms(), "asked": None, "tries": 0}
        return ({"status": "Accepted"},)

    def _h_UnlockConnector(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        cid = p["connectorId"]
        if cid < 1 or cid > len(self.connectors):
            return ({"status": "NotSupported"},)
        c = self.connectors[cid - 1]
        if c.tx is not None:
            self._stop_tx(c, "UnlockCommand", None)
        ok = self.hal.lock_connector(cid, False)
        return ({"status": "Unlocked" if ok else "UnlockFailed"},)

    def _h_ChangeAvailability(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        cid = p["connectorId"]
        operative = p["type"] == "Operative"
        if cid < 0 or cid > len(self.connectors):
            return ({"status": "Rejected"},)
        targets = self.connectors if cid == 0 else [self.connectors[cid - 1]]
        if cid == 0:
            self._cp_operative = operative
            if not operative:
                self._floating = None
        scheduled = False
        for c in targets:
            c.operative = operative
            if not operative:
                c.waiting = None
                if c.tx is not None:
                    scheduled = True  # applied by the state machine once the transaction ends
        self._save_availability()
        if cid == 0:
            self._notify_status(0)
        return ({"status": "Scheduled" if scheduled else "Accepted"},)

    def _h_GetConfiguration(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        keys = p.get("key")
        if keys:
            keys = keys[: self.cfg.get("GetConfigurationMaxKeys")]
        known, unknown = self.cfg.describe(keys)
        out = {"configurationKey": known}  # type: dict[str, Any]
        if unknown:
            out["unknownKey"] = unknown
        return (out,)

    def _h_ChangeConfiguration(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        key = p["key"]
        status = self.cfg.change(key, p["value"])
        if status == configkeys.ACCEPTED and key == "ClockAlignedDataInterval":
            self._next_aligned = None
        return ({"status": status},)

    def _h_ClearCache(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        self.auth.clear_cache()
        return ({"status": "Accepted"},)

    def _h_DataTransfer(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        return ({"status": "UnknownVendorId"},)

    def _h_TriggerMessage(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        what = p["requestedMessage"]
        cid = p.get("connectorId")
        if cid is not None and (cid < 0 or cid > len(self.connectors)):
            return ({"status": "Rejected"},)
        if what != "BootNotification" and not self._online:
            return ({"status": "Rejected"},)

        def follow_up():  # type: () -> None
            if what == "BootNotification":
                if self._online:
                    self._send_direct("BootNotification", self._boot_payload())
                elif self._connected:
                    self._boot_due = self.hal.ticks_ms()
            elif what == "Heartbeat":
                self._send_direct("Heartbeat", {})
            elif what == "DiagnosticsStatusNotification":
                self._send_direct("DiagnosticsStatusNotification", {"status": "Idle"})
            elif what == "FirmwareStatusNotification":
                self._send_direct("FirmwareStatusNotification", {"status": "Idle"})
            elif what == "StatusNotification":
                if cid is None:
                    for i in range(len(self.connectors) + 1):
                        self._notify_status(i, True)
                else:
                    self._notify_status(cid, True)
            elif what == "MeterValues":
                for c in self.connectors:
                    if cid is None or cid in (0, c.cid):
                        self._send_triggered_meter_values(c)

        return ({"status": "Accepted"}, follow_up)

    def _h_GetLocalListVersion(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        return ({"listVersion": self.auth.version(self.cfg.get("LocalAuthListEnabled"))},)

    def _h_SendLocalList(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        if p["listVersion"] < 0:
            raise ocppj.FrameError(ocppj.PROPERTY_CONSTRAINT_VIOLATION, "listVersion must not be negative")
        status = self.auth.apply_update(
            p,
            self.cfg.get("LocalAuthListEnabled"),
            self.cfg.get("SendLocalListMaxLength"),
            self.cfg.get("LocalAuthListMaxLength"),
        )
        return ({"status": status},)

    def _h_ReserveNow(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        cid = p["connectorId"]
        rid = p["reservationId"]
        expiry = parse_iso(p["expiryDate"])
        n = len(self.connectors)
        c = self.connectors[cid - 1] if 1 <= cid <= n else None
        status = reservation.reserve_status(
            cid,
            n,
            self.cfg.get("ReserveConnectorZeroSupported"),
            None if c is None else c.status,
            c is not None
            and (c.tx is not None or c.waiting is not None or c.authorizing is not None or not c.operative),
            None if c is None or c.reservation is None else c.reservation[reservation.ID],
            rid,
            expiry,
            self._wall(),
        )
        if status == reservation.ACCEPTED and c is not None and expiry is not None:
            for other in self.connectors:  # the same reservationId elsewhere: replaced by this one
                if (
                    other is not c
                    and other.reservation is not None
                    and other.reservation[reservation.ID] == rid
                ):
                    other.reservation = None
            c.reservation = reservation.make(rid, p["idTag"], p.get("parentIdTag"), expiry)
            self._save_reservations()
            self._log("reservation " + str(rid) + " on " + str(cid) + " for " + mask_token(p["idTag"]))
        return ({"status": status},)

    def _h_CancelReservation(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        for c in self.connectors:
            if c.reservation is not None and c.reservation[reservation.ID] == p["reservationId"]:
                self._end_reservation(c, "cancelled")
                return ({"status": "Accepted"},)
        return ({"status": "Rejected"},)

    def _h_SetChargingProfile(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        if self.smart is None:
            return ({"status": "NotSupported"},)
        cid = p["connectorId"]
        if cid < 0 or cid > len(self.connectors):
            return ({"status": "Rejected"},)
        tx = self.connectors[cid - 1].tx if cid > 0 else None
        status = self.smart.set_profile(cid, p["csChargingProfiles"], tx, self._wall())
        return ({"status": status},)

    def _h_ClearChargingProfile(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        if self.smart is None:
            return ({"status": "Unknown"},)
        return ({"status": self.smart.clear(p)},)

    def _h_GetCompositeSchedule(self, p: "dict[str, Any]") -> "tuple[Any, ...]":
        cid = p["connectorId"]
        if self.smart is None or cid < 0 or cid > len(self.connectors) or p["duration"] < 0:
            return ({"status": "Rejected"},)
        tx = self.connectors[cid - 1].tx if cid > 0 else None
        sched = self.smart.composite(
            cid,
            p["duration"],
            p.get("chargingRateUnit"),
            self._wall(),
            tx,
            float(self.config.max_current_a),
        )
        return (
            {
                "status": "Accepted",
                "connectorId": cid,
                "scheduleStart": sched["startSchedule"],
                "chargingSchedule": sched,
            },
        )

    # ==================================================================================================
    # authorization
    # ==================================================================================================
    def _can_start_on(self, c: _Connector, id_tag: "str | None", parent: "str | None" = None) -> bool:
        """May `id_tag` start on `c` now? A reserved connector takes only its reservation's id (or group:
        `parent` from the Authorize answer, else the local list/cache)."""
        if not (
            self._reset is None  # no new transaction between Reset.conf and the reboot
            and c.tx is None
            and c.operative
            and self._cp_operative
            and c.status not in (connector.FAULTED, connector.UNAVAILABLE)
            and c.authorizing is None
        ):
            return False
        res = c.reservation
        if res is None:
            return True
        if parent is None and id_tag is not None and res[reservation.PARENT] is not None:
            parent = self._group_of(id_tag)
        return reservation.admits(res, id_tag, parent)

    def _reserved_for(self, id_tag: str) -> "_Connector | None":
        """The connector reserved for `id_tag` (by idTag, or by its group known locally), if any."""
        group = None  # type: str | None
        for c in self.connectors:
            res = c.reservation
            if res is None:
                continue
            if res[reservation.TAG] == id_tag:
                return c
            if res[reservation.PARENT] is not None:
                if group is None:
                    group = self._group_of(id_tag) or ""
                if group == res[reservation.PARENT]:
                    return c
        return None

    def _free_connector(self, id_tag: str) -> "_Connector | None":
        best = None
        for c in self.connectors:
            if not self._can_start_on(c, id_tag) or c.waiting is not None:
                continue
            if c.pilot in connector.PLUGGED:
                return c  # a plugged-in EV waiting for an id comes first
            if best is None:
                best = c
        return best

    def _on_card(self, id_tag: "Any", now: int) -> None:
        if not isinstance(id_tag, str) or not id_tag or len(id_tag) > 20:
            return
        for c in self.connectors:
            if c.tx is not None and c.tx["id_tag"] == id_tag:
                self._stop_tx(c, "Local", id_tag)
                return
        group = self._group_of(id_tag)
        if group is not None:
            # §3.x: a card of the same group (parentIdTag) may stop the transaction, when known locally
            for c in self.connectors:
                if c.tx is not None and self._group_of(c.tx["id_tag"]) == group:
                    self._stop_tx(c, "Local", id_tag)
                    return
        for c in self.connectors:
            if c.waiting is not None and c.waiting["id_tag"] == id_tag:
                c.waiting = None  # second tap before plugging in cancels
                return
            if c.authorizing == id_tag:
                return  # an Authorize for this card is already under way
        if self._floating is not None and self._floating["id_tag"] == id_tag:
            self._floating = None
            return
        if self._floating_authorizing == id_tag:
            return
        mine = self._reserved_for(id_tag)
        if mine is not None and mine.waiting is None and self._can_start_on(mine, id_tag):
            self._authorize(mine, id_tag)  # the reserved card goes to its connector
            return
        ok, target = self._target_for_new_id(id_tag)
        if not ok:
            for c in self.connectors:
                res = c.reservation
                if res is not None and res[reservation.PARENT] is not None and c.waiting is None:
                    if self._can_start_on(c, res[reservation.TAG]):
                        self._authorize(
                            c, id_tag
                        )  # its group (parentIdTag) may come with the Authorize answer
                        return
            self._log("card " + mask_token(id_tag) + " ignored: no free connector")
            return
        self._authorize(target, id_tag)

    def _target_for_new_id(self, id_tag: str) -> "tuple[bool, _Connector | None]":
        """(False, None): no connector can start; (True, c): connector c; (True, None): several free
        connectors and no EV plugged in yet, the first one plugged takes the id."""
        free = self._free_connector(id_tag)
        if free is None:
            return False, None
        if free.pilot in connector.PLUGGED:
            return True, free
        n = 0
        for c in self.connectors:
            if self._can_start_on(c, id_tag) and c.waiting is None:
                n += 1
        return True, (free if n == 1 else None)

    def _group_of(self, id_tag: str) -> "str | None":
        """parentIdTag of an id known as Accepted in the local list or cache, else None."""
        info = self.auth.lookup(
            id_tag, self.cfg.get("LocalAuthListEnabled"), self.cfg.get("AuthorizationCacheEnabled")
        )
        if info is None or effective_status(info, self._wall()) != "Accepted":
            return None
        return info.get("parentIdTag")

    def _authorize(self, c: "_Connector | None", id_tag: str) -> None:
        cid = c.cid if c is not None else 0
        if not self._online:
            self._authorize_offline(cid, id_tag)
            return
        if self.cfg.get("LocalPreAuthorize"):
            info = self.auth.lookup(
                id_tag, self.cfg.get("LocalAuthListEnabled"), self.cfg.get("AuthorizationCacheEnabled")
            )
            if info is not None and effective_status(info, self._wall()) == "Accepted":
                self._authorized(c, id_tag)
                return
        if c is not None:
            c.authorizing = id_tag
        else:
            self._floating_authorizing = id_tag
        self._send_direct("Authorize", {"idTag": id_tag}, {"cid": cid, "id_tag": id_tag})

    def _clear_authorizing(self, cid: int) -> "_Connector | None":
        if cid == 0:
            self._floating_authorizing = None
            return None
        c = self.connectors[cid - 1]
        c.authorizing = None
        return c

    def _authorize_offline(self, cid: int, id_tag: str) -> None:
        c = self._clear_authorizing(cid)
        info = self.auth.lookup(
            id_tag, self.cfg.get("LocalAuthListEnabled"), self.cfg.get("AuthorizationCacheEnabled")
        )
        if info is not None:
            ok = self.cfg.get("LocalAuthorizeOffline") and effective_status(info, self._wall()) == "Accepted"
        else:
            ok = self.cfg.get("AllowOfflineTxForUnknownId")
        if ok:
            self._authorized(c, id_tag)
        else:
            self._log("id " + mask_token(id_tag) + " not authorized offline")

    def _authorized(self, c: "_Connector | None", id_tag: str, parent: "str | None" = None) -> None:
        waiting = {
            "id_tag": id_tag,
            "deadline": self.hal.ticks_ms() + self.cfg.get("ConnectionTimeOut") * 1000,
        }  # type: dict[str, Any]
        if parent is not None:
            waiting["parent"] = parent
        if c is None:
            self._floating = waiting
            return
        if not self._can_start_on(c, id_tag, parent):
            if c.reservation is not None:
                self._log("id " + mask_token(id_tag) + " refused: connector " + str(c.cid) + " is reserved")
            return
        c.waiting = waiting
        if c.pilot in connector.PLUGGED:
            self._start_tx(c, self.hal.ticks_ms())

    # ==================================================================================================
    # transactions
    # ==================================================================================================
    def _start_tx(self, c: _Connector, now: int) -> None:
        waiting = c.waiting
        c.waiting = None
        if waiting is None:
            return
        if not self.queue.can_start():
            self._log("transaction refused: offline queue full")
            return
        local = self.queue.new_local_id()
        wall = self._wall()
        meter = int(self.hal.meter_wh(c.cid))
        ts = iso_utc(wall)
        tx = {
            "local": local,
            "id_tag": waiting["id_tag"],
            "meter_start": meter,
            "start": ts,
            "start_wall": int(wall),
        }  # type: dict[str, Any]
        begin = None
        if self.cfg.get("StopTxnSampledData"):
            begin = self._meter_value(c, self.cfg.get("StopTxnSampledData"), "Transaction.Begin", ts)
        c.tx = tx
        c.last_sample_ms = now
        self.transactions.begin(c.cid, tx, begin)
        self.hal.lock_connector(c.cid, True)
        if c.remote_profile is not None and self.smart is not None:
            self.smart.bind_remote_profile(c.cid, c.remote_profile, local, wall)
        c.remote_profile = None
        payload = {"connectorId": c.cid, "idTag": waiting["id_tag"], "meterStart": meter, "timestamp": ts}  # type: dict[str, Any]
        res = c.reservation
        if res is not None:
            # only an admitted id gets here (_can_start_on): the transaction consumes the reservation
            payload["reservationId"] = res[reservation.ID]
            self._end_reservation(c, "used")
        self.queue.push(START, payload, local)
        self._log(
            "transaction " + str(local) + " started on " + str(c.cid) + " by " + mask_token(waiting["id_tag"])
        )

    def _stop_tx(self, c: _Connector, reason: str, id_tag: "str | None") -> None:
        tx = c.tx
        if tx is None:
            return
        # Open the contactor first, then read the register: energy that flows between the reading and the relay
        # opening would otherwise be delivered but never billed.
        self._set_relay(c, False)
        ts = iso_utc(self._wall())
        meter = int(self.hal.meter_wh(c.cid))
        if meter < tx["meter_start"]:
            meter = tx["meter_start"]  # a meter swap/reset must not produce negative energy
        payload = {"transactionId": tx["local"], "meterStop": meter, "timestamp": ts, "reason": reason}  # type: dict[str, Any]
        if id_tag is not None:
            payload["idTag"] = id_tag
        measurands = self.cfg.get("StopTxnSampledData")
        if measurands:
            data = self.transactions.data(c.cid)  # the persisted samples, read back from flash
            data.append(self._meter_value(c, measurands, "Transaction.End", ts))
            payload["transactionData"] = data
        c.tx = None
        # The StopTransaction is persisted (queued) before the record goes: a power cut between the two leaves
        # both, and the restart finds the queued stop and does not stop the transaction a second time
        # (_recover_transactions). The other order would lose the StopTransaction in that window.
        self.queue.push(STOP, payload, tx["local"])
        self.transactions.end(c.cid)
        if self.smart is not None:
            self.smart.transaction_ended(c.cid, tx["local"])
        if reason != "EVDisconnected" or self.cfg.get("UnlockConnectorOnEVSideDisconnect"):
            self.hal.lock_connector(c.cid, False)
        self._log("transaction " + str(tx["local"]) + " stopped: " + reason)

    def _meter_value(self, c: _Connector, measurands: "list[Any]", context: str, ts: str) -> "dict[str, Any]":
        sampled = []
        for m in measurands:
            sv = {"context": context, "measurand": m, "location": "Outlet"}
            if m == "Energy.Active.Import.Register":
                sv["value"] = str(int(self.hal.meter_wh(c.cid)))
                sv["unit"] = "Wh"
            elif m == "Power.Active.Import":
                w = float(self.hal.meter_power_w(c.cid))
                sv["value"] = f"{w:.1f}"
                sv["unit"] = "W"
            elif m == "Current.Offered":
                amps = c.limit if c.limit is not None else 0
                sv["value"] = f"{float(amps):.1f}"
                sv["unit"] = "A"
            else:
                continue
            sampled.append(sv)
        return {"timestamp": ts, "sampledValue": sampled}

    def _sample(
        self, c: _Connector, context: str, measurands: "list[Any]", txn_measurands: "list[Any]"
    ) -> None:
        tx = c.tx
        ts = iso_utc(self._wall())
        if measurands:
            mv = self._meter_value(c, measurands, context, ts)
            if tx is not None:
                payload = {"connectorId": c.cid, "transactionId": tx["local"], "meterValue": [mv]}
                self.queue.push(METER, payload, tx["local"])
            elif self._online:
                self._send_direct("MeterValues", {"connectorId": c.cid, "meterValue": [mv]})
        if tx is not None and txn_measurands:
            # persisted with the transaction's samples (the oldest after Transaction.Begin dropped past MAX_TXN_DATA)
            self.transactions.sample(c.cid, self._meter_value(c, txn_measurands, context, ts))

    def _send_triggered_meter_values(self, c: _Connector) -> None:
        mv = self._meter_value(c, self.cfg.get("MeterValuesSampledData"), "Trigger", iso_utc(self._wall()))
        payload = {"connectorId": c.cid, "meterValue": [mv]}  # type: dict[str, Any]
        if c.tx is not None:
            real = self.queue.real_id(c.tx["local"])
            if real is not None:
                payload["transactionId"] = real
        self._send_direct("MeterValues", payload)

    # ==================================================================================================
    # connectors, status, timers
    # ==================================================================================================
    def _set_relay(self, c: _Connector, closed: bool) -> None:
        if c.relay != closed:
            c.relay = closed
            self.hal.set_relay(c.cid, closed)

    def _limit_amps(self, c: _Connector) -> float:
        limit = float(self.config.max_current_a)
        if self.smart is not None:
            sc = self.smart.limit_amps(c.cid, self._wall(), c.tx)
            if sc is not None and sc < limit:
                limit = sc
        return limit

    def _poll_connector(self, c: _Connector, now: int) -> None:
        pilot = self.hal.pilot_state(c.cid)
        fault = self.hal.fault_code(c.cid)
        c.pilot = pilot
        if c.tx is not None and pilot == "A" and self.cfg.get("StopTransactionOnEVSideDisconnect"):
            self._stop_tx(c, "EVDisconnected", None)
        floating = self._floating
        if floating is not None and c.waiting is None and pilot in connector.PLUGGED and fault is None:
            if self._can_start_on(c, floating["id_tag"], floating.get("parent")):
                c.waiting = floating
                c.remote_profile = self._floating_profile
                self._floating = None
                self._floating_profile = None
        if c.waiting is not None:
            if pilot in connector.PLUGGED and fault is None and pilot not in connector.PILOT_FAULT:
                self._start_tx(c, now)
            elif now >= c.waiting["deadline"]:
                self._log("connection timeout on connector " + str(c.cid))
                c.waiting = None
                c.remote_profile = None
        limit = self._limit_amps(c)
        if c.limit != limit:
            c.limit = limit
            self.hal.set_current_limit(c.cid, limit)
        res = c.reservation
        if res is not None and reservation.expired(res, self._wall()):
            self._end_reservation(c, "expired")
        invalid = c.tx is not None and c.tx.get("invalid", False)
        inputs = connector.ConnectorInputs(
            pilot=pilot,
            fault=fault,
            operative=c.operative and self._cp_operative,
            tx_active=c.tx is not None,
            authorized_waiting=c.waiting is not None or c.authorizing is not None,
            energy_offered=limit > 0 and not invalid,
            reserved=c.reservation is not None,
        )
        new = connector.next_status(c.status or connector.AVAILABLE, inputs)
        c.error_code = (
            fault
            if fault is not None
            else ("EVCommunicationError" if pilot in connector.PILOT_FAULT else "NoError")
        )
        self._set_relay(c, new == connector.CHARGING)
        if new != c.status:
            c.status = new
        if c.status != c.notified:
            self._notify_status(c.cid)
        # periodic sampling during a transaction
        if c.tx is not None:
            interval = self.cfg.get("MeterValueSampleInterval")
            if interval > 0 and now - c.last_sample_ms >= interval * 1000:
                c.last_sample_ms = now
                self._sample(
                    c,
                    "Sample.Periodic",
                    self.cfg.get("MeterValuesSampledData"),
                    self.cfg.get("StopTxnSampledData"),
                )

    def _notify_status(self, cid: int, force: bool = False) -> None:
        if not self._online:
            return
        if cid == 0:
            status = self.status(0)
            err = "NoError"
        else:
            c = self.connectors[cid - 1]
            if c.status is None or (c.status == c.notified and not force):
                return
            c.notified = c.status
            status = c.status
            err = c.error_code
        self._send_direct(
            "StatusNotification",
            {
                "connectorId": cid,
                "errorCode": err,
                "status": status,
                "timestamp": iso_utc(self._wall()),
            },
        )

    def _timers(self, now: int) -> None:
        if self._floating is not None and now >= self._floating["deadline"]:
            self._log("connection timeout: no EV plugged in")
            self._floating = None
            self._floating_profile = None
        inflight = self._inflight
        if inflight is not None and now - inflight["sent"] >= CALL_TIMEOUT_MS:
            self._inflight = None
            self._log(inflight["action"] + " answer timed out")
            if inflight["source"] == "queue":
                entry = inflight["ctx"]
                entry["not_before"] = now + self.cfg.get("TransactionMessageRetryInterval") * 1000
            else:
                self._call_failed(inflight)
        hb = self.cfg.get("HeartbeatInterval")
        if self._online and hb > 0 and now - self._last_call_ms >= hb * 1000:
            self._last_call_ms = now
            self._send_direct("Heartbeat", {})
        aligned = self.cfg.get("ClockAlignedDataInterval")
        if aligned > 0:
            wall = self._wall()
            if self._next_aligned is None:
                self._next_aligned = (int(wall) // aligned + 1) * aligned
            elif wall >= self._next_aligned:
                self._next_aligned = (int(wall) // aligned + 1) * aligned
                for c in self.connectors:
                    self._sample(
                        c,
                        "Sample.Clock",
                        self.cfg.get("MeterValuesAlignedData"),
                        self.cfg.get("StopTxnAlignedData"),
                    )
        else:
            self._next_aligned = None
        reset = self._reset
        if reset is None:
            return
        if reset["asked"] is None:
            if now - reset["at"] >= RESET_GRACE_MS:
                delivered = len(self.queue) == 0 or not self._online
                if delivered or now - reset["at"] >= RESET_MAX_WAIT_MS:
                    self._reboot(reset, now)
        elif now - reset["asked"] >= RESET_CONFIRM_MS:
            self._reset_not_done(reset, now)

    def _reboot(self, reset: "dict[str, Any]", now: int) -> None:
        reset["tries"] += 1
        reset["asked"] = now
        self._log(
            "rebooting ("
            + ("hard" if reset["hard"] else "soft")
            + " reset, attempt "
            + str(reset["tries"])
            + ")"
        )
        self.reboot_requested = reset["hard"]
        self.hal.reboot(reset["hard"])

    def _reset_not_done(self, reset: "dict[str, Any]", now: int) -> None:
        """Still running RESET_CONFIRM_MS after hal.reboot(): the reset was unsuccessful. OCPP 1.6 ResetRetries is
        the number of times to retry it; a soft reset that still does not happen becomes a hard one (same
        number of retries); after that the charger gives up and carries on (new transactions allowed again)."""
        kind = "hard" if reset["hard"] else "soft"
        if reset["tries"] <= self.cfg.get("ResetRetries"):
            self._log(kind + " reset did not happen: retrying")
            self._reboot(reset, now)
        elif not reset["hard"]:
            self._log("soft reset did not happen after " + str(reset["tries"]) + " attempts: hard reset")
            reset["hard"] = True
            reset["tries"] = 0
            self._reboot(reset, now)
        else:
            self._log("reset failed after " + str(reset["tries"]) + " hard attempts: giving up")
            self._reset = None
            self.reboot_requested = None
