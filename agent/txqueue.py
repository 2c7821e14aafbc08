"""The offline queue of transaction messages (StartTransaction, MeterValues, StopTransaction).

Persisted in HAL storage after every change, bounded, delivered strictly in order (the core sends only the
head). Transactions started offline get a provisional negative local id; when the gateway answers the
StartTransaction, `resolve()` maps the local id to the real transactionId, and every later MeterValues /
StopTransaction of that transaction is sent with the real id (`payload_for_send`).
"""

import json

from agent.compat import const

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

START = "StartTransaction"
METER = "MeterValues"
STOP = "StopTransaction"


class TxQueue:
    def __init__(self, hal: "Any"):
        self._hal = hal
        self.entries = []  # type: list[dict[str, Any]]
        self.id_map = {}  # type: dict[str, int]  # str(local id) -> real transactionId (JSON keys are str)
        self.next_local = -1
        self.seq = 0  # message order shared with non-transaction messages (persisted so it keeps growing)
        self.dropped_meter_values = 0
        self.discarded = 0  # messages given up after TransactionMessageAttempts or orphaned
        self._load()

    # -- persistence ------------------------------------------------------------------------------------
    def _load(self) -> None:
        raw = self._hal.storage_read(STORAGE_NAME)
        if not raw:
            return
        try:
            blob = json.loads(raw)
            entries = blob["q"]
            id_map = blob["map"]
            next_local = int(blob["next_local"])
            seq = int(blob["seq"])
        except (ValueError, KeyError, TypeError):
            return  # corrupt: start empty rather than fail to boot
        if isinstance(entries, list) and isinstance(id_map, dict):
            self.entries = [e for e in entries if isinstance(e, dict) and "action" in e and "payload" in e]
            self.id_map = id_map
            self.next_local = next_local
            self.seq = seq
            for e in self.entries:
                e["attempts"] = e.get("attempts", 0)
                e["not_before"] = 0  # monotonic clocks restart with the process

    def save(self) -> None:
        blob = {"q": self.entries, "map": self.id_map, "next_local": self.next_local, "seq": self.seq}
        self._hal.storage_write(STORAGE_NAME, json.dumps(blob).encode())

    # -- ids --------------------------------------------------------------------------------------------
    def new_local_id(self) -> int:
        lid = self.next_local
        self.next_local -= 1
        self.save()
        return lid

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def resolve(self, local_id: int, real_id: int) -> None:
        self.id_map[str(local_id)] = real_id
        self.save()

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
            del self.id_map[key]
            self.save()

    def prune(self) -> None:
        """Drop id mappings no queued message refers to (after a restart no transaction is live)."""
        used = {}
        for e in self.entries:
            used[str(e.get("tx"))] = True
        stale = [k for k in self.id_map if k not in used]
        for k in stale:
            del self.id_map[k]
        if stale:
            self.save()

    # -- queue ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def can_start(self) -> bool:
        room: int = QUEUE_CAP - START_RESERVE
        return len(self.entries) < room

    def push(self, action: str, payload: "dict[str, Any]", tx: int) -> bool:
        """Append; returns False when a MeterValues had to be dropped (the new one or an older one)."""
        ok = True
        if len(self.entries) >= QUEUE_CAP:
            ok = False
            for i in range(len(self.entries)):
                # never the head while it may be in flight: its answer would be matched to the next entry
                if self.entries[i]["action"] == METER and i > 0:
                    self.entries.pop(i)
                    self.dropped_meter_values += 1
                    break
            else:
                if action == METER:
                    self.dropped_meter_values += 1
                    return False
        self.entries.append(
            {
                "action": action,
                "payload": payload,
                "tx": tx,
                "seq": self.next_seq(),
                "attempts": 0,
                "not_before": 0,
            }
        )
        self.save()
        return ok

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
        e = self.entries.pop(0)
        self.save()
        return e

    def drop_transaction(self, tx: int) -> int:
        """Remove every queued message of transaction `tx` (its StartTransaction was given up)."""
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.get("tx") != tx]
        n = before - len(self.entries)
        self.discarded += n
        self.save()
        return n
