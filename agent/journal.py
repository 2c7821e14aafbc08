"""A store's state on flash as self-checking records, read and written record by record (the offline queue, the
authorization cache, the running transactions' records; the local authorization list's file is written the same
way).

RAM is the scarce resource on a charger (an ESP32 without PSRAM gives MicroPython ~110 kB of heap), so nothing
here reads or writes a store whole: loading reads a file in READ_CHUNK pieces and hands each record to the owner
as it goes; a compaction streams records out in WRITE_CHUNK pieces; the owner may keep only where a record is
(its offset and length in the current file) and read it back when it needs it (`read`).

Files: the pointer `name` (a tiny JSON object, always replaced whole and atomically by `hal.storage_write`)
names the current one of two log files, `name + ".0"` and `name + ".1"`:
    {"f": 0 or 1, "g": generation, "b": bytes of the file written by the compaction}
A log file holds a header record {"o": "h", "g": generation, ...the owner's scalars}, the records the owner
needs to rebuild its state (the checkpoint), then the change records appended since (`append`, one
`hal.storage_append` each, ~20-450 bytes). Reads go through `hal.storage_read_into` (positional).
Compaction (`begin`, `put`/`copy`, `commit`) writes the whole state to the other file (first piece with
`storage_write`, the rest appended), and only then the pointer: a power cut before the pointer write leaves
the old pointer naming the old file, intact; the half-written file is overwritten by the next compaction. The
owner compacts when its appended records would pass `max_bytes` and at boot when the load found damage or data
in the older layout.

Record: MAGIC (1 byte) | length of the payload (4 bytes, big-endian) | CRC-32 of length + payload (4 bytes,
big-endian) | payload. The payload is a compact JSON object (the record's meta: what changed), optionally
followed by a newline and the record's bulk (compact JSON too: a queued message's payload, a meter sample);
loading decodes the meta only, the bulk is read when it is needed (compact JSON never contains a raw newline).

Loading: the records of the current file in order while they are whole and their CRC matches.
- A torn last record (power cut during the append: short, or its CRC does not match) is ignored: the state is
  the one before that record, which is what the owner had persisted before the interrupted change.
- A damaged record with more bytes after it also stops replay there. Records are deltas on the state left by the
  previous ones (a pop removes "the head", a push may evict "the oldest MeterValues"), so skipping one and
  applying the later ones would build a state that never existed; stopping yields the last state that did.
- A missing or corrupt pointer, or a file whose header does not match it, means no usable base: the owner
  starts from defaults, as with any corrupt blob.
After a load that found anything but a clean file, the owner compacts at once, so new records never land
behind a damaged tail.

The layout before this one (firmware up to the agent RAM work) kept a JSON snapshot in `name` and a journal
`name + SUFFIX` whose first record was {"gen": g}; `load` hands such blobs to agent/legacy.py (imported only
then), which replays them with the same rules (a journal of another generation than the snapshot is STALE and
ignored); the owner then compacts into this layout at once: the pointer replaces the old snapshot atomically,
and the old journal is emptied afterwards. A charger updated with messages in its offline queue sends them after
the update.

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

SUFFIX = ".jnl"  # the journal of the older layout (see above)
MAGIC = const(0xA5)
HEADER_LEN = const(9)  # magic + length + CRC
# A length field above this is damage, not data: the largest real record is a StopTransaction carrying 17
# transactionData samples of three measurands (~6 kB; the older layout's records were no larger).
MAX_RECORD_BYTES = const(16384)
# Loading reads a file in pieces this large (one buffer, reused; a larger record gets a buffer of its size).
READ_CHUNK = const(2048)
# A compaction collects records in a buffer this large and writes it when full: fewer storage calls than one
# per record, bounded RAM (a full offline queue is ~45 kB of records).
WRITE_CHUNK = const(4096)

# Why replay stopped (Journal.stopped after load)
TORN = "torn"  # the last record is incomplete or fails its CRC: a power cut during the append
CORRUPT = "corrupt"  # a damaged record with more bytes after it
STALE = "stale"  # older layout: the journal belongs to another snapshot generation
NO_BASE = "no-base"  # records present but the pointer/snapshot is missing or corrupt
UNUSABLE = "unusable"  # a record with a valid CRC whose content the owner could not apply

_TABLE = []  # type: list[int]


def crc32_py(data: "Any", crc: int = 0) -> int:
    """CRC-32 (IEEE 802.3, as zlib/binascii), table-driven, continuing from `crc`; the fallback when binascii
    has no crc32."""
    if not _TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
            _TABLE.append(c)
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32(data: "Any", crc: int = 0) -> int:
    if _native_crc32 is not None:
        return _native_crc32(data, crc)  # type: ignore[no-any-return,unused-ignore]  # unsigned on both
    return crc32_py(data, crc)


def dumps_compact(obj: "Any") -> str:
    try:
        return json.dumps(obj, separators=(",", ":"))
    except TypeError:  # a port whose json.dumps takes no separators
        return json.dumps(obj)


def loads_view(view: "Any") -> "Any":
    """json.loads of a memoryview (MicroPython takes it as it is, CPython wants bytes)."""
    try:
        return json.loads(view)
    except TypeError:
        return json.loads(bytes(view))


def encode_record(obj: "Any", bulk: "Any" = None, width: int = 0) -> "Any":
    """One record (a bytearray): `obj` (the meta) as compact JSON, then a newline and `bulk` (str or bytes-like)
    when given; padded with spaces (JSON whitespace) to `width` bytes in all when that is more. obj None: `bulk`
    is the whole payload (already encoded)."""
    meta = b"" if obj is None else dumps_compact(obj).encode()
    if isinstance(bulk, str):
        bulk = bulk.encode()
    if obj is None:
        meta, bulk = bulk, None
    n = len(meta) + (0 if bulk is None else len(bulk) + 1)
    total = HEADER_LEN + n
    if total < width:
        total = width
    rec = bytearray(total)
    rec[0] = MAGIC
    rec[1:5] = (total - HEADER_LEN).to_bytes(4, "big")
    end = HEADER_LEN + len(meta)
    rec[HEADER_LEN:end] = meta
    if bulk is not None:
        rec[end] = 10  # newline
        rec[end + 1 : end + 1 + len(bulk)] = bulk
        end += 1 + len(bulk)
    for i in range(end, total):
        rec[i] = 32  # space
    mv = memoryview(rec)
    rec[5:9] = crc32(mv[HEADER_LEN:], crc32(mv[1:5])).to_bytes(4, "big")
    return rec


def _u32(buf: "Any", i: int) -> int:
    """The big-endian 32-bit number at buf[i] (no bytes copied)."""
    return int.from_bytes(memoryview(buf)[i : i + 4], "big")


def _intact(buf: "Any", i: int, length: int) -> bool:
    """buf[i : i + length] is one whole record whose CRC matches."""
    mv = memoryview(buf)
    return (
        length >= HEADER_LEN
        and buf[i] == MAGIC
        and _u32(buf, i + 1) == length - HEADER_LEN
        and _u32(buf, i + 5) == crc32(mv[i + HEADER_LEN : i + length], crc32(mv[i + 1 : i + 5]))
    )


def read_into(hal: "Any", name: str, offset: int, buf: "Any") -> int:
    """hal.storage_read_into, or hal.Hal's whole-blob fallback for a HAL not derived from hal.Hal."""
    fn = getattr(hal, "storage_read_into", None)
    if fn is not None:
        return int(fn(name, offset, buf))
    from agent.hal import Hal

    return Hal.storage_read_into(hal, name, offset, buf)


