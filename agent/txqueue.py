"""The offline queue of transaction messages (StartTransaction, MeterValues, StopTransaction).

Bounded, delivered strictly in order (the core sends only the head). Transactions started offline get a
provisional negative local id; when the gateway answers the StartTransaction, `resolve()` maps the local id to the
real transactionId, and every later MeterValues / StopTransaction of that transaction is sent with the real id
(`payload_for_send`).

Persistence (agent/journal.py): every change is applied through `_apply(record)` and the same record is appended
to the journal `txqueue.jnl` (~40-350 bytes); the whole queue is written as the `txqueue` snapshot only when the
journal would pass JOURNAL_MAX_BYTES, and at boot when the journal holds records. Loading replays the records
on the snapshot with the same `_apply`, so a replayed queue is exactly the queue that was persisted.

Records ("s" = the message sequence counter at that moment, persisted with every change as the old blob did):
  {"o": "p", "a": action, "p": payload, "t": tx, "s": seq}   push (evicts the oldest MeterValues when full)
  {"o": "x", "s": seq}                                       pop the head
  {"o": "a", "n": attempts, "s": seq}                        the head's failed-attempt count
  {"o": "r", "l": local id, "r": transactionId, "s": seq}    resolve a provisional id
  {"o": "f", "k": [str(local id), ...], "s": seq}            forget id mappings
  {"o": "d", "t": tx, "s": seq}                              drop every message of a transaction
  {"o": "l", "n": next_local, "s": seq}                      a provisional id was taken
"""

from agent.compat import const, is_int
from agent.journal import Journal

try:
    from typing import Any
except ImportError:
    pass

STORAGE_NAME = "txqueue"

# Queue capacity. When full, the oldest MeterValues is dropped; StartTransaction/StopTransaction never are.
QUEUE_CAP = const(100)
# Room always kept for StopTransactions: a new transaction may start only while the queue holds fewer
# than QUEUE_CAP - START_RESERVE entries, so the stop of every started transaction always fits.
START_RESERVE = const(8)
# Journal size that triggers a compaction. Boot reads the journal whole into RAM and replays it, so it is kept to
# about the size of a full-queue snapshot (QUEUE_CAP MeterValues entries, ~40 kB): boot needs at most about twice
# the RAM the single blob needed. A compaction writes one snapshot per 32 kB of records, so even with the queue
# full a change costs at most ~2.3x its record in flash writes (the old scheme: the whole queue, every change).
JOURNAL_MAX_BYTES = const(32768)

START = "StartTransaction"
METER = "MeterValues"
STOP = "StopTransaction"


