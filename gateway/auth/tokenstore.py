"""The token store's tables and queries (SQLite; functions take the caller's connection).

Tables (component 'auth'):
- auth_meta: counters. `list_version` = the eMSP list version applied; `active_gen` = the generation of
  auth_list rows that is live; `revision` = bumped by every change of the local list (eMSP list or manual tokens),
  it is the listVersion sent to chargers; `full_revision` = revision of the last full snapshot (a charger older
  than it needs a Full list); `changes_floor` = oldest revision still in auth_changes.
- auth_list: the eMSP local list, keyed (gen, id). A full snapshot is written into generation active_gen+1 in
  chunks, each a short job on the store's bulk lane (one set-based statement over a JSON text: `insert_list_json`;
  chargers' writes go first), then made live in one tiny ordinary transaction; the old generation is deleted
  afterwards, also in chunks.
- auth_list_delta: a differential, staged under the version it brings (not live), made live by one small ordinary
  write (auth_meta `delta_live` = its version: lookups read it before auth_list), then merged into auth_list in
  slices on the bulk lane (`stage_differential`, `activate_differential`, `merge_differential_chunk`).
- auth_manual: tokens added by the operator (CLI) or the config's allow-list (origin 'config').
- auth_cache: results of online authorizations (never a token of the local list).
- auth_changes: (revision, id) of every differential / manual change, for differential charger-list updates.
- auth_decisions: every decision, with source, method, reason and latency.
- auth_offline_sessions: sessions started under the offline policy, re-checked with the eMSP later.
- auth_charger_lists: per charger: local-list support, size limits, the list version it holds and, when its
  LocalAuthListMaxLength is smaller than the site list, how many tokens were left out (`left_out`).
- auth_overrides: operator overrides (`chargegate tokens allow`): the token is Accepted until `until` whatever the
  eMSP list says (gateway/auth/overrides.py); a row past its `until` no longer counts and is deleted by the
  gateway's supervisor.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_quote  # C: a quoted, escaped JSON string literal
from typing import Any

from gateway import events
from gateway.auth.decision import (
    ActiveSession,
    AuthDecision,
    CacheEntry,
    LocalEntry,
    live_entries,
    merge_local,
)
from gateway.auth.tokens import (
    TokenError,
    TokenSpec,
    decode_chargers,
    encode_chargers,
    format_expiry,
    mask,
)
from gateway.store import register_migrations

MIGRATIONS = [
    """
    CREATE TABLE auth_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO auth_meta (key, value) VALUES
        ('list_version', 0), ('active_gen', 1), ('revision', 0), ('full_revision', 0), ('changes_floor', 0);
    CREATE TABLE auth_list (
        gen INTEGER NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Accepted', 'Blocked', 'Expired', 'Invalid')),
        expiry REAL,
        parent_id TEXT,
        chargers TEXT,
        list_version INTEGER NOT NULL,
        PRIMARY KEY (gen, id)
    ) WITHOUT ROWID;
    CREATE TABLE auth_manual (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('Accepted', 'Blocked', 'Expired', 'Invalid')),
        expiry REAL,
        parent_id TEXT,
        chargers TEXT,
        origin TEXT NOT NULL DEFAULT 'cli',
        note TEXT,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE auth_cache (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        expiry REAL,
        parent_id TEXT,
        cached_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX auth_cache_by_age ON auth_cache (cached_at);
    CREATE TABLE auth_changes (revision INTEGER NOT NULL, id TEXT NOT NULL);
    CREATE INDEX auth_changes_by_revision ON auth_changes (revision);
    CREATE TABLE auth_decisions (
        id INTEGER PRIMARY KEY,
        decided_at REAL NOT NULL,
        charger_id TEXT NOT NULL,
        id_tag TEXT NOT NULL,
        purpose TEXT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        auth_method TEXT NOT NULL,
        reason TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        transaction_id INTEGER
    );
    CREATE INDEX auth_decisions_by_tx ON auth_decisions (transaction_id) WHERE transaction_id IS NOT NULL;
    CREATE TABLE auth_offline_sessions (
        transaction_id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        id_tag TEXT NOT NULL,
        limited INTEGER NOT NULL,
        max_kwh REAL,
        max_minutes REAL,
        started_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'confirmed', 'stopping', 'flagged', 'ended')),
        checked_at REAL,
        note TEXT
    );
    CREATE INDEX auth_offline_sessions_open ON auth_offline_sessions (state) WHERE state != 'ended';
    CREATE TABLE auth_charger_lists (
        charger_id TEXT PRIMARY KEY,
        supported INTEGER,
        enabled INTEGER,
        max_length INTEGER,
        send_max_length INTEGER,
        version INTEGER,
        revision INTEGER,
        truncated INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        last_error TEXT
    );
    """,
    """
    CREATE TABLE auth_overrides (
        id TEXT PRIMARY KEY,
        until REAL NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX auth_overrides_by_until ON auth_overrides (until);
    ALTER TABLE auth_charger_lists ADD COLUMN left_out INTEGER NOT NULL DEFAULT 0;
    -- recently seen tokens rank first in a charger's truncated local list; also serves the retention prune
    CREATE INDEX auth_decisions_by_time ON auth_decisions (decided_at);
    """,
    """
    -- a differential: staged here (version = the list version it brings), made live by one small write
    -- (auth_meta 'delta_live' = its version), then merged into auth_list in slices (see apply_differential)
    CREATE TABLE auth_list_delta (
        version INTEGER NOT NULL,
        id TEXT NOT NULL,
        status TEXT CHECK (status IS NULL OR status IN ('Accepted', 'Blocked', 'Expired', 'Invalid')),
        expiry REAL,
        parent_id TEXT,
        chargers TEXT,
        removed INTEGER NOT NULL DEFAULT 0,
        upserted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (version, id)
    ) WITHOUT ROWID;
    INSERT INTO auth_meta (key, value) VALUES ('delta_live', 0);
    """,
]
register_migrations("auth", MIGRATIONS)

# Revisions kept in auth_changes; a charger further behind gets a Full list.
MAX_CHANGE_REVISIONS = 512


def meta(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM auth_meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO auth_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def bump_revision(
    conn: sqlite3.Connection, changed: Iterable[str] | None, *, changed_json: str | None = None
) -> int:
    """Record one change of the local list; `changed` None (and no `changed_json`, a JSON array of the ids) = a full
    replacement."""
    rev = meta(conn, "revision") + 1
    set_meta(conn, "revision", rev)
    if changed is None and changed_json is None:
        set_meta(conn, "full_revision", rev)
        conn.execute("DELETE FROM auth_changes")
        set_meta(conn, "changes_floor", rev)
        return rev
    if changed is not None:
        conn.executemany("INSERT INTO auth_changes (revision, id) VALUES (?, ?)", ((rev, i) for i in changed))
    if changed_json is not None:
        conn.execute(
            "INSERT INTO auth_changes (revision, id) SELECT ?, value FROM json_each(?)", (rev, changed_json)
        )
    floor = rev - MAX_CHANGE_REVISIONS
    if floor > meta(conn, "changes_floor"):
        conn.execute("DELETE FROM auth_changes WHERE revision <= ?", (floor,))
        set_meta(conn, "changes_floor", floor)
    return rev


# -- lookups ------------------------------------------------------------------------------------------------------
# The eMSP list entry is the live differential's (auth_list_delta, version = auth_meta 'delta_live') when it has one
# for the id (a removal: none), else auth_list's at the live generation.
_DELTA_LIVE = "(SELECT value FROM auth_meta WHERE key = 'delta_live')"
_LOOKUP_LOCAL = (
    "SELECT id, status, expiry, parent_id, chargers, version, 'local_list', NULL FROM auth_list_delta "
    f"WHERE version = {_DELTA_LIVE} AND id = :id AND removed = 0 "
    "UNION ALL SELECT id, status, expiry, parent_id, chargers, list_version, 'local_list', NULL FROM auth_list "
    "WHERE gen = (SELECT value FROM auth_meta WHERE key = 'active_gen') AND id = :id "
    f"AND NOT EXISTS (SELECT 1 FROM auth_list_delta WHERE version = {_DELTA_LIVE} AND id = :id) "
    "UNION ALL SELECT id, status, expiry, parent_id, chargers, NULL, 'manual', NULL FROM auth_manual WHERE id = :id "
    "UNION ALL SELECT id, 'Accepted', until, NULL, NULL, NULL, 'override', reason FROM auth_overrides WHERE id = :id"
)


def lookup_local(conn: sqlite3.Connection, token_id: str) -> tuple[LocalEntry, ...]:
    """The token's entries in the eMSP list, the manual tokens and the operator overrides (an override past its end
    included: `decision.live_entries` drops it)."""
    return tuple(
        LocalEntry(
            id=r[0],
            status=r[1],
            expiry=r[2],
            parent_id=r[3],
            chargers=decode_chargers(r[4]),
            source=r[6],
            list_version=r[5],
            note=r[7],
        )
        for r in conn.execute(_LOOKUP_LOCAL, {"id": token_id})
    )


def lookup_cache(conn: sqlite3.Connection, token_id: str) -> CacheEntry | None:
    r = conn.execute(
        "SELECT id, status, expiry, parent_id, cached_at FROM auth_cache WHERE id = ?", (token_id,)
    ).fetchone()
    if r is None:
        return None
    return CacheEntry(id=r[0], status=r[1], expiry=r[2], parent_id=r[3], cached_at=r[4])


def put_cache(
    conn: sqlite3.Connection,
    token_id: str,
    status: str,
    expiry: float | None,
    parent: str | None,
    now: float,
    max_entries: int,
) -> bool:
    """Cache an online answer, unless the token is (now) in the local list (an operator override does not count: it
    is temporary). A ConcurrentTx answer is about a transaction, not the token: never cached. Returns whether it was
    cached."""
    if status == "ConcurrentTx" or any(e.source != "override" for e in lookup_local(conn, token_id)):
        return False
    conn.execute(
        "INSERT INTO auth_cache (id, status, expiry, parent_id, cached_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET status = excluded.status, expiry = excluded.expiry, "
        "parent_id = excluded.parent_id, cached_at = excluded.cached_at",
        (token_id, status, expiry, parent, now),
    )
    excess = int(conn.execute("SELECT COUNT(*) FROM auth_cache").fetchone()[0]) - max_entries
    if excess > 0:
        conn.execute(
            "DELETE FROM auth_cache WHERE id IN (SELECT id FROM auth_cache ORDER BY cached_at LIMIT ?)",
            (excess,),
        )
    return True


def limited_active(conn: sqlite3.Connection) -> int:
    """accept_limited sessions still running (the transactions table says whether a session is active)."""
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM auth_offline_sessions o JOIN transactions t ON t.id = o.transaction_id "
            "WHERE o.limited = 1 AND o.state != 'ended' AND t.state = 'active'"
        ).fetchone()[0]
    )


# Most active transactions of one token read for the ConcurrentTx check (one is enough to refuse; a few name them).
MAX_ACTIVE_SESSIONS_READ = 16


def active_sessions(conn: sqlite3.Connection, token_id: str, since: float) -> tuple[ActiveSession, ...]:
    """The token's active transactions whose StartTransaction was stored at or after `since` (gateway wall clock).
    transactions.id_tag is the idTag as the charger sent it: compared normalized. Scans the active transactions
    only (index transactions_by_state): a site has a few hundred at most."""
    rows = conn.execute(
        "SELECT id, charger_id, connector_id, started_at FROM transactions "
        "WHERE state = 'active' AND started_at >= ? AND upper(trim(id_tag)) = ? ORDER BY started_at LIMIT ?",
        (since, token_id, MAX_ACTIVE_SESSIONS_READ),
    ).fetchall()
    return tuple(ActiveSession(int(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in rows)


def record_decision(conn: sqlite3.Connection, d: AuthDecision, transaction_id: int | None) -> None:
    """The auth_decisions row and its AUTH_DECISION outbox event, in the caller's transaction."""
    conn.execute(
        "INSERT INTO auth_decisions (decided_at, charger_id, id_tag, purpose, status, source, auth_method, "
        "reason, latency_ms, transaction_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d.decided_at,
            d.charger_id,
            d.id_tag,
            d.purpose,
            d.status,
            d.source,
            d.auth_method,
            d.reason,
            d.latency_ms,
            transaction_id,
        ),
    )
    events.emit(
        conn,
        events.AUTH_DECISION,
        decision_body(d, transaction_id),
        charger_id=None if d.charger_id == "*" else d.charger_id,
    )