def bulk_view(rec: "Any") -> "Any":
    """The bulk of a whole record (from `Journal.read`) as a memoryview, or None when it has none."""
    nl = rec.find(b"\n", HEADER_LEN)
    if nl < 0:
        return None
    return memoryview(rec)[nl + 1 :]


def bulk_of(rec: "Any") -> "Any":
    """The bulk of a whole record (from `Journal.read`) decoded, or None when it has none."""
    view = bulk_view(rec)
    return None if view is None else loads_view(view)


class _Reader:
    """Sequential reads of one blob through a buffer (READ_CHUNK, grown for a larger record)."""

    def __init__(self, hal: "Any", name: str):
        self.hal = hal
        self.name = name
        self.buf = bytearray(READ_CHUNK)
        self.start = 0
        self.n = 0

    def fill(self, pos: int, need: int) -> int:
        """Make file bytes [pos, pos + need) available in buf (fewer at the end of the blob); returns their index
        in buf. `self.start + self.n` is then the end of what was read."""
        if pos < self.start or pos + need > self.start + self.n:
            if need > len(self.buf):
                self.buf = bytearray(need)
            self.start = pos
            self.n = read_into(self.hal, self.name, pos, self.buf)
        return pos - self.start

    def avail(self, rel: int) -> int:
        return self.n - rel


