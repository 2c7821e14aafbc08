"""Local authorization (OCPP 1.6 §3.5): the Local Authorization List managed by the Central System and the
Authorization Cache the charge point fills itself from Authorize/Start/StopTransaction answers.

Entries are kept compact: (status code: index in AUTH_STATUSES, expiry: UNIX seconds - EXPIRY_EPOCH or None,
parentIdTag or None); `lookup` gives the idTagInfo object back ({"status", "expiryDate"?, "parentIdTag"?}, the
expiry at whole seconds as OCPP timestamps are compared anyway).

The local list lives on flash (LocalList): the pointer `locallist` and two files of fixed-width records sorted by
idTag, one binary search through `hal.storage_read_into` per lookup (~10 reads of ~60 bytes for 1000 entries);
its RAM cost does not grow with its length. SendLocalList writes the new list to the other file (a Differential
update merged with the current one as both are read in order) and switches the pointer when it is complete.

The cache is in RAM (~75 bytes per entry under MicroPython), bounded by `cache_cap` (AgentConfig.cache_cap):
when full, invalid entries are dropped first, then the least recently updated. It changes on every Authorize,
StartTransaction and StopTransaction answer (the hot path), so it is journaled (agent/journal.py: one ~50-byte
record per change in `authcache`'s current file; a compaction writes it in batches when the appended records
pass CACHE_JOURNAL_MAX_BYTES, and at boot after damage or an older layout). Records:
  {"o": "h", "t": counter}                                       header
  {"o": "C", "e": [[idTag, status, expiry, parent, counter], ...]}  entries (a compaction writes batches)
  {"o": "c", "k": idTag, "i": [status, expiry, parent], "t": counter}  remember (evicts like the live call when
                                                                    full); the older layout: "i": idTagInfo
  {"o": "u", "k": [idTag, ...]}                                  ids now managed by the local list leave the cache
  {"o": "z"}                                                     ClearCache
"""

import json

from agent.compat import const, is_int, iso_utc, parse_iso
from agent.journal import HEADER_LEN, Journal, _intact, _Reader, encode_record, loads_view

try:
    from typing import Any
except ImportError:
    pass

LIST_STORAGE = "locallist"
CACHE_STORAGE = "authcache"

# Default authorization cache capacity (entries) on CPython; AgentConfig.cache_cap chooses (see core.py for the
# MicroPython default).
CACHE_CAP = const(1000)
# Cache journal size that triggers a compaction: a compaction (the whole cache, ~40 bytes an entry) is amortized
# over ~600 remembered answers.
CACHE_JOURNAL_MAX_BYTES = const(32768)
# Longest idTag in OCPP 1.6 (IdToken = CiString20).
MAX_ID_TAG = const(20)
# Expiry dates are kept as seconds since 2020-01-01T00:00:00Z: a small int (no heap object) on a 32-bit
# MicroPython port until 2054.
EXPIRY_EPOCH = 1577836800
# Cache entries per record in a compaction (~1.5 kB records).
CACHE_BATCH = const(32)
# A merge reads the current list in pieces of about this many bytes (whole entries).
READ_PIECE = const(1024)

AUTH_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
ACCEPTED = const(0)


def clean_id_tag_info(info: "Any") -> "dict[str, Any] | None":
    """Validated copy of an idTagInfo object ({status, expiryDate?, parentIdTag?}), or None when invalid."""
    if not isinstance(info, dict) or info.get("status") not in AUTH_STATUSES:
        return None
    out = {"status": info["status"]}
    exp = info.get("expiryDate")
    if exp is not None:
        if parse_iso(exp) is None:
            return None
        out["expiryDate"] = exp
    parent = info.get("parentIdTag")
    if parent is not None:
        if not isinstance(parent, str) or len(parent) > MAX_ID_TAG:
            return None
        out["parentIdTag"] = parent
    return out


def effective_status(info: "dict[str, Any]", now_wall: "float") -> str:
    """The idTagInfo's status, turned into 'Expired' once its expiryDate has passed."""
    exp = info.get("expiryDate")
    if exp is not None:
        t = parse_iso(exp)
        if t is not None and t <= now_wall:
            return "Expired"
    status: str = info["status"]
    return status


def compact_info(info: "dict[str, Any]") -> "list[Any]":
    """A clean idTagInfo as [status code, expiry - EXPIRY_EPOCH or None, parentIdTag or None]."""
    exp = info.get("expiryDate")
    t = parse_iso(exp) if exp is not None else None
    return [
        AUTH_STATUSES.index(info["status"]),
        None if t is None else t - EXPIRY_EPOCH,
        info.get("parentIdTag"),
    ]