def decision_body(d: AuthDecision, transaction_id: int | None) -> dict[str, Any]:
    """The AUTH_DECISION event body (docs/authorization.md)."""
    return {
        "charger_id": d.charger_id,
        "id_tag": d.id_tag,
        "purpose": d.purpose,
        "status": d.status,
        "source": d.source,
        "auth_method": d.auth_method,
        "reason": d.reason,
        "latency_ms": d.latency_ms,
        "transaction_id": transaction_id,
        "decided_at": format_expiry(d.decided_at),
        "expiry_date": d.expiry_date,
        "parent_id_tag": d.parent_id_tag,
        "limits": None
        if d.limits is None
        else {"max_kwh": d.limits.max_kwh, "max_minutes": d.limits.max_minutes},
    }


def session_tokens(conn: sqlite3.Connection, transaction_id: int) -> tuple[str, str | None] | None:
    r = conn.execute(
        "SELECT id_tag, parent_id_tag FROM transactions WHERE id = ?", (transaction_id,)
    ).fetchone()
    if r is None:
        return None
    return str(r[0]).strip().upper(), (None if r[1] is None else str(r[1]).strip().upper())


# -- manual tokens --------------------------------------------------------------------------------------------------
def upsert_manual(
    conn: sqlite3.Connection,
    specs: Iterable[TokenSpec],
    now: float,
    origin: str = "cli",
    note: str | None = None,
) -> int:
    ids = []
    rows = []
    for s in specs:
        assert s.status is not None
        ids.append(s.id)
        rows.append((s.id, s.status, s.expiry, s.parent_id, encode_chargers(s.chargers), origin, note, now))
    conn.executemany(
        "INSERT INTO auth_manual (id, status, expiry, parent_id, chargers, origin, note, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
        "expiry = excluded.expiry, parent_id = excluded.parent_id, chargers = excluded.chargers, "
        "origin = excluded.origin, note = COALESCE(excluded.note, auth_manual.note), updated_at = excluded.updated_at",
        rows,
    )
    conn.executemany("DELETE FROM auth_cache WHERE id = ?", ((i,) for i in ids))
    if ids:
        bump_revision(conn, ids)
    return len(ids)


