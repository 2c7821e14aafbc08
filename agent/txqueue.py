"""The offline queue of transaction messages (StartTransaction, MeterValues, StopTransaction).

Bounded, delivered strictly in order (the core sends only the head). Transactions started offline get a
provisional negative local id; when the gateway answers the StartTransaction, `resolve()` maps the local id to the
real transactionId, and every later MeterValues / StopTransaction of that transaction is sent with the real id
(`payload_for_send`).

RAM: the queue keeps an index only, one tuple per message (seq, action, transaction, offset and length of its
record on flash: ~36 bytes under MicroPython, against ~450-750 for the message itself); the payloads stay in
the journal's file (agent/journal.py) and the head's is read back when it is sent (`head()`). A full queue
(QUEUE_CAP messages) costs ~4 kB of heap.

Persistence: every change is one record appended to the current file of `txqueue` (a push carries its payload
as the record's bulk, ~200-450 bytes; the others a few bytes); a compaction (when the appended records would
pass JOURNAL_MAX_BYTES, and at boot after damage or an older layout) writes the header and every queued
message's push record, copied unchanged, to the other file. Loading replays the records through the same
`_apply`, so a replayed queue is exactly the queue that was persisted.

Records ("s" = the message sequence counter at that moment; it only grows):
  {"o": "h", "map": {...}, "next_local": n, "seq": s}                 header
  {"o": "p", "a": action, "t": tx, "s": seq} + bulk payload             push (evicts the oldest MeterValues when
                                                                         full); the older layout: "p": payload
  {"o": "x", "s": seq}                                                   pop the head
  {"o": "a", "n": attempts, "s": seq}                                    the head's failed-attempt count
  {"o": "r", "l": local id, "r": transactionId, "s": seq}                resolve a provisional id
  {"o": "f", "k": [str(local id), ...], "s": seq}                        forget id mappings
  {"o": "d", "t": tx, "s": seq}                                          drop every message of a transaction
  {"o": "l", "n": next_local, "s": seq}                                  a provisional id was taken
"""

from agent.compat import const, is_int
from agent.journal import Journal, bulk_of, dumps_compact

try:
    from typing import Any
except ImportError:
    pass

STORAGE_NAME = "txqueue"

# Default queue capacity (AgentConfig.queue_cap). When full, the oldest MeterValues is dropped;
# StartTransaction/StopTransaction never are.
QUEUE_CAP = const(100)
# Room always kept for StopTransactions: a new transaction may start only while the queue holds fewer
# than its capacity - START_RESERVE entries, so the stop of every started transaction always fits.
START_RESERVE = const(8)
# Records appended after a compaction that trigger the next one. Boot replays them record by record (no RAM
# bound from their size); the flash they cost is amortized: a compaction writes the queued messages once per
# this many bytes of records (~200 pushes), the policy before the journal wrote the whole queue on every change.
JOURNAL_MAX_BYTES = const(49152)

START = "StartTransaction"
METER = "MeterValues"
STOP = "StopTransaction"

# index tuple fields
_SEQ = const(0)
_ACTION = const(1)
_TX = const(2)
_WHERE = const(3)  # offset of the push record in the current file, or the payload itself (not on flash yet)
_LEN = const(4)


def _action(a: "Any") -> str:
    """The module's constant for an action name (one shared string, not one per queued message)."""
    if a == METER:
        return METER
    if a == START:
        return START
    if a == STOP:
        return STOP
    raise ValueError("unknown action")


