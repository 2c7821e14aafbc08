"""The token list's set-based writes (tokenstore.row_json / insert_list_json / apply_differential over JSON texts):
the rows they store are exactly the rows the per-row insert stores, for every field shape a validated entry can
have (quotes and backslashes in ids, expiry dates, parents, charger restrictions), and a differential keeps its
meaning (upserts, removals, its order, auth_changes, cache invalidation). Real SQLite files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest

from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import TokenError, TokenSpec, parse_entry
from gateway.store import Store

NOW = 1_800_000_000.0

SPECS = [
    TokenSpec("PLAIN1", "Accepted"),
    TokenSpec('Q"UOTE\\BACK', "Blocked", 1_893_456_000.0, 'PAR"ENT'),
    TokenSpec("EXP1", "Expired", 0.0),
    TokenSpec("FRAC1", "Accepted", 1_700_000_000.123456, None, ("CP1", "CP-2", "CP\u00e9")),
    TokenSpec("~!#$%&'()*+-./:;<=>?@[]^_`{|}", "Invalid", None, "P1", ("X",)),
]


def rows(conn: sqlite3.Connection, gen: int) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT id, status, expiry, typeof(expiry), parent_id, chargers, list_version FROM auth_list "
            "WHERE gen = ? ORDER BY id",
            (gen,),
        )
    ]


def test_json_rows_store_exactly_what_the_per_row_insert_stores(store: Store) -> None:
    def both(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        ts.insert_list_chunk(conn, 7, 3, SPECS)
        ts.insert_list_json(conn, 8, 3, ts.list_rows_json(SPECS))
        return rows(conn, 7), rows(conn, 8)

    per_row, set_based = store.write_sync(both)
    assert set_based == per_row and len(set_based) == len(SPECS)
    by_id = {r[0]: r for r in set_based}
    assert by_id["FRAC1"][2:4] == (1_700_000_000.123456, "real")
    assert by_id["FRAC1"][5] == "CP1,CP-2,CP\u00e9"  # non-ASCII goes through JSON's \u escape and back
    assert by_id['Q"UOTE\\BACK'][4] == 'PAR"ENT'


def test_row_json_is_json_and_refuses_a_non_finite_expiry() -> None:
    for s in SPECS:
        back = json.loads(ts.row_json(s))
        assert back == [
            s.id,
            s.status,
            s.expiry,
            s.parent_id,
            None if s.chargers is None else ",".join(s.chargers),
        ]
    with pytest.raises(TokenError):
        ts.row_json(TokenSpec("BAD1", "Accepted", float("inf")))


def test_a_later_duplicate_in_one_chunk_wins_as_before(store: Store) -> None:
    dup = [TokenSpec("D1", "Accepted"), TokenSpec("D1", "Blocked", parent_id="P")]
    got = store.write_sync(lambda c: (ts.insert_list_json(c, 5, 1, ts.list_rows_json(dup)), rows(c, 5))[1])
    assert got == [("D1", "Blocked", None, "null", "P", None, 1)]


def test_a_differential_over_json_texts(store: Store) -> None:
    base = [TokenSpec(f"T{i}", "Accepted") for i in range(5)]

    def setup(conn: sqlite3.Connection) -> None:
        gen = ts.meta(conn, "active_gen")
        ts.insert_list_json(conn, gen, 1, ts.list_rows_json(base))
        ts.set_meta(conn, "list_version", 1)
        conn.execute(
            "INSERT INTO auth_cache (id, status, expiry, parent_id, cached_at) VALUES ('T9', 'Invalid', NULL, NULL, 0)"
        )

    store.write_sync(setup)
    entries: list[dict[str, Any]] = [
        {"id": "t1"},  # removal (no status)
        {"id": "T2", "status": "Blocked"},
        {
            "id": "T9",
            "status": "Accepted",
            "expiry": "2031-01-01T00:00:00Z",
        },  # new, was cached: cache dropped
        {"id": 'N"1', "status": "Accepted"},
        {"id": "T3", "status": "Accepted"},
        {"id": "T3", "remove": True},  # upserted then removed in one differential: removed
    ]
    specs = [parse_entry(e, allow_remove=True) for e in entries]
    rev_before = store.read(lambda c: ts.meta(c, "revision"))
    rev = store.write_sync(lambda c: ts.apply_differential(c, 2, ts.differential_json(specs)))
    assert rev == rev_before + 1

    def state(conn: sqlite3.Connection) -> dict[str, Any]:
        gen = ts.meta(conn, "active_gen")
        return {
            "list": {r[0]: (r[1], r[6]) for r in rows(conn, gen)},
            "cache": [r[0] for r in conn.execute("SELECT id FROM auth_cache")],
            "changes": sorted(
                r[0] for r in conn.execute("SELECT id FROM auth_changes WHERE revision = ?", (rev,))
            ),
            "version": ts.meta(conn, "list_version"),
        }

    s = store.read(state)
    assert s["list"] == {
        "T0": ("Accepted", 1),
        "T2": ("Blocked", 2),
        "T4": ("Accepted", 1),
        "T9": ("Accepted", 2),
        'N"1': ("Accepted", 2),
    }
    assert s["cache"] == [] and s["version"] == 2
    # each changed id once (an id twice in the differential is one change of it)
    assert s["changes"] == sorted(["T1", "T2", "T9", 'N"1', "T3"])
    assert store.read(lambda c: ts.changes_since(c, rev - 1)) == sorted({"T1", "T2", "T9", 'N"1', "T3"})


def test_a_charger_id_sqlite_cannot_store_refuses_the_list_and_changes_nothing(store: Store) -> None:
    """A lone surrogate ('\\ud800' in the eMSP's JSON) in a charger restriction would be stored as bytes no later read
    can decode: the whole list is refused, naming the entry."""
    svc = AuthService(store, AuthSection())

    async def body() -> list[tuple[bool, str]]:
        good = [{"id": "G1", "status": "Accepted", "chargers": ["CP\U0001f600"]}]
        bad = [
            {"id": "G2", "status": "Accepted"},
            {"id": "B1", "status": "Accepted", "chargers": ["a\ud800"]},
        ]
        return [
            await svc.apply_token_list("full", 1, None, good),
            await svc.apply_token_list("full", 2, None, bad),
            await svc.apply_token_list("differential", 2, 1, bad),
        ]

    (ok1, _), (ok2, msg2), (ok3, msg3) = asyncio.run(body())
    assert ok1 and not ok2 and not ok3
    assert "entry 1" in msg2 and "chargers" in msg2 and "entry 1" in msg3
    gen = store.read(lambda c: ts.meta(c, "active_gen"))
    assert store.read(lambda c: rows(c, gen)) == [("G1", "Accepted", None, "null", None, "CP\U0001f600", 1)]
    assert svc.list_version() == 1