def _checked(c: "Any") -> "list[Any]":
    """A compact idTagInfo read back from storage, validated (ValueError otherwise)."""
    if not isinstance(c, list) or len(c) < 3:
        raise ValueError("bad entry")
    code, exp, parent = c[0], c[1], c[2]
    if not is_int(code) or not 0 <= code < len(AUTH_STATUSES):
        raise ValueError("bad status")
    if exp is not None and not is_int(exp):
        raise ValueError("bad expiry")
    if parent is not None and not isinstance(parent, str):
        raise ValueError("bad parent")
    return [code, exp, parent]


def expand_info(code: int, exp: "Any", parent: "Any") -> "dict[str, Any]":
    """The idTagInfo object of a compact entry."""
    out = {"status": AUTH_STATUSES[code]}  # type: dict[str, Any]
    if exp is not None:
        out["expiryDate"] = iso_utc(exp + EXPIRY_EPOCH)
    if parent is not None:
        out["parentIdTag"] = parent
    return out


class LocalList:
    """The Local Authorization List on flash: `count` fixed-width records ([idTag, status, expiry, parent] padded
    to `width`) sorted by idTag, after a header record, in the file the pointer `locallist` names
    ({"f", "g", "b", "v": version, "n": count, "w": width, "s": offset of the first entry})."""

    def __init__(self, hal: "Any"):
        self._hal = hal
        self._j = Journal(hal, LIST_STORAGE, 0, False)
        self.version = 0
        self.count = 0
        self.width = 0
        self.start = 0
        self.damaged = False  # a record could not be read back: lookups miss (the next update rewrites it)
        self.log = None  # type: Any

    def load(self) -> "dict[str, Any] | None":
        """Read the pointer; returns the older layout's list ({"version", "entries": {idTag: idTagInfo}}) when the
        blob holds one (the owner migrates it), else None."""
        raw = self._hal.storage_read(LIST_STORAGE)
        if not raw:
            return None
        try:
            ptr = json.loads(raw)
        except ValueError:
            return None  # corrupt blob: an empty list, as before
        raw = None
        if not isinstance(ptr, dict):
            return None
        if "f" not in ptr:
            return ptr if isinstance(ptr.get("entries"), dict) and is_int(ptr.get("version")) else None
        try:
            slot, gen, version = ptr["f"], ptr["g"], ptr["v"]
            count, width, start = int(ptr["n"]), int(ptr["w"]), int(ptr["s"])
        except (KeyError, TypeError, ValueError):
            return None
        if slot not in (0, 1) or not is_int(gen) or not is_int(version):
            return None
        self._j.use(slot, gen)
        self.version, self.count, self.width, self.start = version, count, width, start
        # the first and the last entry must read back (a file cut short or overwritten is no list)
        if count and (self._slot(0) is None or self._slot(count - 1) is None):
            self.count = 0
            self.version = 0
            self._log("local list unreadable: empty until the next SendLocalList")
        return None

    def _log(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def _slot(self, i: int) -> "list[Any] | None":
        """[idTag, status, expiry, parent] of entry i, or None when its record is damaged."""
        rec = self._j.read(self.start + i * self.width, self.width)
        if rec is None:
            return None
        try:
            e = loads_view(memoryview(rec)[HEADER_LEN:])
            if not isinstance(e, list) or len(e) < 4 or not isinstance(e[0], str):
                return None
            c = _checked(e[1:])
            return [e[0], c[0], c[1], c[2]]
        except ValueError:
            return None

    def get(self, tag: "Any") -> "list[Any] | None":
        """[idTag, status, expiry, parent] of `tag`, or None (binary search on flash)."""
        lo = 0
        hi = self.count - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            e = self._slot(mid)
            if e is None:
                if not self.damaged:
                    self.damaged = True
                    self._log("local list entry unreadable: treated as not listed")
                return None
            if e[0] == tag:
                return e
            if e[0] < tag:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    def __len__(self) -> int:
        return self.count

    def __contains__(self, tag: "Any") -> bool:
        return self.get(tag) is not None

    def _records(self) -> "Any":
        """Every entry in order, read in pieces and checked: a generator of (idTag, the whole record as a view into
        the read buffer, valid until the next one); ValueError when one is damaged."""
        if not self.count:
            return
        w = self.width
        per = READ_PIECE // w if w < READ_PIECE else 1
        r = _Reader(self._hal, self._j.file)
        for i in range(self.count):
            rel = r.fill(self.start + i * w, per * w if i % per == 0 else w)
            if r.avail(rel) < w or not _intact(r.buf, rel, w):
                raise ValueError("local list entry damaged")
            view = memoryview(r.buf)[rel : rel + w]
            yield _tag_of(view), view

    def keys(self) -> "list[str]":
        """Every idTag (tests and diagnostics: reads the whole list)."""
        return [t for t, _v in self._records()]

    def write(
        self, version: int, changes: "dict[str, Any]", merge: bool, max_total: int, cache: "dict[str, Any]"
    ) -> "list[str] | None":
        """Write the new list (the current one merged with `changes` {idTag: compact info or None = remove} when
        `merge`, else exactly `changes`) and switch to it. Entries the update does not touch are copied as they
        are. Returns the idTags of the new list found in `cache`, or None (nothing changed) when it would hold
        more than max_total entries."""
        keys = sorted(changes)
        width = self.width if merge else 0
        for tag in keys:
            c = changes[tag]
            if c is not None:
                n = len(encode_record([tag, c[0], c[1], c[2]]))
                if n > width:
                    width = n
        j = self._j
        j.begin({"v": version})
        start = j.last_len
        gone = []  # type: list[str]
        count = 0
        ci = 0
        try:
            if merge:
                for tag, view in self._records():
                    while ci < len(keys) and keys[ci] < tag:
                        count = self._emit(keys[ci], changes[keys[ci]], width, count, cache, gone)
                        ci += 1
                    if ci < len(keys) and keys[ci] == tag:
                        count = self._emit(tag, changes[tag], width, count, cache, gone)
                        ci += 1
                    else:
                        count = self._emit(tag, view, width, count, cache, gone)
                    if count > max_total:
                        break
            while ci < len(keys) and count <= max_total:
                count = self._emit(keys[ci], changes[keys[ci]], width, count, cache, gone)
                ci += 1
        except ValueError:
            j.abort()
            raise
        if count > max_total:
            j.abort()
            return None
        j.commit({"v": version, "n": count, "w": width, "s": start})
        self.version, self.count, self.width, self.start = version, count, width, start
        self.damaged = False
        return gone

    def _emit(
        self, tag: str, c: "Any", width: int, count: int, cache: "dict[str, Any]", gone: "list[str]"
    ) -> int:
        """Write one entry: c is its compact info, None (removed: nothing written), or the current record."""
        if c is None:
            return count
        if isinstance(c, list):
            self._j.put_record(encode_record([tag, c[0], c[1], c[2]], None, width))
        elif len(c) == width:
            self._j.put_record(c)  # unchanged: copied as it is
        else:  # the slots grew: the same payload, padded further
            end = len(c)
            while c[end - 1] == 32:
                end -= 1
            self._j.put_record(encode_record(None, c[HEADER_LEN:end], width))
        if tag in cache:
            gone.append(tag)
        return count + 1


def _tag_of(rec: "Any") -> str:
    """The idTag of a local list record ([idTag, ...] padded), read without decoding the rest when it has no
    escapes (always, for CiString20 tags)."""
    i = HEADER_LEN + 2  # after '["'
    j = i
    while rec[j] != 34:  # the closing quote
        if rec[j] == 92 or j + 1 >= len(rec):  # a backslash: let json decode the escapes
            tag = loads_view(rec[HEADER_LEN:])[0]
            return tag if isinstance(tag, str) else ""
        j += 1
    return str(bytes(rec[i:j]), "utf-8")


class LocalAuth:
    def __init__(self, hal: "Any", cache_cap: int = CACHE_CAP, journal: bool = True):
        self._hal = hal
        self.cache_cap = cache_cap if cache_cap > 0 else 1
        self.entries = LocalList(hal)  # the local list (on flash): len(), `in`, get(), keys()
        self.cache = {}  # type: dict[str, Any]  # idTag -> (status, expiry, parent, update counter)
        self._counter = 0
        self._journal = Journal(hal, CACHE_STORAGE, CACHE_JOURNAL_MAX_BYTES, journal)
        self._load()

    @property
    def list_version(self) -> int:
        return self.entries.version

    def _load(self) -> None:
        legacy = self.entries.load()
        self._journal.load(self._apply, self)
        if self._journal.dirty_at_boot:
            self._save_cache()
        if legacy is not None:  # the older layout's list: written in this layout now (read whole, once)
            from agent import legacy as older

            changes = older.list_entries(legacy, clean_id_tag_info, compact_info)
            self.entries.write(legacy["version"], changes, False, len(changes), self.cache)

    def _save_cache(self) -> None:
        """Compaction: the whole cache, in batches, to the journal's other file."""
        j = self._journal
        j.begin({"t": self._counter})
        batch = []  # type: list[Any]
        for tag in self.cache:
            e = self.cache[tag]
            batch.append([tag, e[0], e[1], e[2], e[3]])
            if len(batch) >= CACHE_BATCH:
                j.put({"o": "C", "e": batch})
                batch = []
        if batch:
            j.put({"o": "C", "e": batch})
        j.commit()

    def _change(self, rec: "dict[str, Any]") -> None:
        self._apply(rec, -1, 0)
        if self._journal.append(rec) < 0:
            self._save_cache()  # journal off, not started yet, or full

    def _put(self, tag: str, c: "list[Any]", t: int) -> None:
        if tag not in self.cache and len(self.cache) >= self.cache_cap:
            self._evict()
        self.cache[tag] = (c[0], c[1], c[2], t)

    def _apply(self, rec: "dict[str, Any]", off: int, length: int) -> None:
        op = rec["o"]
        if op == "c":
            tag = rec["k"]
            info = rec["i"]
            if not isinstance(tag, str):
                raise ValueError("bad cache record")
            if isinstance(info, dict):  # the older layout: the idTagInfo itself
                clean = clean_id_tag_info(info)
                if clean is None:
                    raise ValueError("bad cache record")
                info = compact_info(clean)
            self._counter = int(rec["t"])
            self._put(tag, _checked(info), self._counter)
        elif op == "C":
            for e in rec["e"]:
                if not isinstance(e[0], str):
                    raise ValueError("bad cache record")
                self._put(e[0], _checked(e[1:4]), int(e[4]))
        elif op == "u":
            for tag in rec["k"]:
                self.cache.pop(tag, None)
        elif op == "z":
            self.cache = {}
        elif op == "h":
            self._counter = int(rec["t"])
        else:
            raise ValueError("unknown journal record")

    # -- lookups ----------------------------------------------------------------------------------------
    def lookup(self, id_tag: str, list_enabled: bool, cache_enabled: bool) -> "dict[str, Any] | None":
        """idTagInfo from the local list (first) or the cache; None when unknown."""
        if list_enabled and self.entries.count:
            e = self.entries.get(id_tag)
            if e is not None:
                return expand_info(e[1], e[2], e[3])
        if cache_enabled:
            c = self.cache.get(id_tag)
            if c is not None:
                return expand_info(c[0], c[1], c[2])
        return None

    # -- cache ------------------------------------------------------------------------------------------
    def remember(self, id_tag: "Any", info: "Any", cache_enabled: bool) -> None:
        """Update the cache from a Central System answer (never for ids in the local list, §3.5.1)."""
        if not cache_enabled or not isinstance(id_tag, str):
            return
        if self.entries.count and id_tag in self.entries:
            return
        clean = clean_id_tag_info(info)
        if clean is None:
            return
        self._change({"o": "c", "k": id_tag, "i": compact_info(clean), "t": self._counter + 1})

    def _evict(self) -> None:
        """Drop an entry that is not Accepted if there is one, else the least recently updated."""
        victim = None
        v_ok = 2
        v_t = 0
        for tag in self.cache:
            e = self.cache[tag]
            ok = 0 if e[0] != ACCEPTED else 1
            if ok < v_ok or (ok == v_ok and e[3] < v_t):
                victim, v_ok, v_t = tag, ok, e[3]
        if victim is not None:
            del self.cache[victim]

    def clear_cache(self) -> None:
        self._change({"o": "z"})

    # -- local list -------------------------------------------------------------------------------------
    def version(self, list_enabled: bool) -> int:
        return self.entries.version if list_enabled else -1

    def apply_update(
        self, payload: "dict[str, Any]", list_enabled: bool, max_update: int, max_total: int
    ) -> str:
        """SendLocalList: Accepted, Failed, NotSupported or VersionMismatch. Validated before any change."""
        if not list_enabled:
            return "NotSupported"
        version = payload["listVersion"]
        update_type = payload["updateType"]
        items = payload.get("localAuthorizationList") or []
        if not isinstance(items, list) or len(items) > max_update:
            return "Failed"
        changes = {}  # type: dict[str, Any]  # idTag -> compact info, or None: remove (the last item wins)
        for item in items:
            if not isinstance(item, dict):
                return "Failed"
            tag = item.get("idTag")
            if not isinstance(tag, str) or not tag or len(tag) > MAX_ID_TAG:
                return "Failed"
            info = item.get("idTagInfo")
            clean = None
            if info is not None:
                clean = clean_id_tag_info(info)
                if clean is None:
                    return "Failed"
            elif update_type == "Full":
                return "Failed"  # a full list entry must carry idTagInfo
            changes[tag] = None if clean is None else compact_info(clean)
        merge = update_type == "Differential"
        if merge and version <= self.entries.version:
            return "VersionMismatch"
        if not merge and len(changes) > max_total:
            return "Failed"
        try:
            gone = self.entries.write(version, changes, merge, max_total, self.cache)
        except ValueError:
            return "Failed"  # the current list cannot be read back to merge with
        if gone is None:
            return "Failed"
        # ids now managed by the list leave the cache (§3.5.1: the list takes precedence)
        if gone:
            self._change({"o": "u", "k": gone})
        return "Accepted"