class TxQueue:
    def __init__(self, hal: "Any", journal: bool = True, cap: int = QUEUE_CAP):
        self._hal = hal
        self.cap = (
            cap if cap > START_RESERVE + 1 else START_RESERVE + 2
        )  # room for a start beside the reserve
        self._idx = []  # type: list[Any]  # (seq, action, tx, offset or payload, length), in order
        self.attempts = 0  # failed attempts of the head (only the head is ever retried)
        self._head = None  # type: dict[str, Any] | None  # the head as the core sees it (payload read back)
        self.id_map = {}  # type: dict[str, int]  # str(local id) -> real transactionId (JSON keys are str)
        self.next_local = -1
        self.seq = 0  # message order shared with non-transaction messages (persisted so it keeps growing)
        self.dropped_meter_values = 0
        self.discarded = 0  # messages given up after TransactionMessageAttempts, orphaned or unreadable
        self.replay_stopped = None  # type: str | None  # journal.TORN/CORRUPT/...: why the last replay stopped
        self.log = None  # type: Any  # optional callable(str), set by the core
        self._journal = Journal(hal, STORAGE_NAME, JOURNAL_MAX_BYTES, journal)
        self._load()

    # -- persistence ------------------------------------------------------------------------------------
    def _load(self) -> None:
        self._journal.load(self._apply, self)
        self.replay_stopped = self._journal.stopped
        self.dropped_meter_values = 0  # counters of this run only (never persisted)
        self.discarded = 0
        if self._journal.dirty_at_boot:
            self.save()  # fold in now: later appends must not land behind a damaged tail

    def save(self) -> None:
        """Compaction: the header and every queued message to the other file, then switch to it. A message whose
        record cannot be read back (flash damage) is dropped and counted in `discarded`."""
        j = self._journal
        j.begin({"map": self.id_map, "next_local": self.next_local, "seq": self.seq})
        new = []
        for e in self._idx:
            where = e[_WHERE]
            if isinstance(where, dict):
                off = j.put({"o": "p", "a": e[_ACTION], "t": e[_TX], "s": e[_SEQ]}, dumps_compact(where))
            else:
                off = j.copy(where, e[_LEN])
                if off < 0:
                    self.discarded += 1
                    self._log("queued " + e[_ACTION] + " unreadable on flash: dropped")
                    continue
            new.append((e[_SEQ], e[_ACTION], e[_TX], off, j.last_len))
        if not new or new[0][_SEQ] != self._idx[0][_SEQ]:
            self.attempts = 0  # no head, or it was dropped: its attempts do not carry over
        if self.attempts:
            j.put({"o": "a", "n": self.attempts})
        j.commit()
        self._idx = new

    def _apply(self, rec: "dict[str, Any]", off: int, length: int) -> bool:
        """Apply one change (live or replayed; off/length: where its record is, -1 when it carries its payload
        inline). Returns False when a push had to evict a MeterValues."""
        op = rec["o"]
        ok = True
        idx = self._idx
        if op == "p":
            if "p" in rec:  # inline: the older layout's record, or a push that is about to be compacted
                where = rec["p"]  # type: Any
                if not isinstance(where, dict):
                    raise ValueError("bad payload")
            else:
                if off < 0:
                    raise ValueError("push without payload")
                where = off
            entry = (int(rec["s"]), _action(rec["a"]), rec["t"], where, length)
            if len(idx) >= self.cap:
                ok = False
                # never the head while it may be in flight: its answer would be matched to the next entry
                for i in range(1, len(idx)):
                    if idx[i][_ACTION] == METER:
                        idx.pop(i)
                        self.dropped_meter_values += 1
                        break
            idx.append(entry)
        elif op == "x":
            idx.pop(0)
            self.attempts = 0
        elif op == "a":
            self.attempts = int(rec["n"])
        elif op == "r":
            self.id_map[str(rec["l"])] = int(rec["r"])
        elif op == "f":
            for k in rec["k"]:
                self.id_map.pop(k, None)
        elif op == "d":
            tx = rec["t"]
            head = idx[0][_SEQ] if idx else None
            self._idx = [e for e in idx if e[_TX] != tx]
            if not self._idx or self._idx[0][_SEQ] != head:
                self.attempts = 0
        elif op == "l":
            self.next_local = int(rec["n"])
        elif op == "h":
            id_map = rec["map"]
            if not isinstance(id_map, dict):
                raise ValueError("bad header")
            self.id_map = id_map
            self.next_local = int(rec["next_local"])
            self.seq = int(rec["seq"])
        else:
            raise ValueError("unknown journal record")
        s = rec.get("s")
        if is_int(s) and int(s) > self.seq:  # type: ignore[arg-type]
            self.seq = int(s)  # type: ignore[arg-type]
        return ok

    def _change(self, rec: "dict[str, Any]", payload: "Any" = None) -> bool:
        rec["s"] = self.seq
        j = self._journal
        off = j.append(rec, None if payload is None else dumps_compact(payload))
        if off >= 0:
            return self._apply(rec, off, j.last_len)
        if payload is not None:
            rec["p"] = payload
        ok = self._apply(rec, -1, 0)
        self.save()  # journal off, not started yet, or full: write the whole queue instead
        return ok

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    # -- ids --------------------------------------------------------------------------------------------
    def new_local_id(self) -> int:
        lid = self.next_local
        self._change({"o": "l", "n": lid - 1})
        return lid

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def resolve(self, local_id: int, real_id: int) -> None:
        self._change({"o": "r", "l": local_id, "r": real_id})

    def real_id(self, tx_id: "Any") -> "int | None":
        """Real transactionId for a local (negative) or real id; None while unknown."""
        if tx_id is None:
            return None
        if tx_id >= 0:
            return int(tx_id)
        return self.id_map.get(str(tx_id))

    def forget(self, local_id: int) -> None:
        """Drop the id mapping once no queued message or live transaction refers to it."""
        key = str(local_id)
        if key in self.id_map:
            for e in self._idx:
                if e[_TX] == local_id:
                    return
            self._change({"o": "f", "k": [key]})

    def prune(self) -> None:
        """Drop id mappings no queued message refers to (after a restart no transaction is live)."""
        used = {}
        for e in self._idx:
            used[str(e[_TX])] = True
        stale = [k for k in self.id_map if k not in used]
        if stale:
            self._change({"o": "f", "k": stale})

    # -- queue ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._idx)

    def can_start(self) -> bool:
        room: int = self.cap - START_RESERVE
        return len(self._idx) < room

    def has_stop(self, tx: int) -> bool:
        """A StopTransaction of transaction `tx` is queued."""
        for e in self._idx:
            if e[_ACTION] == STOP and e[_TX] == tx:
                return True
        return False

    def push(self, action: str, payload: "dict[str, Any]", tx: int) -> bool:
        """Append; returns False when a MeterValues had to be dropped (the new one or an older one)."""
        if len(self._idx) >= self.cap and action == METER:
            evictable = False
            for i in range(1, len(self._idx)):
                if self._idx[i][_ACTION] == METER:
                    evictable = True
                    break
            if not evictable:
                self.dropped_meter_values += 1
                return False  # the new one is dropped: nothing changes, nothing to persist
        seq = self.next_seq()
        ok = self._change({"o": "p", "a": action, "t": tx, "s": seq}, payload)
        if len(self._idx) == 1 and self._idx[0][_SEQ] == seq:
            self._head_view(self._idx[0], payload)  # the new head: no need to read it back from flash
        return ok

    def _payload(self, e: "Any") -> "Any":
        where = e[_WHERE]
        if isinstance(where, dict):
            return where
        rec = self._journal.read(where, e[_LEN])
        if rec is None:
            return None
        try:
            payload = bulk_of(rec)
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    def head(self) -> "dict[str, Any] | None":
        """The head: {"action", "payload", "id_tag", "tx", "seq", "attempts", "not_before"}, its payload read
        back from flash (the same dict until it is popped; see `sent`). A message that cannot be read back is
        dropped."""
        while self._idx:
            e = self._idx[0]
            h = self._head
            if h is not None and h["seq"] == e[_SEQ]:
                return h
            payload = self._payload(e)
            if payload is not None:
                return self._head_view(e, payload)
            self._log("queued " + e[_ACTION] + " unreadable on flash: dropped")
            self.discarded += 1
            self._change({"o": "x"})
        self._head = None
        return None

    def _head_view(self, e: "Any", payload: "dict[str, Any]") -> "dict[str, Any]":
        h = {
            "action": e[_ACTION],
            "payload": payload,  # None once sent (`sent`): read back for a resend
            "id_tag": payload.get("idTag"),  # what the answer's handling needs
            "tx": e[_TX],
            "seq": e[_SEQ],
            "attempts": self.attempts,
            "not_before": 0,  # monotonic: retry backoff is not persisted (clocks restart with the process)
        }
        self._head = h
        return h

    def sent(self, entry: "dict[str, Any]") -> None:
        """The head's CALL is built: its parsed payload need not stay in RAM while the answer is awaited (a
        StopTransaction with its samples is ~10 kB); a resend reads it back from flash."""
        entry["payload"] = None

    @property
    def entries(self) -> "list[dict[str, Any]]":
        """Every queued message as the head's form (diagnostics and tests: reads every payload from flash)."""
        out = []
        for i in range(len(self._idx)):
            e = self._idx[i]
            h = self._head
            if i == 0 and h is not None and h["seq"] == e[_SEQ] and h["payload"] is not None:
                out.append(h)
                continue
            out.append(
                {
                    "action": e[_ACTION],
                    "payload": self._payload(e),
                    "tx": e[_TX],
                    "seq": e[_SEQ],
                    "attempts": self.attempts if i == 0 else 0,
                    "not_before": 0,
                }
            )
        return out

    def payload_for_send(self, entry: "dict[str, Any]") -> "dict[str, Any] | None":
        """The head's payload with the real transactionId filled in; None when it cannot be known (or read)."""
        payload = entry["payload"]  # type: Any
        if payload is None and self._idx and self._idx[0][_SEQ] == entry["seq"]:
            payload = self._payload(self._idx[0])  # sent before: read back
            if payload is None:
                self._log("queued " + entry["action"] + " unreadable on flash: dropped")
        if payload is None:
            return None
        if entry["action"] == START:
            start: dict[str, Any] = payload
            return start
        real = self.real_id(entry["tx"])
        if real is None:
            return None
        out = {}
        for k in payload:
            out[k] = payload[k]
        out["transactionId"] = real
        return out

    def pop_head(self) -> "dict[str, Any] | None":
        e = self._head
        self._change({"o": "x"})
        return e

    def note_attempt(self, entry: "dict[str, Any]") -> None:
        """Persist the head's failed-attempt count (the core raised entry["attempts"])."""
        if self._idx and entry is self._head and entry["seq"] == self._idx[0][_SEQ]:
            self._change({"o": "a", "n": entry["attempts"]})

    def drop_transaction(self, tx: int) -> int:
        """Remove every queued message of transaction `tx` (its StartTransaction was given up)."""
        before = len(self._idx)
        self._change({"o": "d", "t": tx})
        n = before - len(self._idx)
        self.discarded += n
        return n