def scan(hal: "Any", name: str, start: int, apply: "Any") -> "tuple[int, str | None]":
    """Read the records of blob `name` from `start` in order, each checked (magic, length, CRC), and call
    apply(meta, offset, length) for each (meta: the decoded JSON before any bulk; offset and length: the whole
    record's). Returns (offset after the last record applied, why it stopped: None at a clean end, else TORN,
    CORRUPT, or UNUSABLE when apply raised)."""
    r = _Reader(hal, name)
    pos = start
    while True:
        rel = r.fill(pos, HEADER_LEN)
        have = r.avail(rel)
        if have <= 0:
            return pos, None
        if have < HEADER_LEN:
            return pos, TORN
        buf = r.buf
        length = _u32(buf, rel + 1)
        if buf[rel] != MAGIC or length > MAX_RECORD_BYTES:
            return pos, CORRUPT
        total = HEADER_LEN + length
        if total > len(r.buf):  # check the blob is that long before allocating a buffer for it
            last = r.fill(pos + total - 1, 1)
            if r.avail(last) <= 0:
                return pos, TORN
        rel = r.fill(pos, total)
        if r.avail(rel) < total:
            return pos, TORN
        buf = r.buf
        mv = memoryview(buf)
        meta = None
        if _u32(buf, rel + 5) == crc32(mv[rel + HEADER_LEN : rel + total], crc32(mv[rel + 1 : rel + 5])):
            end = buf.find(b"\n", rel + HEADER_LEN, rel + total)
            try:
                meta = loads_view(mv[rel + HEADER_LEN : (end if end >= 0 else rel + total)])
            except ValueError:
                meta = None
        if meta is None:
            # nothing after it: a power cut during its append; more bytes after it: damage
            nxt = r.fill(pos + total, 1)
            return pos, (TORN if r.avail(nxt) <= 0 else CORRUPT)
        try:
            apply(meta, pos, total)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            return pos, UNUSABLE
        pos += total