def remove_manual(conn: sqlite3.Connection, ids: Iterable[str]) -> int:
    removed = [i for i in ids if conn.execute("DELETE FROM auth_manual WHERE id = ?", (i,)).rowcount]
    if removed:
        bump_revision(conn, removed)
    return len(removed)


def reconcile_config_tokens(conn: sqlite3.Connection, allow: Iterable[str], now: float) -> int:
    """Make the manual tokens of origin 'config' equal the config's allow-list; returns how many changed."""
    want = set(allow)
    have = {r[0]: r[1] for r in conn.execute("SELECT id, status FROM auth_manual WHERE origin = 'config'")}
    changed = [i for i in want if have.get(i) != "Accepted" or i not in have]
    # a CLI entry for the same id wins over the config (the operator touched it last)
    cli_ids = {r[0] for r in conn.execute("SELECT id FROM auth_manual WHERE origin != 'config'")}
    changed = [i for i in changed if i not in cli_ids]
    gone = [i for i in have if i not in want]
    if changed:
        upsert_manual(conn, (TokenSpec(id=i, status="Accepted") for i in changed), now, origin="config")
    if gone:
        remove_manual(conn, gone)
    return len(changed) + len(gone)


# -- the eMSP list --------------------------------------------------------------------------------------------------
def _list_rows(gen: int, version: int, specs: Iterable[TokenSpec]) -> Iterator[tuple[Any, ...]]:
    for s in specs:
        yield (gen, s.id, s.status, s.expiry, s.parent_id, encode_chargers(s.chargers), version)