class TxQueue:
    def __init__(self, hal: "Any", journal: bool = True):
        self._hal = hal
        self.entries = []  # type: list[dict[str, Any]]
        self.id_map = {}  # type: dict[str, int]  # str(local id) -> real transactionId (JSON keys are str)
        self.next_local = -1
        self.seq = 0  # message order shared with non-transaction messages (persisted so it keeps growing)
        self.dropped_meter_values = 0
        self.discarded = 0  # messages given up after TransactionMessageAttempts or orphaned
        self.replay_stopped = None  # type: str | None  # journal.TORN/CORRUPT/...: why the last replay stopped
        self._journal = Journal(hal, STORAGE_NAME, JOURNAL_MAX_BYTES, journal)
        self._load()

    # -- persistence ------------------------------------------------------------------------------------
    def _load(self) -> None:
        snap, records = self._journal.load()
        self._journal.replay(records, self._apply, snap is not None and self._load_snapshot(snap))
        self.replay_stopped = self._journal.stopped
        self.dropped_meter_values = 0  # counters of this run only (never persisted)
        self.discarded = 0
        for e in self.entries:
            e["not_before"] = 0  # monotonic clocks restart with the process
        if self._journal.dirty_at_boot:
            self.save()  # fold the records in now: later appends must not land behind a damaged tail

    def _load_snapshot(self, blob: "dict[str, Any]") -> bool:
        try:
            entries = blob["q"]
            id_map = blob["map"]
            next_local = int(blob["next_local"])
            seq = int(blob["seq"])
        except (ValueError, KeyError, TypeError):
            return False  # corrupt: start empty rather than fail to boot
        if not isinstance(entries, list) or not isinstance(id_map, dict):
            return False
        self.entries = [e for e in entries if isinstance(e, dict) and "action" in e and "payload" in e]
        self.id_map = id_map
        self.next_local = next_local
        self.seq = seq
        for e in self.entries:
            e["attempts"] = e.get("attempts", 0)
        return True

    def snapshot(self) -> "dict[str, Any]":
        return {"q": self.entries, "map": self.id_map, "next_local": self.next_local, "seq": self.seq}

    def save(self) -> None:
        """Write the whole queue (snapshot) and restart the journal."""
        self._journal.compact(self.snapshot())

    def _persist(self, rec: "dict[str, Any]") -> None:
        if not self._journal.append(rec):
            self.save()  # journal off, not started yet, or full: write the whole queue instead

    def _apply(self, rec: "dict[str, Any]") -> bool:
        """Apply one change (live or replayed). Returns False when a push had to evict a MeterValues."""
        op = rec["o"]
        ok = True
        if op == "p":
            entry = {
                "action": rec["a"],
                "payload": rec["p"],
                "tx": rec["t"],
                "seq": rec["s"],
                "attempts": 0,
                "not_before": 0,
            }
            if len(self.entries) >= QUEUE_CAP:
                ok = False
                # never the head while it may be in flight: its answer would be matched to the next entry
                for i in range(1, len(self.entries)):
                    if self.entries[i]["action"] == METER:
                        self.entries.pop(i)
                        self.dropped_meter_values += 1
                        break
            self.entries.append(entry)
        elif op == "x":
            self.entries.pop(0)
        elif op == "a":
            self.entries[0]["attempts"] = int(rec["n"])
        elif op == "r":
            self.id_map[str(rec["l"])] = int(rec["r"])
        elif op == "f":
            for k in rec["k"]:
                self.id_map.pop(k, None)
        elif op == "d":
            tx = rec["t"]
            self.entries = [e for e in self.entries if e.get("tx") != tx]
        elif op == "l":
            self.next_local = int(rec["n"])
        else:
            raise ValueError("unknown journal record")
        if is_int(rec.get("s")):
            self.seq = int(rec["s"])
        return ok

    def _change(self, rec: "dict[str, Any]") -> bool:
        rec["s"] = self.seq
        ok = self._apply(rec)
        self._persist(rec)
        return ok

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
            for e in self.entries:
                if e.get("tx") == local_id:
                    return
            self._change({"o": "f", "k": [key]})

    def prune(self) -> None:
        """Drop id mappings no queued message refers to (after a restart no transaction is live)."""
        used = {}
        for e in self.entries:
            used[str(e.get("tx"))] = True
        stale = [k for k in self.id_map if k not in used]
        if stale:
            self._change({"o": "f", "k": stale})

    # -- queue ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def can_start(self) -> bool:
        room: int = QUEUE_CAP - START_RESERVE
        return len(self.entries) < room

    def push(self, action: str, payload: "dict[str, Any]", tx: int) -> bool:
        """Append; returns False when a MeterValues had to be dropped (the new one or an older one)."""
        if len(self.entries) >= QUEUE_CAP and action == METER:
            evictable = False
            for i in range(1, len(self.entries)):
                if self.entries[i]["action"] == METER:
                    evictable = True
                    break
            if not evictable:
                self.dropped_meter_values += 1
                return False  # the new one is dropped: nothing changes, nothing to persist
        seq = self.next_seq()
        return self._change({"o": "p", "a": action, "p": payload, "t": tx, "s": seq})

    def head(self) -> "dict[str, Any] | None":
        return self.entries[0] if self.entries else None

    def payload_for_send(self, entry: "dict[str, Any]") -> "dict[str, Any] | None":
        """The head's payload with the real transactionId filled in; None when it cannot be known."""
        payload: dict[str, Any] = entry["payload"]
        if entry["action"] == START:
            return payload
        real = self.real_id(entry["tx"])
        if real is None:
            return None
        out = {}
        for k in payload:
            out[k] = payload[k]
        out["transactionId"] = real
        return out

    def pop_head(self) -> "dict[str, Any]":
        e = self.entries[0]
        self._change({"o": "x"})
        return e

    def note_attempt(self, entry: "dict[str, Any]") -> None:
        """Persist the head's failed-attempt count (the core raised entry["attempts"])."""
        if self.entries and entry is self.entries[0]:
            self._change({"o": "a", "n": entry["attempts"]})

    def drop_transaction(self, tx: int) -> int:
        """Remove every queued message of transaction `tx` (its StartTransaction was given up)."""
        before = len(self.entries)
        self._change({"o": "d", "t": tx})
        n = before - len(self.entries)
        self.discarded += n
        return n
