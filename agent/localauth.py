"""Local authorization (OCPP 1.6 §3.5): the Local Authorization List managed by the Central System and the
Authorization Cache the charge point fills itself from Authorize/Start/StopTransaction answers.

Both persist in HAL storage. The cache is bounded: when full, invalid entries are dropped first, then the
least recently updated.

The cache changes on every Authorize, StartTransaction and StopTransaction answer (the hot path) and its blob
grows to ~70 kB at CACHE_CAP entries, so it is journaled (agent/journal.py: one ~80-byte record per change,
snapshot `authcache` only when the journal `authcache.jnl` passes CACHE_JOURNAL_MAX_BYTES and at boot). Records:
  {"o": "c", "k": idTag, "i": idTagInfo, "t": counter}   remember (evicts like the live call when full)
  {"o": "u", "k": [idTag, ...]}                         ids now managed by the local list leave the cache
  {"o": "z"}                                           ClearCache
The local list changes only on SendLocalList (rare, sized by the Central System): one blob, rewritten.
"""

import json

from agent.compat import const, is_int, parse_iso
from agent.journal import Journal

try:
    from typing import Any
except ImportError:
    pass

LIST_STORAGE = "locallist"
CACHE_STORAGE = "authcache"

# Default authorization cache capacity (entries).
CACHE_CAP = const(1000)
# Cache journal size that triggers a compaction: like the offline queue's (agent/txqueue.py), bounded so boot
# replay reads a journal no larger than a typical cache snapshot, and a compaction (the whole cache) is amortized
# over ~400 remembered answers.
CACHE_JOURNAL_MAX_BYTES = const(32768)
# Longest idTag in OCPP 1.6 (IdToken = CiString20).
MAX_ID_TAG = const(20)

AUTH_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")


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


class LocalAuth:
    def __init__(self, hal: "Any", cache_cap: int = CACHE_CAP, journal: bool = True):
        self._hal = hal
        self.cache_cap = cache_cap
        self.list_version = 0
        self.entries = {}  # type: dict[str, dict[str, Any]]
        self.cache = {}  # type: dict[str, dict[str, Any]]  # idTag -> {"info": idTagInfo, "t": update counter}
        self._counter = 0
        self._journal = Journal(hal, CACHE_STORAGE, CACHE_JOURNAL_MAX_BYTES, journal)
        self._load()

    def _load(self) -> None:
        raw = self._hal.storage_read(LIST_STORAGE)
        if raw:
            try:
                blob = json.loads(raw)
                if isinstance(blob.get("entries"), dict) and is_int(blob.get("version")):
                    self.entries = blob["entries"]
                    self.list_version = blob["version"]
            except (ValueError, AttributeError):
                pass
        blob, records = self._journal.load()
        have_base = False
        if blob is not None and isinstance(blob.get("cache"), dict) and is_int(blob.get("counter")):
            have_base = True
            self.cache = blob["cache"]
            self._counter = blob["counter"]
        self._journal.replay(records, self._apply, have_base)
        if self._journal.dirty_at_boot:
            self._save_cache()

    def _save_list(self) -> None:
        blob = {"version": self.list_version, "entries": self.entries}
        self._hal.storage_write(LIST_STORAGE, json.dumps(blob).encode())

    def _save_cache(self) -> None:
        """Write the whole cache (snapshot) and restart its journal."""
        self._journal.compact({"cache": self.cache, "counter": self._counter})

    def _change(self, rec: "dict[str, Any]") -> None:
        self._apply(rec)
        if not self._journal.append(rec):
            self._save_cache()  # journal off, not started yet, or full

    def _apply(self, rec: "dict[str, Any]") -> None:
        op = rec["o"]
        if op == "c":
            tag = rec["k"]
            if not isinstance(tag, str) or not isinstance(rec["i"], dict):
                raise ValueError("bad cache record")
            self._counter = int(rec["t"])
            if tag not in self.cache and len(self.cache) >= self.cache_cap:
                self._evict()
            self.cache[tag] = {"info": rec["i"], "t": self._counter}
        elif op == "u":
            for tag in rec["k"]:
                self.cache.pop(tag, None)
        elif op == "z":
            self.cache = {}
        else:
            raise ValueError("unknown journal record")

    # -- lookups ----------------------------------------------------------------------------------------
    def lookup(self, id_tag: str, list_enabled: bool, cache_enabled: bool) -> "dict[str, Any] | None":
        """idTagInfo from the local list (first) or the cache; None when unknown."""
        if list_enabled and id_tag in self.entries:
            return self.entries[id_tag]
        if cache_enabled and id_tag in self.cache:
            found: dict[str, Any] = self.cache[id_tag]["info"]
            return found
        return None

    # -- cache ------------------------------------------------------------------------------------------
    def remember(self, id_tag: "Any", info: "Any", cache_enabled: bool) -> None:
        """Update the cache from a Central System answer (never for ids in the local list, §3.5.1)."""
        if not cache_enabled or not isinstance(id_tag, str) or id_tag in self.entries:
            return
        clean = clean_id_tag_info(info)
        if clean is None:
            return
        self._change({"o": "c", "k": id_tag, "i": clean, "t": self._counter + 1})

    def _evict(self) -> None:
        victim = None
        victim_key = None
        for tag in self.cache:
            e = self.cache[tag]
            key = (0 if e["info"]["status"] != "Accepted" else 1, e["t"])
            if victim_key is None or key < victim_key:
                victim, victim_key = tag, key
        if victim is not None:
            del self.cache[victim]

    def clear_cache(self) -> None:
        self._change({"o": "z"})

    # -- local list -------------------------------------------------------------------------------------
    def version(self, list_enabled: bool) -> int:
        return self.list_version if list_enabled else -1

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
        changes = []
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
            changes.append((tag, clean))
        if update_type == "Differential":
            if version <= self.list_version:
                return "VersionMismatch"
            new_entries = {}
            for k in self.entries:
                new_entries[k] = self.entries[k]
        else:
            new_entries = {}
        for tag, clean in changes:
            if clean is None:
                new_entries.pop(tag, None)
            else:
                new_entries[tag] = clean
        if len(new_entries) > max_total:
            return "Failed"
        self.entries = new_entries
        self.list_version = version
        self._save_list()
        # ids now managed by the list leave the cache (§3.5.1: the list takes precedence)
        gone = [tag for tag in self.entries if tag in self.cache]
        if gone:
            self._change({"o": "u", "k": gone})
        return "Accepted"
