"""Multi-part token lists: staging on disk and applying (the I/O around gateway/uplink/tokenparts.py).

Each accepted part is stored as one CBOR blob row in the gateway's SQLite store (component 'uplink_staging'), so a
1,000,000-token list never sits in memory: when the last part arrives the list is applied part by part through
the token store's chunked path (`apply_token_list_parts`), holding one decoded part at a time. Staged parts survive a
gateway restart (the idle timeout restarts then); they are deleted when the update is applied, refused, replaced by
a newer one or abandoned after the idle timeout.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import cbor2

from gateway.store import Store, register_migrations
from gateway.uplink.ports import TokenListSink
from gateway.uplink.tokenparts import (
    Accept,
    Assembly,
    Duplicate,
    Limits,
    Part,
    PartHeader,
    Refuse,
    Replay,
    Staged,
)

log = logging.getLogger("chargegate.uplink")

register_migrations(
    "uplink_staging",
    [
        """
        CREATE TABLE token_list_staging (
            update_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            version INTEGER NOT NULL,
            base_version INTEGER,
            parts INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE token_list_parts (
            update_id TEXT NOT NULL,
            part INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            digest TEXT NOT NULL,
            payload BLOB NOT NULL,
            PRIMARY KEY (update_id, part)
        );
        """,
    ],
)

# How often the uplink looks for a staged update past its idle timeout (deleting it frees disk space; a minute
# late does not matter).
SWEEP_INTERVAL_S: Final = 60.0

Outcome = tuple[bool, dict[str, Any]]  # (ok, result map) or (False, {"code", "message"})


def _drop(conn: sqlite3.Connection, update_id: str) -> None:
    conn.execute("DELETE FROM token_list_parts WHERE update_id = ?", (update_id,))
    conn.execute("DELETE FROM token_list_staging WHERE update_id = ?", (update_id,))


class TokenListStaging:
    def __init__(
        self,
        store: Store,
        sink: TokenListSink,
        *,
        limits: Limits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._sink = sink
        self._mono = monotonic
        self._wall = wall
        if limits is None:
            from gateway.auth.service import MAX_DIFFERENTIAL_TOKENS

            limits = Limits(max_differential_tokens=MAX_DIFFERENTIAL_TOKENS)
        self.assembly = Assembly(limits)
        self._lock = asyncio.Lock()
        self._loaded = False
        self.parts_staged = 0
        self.updates_applied = 0

    # -- entry points -------------------------------------------------------------------------------------------
    async def handle_part(
        self,
        update_id: str,
        kind: str,
        version: int,
        base_version: int | None,
        index: int,
        parts: int,
        tokens: list[dict[str, Any]],
    ) -> Outcome:
        header = PartHeader(update_id, kind, version, base_version, parts)
        blob = await asyncio.to_thread(cbor2.dumps, tokens)
        part = Part(header, index, len(tokens), len(blob), hashlib.sha256(blob).hexdigest()[:32])
        async with self._lock:
            await self._load()
            await self._expire()
            now = self._mono()
            d = self.assembly.decide(part, self._applied_version(), now)
            if isinstance(d, Refuse):
                if d.abandon is not None:
                    await self._store.write(lambda c: _drop(c, update_id))
                    self.assembly.abandon(update_id)
                log.warning(
                    "uplink: token list part %d/%d of %r refused: %s", index + 1, parts, update_id, d.message
                )
                return False, {"code": d.code, "message": d.message}
            if isinstance(d, Replay):
                return d.ok, d.result
            if isinstance(d, Duplicate):
                if d.complete:  # an earlier apply failed: try again
                    return await self._apply(header)
                return True, self._progress(header, index, duplicate=True)
            assert isinstance(d, Accept)
            await self._store.write(lambda c: self._stage(c, part, d.replaces, blob))
            if d.replaces is not None:
                log.info("uplink: staged token list update %r replaced by %r", d.replaces, update_id)
                self.assembly.abandon(d.replaces)
            self.assembly.accepted(part, now)
            self.parts_staged += 1
            if d.complete:
                return await self._apply(header)
            return True, self._progress(header, index, duplicate=False)

    async def sweep(self) -> None:
        """Delete a staged update past its idle timeout (called periodically by the uplink)."""
        async with self._lock:
            await self._load()
            await self._expire()

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again
                log.exception("uplink: token list staging sweep failed")

    # -- internals ------------------------------------------------------------------------------------------------
    def _applied_version(self) -> int | None:
        fn = getattr(self._sink, "list_version", None)
        return int(fn()) if callable(fn) else None

    def _progress(self, header: PartHeader, index: int, *, duplicate: bool) -> dict[str, Any]:
        s = self.assembly.staged
        return {
            "update_id": header.update_id,
            "version": header.version,
            "part": index,
            "parts": header.parts,
            "received": s.received if s is not None else 0,
            "complete": False,
            "duplicate": duplicate,
        }

    def _stage(self, conn: sqlite3.Connection, part: Part, replaces: str | None, blob: bytes) -> None:
        h = part.header
        if replaces is not None:
            _drop(conn, replaces)
        conn.execute(
            "INSERT OR IGNORE INTO token_list_staging (update_id, kind, version, base_version, parts, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (h.update_id, h.kind, h.version, h.base_version, h.parts, self._wall()),
        )
        conn.execute(
            "INSERT OR REPLACE INTO token_list_parts (update_id, part, tokens, digest, payload) VALUES (?, ?, ?, ?, ?)",
            (h.update_id, part.index, part.tokens, part.digest, blob),
        )

    async def _expire(self) -> None:
        gone = self.assembly.expired(self._mono())
        if gone is not None:
            await self._store.write(lambda c: _drop(c, gone))
            self.assembly.abandon(gone)
            log.warning(
                "uplink: staged token list update %r abandoned: no new part within the idle timeout", gone
            )

    async def _load(self) -> None:
        """Once: the staged update left on disk by a previous run (at most one; any other is deleted)."""
        if self._loaded:
            return

        def q(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            heads = conn.execute(
                "SELECT update_id, kind, version, base_version, parts FROM token_list_staging "
                "ORDER BY version DESC, created_at DESC"
            ).fetchall()
            parts = conn.execute(
                "SELECT update_id, part, tokens, digest, length(payload) FROM token_list_parts"
            ).fetchall()
            return heads, parts

        heads, rows = self._store.read(q)
        keep = heads[0] if heads else None
        stale = {r[0] for r in heads[1:]} | {r[0] for r in rows if keep is None or r[0] != keep[0]}
        for uid in stale:
            await self._store.write(functools.partial(_drop, update_id=uid))
        if keep is not None:
            header = PartHeader(keep[0], keep[1], int(keep[2]), keep[3], int(keep[4]))
            staged = Staged(header, self._mono() + self.assembly.limits.idle_timeout)
            for _uid, idx, n, digest, size in (r for r in rows if r[0] == keep[0]):
                staged.digests[int(idx)] = digest
                staged.tokens += int(n)
                staged.size += int(size)
            self.assembly.restore(staged)
            log.info("uplink: resumed staged token list update %r (%d/%d parts)", header.update_id,
                     staged.received, header.parts)  # fmt: skip
        self._loaded = True

    def _read_part(self, update_id: str, index: int) -> list[dict[str, Any]]:
        blob = self._store.read(
            lambda c: c.execute(
                "SELECT payload FROM token_list_parts WHERE update_id = ? AND part = ?", (update_id, index)
            ).fetchone()
        )
        if blob is None:
            raise LookupError(f"staged part {index} of {update_id!r} is missing")
        value = cbor2.loads(blob[0])
        if not isinstance(value, list):
            raise LookupError(f"staged part {index} of {update_id!r} is not a list")
        return value

    async def _chunks(self, header: PartHeader) -> AsyncIterator[list[dict[str, Any]]]:
        for i in range(header.parts):
            yield await asyncio.to_thread(self._read_part, header.update_id, i)

    async def _apply(self, header: PartHeader) -> Outcome:
        staged = self.assembly.staged
        total = staged.tokens if staged is not None else 0
        t0 = self._mono()
        try:
            apply_parts = getattr(self._sink, "apply_token_list_parts", None)
            if callable(apply_parts):
                ok, message = await apply_parts(
                    header.kind, header.version, header.base_version, self._chunks(header), total
                )
            else:  # a sink without streaming support gets the whole list (tests, small lists)
                tokens: list[dict[str, Any]] = []
                async for chunk in self._chunks(header):
                    tokens.extend(chunk)
                ok, message = await self._sink.apply_token_list(
                    header.kind, header.version, header.base_version, tokens
                )
        except (sqlite3.Error, LookupError, ValueError, cbor2.CBORDecodeError, OSError) as e:
            # staged parts stay: a re-sent part of this update tries the apply again
            log.error("uplink: applying staged token list update %r failed: %s", header.update_id, e)
            return False, {"code": "command_failed", "message": f"applying the staged list failed: {e}"}
        await self._store.write(lambda c: _drop(c, header.update_id))
        if ok:
            self.updates_applied += 1
            log.info("uplink: token list update %r (%s) applied in %.1f s", header.update_id,
                     header.describe(), self._mono() - t0)  # fmt: skip
            result: dict[str, Any] = {
                "version_applied": header.version,
                "message": message,
                "update_id": header.update_id,
                "parts": header.parts,
            }
        else:
            result = {
                "code": "token_list_refused",
                "message": f"version {header.version} not applied: {message}",
            }
        replay = self.assembly.finished_update(header, ok, result)
        return replay.ok, replay.result