class Journal:
    """The pointer blob `name` and its two log files. The owner keeps the state (or where each part of it is);
    this keeps the bytes.

    enabled=False: no appends, every change compacts (the whole state rewritten: the policy before the journal,
    for ports whose storage cannot append cheaply, and for the flash benchmark's same-run comparison)."""

    def __init__(self, hal: "Any", name: str, max_bytes: int, enabled: bool = True):
        self._hal = hal
        self.name = name
        self.max_bytes = max_bytes
        self.enabled = enabled
        self.gen = 0  # generation of the current file; the next compaction writes gen + 1
        self.slot = 1  # the current file's number (the first compaction writes file 0)
        self.file = name + ".1"
        self.size = None  # type: int | None  # bytes in the current file; None = compact before appending
        self.base = 0  # bytes the last compaction wrote (appends may add max_bytes more)
        self.stopped = None  # type: str | None  # why the last load stopped replaying (None: it did not)
        self.dirty_at_boot = False  # the last load found damage or the older layout: the owner compacts now
        self._legacy = False  # the older layout's journal has bytes: emptied after the next compaction
        self._out = None  # type: Any  # compaction: the buffer being filled
        self._k = 0  # bytes in _out
        self._wpos = 0  # bytes of the new file already written
        self._wfile = ""
        self._ra_src = -1  # copy: offset in the current file of the bytes read ahead into _out[_k:]
        self._ra_n = 0  # how many there are
        self.last_len = 0  # length of the record the last put/copy wrote

    # -- loading ---------------------------------------------------------------------------------------
    def load(self, apply: "Any", owner: "Any") -> None:
        """Rebuild the owner's state: apply(meta, offset, length) for every record of the current file (the
        header included). Blobs of the older layout are handed to agent/legacy.py (imported only then), which
        rebuilds `owner` from them (its journal's records through apply(record, -1, 0): bulk inline)."""
        self.stopped = None
        raw = self._hal.storage_read(self.name)
        obj = None
        if raw:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
        corrupt = bool(raw) and not isinstance(obj, dict)
        raw = None
        self._legacy = read_into(self._hal, self.name + SUFFIX, 0, bytearray(1)) > 0
        if isinstance(obj, dict) and "f" in obj:
            self._load_current(obj, apply)
        elif isinstance(obj, dict) or self._legacy:
            from agent import legacy

            legacy.load(self, owner, obj, apply)
        if corrupt:
            self.stopped = self.stopped or NO_BASE  # a pointer that cannot be read: start from defaults
            self.dirty_at_boot = True
        if self._legacy:
            self.dirty_at_boot = True  # (left over after a migration: emptied by the next compaction)

    def _load_current(self, ptr: "dict[str, Any]", apply: "Any") -> None:
        slot = ptr.get("f")
        gen = ptr.get("g")
        base = ptr.get("b")
        if slot not in (0, 1) or not is_int(gen) or not is_int(base):
            self.stopped = NO_BASE
            self.dirty_at_boot = True
            return
        self.use(int(slot), int(gen))  # type: ignore[arg-type]
        seen = [False]

        def first(meta: "Any", off: int, length: int) -> None:
            if not seen[0]:
                if not isinstance(meta, dict) or meta.get("o") != "h" or meta.get("g") != gen:
                    raise ValueError("file does not match its pointer")
                seen[0] = True
            apply(meta, off, length)

        end, stopped = scan(self._hal, self.file, 0, first)
        if not seen[0]:
            stopped = NO_BASE  # no header: the owner applied nothing
        self.stopped = stopped
        self.size = end if stopped is None else None  # damage: nothing is appended behind it
        self.base = int(base)  # type: ignore[arg-type]
        self.dirty_at_boot = stopped is not None

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> "Any":
        """The whole record (a bytearray) at `offset` in the current file, checked; None when it cannot be read
        back whole and intact. `bulk_of` decodes its bulk."""
        buf = bytearray(length)
        return buf if self._read_checked(offset, buf) else None

    def _read_checked(self, offset: int, buf: "Any") -> bool:
        """Read the record at `offset` (len(buf) bytes) into buf: True when it is whole and intact."""
        length = len(buf)
        return read_into(self._hal, self.file, offset, buf) == length and _intact(buf, 0, length)

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, obj: "Any", bulk: "Any" = None) -> int:
        """Append one record to the current file: its offset (its length is then `last_len`), or -1 when the owner
        must compact instead (journal off, nothing written yet, or full)."""
        if not self.enabled or self.size is None:
            return -1
        rec = encode_record(obj, bulk)
        if self.size - self.base + len(rec) > self.max_bytes:
            return -1
        append = getattr(self._hal, "storage_append", None)
        if append is not None:
            append(self.file, rec)
        else:  # a HAL not derived from hal.Hal, written before storage_append: Hal's fallback, inline
            old = self._hal.storage_read(self.file)
            self._hal.storage_write(self.file, (old or b"") + rec)
        off = self.size
        self.size += len(rec)
        self.last_len = len(rec)
        return off

    def begin(self, header: "dict[str, Any]") -> None:
        """Start a compaction into the other file, header first ("o" and "g" are set here); then put/copy the
        records of the state, then commit."""
        self._wfile = self.name + "." + str(1 - self.slot)
        self._out = bytearray(WRITE_CHUNK)
        self._k = 0
        self._wpos = 0
        header["o"] = "h"
        header["g"] = self.gen + 1
        self._put(encode_record(header))

    def put(self, obj: "Any", bulk: "Any" = None) -> int:
        """Add one record to the file being written: its offset there (its length: `last_len`)."""
        return self._put(encode_record(obj, bulk))

    def put_record(self, rec: "Any") -> int:
        """Add one encoded record (encode_record) to the file being written: its offset there."""
        return self._put(rec)

    def copy(self, offset: int, length: int) -> int:
        """Copy the record at `offset` of the current file, unchanged, to the file being written: its offset
        there, or -1 when it cannot be read back intact (the owner drops it). The bytes are read straight into
        the write buffer, as many as fit: records that follow each other in the current file (a queue's messages
        usually do) are copied with one read for the lot."""
        if self._k + length > len(self._out):
            self._flush()
        if length > len(self._out):
            rec = self.read(offset, length)
            return -1 if rec is None else self._put(rec)
        k = self._k
        if offset != self._ra_src or length > self._ra_n:  # not read ahead yet: read from here on
            self._ra_src = offset
            self._ra_n = read_into(self._hal, self.file, offset, memoryview(self._out)[k:])
        if length > self._ra_n or not _intact(self._out, k, length):
            self._ra_n = 0
            return -1
        self._ra_src += length
        self._ra_n -= length
        off = self._wpos + k
        self._k = k + length
        self.last_len = length
        return off

    def _put(self, rec: "Any") -> int:
        self._ra_n = 0  # the bytes read ahead are overwritten
        n = len(rec)
        if self._k + n > len(self._out):
            self._flush()
        off = self._wpos + self._k
        if n > len(self._out):
            self._write(rec)
        else:
            self._out[self._k : self._k + n] = rec
            self._k += n
        self.last_len = n
        return off

    def _flush(self) -> None:
        self._ra_n = 0
        if self._k:
            self._write(memoryview(self._out)[: self._k])
            self._k = 0

    def _write(self, data: "Any") -> None:
        if self._wpos == 0:
            self._hal.storage_write(self._wfile, data)  # replaces whatever the file held
        else:
            append = getattr(self._hal, "storage_append", None)
            if append is not None:
                append(self._wfile, data)
            else:
                old = self._hal.storage_read(self._wfile)
                self._hal.storage_write(self._wfile, (old or b"") + bytes(data))
        self._wpos += len(data)

    def abort(self) -> None:
        """Give up the file being written (the pointer still names the current one)."""
        self._out = None
        self._k = 0

    def use(self, slot: int, gen: int) -> None:
        """Make file `slot` of generation `gen` the current one (an owner that reads its pointer itself)."""
        self.slot = slot
        self.file = self.name + "." + str(slot)
        self.gen = gen

    def commit(self, extra: "dict[str, Any] | None" = None) -> None:
        """Finish the file being written, then switch the pointer to it (`extra`: more fields for the pointer)."""
        self._flush()
        self._out = None
        slot = 1 - self.slot
        ptr = {"f": slot, "g": self.gen + 1, "b": self._wpos}
        if extra is not None:
            for k in extra:
                ptr[k] = extra[k]
        self._hal.storage_write(self.name, dumps_compact(ptr).encode())
        self.slot = slot
        self.file = self._wfile
        self.gen += 1
        self.size = self._wpos
        self.base = self._wpos
        self.dirty_at_boot = False
        if self._legacy:  # the older layout's journal: its snapshot was just replaced by the pointer
            self._hal.storage_write(self.name + SUFFIX, b"")
            self._legacy = False
