"""Snapshot + append-only journal for state that changes often (the offline queue, the authorization cache, the
running transactions' records).

Rewriting a whole JSON blob on every change wears flash sectors and costs time (the offline queue is up to
~40 kB). Instead each change appends one small self-checking record to the journal blob (`name + SUFFIX`)
through `hal.storage_append`, and the whole state is written as a snapshot (`name`, through the atomic
`hal.storage_write`) only when the journal would pass its size bound, and at boot when the journal holds
records (or a damaged tail) to fold in.

Record: MAGIC (1 byte) | length of the payload (4 bytes, big-endian) | CRC-32 of length + payload (4 bytes,
big-endian) | payload (compact JSON object). The journal's first record is a header {"gen": g} naming the
snapshot generation it applies to; a snapshot carries "gen" too.

Loading: the snapshot, then the journal's records in order while they are whole and their CRC matches.
- A torn last record (power cut during the append: short, or its CRC does not match) is ignored: the state is
  the one before that record, which is what the owner had persisted before the interrupted change.
- A damaged record with more bytes after it also stops replay there. Records are deltas on the state left by the
  previous ones (a pop removes "the head", a push may evict "the oldest MeterValues"), so skipping one and
  applying the later ones would build a state that never existed; stopping yields the last state that did.
- A journal whose header generation differs from the snapshot's is stale (power cut between writing a new
  snapshot and restarting the journal) and is ignored: the snapshot already contains its records.
- A missing or corrupt snapshot means no usable base: the journal is ignored and the owner starts from defaults,
  as with any corrupt blob.
After a load that found anything but a clean empty journal, the owner compacts at once, so new records never
land behind a damaged tail.

Compaction writes the snapshot first (generation g+1), then replaces the journal with a fresh header: a power
cut between the two leaves a stale journal, ignored as above. Generations only grow (the next one is above
both the snapshot's and the journal's), so a stale journal can never match a newer snapshot.

Common CPython/MicroPython subset: binascii.crc32 when the port has it, else a table-driven CRC-32.
"""

import json

from agent.compat import const, is_int

try:
    from typing import Any
except ImportError:
    pass

try:
    from binascii import crc32 as _native_crc32
except ImportError:  # a MicroPython port built without MICROPY_PY_BINASCII_CRC32
    _native_crc32 = None  # type: ignore[assignment,unused-ignore]

SUFFIX = ".jnl"
MAGIC = const(0xA5)
HEADER_LEN = const(9)  # magic + length + CRC
# A length field above this is damage, not data: the largest real record is a StopTransaction carrying 16
# transactionData samples (~6 kB).
MAX_RECORD_BYTES = const(65536)

# Why replay stopped (Journal.stopped after load)
TORN = "torn"  # the last record is incomplete or fails its CRC: a power cut during the append
CORRUPT = "corrupt"  # a damaged record with more bytes after it
STALE = "stale"  # the journal belongs to another snapshot generation
NO_BASE = "no-base"  # records present but the snapshot is missing or corrupt
UNUSABLE = "unusable"  # a record with a valid CRC whose content the owner could not apply

_TABLE = []  # type: list[int]


def crc32_py(data: "Any") -> int:
    """CRC-32 (IEEE 802.3, as zlib/binascii), table-driven; the fallback when binascii has no crc32."""
    if not _TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            _TABLE.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32(data: "Any") -> int:
    if _native_crc32 is not None:
        return int(_native_crc32(data)) & 0xFFFFFFFF
    return crc32_py(data)


def dumps_compact(obj: "Any") -> str:
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:  # a port whose json.dumps takes no separators
        return json.dumps(obj)


def encode_record(obj: "Any") -> bytes:
    payload = dumps_compact(obj).encode()
    length = len(payload).to_bytes(4, "big")
    return bytes([MAGIC]) + length + crc32(length + payload).to_bytes(4, "big") + payload


def decode_records(raw: "Any") -> "tuple[list[Any], str | None]":
    """(records, why replay stopped: None when every byte was a whole, valid record, else TORN or CORRUPT)."""
    out = []  # type: list[Any]
    n = len(raw)
    pos = 0
    while pos < n:
        end = pos + HEADER_LEN
        if end > n:
            return out, TORN
        length = int.from_bytes(raw[pos + 1 : pos + 5], "big")
        if raw[pos] != MAGIC or length > MAX_RECORD_BYTES:
            return out, CORRUPT
        stop = end + length
        if stop > n:
            return out, TORN
        if int.from_bytes(raw[pos + 5 : end], "big") != crc32(raw[pos + 1 : pos + 5] + raw[end:stop]):
            return out, (TORN if stop == n else CORRUPT)
        try:
            obj = json.loads(raw[end:stop])
        except ValueError:
            return out, (TORN if stop == n else CORRUPT)
        out.append(obj)
        pos = stop
    return out, None


