"""Readers of the storage layout written by firmware before agent/journal.py's pointer + log files (the agent
up to the RAM work): imported only when such blobs are found, so a charger that has migrated never loads this
code (under MicroPython, imported code lives in the heap).

That layout, per store:
- `txqueue`, `authcache`, `transactions`: a JSON snapshot in the blob `name` (with "gen": g once journaled), and
  the journal `name + ".jnl"`: a {"gen": g} header record, then one record per change (compact JSON, the same
  record format and the same ops as today, with payloads, samples and idTagInfo inline).
- `locallist`: one JSON blob {"version": v, "entries": {idTag: idTagInfo}}.
The snapshot is read whole once (what that firmware needed at every boot anyway), its journal record by
record; the owner then writes its state in the current layout at once (the pointer replaces the old snapshot,
the old journal is emptied), so nothing queued is lost across the update.
"""

from agent.compat import is_int
from agent.journal import CORRUPT, NO_BASE, STALE, SUFFIX, scan

try:
    from typing import Any
except ImportError:
    pass


def load(j: "Any", owner: "Any", snap: "Any", apply: "Any") -> None:
    """Journal.load for the older layout: `snap` is the blob `j.name` decoded (a dict), or None when it is absent
    or not JSON; `owner` the store (TxQueue, LocalAuth, TransactionLog) whose state is rebuilt."""
    have = False
    if isinstance(snap, dict):
        try:
            have = _restore(j.name, owner, snap)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            have = False
    if snap is not None and not have:
        j.stopped = NO_BASE  # a snapshot that cannot be used: start from defaults
    gen = snap["gen"] if have and is_int(snap.get("gen")) else 0
    j.gen = gen
    if have or snap is not None:
        j.dirty_at_boot = True
    if not j._legacy:
        return
    j.dirty_at_boot = True
    why = [None]  # type: list[Any]

    def replay(meta: "Any", off: int, length: int) -> None:
        if why[0] is None:
            jgen = meta.get("gen")
            if not is_int(jgen):
                why[0] = CORRUPT  # no header: nothing tells which snapshot these records belong to
            elif not have:
                why[0] = NO_BASE
            elif jgen != gen:
                why[0] = STALE  # power cut between the old snapshot and its journal restart
                if jgen > j.gen:
                    j.gen = jgen
            else:
                why[0] = ""
                return
            raise ValueError(why[0])
        apply(meta, -1, 0)

    _end, stopped = scan(j._hal, j.name + SUFFIX, 0, replay)
    j.stopped = why[0] if why[0] else stopped


def _restore(name: str, owner: "Any", snap: "dict[str, Any]") -> bool:
    if name == "txqueue":
        return _queue(owner, snap)
    if name == "authcache":
        return _cache(owner, snap)
    return _transactions(owner, snap)


def _queue(q: "Any", blob: "dict[str, Any]") -> bool:
    """{"q": [{"action", "payload", "tx", "seq", "attempts", "not_before"}, ...], "map", "next_local", "seq"}"""
    entries = blob["q"]
    id_map = blob["map"]
    next_local = int(blob["next_local"])
    seq = int(blob["seq"])
    if not isinstance(entries, list) or not isinstance(id_map, dict):
        return False
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("payload"), dict) and is_int(e.get("seq")):
            rec = {"o": "p", "a": e.get("action"), "p": e["payload"], "t": e.get("tx"), "s": e["seq"]}
            try:
                q._apply(rec, -1, 0)
            except ValueError:
                continue
            if len(q) == 1:
                q.attempts = int(e.get("attempts", 0))
    q.id_map = id_map
    q.next_local = next_local
    q.seq = seq
    return True


def _cache(a: "Any", blob: "dict[str, Any]") -> bool:
    """{"cache": {idTag: {"info": idTagInfo, "t": n}}, "counter": n}"""
    cache = blob.get("cache")
    if not isinstance(cache, dict) or not is_int(blob.get("counter")):
        return False
    for tag in cache:
        e = cache[tag]
        try:
            a._apply({"o": "c", "k": tag, "i": e["info"], "t": int(e["t"])}, -1, 0)
        except (KeyError, TypeError, ValueError):
            continue
    a._counter = blob["counter"]
    return True


def _transactions(log: "Any", snap: "dict[str, Any]") -> bool:
    """{str(connector id): record with its samples in "data", "gen": n}"""
    for k in snap:
        if k == "gen":
            continue
        if isinstance(snap[k], dict):
            log._apply({"o": "b", "c": k, "x": snap[k]}, -1, 0)
        else:
            log.records[k] = snap[k]  # unusable: the recovery logs and drops it
    return True


def list_entries(old: "dict[str, Any]", clean: "Any", compact: "Any") -> "dict[str, Any]":
    """The older layout's local list {"version", "entries": {idTag: idTagInfo}} as {idTag: compact info}."""
    out = {}  # type: dict[str, Any]
    entries = old["entries"]
    for tag in entries:
        c = clean(entries[tag])
        if isinstance(tag, str) and c is not None:
            out[tag] = compact(c)
    return out
