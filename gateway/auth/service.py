"""AuthService: what the OCPP handlers call to authorize an idTag, and what the uplink calls to apply eMSP lists.

Thin I/O around the pure decision (gateway/auth/decision.py): it reads the facts from SQLite (a few primary-key
lookups on this thread's read connection, so a token added by `chargegate tokens add` from another process counts
at the very next decision), asks the eMSP within the budget when the decision needs it, and hands the handler an
`AuthDecision` to persist with `record(conn, ...)` inside the handler's own transaction (StartTransaction,
StopTransaction), or with `record_authorize(decision)` for an Authorize, which is durable before the answer only when
it lets in a token the store does not vouch for (`answer_before_commit`; docs/authorization.md, "What is durable
before the answer").

For an Authorize or a start it also reads the token's active transactions when `concurrent_sessions = "refuse"`
(the ConcurrentTx check is pure: decision.concurrent_conflicts). For a start that check is made once more by
`confirm_start(conn, ...)` inside the StartTransaction's own write, serialized with every other start, so two starts
of one card at the same moment cannot both be Accepted.

A supervisor task (started by `start()`) re-checks sessions started under the offline policy once the eMSP is
reachable, enforces accept_limited caps with RemoteStopTransaction, ends operator overrides whose time is up
(gateway/auth/overrides.py), and notices token-list changes made by other processes (the CLI) so the chargers' local
lists follow.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from gateway.aio import within
from gateway.auth import overrides
from gateway.auth import tokenstore as ts
from gateway.auth.decision import (
    ASK_EMSP,
    NOT_ASKED,
    ActiveSession,
    AuthDecision,
    EmspResult,
    Facts,
    Policy,
    Purpose,
    Request,
    Source,
    concurrent_conflicts,
    concurrent_refusal,
    evaluate,
)
from gateway.auth.emsp import EmspAuthAnswer, EmspAuthorizer
from gateway.auth.settings import AuthSection
from gateway.auth.tokens import (
    MAX_LIST_TOKENS,
    TokenError,
    TokenSpec,
    format_expiry,
    mask,
    normalize_id,
    parse_entry,
)
from gateway.auth.tokenstore import decision_body
from gateway.commands import ChargerCommands
from gateway.errors import ChargegateError
from gateway.store import Store

log = logging.getLogger("chargegate.auth")

# How often the supervisor looks for list changes by other processes, pending re-checks and capped sessions.
# Short enough that a CLI change reaches chargers within seconds, long enough to cost nothing when idle.
SUPERVISE_INTERVAL_S: Final = 2.0
# A RemoteStopTransaction that did not end the session is sent again after this long (the charger may have been
# offline or may have refused).
STOP_RETRY_S: Final = 30.0
# Re-checks of offline-policy sessions per supervisor round (each may wait up to the eMSP budget).
RECHECK_BATCH: Final = 16
# Rows per bulk-lane job when writing or deleting a full list (gateway/store.py: a job runs only when no charger
# write waits, in its own transaction; a charger write that arrives meanwhile waits for the job in progress, so
# this bounds that wait). One set-based statement per job: ~2.4 us per row here (5,000 rows: 12 ms).
# Measured with PARSE_SLICE (bench/bench_auth_ws.py --list-chunk/--parse-slice, 1,000,000 tokens, gateway pinned to
# one CPU; Authorize p99 / other traffic p99 during the apply, apply time): 5,000/500: 10.2 / 28.5 ms, 5.3 s;
# 2,000/500: 10.3 / 23.8 ms, 5.3 s; 1,000/250: 5.3 / 13.0 ms, 5.8 s; 1,000/100: 3.7 / 11.2 ms, 5.8 s.
LIST_CHUNK: Final = 1_000
# Entries validated on the event loop between two yields to it (~2.5 us each here: ~0.25 ms per slice). An
# Authorize takes a few loop iterations, each behind one slice. Validating on a worker thread instead holds the GIL
# for long stretches, and the event loop waits up to the interpreter's switch interval (5 ms) for it after every
# system call: Authorize p99 53-59 ms during a 1,000,000-token apply.
PARSE_SLICE: Final = 100
# Timeout of a RemoteStopTransaction sent by the supervisor (the OCPP server's default is 30 s).
STOP_CALL_TIMEOUT_S: Final = 30.0
# Rows of a live differential merged into the list per bulk-lane job (tokenstore.merge_differential_chunk). Its
# ids hit random B-tree pages of a large list (~4x the per-row cost of a full list's sequential insert): measured
# with 1,000,000 tokens and a 10,000-entry differential, synchronous=NORMAL: 1,000 rows 12-35 ms per job, 500 rows
# 4-17 ms, 250 rows mostly under 10 ms (the largest jobs carry a WAL checkpoint), the whole merge ~0.14 s either way.
MERGE_CHUNK: Final = 250
# Entries of one differential. It is staged and merged in LIST_CHUNK slices, but made live by one ordinary write
# whose auth_changes / auth_cache statements grow with it (~1 ms per 1,000 entries): this caps that write. Larger
# changes come as a full list.
MAX_DIFFERENTIAL_TOKENS: Final = 100_000
# Decision rows are kept this long (their AUTH_DECISION events carry them to the eMSP); pruned in batches.
DECISION_RETENTION_S: Final = 180 * 86400.0
PRUNE_INTERVAL_S: Final = 3600.0
PRUNE_BATCH: Final = 10_000
# An accept_limited start counts against the concurrency cap from the decision until its record() (the handler
# writes both within milliseconds); a reservation whose record never came is forgotten after this long.
RESERVATION_S: Final = 30.0

# Sources of an answer that is reproducible from committed data: the store's local list (eMSP list, manual tokens,
# operator overrides) and the authorization cache, read on a WAL reader connection, which sees committed
# (synchronous=FULL: fsynced) transactions only.
DURABLE_SOURCES: Final[frozenset[Source]] = frozenset({"local_list", "manual", "override", "cache"})

ListListener = Callable[[], None]


def answer_before_commit(decision: AuthDecision) -> bool:
    """Whether an Authorize may be answered before its decision record and AUTH_DECISION event are committed.

    Yes when the decision changes no state and creates no obligation: an answer from committed data (the local list,
    manual tokens, the authorization cache: any status -- it can be derived from the store again after a crash), and
    any refusal (Invalid / Blocked / Expired from the offline policy, its concurrency cap, the eMSP or a malformed
    idTag: it permits nothing). No when the answer lets in a token the store does not vouch for: Accepted by the
    offline policy (the charger may cache it, the eMSP must learn of it) or by the eMSP (its cache entry is not
    committed yet). Starts and stops never: they are recorded in the StartTransaction / StopTransaction's own
    transaction, with the session."""
    if decision.purpose != "authorize":
        return False
    return decision.source in DURABLE_SOURCES or not decision.accepted


def policy_from(settings: AuthSection) -> Policy:
    return Policy(
        offline=settings.offline_policy,
        limited_max_kwh=settings.limited_max_kwh,
        limited_max_minutes=settings.limited_max_minutes,
        limited_max_concurrent=settings.limited_max_concurrent,
        cache_ttl_s=settings.cache_ttl_s,
        local_pre_authorize=settings.local_pre_authorize,
        concurrent_sessions=settings.concurrent_sessions,
        concurrent_stale_after_s=settings.concurrent_stale_after_s,
    )


class AuthService:
    def __init__(
        self,
        store: Store,
        settings: AuthSection,
        *,
        emsp: EmspAuthorizer | None = None,
        commands: ChargerCommands | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.settings = settings
        self.policy = policy_from(settings)
        self._emsp = emsp
        self._commands = commands
        self._wall = wall
        self._mono = monotonic
        self._list_lock = asyncio.Lock()
        self._listeners: list[ListListener] = []
        self._known_revision: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop_sent: dict[int, float] = {}  # transaction id -> monotonic time of the last RemoteStop
        self._last_prune = -PRUNE_INTERVAL_S
        # monotonic times of accept_limited starts decided but not yet recorded (decide: event loop; record: writer
        # thread), so two chargers starting at once cannot both take the last limited slot
        self._reservations: list[float] = []
        self._reservations_lock = threading.Lock()
        # Authorize records queued but not yet committed (settled on the store's writer thread)
        self._pending_records: set[Future[None]] = set()
        self._pending_lock = threading.Lock()

    # -- wiring ---------------------------------------------------------------------------------------------------
    def set_emsp(self, emsp: EmspAuthorizer | None) -> None:
        self._emsp = emsp

    def set_commands(self, commands: ChargerCommands | None) -> None:
        self._commands = commands

    def add_list_listener(self, fn: ListListener) -> None:
        """fn() is called on the event loop after the local list changed (eMSP list, CLI, config)."""
        self._listeners.append(fn)

    async def start(self) -> None:
        """Store the config's allow-list as manual tokens, finish an interrupted list apply, start the supervisor."""
        now = self._wall()
        allow = [normalize_id(t) for t in self.settings.allow]
        await self._store.write(lambda c: ts.reconcile_config_tokens(c, allow, now))
        await self._drop_stale_generations()
        await self._finish_differential()
        self._known_revision = self._store.read(lambda c: ts.meta(c, "revision"))
        self._task = asyncio.create_task(self._supervise(), name="auth-supervisor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush_records()

    # -- decisions --------------------------------------------------------------------------------------------------
    def _facts(
        self, token: str, purpose: Purpose, transaction_id: int | None, now: float
    ) -> tuple[Facts, tuple[str, str | None] | None]:
        def q(conn: sqlite3.Connection) -> tuple[Facts, tuple[str, str | None] | None]:
            session = ts.session_tokens(conn, transaction_id) if transaction_id is not None else None
            limited = 0
            if self.policy.offline == "accept_limited":
                limited = ts.limited_active(conn) + self._live_reservations()
            active: tuple[ActiveSession, ...] = ()
            if self.policy.concurrent_sessions == "refuse" and purpose in ("authorize", "start"):
                active = ts.active_sessions(conn, token, now - self.policy.concurrent_stale_after_s)
            facts = Facts(
                local=ts.lookup_local(conn, token),
                cache=ts.lookup_cache(conn, token),
                emsp_reachable=self._emsp is not None and self._emsp.reachable(),
                limited_active=limited,
                active_sessions=active,
            )
            return facts, session

        return self._store.read(q)

    async def decide(
        self,
        charger_id: str,
        id_tag: str,
        *,
        purpose: Purpose,
        transaction_id: int | None = None,
        connector_id: int | None = None,
        start_ts: str | None = None,
    ) -> AuthDecision:
        """Decide whether `id_tag` may authorize / start / stop at `charger_id`. Awaits the eMSP at most
        `emsp_budget_s`. Never raises for bad input: a malformed idTag is answered Invalid. For a start,
        `connector_id` and the charger's `start_ts` (StartTransaction.timestamp) refine the ConcurrentTx check
        (decision.concurrent_conflicts); without them every transaction at the same charger is left out of it."""
        t0 = self._mono()
        now = self._wall()
        try:
            token = normalize_id(id_tag)
        except TokenError as e:
            d = AuthDecision(
                charger_id=charger_id,
                id_tag=str(id_tag)[:20],
                purpose=purpose,
                status="Invalid",
                expiry_date=None,
                parent_id_tag=None,
                source="offline_policy",
                auth_method="OFFLINE_UNKNOWN",
                reason=f"malformed idTag: {e}",
                decided_at=now,
                transaction_id=transaction_id,
            )
            return self._finish(d, t0)
        facts, session = self._facts(token, purpose, transaction_id, now)
        req = Request(
            charger_id=charger_id,
            id_tag=token,
            purpose=purpose,
            transaction_id=transaction_id,
            session_id_tag=session[0] if session else None,
            session_parent_id=session[1] if session else None,
            connector_id=connector_id,
            start_time=_charger_time(start_ts),
        )
        result = evaluate(req, facts, self.policy, now)
        if result is ASK_EMSP:
            answer = await self._ask_emsp(
                token, charger_id, self.settings.emsp_budget_s - (self._mono() - t0)
            )
            result = evaluate(req, facts, self.policy, self._wall(), answer)
            if isinstance(answer, EmspAuthAnswer):
                self._cache_answer(token, answer)
        assert isinstance(result, AuthDecision)
        if purpose == "start" and result.limits is not None and result.accepted:
            with self._reservations_lock:
                self._reservations.append(self._mono())
        return self._finish(result, t0)

    def _live_reservations(self) -> int:
        with self._reservations_lock:
            horizon = self._mono() - RESERVATION_S
            self._reservations = [t for t in self._reservations if t > horizon]
            return len(self._reservations)

    def _finish(self, d: AuthDecision, t0: float) -> AuthDecision:
        d = replace(d, latency_ms=round((self._mono() - t0) * 1000.0, 3))
        log.info(
            "auth %s %s at %s: %s (%s, %s) %.1f ms",
            d.purpose,
            mask(d.id_tag),
            d.charger_id,
            d.status,
            d.source,
            d.reason,
            d.latency_ms,
        )
        return d

    async def _ask_emsp(self, token: str, charger_id: str, budget: float) -> EmspResult:
        emsp = self._emsp
        if emsp is None or budget <= 0:
            return None
        try:
            # the authorizer promises to return None at `budget`; wait_for holds the budget even if it does not
            return await within(emsp.authorize(token, charger_id, budget), budget)
        except TimeoutError:
            return None
        except (ChargegateError, OSError, ValueError) as e:
            log.warning("eMSP authorization of %s failed: %s", mask(token), e)
            return None

    def _cache_answer(self, token: str, answer: EmspAuthAnswer) -> None:
        if answer.status == "ConcurrentTx":
            return  # about a transaction, not the token (put_cache would refuse it too)
        now = self._wall()
        cap = self.settings.cache_max_entries

        def put(conn: sqlite3.Connection) -> bool:
            return ts.put_cache(conn, token, answer.status, answer.expiry, answer.parent_id, now, cap)

        # not awaited: the driver does not wait for the cache's fsync
        fut = self._store.submit(put)
        fut.add_done_callback(_log_failure)

    # -- persistence ------------------------------------------------------------------------------------------------
    def record(
        self, conn: sqlite3.Connection, decision: AuthDecision, *, transaction_id: int | None = None
    ) -> None:
        """On the store's writer thread, inside the caller's transaction: the decision row, its AUTH_DECISION
        outbox event and, for a session started under the offline policy, its re-check entry."""
        d = decision
        tx = transaction_id if transaction_id is not None else d.transaction_id
        ts.record_decision(conn, d, tx)
        if d.purpose == "start" and d.limits is not None and d.accepted:
            with self._reservations_lock:
                if self._reservations:
                    self._reservations.pop(0)
        if d.purpose == "start" and tx is not None and d.accepted and d.source == "offline_policy":
            conn.execute(
                "INSERT OR IGNORE INTO auth_offline_sessions (transaction_id, charger_id, id_tag, limited, max_kwh, "
                "max_minutes, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    tx,
                    d.charger_id,
                    d.id_tag,
                    int(d.limits is not None),
                    d.limits.max_kwh if d.limits else None,
                    d.limits.max_minutes if d.limits else None,
                    d.decided_at,
                ),
            )
        elif d.purpose == "stop" and tx is not None:
            _end_offline_session(conn, tx)

    def confirm_start(
        self,
        conn: sqlite3.Connection,
        decision: AuthDecision,
        *,
        connector_id: int | None = None,
        start_ts: str | None = None,
    ) -> AuthDecision:
        """The ConcurrentTx check of a start again, on the store's writer thread inside the StartTransaction's own
        transaction, before its row is written: the decision to store and answer (this one, or ConcurrentTx).

        decide() reads the token's active transactions on the event loop, before the write: two starts of one card
        at two chargers at the same moment both read "none". The writer thread runs one transaction at a time and
        sees every start stored before this one (committed, or earlier in the same group commit), so here exactly
        one of them finds the other. Same rules as decide() (decision.concurrent_conflicts): only conflicts count;
        a start that was Accepted stays Accepted when none appeared meanwhile."""
        if (
            self.policy.concurrent_sessions != "refuse"
            or decision.purpose != "start"
            or not decision.accepted
        ):
            return decision
        now = self._wall()
        active = ts.active_sessions(conn, decision.id_tag, now - self.policy.concurrent_stale_after_s)
        req = Request(
            charger_id=decision.charger_id,
            id_tag=decision.id_tag,
            purpose="start",
            connector_id=connector_id,
            start_time=_charger_time(start_ts),
        )
        conflicts, _later = concurrent_conflicts(req, active, self.policy, now)
        if not conflicts:
            return decision
        first = min(conflicts, key=lambda c: c.started_at)
        refused = concurrent_refusal(decision, conflicts, "; a start stored meanwhile")
        if decision.limits is not None:  # the accept_limited slot decide() reserved is not taken
            with self._reservations_lock:
                if self._reservations:
                    self._reservations.pop(0)
        log.info(
            "auth start %s at %s: ConcurrentTx after all (transaction %d at %s stored meanwhile)",
            mask(decision.id_tag),
            decision.charger_id,
            first.transaction_id,
            first.charger_id,
        )
        return refused

    async def record_async(self, decision: AuthDecision, *, transaction_id: int | None = None) -> None:
        """record() in its own transaction, returning once it is committed."""
        await self._store.write(lambda c: self.record(c, decision, transaction_id=transaction_id))

    async def record_authorize(self, decision: AuthDecision) -> None:
        """Persist an Authorize's decision: record() in its own transaction (the row and its AUTH_DECISION event,
        atomically). When `answer_before_commit(decision)` the transaction is queued to the store at once and this
        returns without waiting for it: it goes into the writer's next group commit, after everything queued
        before it and before anything queued after it (so before the charger's next message is stored). Otherwise
        this returns once the transaction is committed. A queued record that fails is logged (the answer has
        gone out); `flush_records()` waits for the queued ones."""
        if not answer_before_commit(decision):
            await self._store.write(lambda c: self.record(c, decision))
            return
        fut: Future[None] = self._store.submit(lambda c: self.record(c, decision))
        with self._pending_lock:
            self._pending_records.add(fut)
        fut.add_done_callback(functools.partial(self._record_settled, decision=decision))

    def _record_settled(self, fut: Future[None], decision: AuthDecision) -> None:
        with self._pending_lock:
            self._pending_records.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning(
                "decision record of the Authorize of %s at %s (answered %s) failed: %s",
                mask(decision.id_tag),
                decision.charger_id,
                decision.status,
                fut.exception(),
            )

    async def flush_records(self) -> None:
        """Wait until every Authorize record queued so far by record_authorize() is committed (or has failed)."""
        with self._pending_lock:
            pending = list(self._pending_records)
        if pending:
            # asyncio.wait: cancelling this waiter leaves the store's futures (and their writes) alone
            await asyncio.wait([asyncio.wrap_future(f) for f in pending])

    def on_transaction_started(self, transaction_id: int, decision: AuthDecision) -> None:
        """After the StartTransaction commit: lets the supervisor look at a new offline-policy session now."""
        if decision.source == "offline_policy":
            self._wake.set()

    def on_transaction_stopped(self, transaction_id: int, conn: sqlite3.Connection | None = None) -> None:
        """The session ended. With `conn` (writer thread, the stop handler's transaction) the change is part of
        that transaction; without, it is written on its own."""
        self._stop_sent.pop(transaction_id, None)
        if conn is not None:
            _end_offline_session(conn, transaction_id)
        else:
            self._store.submit(functools.partial(_end_offline_session, tx=transaction_id)).add_done_callback(
                _log_failure
            )

    # CsmsHooks adapters (gateway/csms.py calls hooks as (charger_id, connector_id, transaction_id) after answering)
    async def hook_transaction_started(self, charger_id: str, connector_id: int, transaction_id: int) -> None:
        self._wake.set()

    async def hook_transaction_stopped(self, charger_id: str, connector_id: int, transaction_id: int) -> None:
        self.on_transaction_stopped(transaction_id)

    # -- operator overrides ---------------------------------------------------------------------------------------
    async def grant_override(
        self, id_tag: str, until: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """`chargegate tokens allow` for an in-process caller (e.g. a control op): the override of one token, until
        `until` (a duration such as '12h' or an ISO 8601 date-time; default overrides.DEFAULT_S). Raises TokenError
        (nothing changed) for a bad idTag / time, a manual refusal of the token, or too many live overrides."""
        token = normalize_id(id_tag)
        now = self._wall()
        end = overrides.parse_until(until, now)
        o, beaten = await self._store.write(lambda c: overrides.grant(c, token, end, reason, now))
        log.info(
            "operator override of %s until %s%s",
            mask(token),
            format_expiry(o.until),
            f" ({beaten})" if beaten else "",
        )
        self._list_changed()
        return {"id": token, "until": format_expiry(o.until), "reason": o.reason, "overrides": beaten}

    async def end_override(self, id_tag: str, reason: str) -> bool:
        """End a token's override now (recorded with `reason`); False when it had none."""
        token = normalize_id(id_tag)
        now = self._wall()
        ended = await self._store.write(lambda c: overrides.end(c, token, reason, now))
        if ended is None:
            return False
        log.info("operator override of %s ended early: %s", mask(token), reason)
        self._list_changed()
        return True

    # -- eMSP lists -----------------------------------------------------------------------------------------------
    def list_version(self) -> int:
        """The eMSP list version applied (0: none yet)."""
        return self._store.read(lambda c: ts.meta(c, "list_version"))

    async def apply_token_list(
        self, kind: str, version: int, base_version: int | None, tokens: list[dict[str, Any]]
    ) -> tuple[bool, str]:
        """Apply an eMSP local list: kind 'full' (snapshot) or 'differential' (entries without status, or with
        remove=true, are deleted). A differential whose base_version is not the applied version is refused and
        the message asks for a full resync. Returns (ok, message); on refusal nothing changed."""
        if not isinstance(tokens, list) or len(tokens) > MAX_LIST_TOKENS:
            return False, f"tokens must be a list of at most {MAX_LIST_TOKENS} entries"
        return await self.apply_token_list_parts(kind, version, base_version, _slices(tokens), len(tokens))

    async def apply_token_list_parts(
        self,
        kind: str,
        version: int,
        base_version: int | None,
        chunks: AsyncIterator[list[Any]],
        total: int,
    ) -> tuple[bool, str]:
        """apply_token_list with the entries read chunk by chunk (a list staged in parts on disk: memory stays
        O(one chunk) for a full list). `total` is the number of entries the chunks carry."""
        k = kind.strip().lower() if isinstance(kind, str) else ""
        if k not in ("full", "differential"):
            return False, f"kind must be 'full' or 'differential', got {str(kind)[:20]!r}"
        if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**53:
            return False, "version must be a positive integer"
        if total > MAX_LIST_TOKENS:
            return False, f"tokens must be a list of at most {MAX_LIST_TOKENS} entries"
        async with self._list_lock:
            current = self._store.read(lambda c: ts.meta(c, "list_version"))
            if k == "differential":
                if base_version != current:
                    return False, (
                        f"base version {base_version} does not match the applied list version {current}: "
                        "full resync required"
                    )
                if version <= current:
                    return False, f"version {version} is not newer than the applied version {current}"
                if total > MAX_DIFFERENTIAL_TOKENS:
                    return False, (
                        f"a differential may carry at most {MAX_DIFFERENTIAL_TOKENS} entries: send a full list"
                    )
                tokens: list[Any] = []
                async for chunk in chunks:
                    tokens.extend(chunk)
                    if len(tokens) > MAX_DIFFERENTIAL_TOKENS:
                        return False, (
                            f"a differential may carry at most {MAX_DIFFERENTIAL_TOKENS} entries: send a full list"
                        )
                problem = await self._apply_differential(version, base_version, tokens)
                if problem is not None:
                    return False, problem
                count = len(tokens)
            else:
                if version < current:
                    return False, f"full list version {version} is older than the applied version {current}"
                problem, count = await self._apply_full(version, chunks)
                if problem is not None:
                    return False, f"refused, nothing changed: {problem}"
        log.info("applied %s token list version %d (%d entries)", k, version, count)
        self._list_changed()
        return True, f"applied {k} list version {version}: {count} entries"

    async def _apply_differential(
        self, version: int, base_version: int | None, tokens: list[Any]
    ) -> str | None:
        """Validate and stage the differential LIST_CHUNK entries at a time (tokenstore.stage_differential: bulk-lane
        jobs, not fsynced on their own, not live), make it live in one short ordinary (fsynced) write
        (activate_differential: a few set-based statements, no per-row Python, cost independent of the list's
        size), then merge it into the list in LIST_CHUNK slices (merge_differential_chunk), each a bulk-lane job
        that changes no answer. Atomic: before the activation commits, decisions read the old list; after it, the
        new one; a refused or interrupted differential leaves only staged rows that are not live, deleted here and
        at start(). Returns the refusal (nothing changed) or None."""
        await self._finish_differential()
        writing: Future[None] | None = None
        overlap = _cpus_available() > 1
        problem: str | None = None
        try:
            for i in range(0, len(tokens), LIST_CHUNK):
                rows = ts.DifferentialRows()
                try:
                    await _parse_sliced(tokens[i : i + LIST_CHUNK], True, i, rows.add)
                except TokenError as e:
                    problem = f"refused, nothing changed: {e}"
                    break
                diff = rows.texts()
                if writing is not None:
                    await asyncio.wrap_future(writing)
                # not live and not fsynced on its own: the activation (an ordinary write) makes it durable
                writing = self._store.submit_bulk(
                    functools.partial(ts.stage_differential, version=version, diff=diff), durable=False
                )
                if not overlap:
                    await asyncio.wrap_future(writing)
                    writing = None
            if writing is not None:
                await asyncio.wrap_future(writing)
                writing = None
        finally:
            if (
                writing is not None
            ):  # cancelled half-way: let the last slice land (start() deletes the staging)
                await asyncio.shield(asyncio.wrap_future(writing))
        if problem is None:
            try:
                await self._store.write(
                    functools.partial(ts.activate_differential, version=version, base_version=base_version)
                )
            except ts.DifferentialRefused as e:
                problem = str(e)
        if problem is not None:
            await self._drop_staged_differentials()
            return problem
        try:
            await self._merge_differential()
        except (
            ChargegateError
        ) as e:  # applied (live) all the same; the merge resumes at the next apply or start
            log.warning("merging token list version %d into the list failed (resumed later): %s", version, e)
        return None

    async def _merge_differential(self) -> None:
        """Merge the live differential (if any) into the list, MERGE_CHUNK rows per bulk-lane job (not fsynced on
        their own: a lost job leaves its rows in the differential, still live)."""
        while await self._store.write_bulk(
            functools.partial(ts.merge_differential_chunk, limit=MERGE_CHUNK), durable=False
        ):
            pass

    async def _drop_staged_differentials(self) -> None:
        """Delete staged differentials that are not live (refused, interrupted), LIST_CHUNK rows per bulk job."""
        for version in self._store.read(ts.stale_differentials):
            while await self._store.write_bulk(
                functools.partial(ts.delete_staged_chunk, version=version, limit=LIST_CHUNK), durable=False
            ):
                pass

    async def _finish_differential(self) -> None:
        """Finish what an interrupted differential left: merge a live one, delete staged ones."""
        await self._merge_differential()
        await self._drop_staged_differentials()

    async def _apply_full(self, version: int, chunks: AsyncIterator[list[Any]]) -> tuple[str | None, int]:
        """Validate and write chunk by chunk into a new generation (memory stays O(chunk)); only a complete,
        valid list is made live, by an ordinary (fsynced) write. Returns (the problem of the first bad entry or None,
        entries written). Entries are validated on the event loop, PARSE_SLICE at a time; each chunk is inserted by
        the store's writer thread on its bulk lane (GIL released: one SQLite statement per chunk). With more than
        one CPU, chunk i+1 is validated while chunk i is written; on one CPU they take turns: overlapped, the two
        threads share the CPU and the event loop answers chargers at half speed (bench/bench_auth_ws.py, gateway
        pinned to one CPU, 2,000-row chunks, 500-entry slices: Authorize p99 12.0 ms overlapped, 9.0-10.3 ms in
        turns, the apply 5.2 s either way)."""
        await self._finish_differential()  # a differential not merged yet belongs to the old generation
        await self._drop_stale_generations()
        new = self._store.read(lambda c: ts.meta(c, "active_gen")) + 1
        writing: Future[None] | None = None
        overlap = _cpus_available() > 1
        problem: str | None = None
        offset = 0
        try:
            async for part in chunks:
                for i in range(0, len(part), LIST_CHUNK):
                    if offset + i >= MAX_LIST_TOKENS:
                        problem = f"more than {MAX_LIST_TOKENS} entries"
                        break
                    chunk = ts.ListRows()
                    try:
                        await _parse_sliced(part[i : i + LIST_CHUNK], False, offset + i, chunk.add)
                    except TokenError as e:
                        problem = str(e)
                        break
                    rows = chunk.text()
                    if writing is not None:
                        await asyncio.wrap_future(writing)
                    # not fsynced on its own: the activation below (an ordinary write) makes it durable
                    writing = self._store.submit_bulk(
                        functools.partial(ts.insert_list_json, gen=new, version=version, rows=rows),
                        durable=False,
                    )
                    if not overlap:
                        await asyncio.wrap_future(writing)
                        writing = None
                offset += len(part)
                if problem is not None:
                    break
            if writing is not None:
                await asyncio.wrap_future(writing)
                writing = None
        finally:
            if writing is not None:  # cancelled half-way: let the last chunk land before cleaning up
                await asyncio.shield(asyncio.wrap_future(writing))
        if problem is not None:
            await self._drop_stale_generations()  # the partial new generation
            return problem, offset
        await self._store.write(lambda c: ts.activate_generation(c, new, version))
        await self._drop_stale_generations()
        return None, offset

    async def _drop_stale_generations(self) -> None:
        """Delete the generations that are not live, LIST_CHUNK rows per bulk job (not fsynced on their own: an
        interrupted delete is found again by stale_generations and finished)."""
        for gen in self._store.read(ts.stale_generations):
            while await self._store.write_bulk(
                functools.partial(ts.delete_generation_chunk, gen=gen, limit=LIST_CHUNK), durable=False
            ):
                pass

    def _list_changed(self) -> None:
        self._known_revision = self._store.read(lambda c: ts.meta(c, "revision"))
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:  # a listener's bug must not break list application
                log.exception("token list listener failed")

    # -- supervisor -----------------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while True:
            try:
                await within(self._wake.wait(), SUPERVISE_INTERVAL_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.supervise_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep supervising; the failure is logged
                log.exception("auth supervisor round failed")

    async def supervise_once(self) -> None:
        """One round: end overrides whose time is up, notice list changes (by other processes too), re-check offline
        sessions, enforce caps."""
        now = self._wall()
        if self._store.read(lambda c: overrides.any_due(c, now)):
            ended = await self._store.write(lambda c: overrides.expire_due(c, now))
            for tid in ended:
                log.info("operator override of %s ended", mask(tid))
        rev = self._store.read(lambda c: ts.meta(c, "revision"))
        if rev != self._known_revision:
            self._list_changed()
        await self._recheck_pending()
        await self._enforce_limits()
        if self._mono() - self._last_prune >= PRUNE_INTERVAL_S:
            self._last_prune = self._mono()
            cutoff = self._wall() - DECISION_RETENTION_S
            await self._store.write(
                lambda c: c.execute(
                    "DELETE FROM auth_decisions WHERE id IN "
                    "(SELECT id FROM auth_decisions WHERE decided_at < ? ORDER BY id LIMIT ?)",
                    (cutoff, PRUNE_BATCH),
                )
            )

    async def _recheck_pending(self) -> None:
        emsp = self._emsp
        if emsp is None or not emsp.reachable():
            return
        rows = self._store.read(
            lambda c: c.execute(
                "SELECT o.transaction_id, o.charger_id, o.id_tag, t.state FROM auth_offline_sessions o "
                "LEFT JOIN transactions t ON t.id = o.transaction_id WHERE o.state = 'pending' "
                "ORDER BY o.transaction_id LIMIT ?",
                (RECHECK_BATCH,),
            ).fetchall()
        )
        for tx, charger_id, token, tx_state in rows:
            t0 = self._mono()
            answer = await self._ask_emsp(token, charger_id, self.settings.emsp_budget_s)
            if not isinstance(answer, EmspAuthAnswer):
                return  # eMSP silent: try again next round
            self._cache_answer(token, answer)
            d = evaluate(
                Request(charger_id=charger_id, id_tag=token, purpose="start", transaction_id=tx),
                Facts(),
                self.policy,
                self._wall(),
                answer,
            )
            assert isinstance(d, AuthDecision)
            d = replace(d, purpose="recheck", latency_ms=round((self._mono() - t0) * 1000.0, 3))
            active = tx_state == "active"
            if d.accepted:
                state, note = "confirmed", "eMSP accepted the token"
            elif self.settings.invalid_action == "stop" and active:
                state, note = "stopping", f"eMSP answered {d.status}: stopping the session"
            else:
                state, note = "flagged", f"eMSP answered {d.status}: session flagged"
            d = replace(d, reason=f"recheck: {note}")
            now = self._wall()

            def upd(
                c: sqlite3.Connection,
                d: AuthDecision = d,
                state: str = state,
                note: str = note,
                tx: int = tx,
                now: float = now,
            ) -> None:
                self.record(c, d, transaction_id=tx)
                c.execute(
                    "UPDATE auth_offline_sessions SET state = ?, checked_at = ?, note = ? WHERE transaction_id = ?",
                    (state, now, note, tx),
                )

            await self._store.write(upd)
            log.info("recheck of session %d (%s): %s", tx, mask(token), note)
            if state == "stopping":
                await self._remote_stop(charger_id, tx, note)

    async def _enforce_limits(self) -> None:
        now = self._wall()
        rows = self._store.read(
            lambda c: c.execute(
                "SELECT o.transaction_id, o.charger_id, o.max_kwh, o.max_minutes, o.state, t.started_at, "
                "t.meter_start, t.connector_id FROM auth_offline_sessions o JOIN transactions t ON t.id = o.transaction_id "
                "WHERE t.state = 'active' AND o.state IN ('pending', 'stopping', 'flagged', 'confirmed') "
                "AND (o.limited = 1 OR o.state = 'stopping')"
            ).fetchall()
        )
        for tx, charger_id, max_kwh, max_minutes, state, started_at, meter_start, connector_id in rows:
            why = None
            if state == "stopping":
                why = "re-sending RemoteStopTransaction"
            elif state == "confirmed":
                continue  # the eMSP accepted the token: the offline caps no longer apply
            elif max_minutes is not None and now - float(started_at) >= max_minutes * 60.0:
                why = f"accept_limited cap of {max_minutes:g} minutes reached"
            elif max_kwh is not None:
                wh = self._store.read(
                    functools.partial(_energy_wh, charger_id=charger_id, connector_id=connector_id, tx=tx)
                )
                if wh is not None and wh - int(meter_start) >= max_kwh * 1000.0:
                    why = f"accept_limited cap of {max_kwh:g} kWh reached"
            if why is None:
                continue
            last = self._stop_sent.get(tx)
            if last is not None and self._mono() - last < STOP_RETRY_S:
                continue
            if state != "stopping":
                await self._store.write(
                    lambda c, tx=tx, why=why: c.execute(  # type: ignore[misc]
                        "UPDATE auth_offline_sessions SET state = 'stopping', note = ? WHERE transaction_id = ?",
                        (why, tx),
                    )
                )
            await self._remote_stop(charger_id, tx, why)

    async def _remote_stop(self, charger_id: str, tx: int, why: str) -> None:
        self._stop_sent[tx] = self._mono()
        commands = self._commands
        if commands is None:
            log.warning("session %d should be stopped (%s) but no charger command channel is wired", tx, why)
            return
        try:
            res = await commands.call(
                charger_id, "RemoteStopTransaction", {"transactionId": tx}, STOP_CALL_TIMEOUT_S
            )
            log.info("RemoteStopTransaction %d at %s (%s): %s", tx, charger_id, why, res.get("status"))
        except ChargegateError as e:
            log.warning("RemoteStopTransaction %d at %s failed: %s", tx, charger_id, e)


def _end_offline_session(conn: sqlite3.Connection, tx: int) -> None:
    """A flagged session stays flagged (the record of what the eMSP said); the others are over."""
    conn.execute(
        "UPDATE auth_offline_sessions SET state = 'ended' WHERE transaction_id = ? "
        "AND state IN ('pending', 'confirmed', 'stopping')",
        (tx,),
    )


def _log_failure(fut: Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("auth store write failed: %s", fut.exception())


async def _slices(tokens: list[Any]) -> AsyncIterator[list[Any]]:
    for i in range(0, len(tokens), LIST_CHUNK):
        yield tokens[i : i + LIST_CHUNK]


def _cpus_available() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a gateway pinned with taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


async def _parse_sliced(
    tokens: list[Any], differential: bool, offset: int, each: Callable[[TokenSpec], object]
) -> None:
    """Validate every entry (raising TokenError naming the first bad one by its index in the whole list) and hand it
    to `each` (which may refuse it with a TokenError too), on the event loop, yielding to it every PARSE_SLICE
    entries (see PARSE_SLICE: no worker thread holding the GIL). `each` should keep no per-entry object the GC tracks
    (tokenstore.row_json)."""
    for start in range(0, len(tokens), PARSE_SLICE):
        for i in range(start, min(start + PARSE_SLICE, len(tokens))):
            try:
                each(parse_entry(tokens[i], allow_remove=differential))
            except TokenError as e:
                raise TokenError(f"entry {offset + i}: {e}") from None
        await asyncio.sleep(0)


def _energy_wh(conn: sqlite3.Connection, *, charger_id: str, connector_id: int, tx: int) -> float | None:
    """Latest energy register reading of the session (Wh), from the meter samples the OCPP server stored."""
    r = conn.execute(
        "SELECT value, unit FROM meter_samples WHERE charger_id = ? AND connector_id = ? "
        "AND IFNULL(transaction_id, -1) = ? AND measurand = 'Energy.Active.Import.Register' AND phase = '' "
        "ORDER BY charger_ts DESC, id DESC LIMIT 1",
        (charger_id, connector_id, tx),
    ).fetchone()
    if r is None:
        return None
    try:
        v = float(r[0])
    except ValueError:
        return None
    return v * 1000.0 if r[1] == "kWh" else v


def _charger_time(raw: str | None) -> float | None:
    """UNIX seconds of a charger timestamp (ISO 8601; no zone = UTC); None when absent or unreadable."""
    if not isinstance(raw, str):
        return None
    try:
        dt = datetime.fromisoformat(raw.strip())
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        value = dt.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return value if math.isfinite(value) else None


__all__ = ["NOT_ASKED", "AuthDecision", "AuthService", "decision_body"]