def insert_list_chunk(conn: sqlite3.Connection, gen: int, version: int, specs: list[TokenSpec]) -> None:
    conn.executemany(
        "INSERT INTO auth_list (gen, id, status, expiry, parent_id, chargers, list_version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gen, id) DO UPDATE SET status = excluded.status, "
        "expiry = excluded.expiry, parent_id = excluded.parent_id, chargers = excluded.chargers, "
        "list_version = excluded.list_version",
        _list_rows(gen, version, specs),
    )


def row_json(s: TokenSpec) -> str:
    """One entry as the JSON array `insert_list_json` reads: [id, status, expiry, parent_id, chargers]. Builds str
    objects only, which the cyclic garbage collector does not track: a million entries passing through here do
    not trigger collections (while a caller holds a million-entry input list, each full collection traverses it:
    ~35 ms measured with 1,000,000 entries, a stall of the event loop every few thousand entries when every entry
    left a tracked list or TokenSpec behind until its chunk was written)."""
    if s.expiry is None:
        expiry = "null"
    elif math.isfinite(s.expiry):
        expiry = repr(float(s.expiry))  # the JSON form of a finite float (json.dumps writes the same)
    else:
        raise TokenError(f"token {mask(s.id)}: expiry is not a finite time")
    chargers = encode_chargers(s.chargers)
    if chargers is not None and not chargers.isascii():
        try:
            chargers.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (JSON "\ud800"): SQLite would store bytes that no later read can decode
            raise TokenError(f"token {mask(s.id)}: chargers must be valid Unicode text") from None
    return (
        f"[{_json_str(s.id)},{_json_str(s.status)},{expiry},{_json_str(s.parent_id)},{_json_str(chargers)}]"
    )


def _json_str(v: str | None) -> str:
    return "null" if v is None else _json_quote(v)


def rows_json(rows: list[str]) -> str:
    """The JSON array of `row_json` rows."""
    return "[" + ",".join(rows) + "]"


def list_rows_json(specs: Iterable[TokenSpec]) -> str:
    return rows_json([row_json(s) for s in specs])


