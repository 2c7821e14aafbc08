"""Keeps each charger's OCPP 1.6 Local Authorization List in step with the gateway's token store.

At boot the gateway learns the charger's support and size limits (GetConfiguration: LocalAuthListEnabled,
LocalAuthListMaxLength, SendLocalListMaxLength, SupportedFeatureProfiles) and its list version
(GetLocalListVersion), then sends SendLocalList:
- Full when the charger's version differs from the one the store says it was sent, after a Failed /
  VersionMismatch answer, when the changes are no longer logged, or when the list had to be truncated;
- Differential with only the changed tokens otherwise;
- chunked to SendLocalListMaxLength: a Full list larger than one chunk is a Full first chunk followed by
  Differential chunks, all with the target version. The version the charger holds is stored only after the last
  chunk was accepted (NULL while in progress), so an interrupted transfer is redone as Full.

When the site list is larger than the charger's LocalAuthListMaxLength, `rank_for_charger` chooses what it gets
(recently presented tokens first, Accepted before others; docs/authorization.md "Chargers' local lists"), the
entries go out best first, and the number left out is logged and stored (`auth_charger_lists.left_out`).

The store's local-list revision (bumped by every eMSP list apply, CLI and config change) says what a charger must
hold; the listVersions sent to a charger simply count up from the one it holds (one per chunk: chargers refuse a
Differential that is not newer), and the store keeps, per charger, the listVersion it holds and the revision that
version carries.
All calls go through ChargerCommands, from this module's own per-charger tasks, never from a message handler.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.commands import ChargerCommands
from gateway.errors import ChargegateError
from gateway.store import Store

log = logging.getLogger("chargegate.auth.lists")

CONFIG_KEYS: Final = [
    "LocalAuthListEnabled",
    "LocalAuthListMaxLength",
    "SendLocalListMaxLength",
    "SupportedFeatureProfiles",
]
# When a charger does not report LocalAuthListMaxLength; also the cap on what a charger may claim (it sizes a
# list we build in memory).
DEFAULT_MAX_LENGTH: Final = 10_000
MAX_MAX_LENGTH: Final = 200_000
# Entries per SendLocalList when the charger does not report SendLocalListMaxLength: small enough for any
# charger's websocket frame limit (~100 bytes per entry).
DEFAULT_SEND_MAX_LENGTH: Final = 250
# Timeout of each call to the charger (OCPP suggests 30 s for a CALL).
CALL_TIMEOUT_S: Final = 30.0
# After a failed sync (timeout, a charger answering Failed), retry after this long, doubling per failure up to
# RETRY_MAX_S: a broken charger costs a few calls an hour, a transient failure heals within seconds.
RETRY_AFTER_FAILURE_S: Final = 10.0
RETRY_MAX_S: Final = 600.0
# A token presented at a charger within this long is likely to be presented again (commuters, residents, fleets
# come back within days); older decisions say little. Ranks tokens for a list that does not fit the charger.
RECENT_S: Final = 30 * 86400.0

# (tier, status class, -last seen): smaller ranks first.
Rank = tuple[int, int, float]


def rank_for_charger(status: str, seen: ts.Seen | None) -> Rank:
    """Where a token goes in a list that does not fit the charger (smaller first). `status` is what the charger
    would be sent, `seen` when the token was last presented on the site (None: not within RECENT_S).

    0. revocations: the last answer this charger got for the token was Accepted, now it is not. The charger's own
       Authorization Cache may still hold that Accepted, and only a local-list entry overrides the cache (OCPP 1.6
       §3.5): leaving it out would let the charger accept the token while it cannot reach the gateway;
    1. presented at this charger recently: Accepted first, then the others, most recent first;
    2. presented elsewhere on the site recently: the same;
    3. the rest: Accepted first, then the others (in id order: the caller's iteration order)."""
    accepted = status == "Accepted"
    klass = 0 if accepted else 1
    if seen is not None and seen.here_at is not None:
        if not accepted and seen.here_status == "Accepted":
            return (0, 0, -seen.here_at)
        return (1, klass, -seen.here_at)
    if seen is not None:
        return (2, klass, -seen.site_at)
    return (3, klass, 0.0)


def select_for_charger(
    conn: sqlite3.Connection, charger_id: str, limit: int, now: float
) -> list[dict[str, Any]]:
    """At most `limit` entries for this charger, best first (`rank_for_charger`). Tokens presented at this charger
    are ranked in full (bounded by its decisions of RECENT_S); tokens presented elsewhere are looked up in order of
    recency until the Accepted ones fill the list; the rest is filled from the list in id order, Accepted in a first
    pass and the others in a second, each pass stopping once the list is full (so a mostly Accepted site list of
    millions costs about `limit` rows, not a scan)."""
    seen = ts.recent_tokens(conn, charger_id, now - RECENT_S)  # most recent on the site first

    def entry(tid: str) -> dict[str, Any] | None:
        return ts.charger_entry(ts.lookup_local(conn, tid), charger_id, now)

    # tiers 0 and 1: presented here
    ranked: list[tuple[Rank, str, dict[str, Any]]] = []
    for tid, s in seen.items():
        if s.here_at is not None and (e := entry(tid)) is not None:
            ranked.append((rank_for_charger(e["idTagInfo"]["status"], s), tid, e))
    ranked.sort(key=lambda r: (r[0], r[1]))
    out = [e for _, _, e in ranked[:limit]]
    # tier 2: presented elsewhere on the site, most recent first; Accepted, then the others
    if len(out) < limit:
        accepted: list[dict[str, Any]] = []
        others: list[dict[str, Any]] = []
        for tid, s in seen.items():
            if s.here_at is not None or (e := entry(tid)) is None:
                continue
            (accepted if e["idTagInfo"]["status"] == "Accepted" else others).append(e)
            if len(out) + len(accepted) >= limit:
                break  # the Accepted ones fill the list: the others would not get in
        out += accepted
        out += others[: max(limit - len(out), 0)]
        del out[limit:]
    # tier 3: the rest, in id order
    for want_accepted in (True, False):
        if len(out) >= limit:
            break
        for row in ts.iter_local(conn, now=now):
            if row.id in seen:
                continue
            e = ts.charger_entry(row.entries, charger_id, now)
            if e is None or (e["idTagInfo"]["status"] == "Accepted") != want_accepted:
                continue
            out.append(e)
            if len(out) >= limit:
                break
    return out


def _parse_config(result: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    keys = result.get("configurationKey")
    if isinstance(keys, list):
        for k in keys:
            if isinstance(k, dict) and isinstance(k.get("key"), str) and isinstance(k.get("value"), str):
                out[k["key"]] = k["value"]
    return out


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


class ChargerLists:
    def __init__(
        self,
        store: Store,
        service: AuthService,
        commands: ChargerCommands,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._commands = commands
        self._wall = wall
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._probe: set[str] = set()
        service.add_list_listener(self.notify_list_changed)

    # -- hooks ----------------------------------------------------------------------------------------------------
    async def on_charger_booted(self, charger_id: str) -> None:
        """Call after BootNotification was answered Accepted. Returns at once: the sync runs in its own task."""
        self._probe.add(charger_id)
        self._kick(charger_id)

    def notify_list_changed(self) -> None:
        """The token list changed: bring every connected charger up to date."""
        for cid in self._commands.connected():
            self._kick(cid)

    async def wait_idle(self) -> None:
        """Until no sync is running (tests, shutdown)."""
        while True:
            running = [t for t in self._tasks.values() if not t.done()]
            if not running:
                return
            await asyncio.gather(*running, return_exceptions=True)

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def _kick(self, charger_id: str) -> None:
        self._dirty.add(charger_id)
        task = self._tasks.get(charger_id)
        if task is None or task.done():
            self._tasks[charger_id] = asyncio.create_task(
                self._run(charger_id), name=f"local-list-{charger_id}"
            )

    async def _run(self, charger_id: str) -> None:
        failures = 0
        while charger_id in self._dirty:
            self._dirty.discard(charger_id)
            probe = charger_id in self._probe
            self._probe.discard(charger_id)
            try:
                outcome = await self.sync(charger_id, probe=probe)
                log.info("local list of %s: %s", charger_id, outcome)
                failures = 0
            except ChargegateError as e:
                failures += 1
                log.warning("local list sync of %s failed: %s", charger_id, e)
                await self._save_error(charger_id, str(e))
                if probe:
                    self._probe.add(charger_id)
                if charger_id not in self._commands.connected():
                    return  # it syncs again when it boots
                self._dirty.add(charger_id)
                await asyncio.sleep(min(RETRY_AFTER_FAILURE_S * 2 ** (failures - 1), RETRY_MAX_S))

    # -- the sync -------------------------------------------------------------------------------------------------
    async def _call(self, charger_id: str, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._commands.call(charger_id, action, payload, CALL_TIMEOUT_S)

    async def sync(self, charger_id: str, *, probe: bool = False) -> str:
        """Bring one charger's local list up to date; returns what was done (for logs and tests)."""
        state = self._store.read(lambda c: ts.charger_list_state(c, charger_id))
        if probe or state is None:
            state = await self._probe_charger(charger_id, state)
        if not state.supported:
            return "local list not supported"
        if not state.enabled:
            return "local list disabled on the charger (LocalAuthListEnabled=false)"
        res = await self._call(charger_id, "GetLocalListVersion", {})
        charger_version = res.get("listVersion")
        if not isinstance(charger_version, int) or isinstance(charger_version, bool):
            raise ChargegateError(f"{charger_id}: GetLocalListVersion answered {res!r}")
        if charger_version < 0:
            await self._save(replace(state, supported=False))
            return "local list not supported (listVersion -1)"
        # on a worker thread (its own read connection): a list for a large site must not hold up the event loop
        plan = await asyncio.to_thread(
            self._store.read, lambda c: self._plan(c, charger_id, state, charger_version)
        )
        if plan is None:
            return f"in sync at version {charger_version}"
        kind, revision, entries, left_out = plan
        # every SendLocalList carries a higher listVersion than the charger holds (chargers answer VersionMismatch
        # to a Differential that is not newer), so a transfer of n chunks uses n consecutive versions
        base = max(charger_version, state.version or 0)
        if kind == "Differential":
            status, base = await self._send(charger_id, state, "Differential", base, entries)
            if status == "Accepted":
                await self._save(replace(state, version=base, revision=revision, last_error=None))
                return f"differential to version {base} (revision {revision}): {len(entries)} changes"
            if status == "NotSupported":
                await self._save(replace(state, supported=False, last_error="NotSupported"))
                return "local list not supported (SendLocalList NotSupported)"
            log.info("differential list to %s answered %s: sending the full list", charger_id, status)
            kind, revision, entries, left_out = await asyncio.to_thread(
                self._store.read, lambda c: self._full_plan(c, charger_id, state)
            )
        status = "?"
        truncated = left_out > 0
        for attempt in (1, 2):
            status, base = await self._send(charger_id, state, "Full", base, entries)
            if status == "Accepted":
                await self._save(
                    replace(
                        state,
                        version=base,
                        revision=revision,
                        truncated=truncated,
                        left_out=left_out,
                        last_error=None,
                    )
                )
                suffix = (
                    f", truncated to LocalAuthListMaxLength={state.max_length}: {left_out} tokens left out "
                    "(recently presented and Accepted ones kept)"
                    if truncated
                    else ""
                )
                return f"full list version {base} (revision {revision}): {len(entries)} entries{suffix}"
            if status == "NotSupported":
                await self._save(replace(state, supported=False, last_error="NotSupported"))
                return "local list not supported (SendLocalList NotSupported)"
            log.warning("full list to %s answered %s (attempt %d)", charger_id, status, attempt)
        await self._save(replace(state, version=None, revision=None, last_error=f"SendLocalList {status}"))
        raise ChargegateError(f"{charger_id}: SendLocalList Full answered {status} twice")

    async def _probe_charger(self, charger_id: str, old: ts.ChargerListState | None) -> ts.ChargerListState:
        res = await self._call(charger_id, "GetConfiguration", {"key": CONFIG_KEYS})
        cfg = _parse_config(res)
        profiles = cfg.get("SupportedFeatureProfiles")
        supported: bool | None = None
        if profiles is not None:
            supported = "LocalAuthListManagement" in [p.strip() for p in profiles.split(",")]
        enabled_raw = cfg.get("LocalAuthListEnabled")
        enabled = None if enabled_raw is None else enabled_raw.strip().lower() == "true"
        if supported is None:
            supported = enabled is not None  # the key exists only where the feature does
        max_length = min(max(_int(cfg.get("LocalAuthListMaxLength"), DEFAULT_MAX_LENGTH), 0), MAX_MAX_LENGTH)
        send_max = max(_int(cfg.get("SendLocalListMaxLength"), DEFAULT_SEND_MAX_LENGTH), 1)
        state = ts.ChargerListState(
            charger_id=charger_id,
            supported=supported,
            enabled=True if enabled is None else enabled,
            max_length=max_length,
            send_max_length=send_max,
            version=old.version if old else None,
            revision=old.revision if old else None,
            truncated=old.truncated if old else False,
            last_error=None,
            left_out=old.left_out if old else 0,
        )
        await self._save(state)
        return state

    def _plan(
        self, conn: sqlite3.Connection, charger_id: str, state: ts.ChargerListState, charger_version: int
    ) -> tuple[str, int, list[dict[str, Any]], int] | None:
        """(kind, revision, entries, tokens left out) or None when the charger is in sync."""
        conn.execute("BEGIN")  # one snapshot for revision, changes and entries
        try:
            revision = ts.meta(conn, "revision")
            if state.version is not None and state.revision is not None and charger_version == state.version:
                if state.revision == revision:
                    return None
                ids = ts.changes_since(conn, state.revision)
                if ids is not None and not state.truncated and len(ids) <= (state.max_length or 0):
                    now = self._wall()
                    entries = []
                    for i in ids:
                        e = ts.charger_entry(ts.lookup_local(conn, i), charger_id, now)
                        entries.append(e if e is not None else {"idTag": i})  # no idTagInfo = remove
                    return "Differential", revision, entries, 0
            return self._full_plan(conn, charger_id, state)
        finally:
            conn.execute("COMMIT")

    def _full_plan(
        self, conn: sqlite3.Connection, charger_id: str, state: ts.ChargerListState
    ) -> tuple[str, int, list[dict[str, Any]], int]:
        """The Full list: every token in id order when it fits LocalAuthListMaxLength, else the best
        `select_for_charger` ones. Returns (kind, revision, entries, tokens left out)."""
        revision = ts.meta(conn, "revision")
        limit = state.max_length if state.max_length is not None else DEFAULT_MAX_LENGTH
        now = self._wall()
        total = ts.count_for_charger(conn, charger_id, now)
        if total <= limit:
            entries: list[dict[str, Any]] = []
            for row in ts.iter_local(conn, now=now):
                e = ts.charger_entry(row.entries, charger_id, now)
                if e is not None:
                    entries.append(e)
                    if len(entries) > limit:
                        break  # the count was wrong (a bug): rank instead of sending a list the charger refuses
            else:
                return "Full", revision, entries, 0
            total = max(total, len(entries))
        entries = select_for_charger(conn, charger_id, limit, now)
        return "Full", revision, entries, max(total - len(entries), 1)

    async def _send(
        self, charger_id: str, state: ts.ChargerListState, kind: str, base: int, entries: list[dict[str, Any]]
    ) -> tuple[str, int]:
        """SendLocalList in chunks with listVersions base+1, base+2, ...; the first chunk carries `kind`, the rest
        are Differential. Returns (status of the first chunk not Accepted, or Accepted; the last version used)."""
        await self._save(
            replace(state, version=None, revision=None)
        )  # in progress: an interruption forces Full
        size = state.send_max_length or DEFAULT_SEND_MAX_LENGTH
        chunks = [entries[i : i + size] for i in range(0, len(entries), size)] or [[]]
        version = base
        for n, chunk in enumerate(chunks):
            version += 1
            payload: dict[str, Any] = {
                "listVersion": version,
                "updateType": kind if n == 0 else "Differential",
            }
            if chunk or kind == "Full":
                payload["localAuthorizationList"] = chunk
            res = await self._call(charger_id, "SendLocalList", payload)
            status = res.get("status")
            if status != "Accepted":
                return str(status), version
        return "Accepted", version

    async def _save(self, state: ts.ChargerListState) -> None:
        now = self._wall()
        await self._store.write(lambda c: ts.save_charger_list_state(c, state, now))

    async def _save_error(self, charger_id: str, error: str) -> None:
        def upd(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE auth_charger_lists SET last_error = ? WHERE charger_id = ?", (error[:200], charger_id)
            )

        await self._store.write(upd)
