"""`chargegate tokens ...`: manage a site's token store, with or without the gateway running.

The CLI writes the same SQLite file as the gateway (WAL: readers and one writer at a time; every CLI transaction
is short, so the gateway's writer waits at most milliseconds). The running gateway sees a change at its very next
decision (decisions read SQLite) and pushes it to the chargers' local lists within SUPERVISE_INTERVAL_S.

Subcommands: import FILE (CSV or JSON), list, add ID, block ID, remove ID, show ID, allow ID (an operator override of
the eMSP list, gateway/auth/overrides.py), charger-lists (each charger's local-list sync status).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from gateway.auth import overrides
from gateway.auth import tokenstore as ts
from gateway.auth.decision import AuthDecision, CacheEntry, Facts, Request, evaluate, live_entries
from gateway.auth.service import policy_from
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import (
    MAX_LIST_TOKENS,
    TokenError,
    TokenSpec,
    decode_chargers,
    format_expiry,
    normalize_id,
    parse_entry,
)
from gateway.config import SiteConfig, load_config, register_section
from gateway.errors import ChargegateError
from gateway.store import Store

# The [auth] section's keys are defined in gateway/auth/settings.py (kept in step if gateway/config.py already
# imports it from there).
register_section("auth", AuthSection)

# Tokens per transaction when importing: short transactions keep a running gateway's writer waiting ~ms at most.
IMPORT_CHUNK = 5_000
# Largest import file read (bytes): ~2,000,000 CSV lines.
MAX_IMPORT_BYTES = 256 * 1024 * 1024
EXIT_USAGE = 2


def add_subparser(subparsers: Any) -> None:
    """Add `tokens` to the chargegate CLI. Each leaf sets `func(args) -> int` (exit status)."""
    p = subparsers.add_parser("tokens", help="manage the token store (local authorization)")
    sub = p.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)

    def leaf(name: str, help_: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = sub.add_parser(name, help=help_)
        # SUPPRESS: a --config given before `tokens` (top-level option) is not overwritten by a default here
        q.add_argument("--config", default=argparse.SUPPRESS, help="site config file (or $CHARGEGATE_CONFIG)")
        q.set_defaults(func=func)
        return q

    q = leaf("import", "import manual tokens from a CSV or JSON file", cmd_import)
    q.add_argument(
        "file", help="CSV with a header (id,status,expiry,parent_id,chargers) or JSON list; - = stdin"
    )
    q.add_argument("--format", choices=("csv", "json"), help="default: from the file name, else sniffed")
    q.add_argument(
        "--replace", action="store_true", help="also remove CLI-added tokens missing from the file"
    )

    q = leaf("list", "list tokens", cmd_list)
    q.add_argument("--source", choices=("all", "list", "manual", "override", "cache"), default="all")
    q.add_argument("--status", choices=("Accepted", "Blocked", "Expired", "Invalid"))
    q.add_argument("--after", default="", help="start after this id (paging)")
    q.add_argument("--limit", type=int, default=100, help="most rows shown (default 100, 0 = all)")
    q.add_argument("--json", action="store_true", help="one JSON object per line")

    q = leaf("add", "add or update a manual token", cmd_add)
    q.add_argument("id")
    q.add_argument("--status", default="Accepted", choices=("Accepted", "Blocked", "Expired", "Invalid"))
    q.add_argument("--expiry", help="ISO 8601 date-time, e.g. 2027-12-31T23:59:59Z")
    q.add_argument("--parent", help="parent id (fleet / group)")
    q.add_argument(
        "--charger", action="append", dest="chargers", help="valid only at this charger (repeatable)"
    )
    q.add_argument("--note")

    q = leaf("block", "block a token (a manual Blocked entry; wins over the eMSP list)", cmd_block)
    q.add_argument("id")
    q.add_argument("--note")

    q = leaf("remove", "remove a manual token", cmd_remove)
    q.add_argument("id")

    q = leaf(
        "allow",
        "operator override: accept a token the eMSP list blocks, for a limited time (a manual block still wins)",
        cmd_allow,
    )
    q.add_argument("id")
    q.add_argument(
        "--until",
        help=f"end: a duration (90m, 12h, 2d) or an ISO 8601 date-time; default "
        f"{overrides.DEFAULT_S / 3600:g}h, at most {overrides.MAX_S / 86400:g} days",
    )
    q.add_argument("--reason", help="why (recorded with the override and sent to the eMSP)")
    q.add_argument("--end", action="store_true", help="end the token's override now")

    leaf(
        "charger-lists", "each charger's local list: version, size limit, tokens left out", cmd_charger_lists
    )

    q = leaf(
        "show", "everything known about one token, and what a charger would be answered offline", cmd_show
    )
    q.add_argument("id")
    q.add_argument("--charger", default="", help="charger to evaluate for (default: any)")


# -- plumbing -------------------------------------------------------------------------------------------------------
def _config(args: argparse.Namespace) -> SiteConfig:
    path = getattr(args, "config", None) or os.environ.get("CHARGEGATE_CONFIG")
    if not path:
        raise ChargegateError("no site config: pass --config FILE or set CHARGEGATE_CONFIG")
    return load_config(path)


def _auth_settings(cfg: SiteConfig) -> AuthSection:
    section = cfg.sections.get("auth")
    return (
        section
        if isinstance(section, AuthSection)
        else AuthSection(allow=tuple(getattr(section, "allow", ())))
    )


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[Store, SiteConfig]]:
    cfg = _config(args)
    store = Store.open(cfg.data_dir)
    try:
        yield store, cfg
    finally:
        store.close()


def _run(args: argparse.Namespace, fn: Callable[[Store, SiteConfig], int]) -> int:
    try:
        with _store(args) as (store, cfg):
            return fn(store, cfg)
    except (ChargegateError, TokenError) as e:
        print(f"chargegate tokens: {e}", file=sys.stderr)
        return EXIT_USAGE


# -- import ---------------------------------------------------------------------------------------------------------
def read_token_file(text: str, fmt: str | None, name: str) -> list[TokenSpec]:
    """Parse and validate a whole import file; TokenError names the line / entry of the first problem."""
    if fmt is None:
        fmt = "json" if name.lower().endswith(".json") or text.lstrip()[:1] in ("[", "{") else "csv"
    specs: list[TokenSpec] = []
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenError(f"{name}: not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = data.get("tokens")
        if not isinstance(data, list):
            raise TokenError(f'{name}: expected a JSON list of tokens (or {{"tokens": [...]}})')
        if len(data) > MAX_LIST_TOKENS:
            raise TokenError(f"{name}: more than {MAX_LIST_TOKENS} tokens")
        for i, raw in enumerate(data):
            try:
                specs.append(parse_entry(raw))
            except TokenError as e:
                raise TokenError(f"{name}: entry {i}: {e}") from None
        return specs
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"id", "idTag", "uid"} & {f.strip() for f in reader.fieldnames}:
        raise TokenError(
            f"{name}: CSV needs a header line naming an 'id' column (id,status,expiry,parent_id,chargers)"
        )
    for row in reader:
        if len(specs) >= MAX_LIST_TOKENS:
            raise TokenError(f"{name}: more than {MAX_LIST_TOKENS} tokens")
        entry = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
        if None in row:
            raise TokenError(f"{name}:{reader.line_num}: more fields than the header names")
        entry = {k: v for k, v in entry.items() if v not in (None, "")}
        entry.setdefault("status", "Accepted")
        try:
            specs.append(parse_entry(entry))
        except TokenError as e:
            raise TokenError(f"{name}:{reader.line_num}: {e}") from None
    return specs


def cmd_import(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            text = sys.stdin.read(MAX_IMPORT_BYTES + 1)
        else:
            with open(args.file, encoding="utf-8-sig") as f:
                text = f.read(MAX_IMPORT_BYTES + 1)
        if len(text) > MAX_IMPORT_BYTES:
            raise TokenError(f"{args.file}: larger than {MAX_IMPORT_BYTES} bytes")
        specs = read_token_file(text, args.format, args.file)
    except (OSError, UnicodeDecodeError) as e:
        print(f"chargegate tokens: cannot read {args.file}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TokenError as e:
        print(f"chargegate tokens: {e} (nothing imported)", file=sys.stderr)
        return EXIT_USAGE

    def go(store: Store, cfg: SiteConfig) -> int:
        now = time.time()
        for i in range(0, len(specs), IMPORT_CHUNK):
            chunk = specs[i : i + IMPORT_CHUNK]
            store.write_sync(lambda c, chunk=chunk: ts.upsert_manual(c, chunk, now, origin="cli"))  # type: ignore[misc]
        removed = 0
        if args.replace:
            keep = {s.id for s in specs}
            stale = [
                r[0]
                for r in store.read(
                    lambda c: c.execute("SELECT id FROM auth_manual WHERE origin = 'cli'").fetchall()
                )
                if r[0] not in keep
            ]
            for i in range(0, len(stale), IMPORT_CHUNK):
                part = stale[i : i + IMPORT_CHUNK]
                removed += store.write_sync(lambda c, part=part: ts.remove_manual(c, part))  # type: ignore[misc]
        print(f"imported {len(specs)} tokens" + (f", removed {removed}" if args.replace else ""))
        return 0

    return _run(args, go)


# -- list / show ----------------------------------------------------------------------------------------------------
def _entry_dict(e: Any, source: str) -> dict[str, Any]:
    d: dict[str, Any] = {"id": e.id, "source": source, "status": e.status}
    if e.expiry is not None:
        d["expiry"] = format_expiry(e.expiry)
    if e.parent_id is not None:
        d["parent_id"] = e.parent_id
    chargers = getattr(e, "chargers", None)
    if chargers is not None:
        d["chargers"] = list(chargers)
    version = getattr(e, "list_version", None)
    if version is not None:
        d["list_version"] = version
    cached_at = getattr(e, "cached_at", None)
    if cached_at is not None:
        d["cached_at"] = format_expiry(cached_at)
    if source == "override":
        d["until"] = d.pop("expiry", None)
        d["reason"] = getattr(e, "note", None)
    return d


def _source_name(source: str) -> str:
    return {"local_list": "list"}.get(source, source)


def _print_rows(rows: Iterator[dict[str, Any]], as_json: bool, out: TextIO) -> int:
    n = 0
    if not as_json:
        print(f"{'ID':<20} {'SOURCE':<10} {'STATUS':<9} {'EXPIRY':<20} {'PARENT':<20} CHARGERS", file=out)
    for d in rows:
        n += 1
        if as_json:
            print(json.dumps(d, separators=(",", ":")), file=out)
        else:
            print(
                f"{d['id']:<20} {d['source']:<10} {d['status']:<9} {d.get('expiry') or d.get('until') or '-':<20} "
                f"{d.get('parent_id') or '-':<20} {','.join(d.get('chargers') or []) or '*'}",
                file=out,
            )
    return n


def cmd_list(args: argparse.Namespace) -> int:
    limit = None if args.limit == 0 else max(args.limit, 0)

    def rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
        n = 0
        if args.source == "cache":
            for r in conn.execute(
                "SELECT id, status, expiry, parent_id, cached_at FROM auth_cache WHERE id > ? ORDER BY id",
                (args.after,),
            ):
                ce = CacheEntry(r[0], r[1], r[2], r[3], r[4])
                if args.status and ce.status != args.status:
                    continue
                if limit is not None and n >= limit:
                    return
                n += 1
                yield _entry_dict(ce, "cache")
            return
        want = {
            "all": ("local_list", "manual", "override"),
            "list": ("local_list",),
            "manual": ("manual",),
            "override": ("override",),
        }[args.source]
        for row in ts.iter_local(conn, after=args.after, now=time.time()):
            for e in row.entries:
                if e.source not in want or (args.status and e.status != args.status):
                    continue
                if limit is not None and n >= limit:
                    return
                n += 1
                yield _entry_dict(e, _source_name(e.source))

    def go(store: Store, cfg: SiteConfig) -> int:
        n = store.read(lambda c: _print_rows(rows(c), args.json, sys.stdout))
        if not args.json:
            version, revision = store.read(lambda c: (ts.meta(c, "list_version"), ts.meta(c, "revision")))
            print(f"({n} shown; eMSP list version {version}, local list revision {revision})")
        return 0

    return _run(args, go)


def cmd_show(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        token = normalize_id(args.id)
        local, cache, decisions = store.read(
            lambda c: (
                ts.lookup_local(c, token),
                ts.lookup_cache(c, token),
                c.execute(
                    "SELECT decided_at, charger_id, purpose, status, source, reason, transaction_id FROM auth_decisions "
                    "WHERE id_tag = ? ORDER BY id DESC LIMIT 5",
                    (token,),
                ).fetchall(),
            )
        )
        now = time.time()
        print(f"token {token}")
        if not local and cache is None:
            print("  not in the local list, the manual tokens, the overrides or the cache")
        for e in local:
            shown = _entry_dict(e, _source_name(e.source))
            if e.source == "override" and not live_entries((e,), now):
                shown["ended"] = True
            print("  " + json.dumps(shown))
        if cache is not None:
            print("  " + json.dumps(_entry_dict(cache, "cache")))
        policy = policy_from(_auth_settings(cfg))
        d = evaluate(
            Request(charger_id=args.charger or "*", id_tag=token, purpose="authorize"),
            Facts(local=local, cache=cache, emsp_reachable=False),
            policy,
            now,
        )
        assert isinstance(d, AuthDecision)  # the eMSP is not asked here
        print(f"  offline answer at {args.charger or 'any charger'}: {d.status} via {d.source} ({d.reason})")
        for r in decisions:
            tx = f" tx {r[6]}" if r[6] is not None else ""
            print(f"  {format_expiry(r[0])} {r[1]} {r[2]}{tx}: {r[3]} via {r[4]} ({r[5]})")
        return 0

    return _run(args, go)


# -- add / block / remove -------------------------------------------------------------------------------------------
def cmd_add(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        spec = parse_entry(
            {
                "id": args.id,
                "status": args.status,
                "expiry": args.expiry,
                "parent_id": args.parent,
                "chargers": args.chargers,
            }
        )
        now = time.time()

        def add(c: sqlite3.Connection) -> overrides.Override | None:
            ts.upsert_manual(c, [spec], now, origin="cli", note=args.note)
            if spec.status == "Accepted":
                return None
            # the operator's manual refusal wins over an override anyway: end it, on the record
            return overrides.end(c, spec.id, f"tokens add --status {spec.status}", now)

        ended = store.write_sync(add)
        print(f"{spec.id}: {spec.status} (manual)" + ("; its operator override ended" if ended else ""))
        return 0

    return _run(args, go)


def cmd_block(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        token = normalize_id(args.id)

        def block(c: sqlite3.Connection) -> overrides.Override | None:
            old = c.execute(
                "SELECT expiry, parent_id, chargers FROM auth_manual WHERE id = ?", (token,)
            ).fetchone()
            spec = TokenSpec(
                id=token,
                status="Blocked",
                expiry=old[0] if old else None,
                parent_id=old[1] if old else None,
                chargers=decode_chargers(old[2]) if old else None,
            )
            now = time.time()
            ts.upsert_manual(c, [spec], now, origin="cli", note=args.note)
            return overrides.end(c, token, "tokens block" + (f": {args.note}" if args.note else ""), now)

        ended = store.write_sync(block)
        print(
            f"{token}: Blocked (manual; wins over the eMSP list and the cache)"
            + ("; its operator override ended" if ended else "")
        )
        return 0

    return _run(args, go)


def cmd_remove(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        token = normalize_id(args.id)
        n = store.write_sync(lambda c: ts.remove_manual(c, [token]))
        if not n:
            print(f"chargegate tokens: {token} is not a manual token", file=sys.stderr)
            return 1
        print(f"{token}: removed")
        return 0

    return _run(args, go)


# -- allow (operator override) --------------------------------------------------------------------------------------
def cmd_allow(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        token = normalize_id(args.id)
        now = time.time()
        if args.end:
            if args.until is not None:
                raise TokenError("--end and --until exclude each other")
            why = "tokens allow --end" + (f": {overrides.clean_reason(args.reason)}" if args.reason else "")
            ended = store.write_sync(lambda c: overrides.end(c, token, why, now))
            if ended is None:
                print(f"chargegate tokens: {token} has no operator override", file=sys.stderr)
                return 1
            print(f"{token}: operator override ended")
            return 0
        until = overrides.parse_until(args.until, now)
        o, beaten = store.write_sync(lambda c: overrides.grant(c, token, until, args.reason, now))
        print(
            f"{token}: Accepted until {format_expiry(o.until)} (operator override"
            + (f" of {beaten}" if beaten else "")
            + f"; `chargegate tokens block {token}` or `tokens allow {token} --end` ends it)"
        )
        if o.reason is None:
            print("  note: no --reason given; the eMSP sees the override without one", file=sys.stderr)
        return 0

    return _run(args, go)


# -- charger lists --------------------------------------------------------------------------------------------------
def cmd_charger_lists(args: argparse.Namespace) -> int:
    def go(store: Store, cfg: SiteConfig) -> int:
        rows, revision = store.read(
            lambda c: (
                c.execute(
                    "SELECT charger_id, supported, enabled, max_length, version, revision, left_out, updated_at, "
                    "last_error FROM auth_charger_lists ORDER BY charger_id"
                ).fetchall(),
                ts.meta(c, "revision"),
            )
        )
        print(
            f"{'CHARGER':<20} {'STATE':<12} {'VERSION':>8} {'MAX':>7} {'LEFT OUT':>8}  UPDATED / LAST ERROR"
        )
        for r in rows:
            if not r[1]:
                state = "unsupported"
            elif not r[2]:
                state = "disabled"
            elif r[5] is None:
                state = "syncing"
            else:
                state = "in sync" if r[5] == revision else "behind"
            err = f" / {r[8]}" if r[8] else ""
            print(
                f"{r[0]:<20} {state:<12} {r[4] if r[4] is not None else '-':>8} "
                f"{r[3] if r[3] is not None else '-':>7} {r[6]:>8}  {format_expiry(r[7])}{err}"
            )
        print(f"({len(rows)} chargers; local list revision {revision})")
        return 0

    return _run(args, go)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (tests, and until gateway/cli.py hooks `add_subparser`): `python -m gateway.auth.cli`."""
    parser = argparse.ArgumentParser(prog="chargegate")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