class ListRows:
    """Collects a chunk of a full list's validated entries as `row_json` fragments (nothing the GC tracks)."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def add(self, s: TokenSpec) -> None:
        self.rows.append(row_json(s))

    def text(self) -> str:
        return rows_json(self.rows)


_INSERT_JSON = (
    "INSERT INTO auth_list (gen, id, status, expiry, parent_id, chargers, list_version) "
    "SELECT :gen, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'), "
    "json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]'), :version FROM json_each(:rows) AS j WHERE true "
    "ON CONFLICT (gen, id) DO UPDATE SET status = excluded.status, expiry = excluded.expiry, "
    "parent_id = excluded.parent_id, chargers = excluded.chargers, list_version = excluded.list_version"
)


def insert_list_json(conn: sqlite3.Connection, gen: int, version: int, rows: str) -> None:
    """insert_list_chunk for rows made by `list_rows_json`: ONE SQLite statement for the whole chunk, so the writer
    thread does not hold the GIL while it runs (executemany takes it back for every row, and the event loop waits
    for it each time), and faster: 12 ms vs 35 ms with executemany for 5,000 rows measured."""
    conn.execute(_INSERT_JSON, {"gen": gen, "version": version, "rows": rows})


def delete_generation_chunk(conn: sqlite3.Connection, gen: int, limit: int) -> int:
    return conn.execute(
        "DELETE FROM auth_list WHERE gen = ?1 AND id IN (SELECT id FROM auth_list WHERE gen = ?1 LIMIT ?2)",
        (gen, limit),
    ).rowcount


def stale_generations(conn: sqlite3.Connection) -> list[int]:
    """Generations other than the live one (an old one being deleted, a new one interrupted). Two index probes,
    not a scan: at most one generation on each side of the live one exists."""
    active = meta(conn, "active_gen")
    out = []
    for q in ("SELECT MIN(gen) FROM auth_list WHERE gen < ?", "SELECT MAX(gen) FROM auth_list WHERE gen > ?"):
        r = conn.execute(q, (active,)).fetchone()
        if r is not None and r[0] is not None:
            out.append(int(r[0]))
    return out


def activate_generation(conn: sqlite3.Connection, gen: int, version: int) -> int:
    set_meta(conn, "active_gen", gen)
    # a differential not merged yet belonged to the old generation (the service merges it before a full list): its
    # rows are no longer live, and stale_differentials finds them for deletion
    set_meta(conn, "delta_live", 0)
    set_meta(conn, "list_version", version)
    # local-list tokens never stay in the authorization cache
    conn.execute(
        "DELETE FROM auth_cache WHERE EXISTS (SELECT 1 FROM auth_list l WHERE l.gen = ? AND l.id = auth_cache.id)",
        (gen,),
    )
    return bump_revision(conn, None)


@dataclass(frozen=True, slots=True)
class Differential:
    """A validated differential as JSON texts (`DifferentialRows`), built off the writer thread."""

    upserts: str  # rows_json of the entries with a status
    removals: str  # JSON array of the ids to delete
    changed: str  # JSON array of every id of the differential (auth_changes)


class DifferentialRows:
    """Collects a differential's validated entries as str fragments (see row_json: nothing the GC tracks)."""

    def __init__(self) -> None:
        self.upserts: list[str] = []
        self.removals: list[str] = []
        self.changed: list[str] = []

    def add(self, s: TokenSpec) -> None:
        quoted = _json_quote(s.id)
        self.changed.append(quoted)
        if s.status is None:
            self.removals.append(quoted)
        else:
            self.upserts.append(row_json(s))

    def texts(self) -> Differential:
        return Differential(rows_json(self.upserts), rows_json(self.removals), rows_json(self.changed))


def differential_json(specs: Iterable[TokenSpec]) -> Differential:
    rows = DifferentialRows()
    for s in specs:
        rows.add(s)
    return rows.texts()


_STAGE_UPSERTS = (
    "INSERT INTO auth_list_delta (version, id, status, expiry, parent_id, chargers, upserted) "
    "SELECT :version, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'), "
    "json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]'), 1 FROM json_each(:rows) AS j WHERE true "
    "ON CONFLICT (version, id) DO UPDATE SET status = excluded.status, expiry = excluded.expiry, "
    "parent_id = excluded.parent_id, chargers = excluded.chargers, upserted = 1"
)
_STAGE_REMOVALS = (
    "INSERT INTO auth_list_delta (version, id, removed) SELECT :version, j.value, 1 FROM json_each(:ids) AS j "
    "WHERE true ON CONFLICT (version, id) DO UPDATE SET removed = 1"
)


def stage_differential(conn: sqlite3.Connection, version: int, diff: Differential) -> None:
    """Stage a slice of a differential into auth_list_delta under its version: not live (decisions, charger lists
    and listings read only the version auth_meta 'delta_live' names). Two set-based statements over JSON texts.
    Same outcome as the one-transaction apply for any order of slices: a later upsert of an id wins over an earlier
    one, a removal wins over any upsert of the same id (`removed`), and an id upserted anywhere leaves the
    authorization cache (`upserted`)."""
    conn.execute(_STAGE_UPSERTS, {"version": version, "rows": diff.upserts})
    conn.execute(_STAGE_REMOVALS, {"version": version, "ids": diff.removals})


class DifferentialRefused(TokenError):
    """The applied list changed between the checks and the activation (another process applied one)."""


def activate_differential(conn: sqlite3.Connection, version: int, base_version: int | None) -> int:
    """Make the staged differential `version` live, atomically: a few set-based statements whose cost does not
    grow with the size of auth_list (the rows stay in auth_list_delta, which lookups consult first; the merge into
    auth_list follows in slices: merge_differential_chunk). Returns the new revision. `base_version` None: no check
    (a caller that holds the applied version fixed)."""
    current = meta(conn, "list_version")
    if base_version is not None and current != base_version:
        raise DifferentialRefused(
            f"base version {base_version} does not match the applied list version {current}: full resync required"
        )
    if meta(conn, "delta_live"):
        raise DifferentialRefused("the previous differential is still being merged: try again")
    conn.execute(
        "DELETE FROM auth_cache WHERE id IN (SELECT id FROM auth_list_delta WHERE version = ? AND upserted = 1)",
        (version,),
    )
    set_meta(conn, "delta_live", version)
    set_meta(conn, "list_version", version)
    rev = bump_revision(conn, ())
    conn.execute(
        "INSERT INTO auth_changes (revision, id) SELECT ?, id FROM auth_list_delta WHERE version = ?",
        (rev, version),
    )
    return rev