class Journal:
    """The snapshot blob `name` and its journal `name + SUFFIX`. The owner keeps the state; this keeps the bytes.

    enabled=False is the pre-journal policy: every change rewrites the snapshot (for ports whose storage
    cannot append cheaply, and for the benchmark's same-run comparison)."""

    def __init__(self, hal: "Any", name: str, max_bytes: int, enabled: bool = True):
        self._hal = hal
        self.name = name
        self.journal_name = name + SUFFIX
        self.max_bytes = max_bytes
        self.enabled = enabled
        self.gen = 0  # highest generation seen; the next compaction writes gen + 1
        self.size = None  # type: int | None  # bytes in our journal; None = restart it before appending
        self.stopped = None  # type: str | None  # why the last load stopped replaying (None: it did not)
        self.dirty_at_boot = False  # the last load found records or damage: the owner should compact now

    def load(self) -> "tuple[dict[str, Any] | None, list[Any]]":
        """(snapshot object or None when absent/corrupt, journal records to replay on it, in order)."""
        snap = None
        raw = self._hal.storage_read(self.name)
        if raw:
            try:
                snap = json.loads(raw)
            except ValueError:
                snap = None
            if not isinstance(snap, dict):
                snap = None
        gen = 0
        if snap is not None and is_int(snap.get("gen")):
            gen = snap["gen"]
        jraw = self._hal.storage_read(self.journal_name)
        records, stopped = decode_records(jraw or b"")
        jgen = None
        if records and isinstance(records[0], dict) and is_int(records[0].get("gen")):
            jgen = records[0]["gen"]
        self.gen = gen if jgen is None or jgen < gen else jgen
        body = []  # type: list[Any]
        if records and jgen is None:
            stopped = CORRUPT  # no header: nothing tells which snapshot these records belong to
        elif jgen is not None and len(records) > 1:
            if snap is None:
                stopped = NO_BASE
            elif jgen != gen:
                stopped = STALE
            else:
                body = records[1:]
        self.stopped = stopped
        clean = (
            jraw is not None and stopped is None and jgen == gen and snap is not None and len(records) == 1
        )
        self.size = len(jraw) if clean and jraw is not None else None
        self.dirty_at_boot = bool(jraw) and not clean
        return snap, body

    def replay(self, records: "list[Any]", apply: "Any", have_base: bool) -> None:
        """Apply the records `load` returned, in order, with `apply(record)` onto the state the owner restored
        from the snapshot (`have_base`: it could). Records without their base are skipped (start empty, as with
        any corrupt blob); a record `apply` cannot use stops replay there, keeping the state of those before it."""
        if records and not have_base:
            self.stopped = NO_BASE
            return
        for rec in records:
            try:
                apply(rec)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                self.stopped = UNUSABLE
                return

    def append(self, obj: "Any") -> bool:
        """Append one record; False when the owner must compact instead (journal off, not started, or full)."""
        if not self.enabled or self.size is None:
            return False
        rec = encode_record(obj)
        if self.size + len(rec) > self.max_bytes:
            return False
        append = getattr(self._hal, "storage_append", None)
        if append is not None:
            append(self.journal_name, rec)
        else:  # a HAL not derived from hal.Hal, written before storage_append: Hal's fallback, inline
            old = self._hal.storage_read(self.journal_name)
            self._hal.storage_write(self.journal_name, (old or b"") + rec)
        self.size += len(rec)
        return True

    def compact(self, snapshot: "dict[str, Any]") -> None:
        """Write `snapshot` (the whole state; "gen" is set here), then restart the journal empty."""
        self.gen += 1
        snapshot["gen"] = self.gen
        self._hal.storage_write(self.name, json.dumps(snapshot).encode())
        if self.enabled:
            header = encode_record({"gen": self.gen})
            self._hal.storage_write(self.journal_name, header)
            self.size = len(header)
        self.dirty_at_boot = False