def merge_differential_chunk(conn: sqlite3.Connection, limit: int) -> int:
    """Move up to `limit` rows of the live differential into auth_list at the live generation (in id order), in one
    transaction: what a lookup answers does not change (the delta row was read first; now the auth_list row is, or
    none for a removal). The last chunk clears 'delta_live'. Returns the rows moved (0: nothing was live)."""
    live = meta(conn, "delta_live")
    if not live:
        return 0
    p: dict[str, Any] = {"v": live, "gen": meta(conn, "active_gen")}
    r = conn.execute(
        "SELECT id FROM auth_list_delta WHERE version = ? ORDER BY id LIMIT 1 OFFSET ?",
        (live, max(limit, 1) - 1),
    ).fetchone()
    where = "version = :v"
    if r is not None:
        where += " AND id <= :bound"
        p["bound"] = r[0]
    conn.execute(
        "INSERT INTO auth_list (gen, id, status, expiry, parent_id, chargers, list_version) "
        f"SELECT :gen, id, status, expiry, parent_id, chargers, version FROM auth_list_delta WHERE {where} "
        "AND removed = 0 ON CONFLICT (gen, id) DO UPDATE SET status = excluded.status, expiry = excluded.expiry, "
        "parent_id = excluded.parent_id, chargers = excluded.chargers, list_version = excluded.list_version",
        p,
    )
    conn.execute(
        f"DELETE FROM auth_list WHERE gen = :gen AND id IN (SELECT id FROM auth_list_delta WHERE {where} "
        "AND removed = 1)",
        p,
    )
    n = int(conn.execute(f"DELETE FROM auth_list_delta WHERE {where}", p).rowcount)
    if r is None:
        set_meta(conn, "delta_live", 0)
    return n


def stale_differentials(conn: sqlite3.Connection) -> list[int]:
    """Versions staged in auth_list_delta that are not live (a refused or interrupted differential, one dropped by
    a full list). The table holds one or two differentials at most (MAX_DIFFERENTIAL_TOKENS rows each): a short
    scan of its primary key."""
    live = meta(conn, "delta_live")
    return [
        int(r[0])
        for r in conn.execute("SELECT DISTINCT version FROM auth_list_delta WHERE version != ?", (live,))
    ]


def delete_staged_chunk(conn: sqlite3.Connection, version: int, limit: int) -> int:
    """Delete up to `limit` rows of a differential staged under `version` unless it is live; returns how many."""
    if version == meta(conn, "delta_live"):
        return 0
    return int(
        conn.execute(
            "DELETE FROM auth_list_delta WHERE version = ?1 AND id IN "
            "(SELECT id FROM auth_list_delta WHERE version = ?1 LIMIT ?2)",
            (version, limit),
        ).rowcount
    )


def apply_differential(conn: sqlite3.Connection, version: int, specs: list[TokenSpec] | Differential) -> int:
    """A whole differential in the caller's transaction (atomic): staged, made live and merged at once -- the same
    statements the service runs apart (stage slices on the store's bulk lane, activate in one short ordinary write,
    merge in slices). For small lists and tests; returns the new revision."""
    d = specs if isinstance(specs, Differential) else differential_json(specs)
    stage_differential(conn, version, d)
    rev = activate_differential(conn, version, None)
    while merge_differential_chunk(conn, 1 << 30):
        pass
    return rev


# -- listing --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    entries: tuple[LocalEntry, ...]


def _live_list(conn: sqlite3.Connection, after: str) -> Iterator[tuple[Any, ...]]:
    """The live eMSP list's rows (id, status, expiry, parent_id, chargers, list_version) after `after` in id order:
    auth_list at the live generation merged with the live differential not merged yet (its row replaces the
    auth_list row of the same id; a removal drops it)."""
    a = conn.execute(
        "SELECT id, status, expiry, parent_id, chargers, list_version FROM auth_list WHERE gen = ? AND id > ? "
        "ORDER BY id",
        (meta(conn, "active_gen"), after),
    )
    live = meta(conn, "delta_live")
    if not live:
        yield from a
        return
    d = conn.execute(
        "SELECT id, status, expiry, parent_id, chargers, version, removed FROM auth_list_delta "
        "WHERE version = ? AND id > ? ORDER BY id",
        (live, after),
    )
    ra = a.fetchone()
    rd = d.fetchone()
    while ra is not None or rd is not None:
        if rd is None or (ra is not None and ra[0] < rd[0]):
            yield tuple(ra)
            ra = a.fetchone()
            continue
        if ra is not None and ra[0] == rd[0]:
            ra = a.fetchone()
        if not rd[6]:
            yield tuple(rd[:6])
        rd = d.fetchone()


def iter_local(
    conn: sqlite3.Connection, after: str = "", limit: int | None = None, now: float | None = None
) -> Iterator[TokenRow]:
    """Every local-list token (eMSP list, manual and operator override entries, merged by id) in id order, starting
    after `after`. With `now`, overrides past their end are left out. A three-way merge of primary-key-ordered
    cursors: no sort, constant memory."""
    a = _live_list(conn, after)
    b = conn.execute(
        "SELECT id, status, expiry, parent_id, chargers FROM auth_manual WHERE id > ? ORDER BY id", (after,)
    )
    c = conn.execute(
        "SELECT id, until, reason FROM auth_overrides WHERE id > ? AND until > ? ORDER BY id",
        (after, float("-inf") if now is None else now),
    )
    ra = next(a, None)
    rb = b.fetchone()
    rc = c.fetchone()
    n = 0
    while ra is not None or rb is not None or rc is not None:
        if limit is not None and n >= limit:
            return
        entries: list[LocalEntry] = []
        key = min(r[0] for r in (ra, rb, rc) if r is not None)
        if ra is not None and ra[0] == key:
            entries.append(
                LocalEntry(ra[0], ra[1], ra[2], ra[3], decode_chargers(ra[4]), "local_list", ra[5])
            )
            ra = next(a, None)
        if rb is not None and rb[0] == key:
            entries.append(LocalEntry(rb[0], rb[1], rb[2], rb[3], decode_chargers(rb[4]), "manual"))
            rb = b.fetchone()
        if rc is not None and rc[0] == key:
            entries.append(LocalEntry(rc[0], "Accepted", rc[1], None, None, "override", None, rc[2]))
            rc = c.fetchone()
        n += 1
        yield TokenRow(key, tuple(entries))


def charger_entry(entries: tuple[LocalEntry, ...], charger_id: str, now: float) -> dict[str, Any] | None:
    """The OCPP local authorization list entry for this charger, or None when the token does not apply to it (all
    its eMSP-list / manual entries are restricted to other chargers, or only an ended override is left). An
    override's entry carries expiryDate = the override's end, so the charger stops honouring it on its own."""
    entries = live_entries(entries, now)
    base = tuple(e for e in entries if e.source != "override")
    applicable = tuple(e for e in base if e.chargers is None or charger_id in e.chargers)
    if base and not applicable:
        return None
    applicable += tuple(e for e in entries if e.source == "override")
    if not applicable:
        return None
    entry, status, _ = merge_local(applicable, charger_id, now)
    info: dict[str, Any] = {"status": status}
    exp = format_expiry(entry.expiry)
    if exp is not None:
        info["expiryDate"] = exp
    parent = entry.parent_id or next((e.parent_id for e in applicable if e.parent_id), None)
    if parent is not None:
        info["parentIdTag"] = parent
    return {"idTag": entry.id, "idTagInfo": info}


_APPLIES = "(chargers IS NULL OR instr(',' || chargers || ',', ',' || :cid || ',') > 0)"


def count_for_charger(conn: sqlite3.Connection, charger_id: str, now: float) -> int:
    """How many entries a complete local list for this charger holds (= the tokens `charger_entry` gives an entry
    for), counted in SQL: a full list needs no Python pass to find out whether it fits the charger."""
    params = {"gen": meta(conn, "active_gen"), "cid": charger_id, "now": now}
    live = meta(conn, "delta_live")
    if live:
        return _count_for_charger_with_delta(conn, {**params, "v": live})
    n_list = conn.execute(
        f"SELECT COUNT(*) FROM auth_list WHERE gen = :gen AND {_APPLIES}", params
    ).fetchone()[0]
    n_manual = conn.execute(
        f"SELECT COUNT(*) FROM auth_manual m WHERE {_APPLIES.replace('chargers', 'm.chargers')} AND NOT EXISTS "
        f"(SELECT 1 FROM auth_list l WHERE l.gen = :gen AND l.id = m.id AND {_APPLIES.replace('chargers', 'l.chargers')})",
        params,
    ).fetchone()[0]
    n_override = conn.execute(
        "SELECT COUNT(*) FROM auth_overrides o WHERE o.until > :now "
        "AND NOT EXISTS (SELECT 1 FROM auth_list l WHERE l.gen = :gen AND l.id = o.id) "
        "AND NOT EXISTS (SELECT 1 FROM auth_manual m WHERE m.id = o.id)",
        params,
    ).fetchone()[0]
    return int(n_list) + int(n_manual) + int(n_override)


def _count_for_charger_with_delta(conn: sqlite3.Connection, params: dict[str, Any]) -> int:
    """count_for_charger while a differential is live and not merged yet (a few seconds at most)."""
    in_delta = "EXISTS (SELECT 1 FROM auth_list_delta d WHERE d.version = :v AND d.id = {0})"
    applies_d = _APPLIES.replace("chargers", "d.chargers")
    live_applies = (
        "(EXISTS (SELECT 1 FROM auth_list_delta d WHERE d.version = :v AND d.id = {0} AND d.removed = 0 "
        f"AND {applies_d}) OR (NOT {in_delta} AND EXISTS (SELECT 1 FROM auth_list l WHERE l.gen = :gen "
        f"AND l.id = {{0}} AND {_APPLIES.replace('chargers', 'l.chargers')})))"
    )
    live_has = (
        "(EXISTS (SELECT 1 FROM auth_list_delta d WHERE d.version = :v AND d.id = {0} AND d.removed = 0) "
        f"OR (NOT {in_delta} AND EXISTS (SELECT 1 FROM auth_list l WHERE l.gen = :gen AND l.id = {{0}})))"
    )
    n_list = conn.execute(
        f"SELECT COUNT(*) FROM auth_list l WHERE l.gen = :gen AND {_APPLIES.replace('chargers', 'l.chargers')} "
        f"AND NOT {in_delta.format('l.id')}",
        params,
    ).fetchone()[0]
    n_delta = conn.execute(
        f"SELECT COUNT(*) FROM auth_list_delta d WHERE d.version = :v AND d.removed = 0 AND {applies_d}",
        params,
    ).fetchone()[0]
    n_manual = conn.execute(
        f"SELECT COUNT(*) FROM auth_manual m WHERE {_APPLIES.replace('chargers', 'm.chargers')} "
        f"AND NOT {live_applies.format('m.id')}",
        params,
    ).fetchone()[0]
    n_override = conn.execute(
        f"SELECT COUNT(*) FROM auth_overrides o WHERE o.until > :now AND NOT {live_has.format('o.id')} "
        "AND NOT EXISTS (SELECT 1 FROM auth_manual m WHERE m.id = o.id)",
        params,
    ).fetchone()[0]
    return int(n_list) + int(n_delta) + int(n_manual) + int(n_override)


@dataclass(frozen=True, slots=True)
class Seen:
    """When a token was last presented (an authorize / start / stop decision) at one charger and on the site."""

    here_at: float | None  # last decision at this charger
    here_status: str | None  # what it answered
    site_at: float  # last decision anywhere on the site (>= here_at)


# Most recently seen tokens read to rank a truncated charger list (the largest list a charger may claim).
MAX_RECENT_TOKENS = 200_000
_PRESENTED = "purpose IN ('authorize', 'start', 'stop')"


def recent_tokens(conn: sqlite3.Connection, charger_id: str, since: float) -> dict[str, Seen]:
    """Tokens presented on the site at or after `since`, with when (and how they were answered) at this charger."""
    site = conn.execute(
        f"SELECT id_tag, MAX(decided_at) AS t FROM auth_decisions WHERE decided_at >= ? AND {_PRESENTED} "
        "GROUP BY id_tag ORDER BY t DESC LIMIT ?",
        (since, MAX_RECENT_TOKENS),
    ).fetchall()
    # SQLite: the bare column `status` comes from the row holding MAX(decided_at)
    here = {
        r[0]: (float(r[1]), str(r[2]))
        for r in conn.execute(
            f"SELECT id_tag, MAX(decided_at), status FROM auth_decisions WHERE decided_at >= ? AND charger_id = ? "
            f"AND {_PRESENTED} GROUP BY id_tag",
            (since, charger_id),
        )
    }
    out: dict[str, Seen] = {}
    for tid, at in site:
        h = here.get(tid)
        out[tid] = Seen(h[0] if h else None, h[1] if h else None, float(at))
    return out


def changes_since(conn: sqlite3.Connection, version: int) -> list[str] | None:
    """Ids changed after revision `version`, or None when only a Full list can bring a charger at `version` up."""
    if version < meta(conn, "full_revision") or version < meta(conn, "changes_floor"):
        return None
    return sorted({r[0] for r in conn.execute("SELECT id FROM auth_changes WHERE revision > ?", (version,))})


# -- charger lists ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChargerListState:
    charger_id: str
    supported: bool | None
    enabled: bool | None
    max_length: int | None
    send_max_length: int | None
    version: int | None  # the listVersion the charger holds (None: unknown, or a transfer was interrupted)
    revision: int | None  # the store revision that version carries
    truncated: bool
    last_error: str | None
    left_out: int = (
        0  # tokens a truncated list left out (the site list is larger than LocalAuthListMaxLength)
    )


def charger_list_state(conn: sqlite3.Connection, charger_id: str) -> ChargerListState | None:
    r = conn.execute(
        "SELECT charger_id, supported, enabled, max_length, send_max_length, version, revision, truncated, "
        "last_error, left_out FROM auth_charger_lists WHERE charger_id = ?",
        (charger_id,),
    ).fetchone()
    if r is None:
        return None
    return ChargerListState(
        r[0],
        None if r[1] is None else bool(r[1]),
        None if r[2] is None else bool(r[2]),
        r[3],
        r[4],
        r[5],
        r[6],
        bool(r[7]),
        r[8],
        int(r[9]),
    )


def save_charger_list_state(conn: sqlite3.Connection, s: ChargerListState, now: float) -> None:
    conn.execute(
        "INSERT INTO auth_charger_lists (charger_id, supported, enabled, max_length, send_max_length, version, "
        "revision, truncated, updated_at, last_error, left_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (charger_id) DO UPDATE SET supported = excluded.supported, enabled = excluded.enabled, "
        "max_length = excluded.max_length, send_max_length = excluded.send_max_length, version = excluded.version, "
        "revision = excluded.revision, truncated = excluded.truncated, updated_at = excluded.updated_at, "
        "last_error = excluded.last_error, left_out = excluded.left_out",
        (
            s.charger_id,
            None if s.supported is None else int(s.supported),
            None if s.enabled is None else int(s.enabled),
            s.max_length,
            s.send_max_length,
            s.version,
            s.revision,
            int(s.truncated),
            now,
            s.last_error,
            s.left_out,
        ),
    )
