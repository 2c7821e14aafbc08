"""The authorization decision: pure code, no I/O, the clock passed in.

`evaluate(request, facts, policy, now, emsp=NOT_ASKED)` returns either a final `AuthDecision`, or `ASK_EMSP` when
the answer depends on the eMSP; the caller (gateway/auth/service.py) then asks it within the budget and calls
`evaluate` again with the answer (or None when none came). Order:

1. the local list (eMSP list + manual tokens + operator overrides): a hit answers at once. When the eMSP list and
   the manual tokens both hold the token, the most restrictive wins (Blocked > Expired > Invalid > Accepted), so an
   operator can block an eMSP card. A live operator override (`chargegate tokens allow`) beats the eMSP list's
   Blocked / Expired / Invalid (and the eMSP's online answer: it is never asked), but not a manual refusal and not
   a restriction to other chargers.
2. with `local_pre_authorize`, a fresh cached Accepted answers at once.
3. the eMSP, when reachable.
4. the authorization cache: a fresh (within TTL) Accepted, or a negative answer of any age (ConcurrentTx excepted:
   it is about a transaction, not the token).
5. the offline policy for tokens known to nobody.
6. for an Authorize or a start with `concurrent_sessions = "refuse"`: an Accepted token that already has an active
   transaction elsewhere is answered ConcurrentTx (`concurrent_conflicts`).

A token's expiry date always wins over an Accepted status. For a stop, the session's own token and any Accepted
token of the same parent group (OCPP 1.6 parentIdTag) may stop it; the offline policy never lets an unknown token
stop someone else's session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from gateway.auth.emsp import EmspAuthAnswer
from gateway.auth.tokens import TokenStatus, format_expiry

DecisionStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"]
Source = Literal["local_list", "manual", "override", "cache", "emsp", "offline_policy", "session"]
AuthMethod = Literal[
    "WHITELIST", "AUTH_CACHE", "AUTH_REQUEST", "OFFLINE_UNKNOWN", "SESSION_TOKEN", "OPERATOR_OVERRIDE"
]
# recheck: a later eMSP check of an offline-policy session; override: an operator override granted or ended (an
# audit record, charger '*')
Purpose = Literal["authorize", "start", "stop", "recheck", "override"]
PolicyMode = Literal["reject", "accept", "accept_limited"]
ConcurrentMode = Literal["allow", "refuse"]

# A late-delivered (offline-queued) StartTransaction is not refused because of an active transaction that began
# after it did. "After" compares the charger's start timestamp with the gateway's receive time of the other start,
# so it allows this much clock difference between charger and gateway (chargers set their clock from the gateway's
# Heartbeat / BootNotification currentTime; a minute covers drift between those).
START_ORDER_SLACK_S: Final = 60.0

# Most restrictive first: when two local sources disagree, the higher rank wins.
_RANK: Final[dict[str, int]] = {"Accepted": 0, "Invalid": 1, "Expired": 2, "Blocked": 3, "ConcurrentTx": 1}


@dataclass(frozen=True, slots=True)
class LocalEntry:
    """A token as one local source (the eMSP list or the manual tokens) holds it."""

    id: str
    status: TokenStatus
    expiry: float | None
    parent_id: str | None
    chargers: tuple[str, ...] | None
    # 'override': an operator override; `expiry` is its end ("until"), after which it no longer exists (it never
    # turns Expired), `note` its reason
    source: Literal["local_list", "manual", "override"]
    list_version: int | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    id: str
    status: DecisionStatus
    expiry: float | None
    parent_id: str | None
    cached_at: float


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps of a session accepted under the offline policy `accept_limited` (None = no cap)."""

    max_kwh: float | None
    max_minutes: float | None


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """An active transaction of the token being decided (the transactions table)."""

    transaction_id: int
    charger_id: str
    connector_id: int
    started_at: float  # gateway wall clock when its StartTransaction was stored, UNIX seconds


@dataclass(frozen=True, slots=True)
class Policy:
    offline: PolicyMode = "reject"
    limited_max_kwh: float = 10.0  # 0 = no cap
    limited_max_minutes: float = 120.0  # 0 = no cap
    limited_max_concurrent: int = 2
    cache_ttl_s: float = 86400.0
    local_pre_authorize: bool = False
    concurrent_sessions: ConcurrentMode = "allow"
    concurrent_stale_after_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class Request:
    charger_id: str
    id_tag: str  # normalized
    purpose: Purpose
    transaction_id: int | None = None
    # For a stop: the session's start token and its parent group (None when the session is unknown).
    session_id_tag: str | None = None
    session_parent_id: str | None = None
    # For a start: its connector (None: unknown) and the charger's start timestamp (UNIX seconds; None: unknown)
    connector_id: int | None = None
    start_time: float | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store knows about the token at decision time."""

    local: tuple[LocalEntry, ...] = ()
    cache: CacheEntry | None = None
    emsp_reachable: bool = False
    limited_active: int = 0  # accept_limited sessions active on the site
    # the token's active transactions (read only with concurrent_sessions = "refuse", for an Authorize or a start)
    active_sessions: tuple[ActiveSession, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthDecision:
    charger_id: str
    id_tag: str
    purpose: Purpose
    status: DecisionStatus
    expiry_date: str | None  # ISO 8601 UTC, as OCPP idTagInfo.expiryDate
    parent_id_tag: str | None
    source: Source
    auth_method: AuthMethod
    reason: str
    latency_ms: float = 0.0
    limits: Limits | None = None
    decided_at: float = 0.0  # wall clock, UNIX seconds
    transaction_id: int | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"

    def id_tag_info(self) -> dict[str, str]:
        """The OCPP 1.6 idTagInfo object for Authorize.conf / StartTransaction.conf / StopTransaction.conf."""
        info: dict[str, str] = {"status": self.status}
        if self.expiry_date is not None:
            info["expiryDate"] = self.expiry_date
        if self.parent_id_tag is not None:
            info["parentIdTag"] = self.parent_id_tag
        return info


class _AskEmsp:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ASK_EMSP"


class _NotAsked:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_ASKED"


ASK_EMSP: Final = _AskEmsp()
NOT_ASKED: Final = _NotAsked()
EmspResult = EmspAuthAnswer | None | _NotAsked


def effective_status(status: str, expiry: float | None, now: float) -> str:
    """Accepted turns Expired once the expiry date has passed; other statuses stay."""
    if status == "Accepted" and expiry is not None and expiry <= now:
        return "Expired"
    return status


def live_entries(entries: tuple[LocalEntry, ...], now: float) -> tuple[LocalEntry, ...]:
    """The entries that exist at `now`: an operator override whose end has passed is gone (it never turns Expired)."""
    if all(e.source != "override" for e in entries):
        return entries
    return tuple(e for e in entries if e.source != "override" or (e.expiry is not None and e.expiry > now))


def _why(e: LocalEntry, status: str) -> str:
    return {
        "Accepted": "listed Accepted",
        "Blocked": "listed Blocked",
        "Expired": "listed Expired" if e.status == "Expired" else "expiry date passed",
        "Invalid": "listed Invalid",
    }[status]


def merge_local(entries: tuple[LocalEntry, ...], charger_id: str, now: float) -> tuple[LocalEntry, str, str]:
    """The deciding local entry, its effective status at this charger, and why. Requires live entries (see
    `live_entries`), at least one.

    Without an override: the most restrictive of the eMSP list's and the manual entry wins. With a live override:
    a manual refusal (Blocked / Expired / Invalid: the operator's own, permanent word) still wins; a restriction
    of the token to other chargers still holds (Invalid here); otherwise the override answers Accepted, whatever
    the eMSP list says."""
    override = next((e for e in entries if e.source == "override"), None)
    others = tuple(e for e in entries if e.source != "override")
    if override is not None:
        for e in others:
            if e.source == "manual":
                status = effective_status(e.status, e.expiry, now)
                if status != "Accepted":
                    return e, status, _why(e, status) + " (manual: wins over the operator override)"
        for e in others:
            if e.chargers is not None and charger_id not in e.chargers:
                return (
                    override,
                    "Invalid",
                    "not valid at this charger (an override does not widen a restriction)",
                )
        beaten = [effective_status(e.status, e.expiry, now) for e in others]
        refused = sorted({b for b in beaten if b != "Accepted"}, key=lambda b: -_RANK[b])
        why = "operator override"
        if override.note:
            why += f" ({override.note})"
        if refused:
            why += f" beats listed {refused[0]}"
        return override, "Accepted", why
    best: tuple[int, LocalEntry, str, str] | None = None
    for e in others:
        status = effective_status(e.status, e.expiry, now)
        why = _why(e, status)
        if status == "Accepted" and e.chargers is not None and charger_id not in e.chargers:
            status, why = "Invalid", "not valid at this charger"
        rank = _RANK[status]
        # ties: the eMSP list speaks before a manual entry
        if best is None or rank > best[0] or (rank == best[0] and e.source == "local_list"):
            best = (rank, e, status, why)
    assert best is not None
    return best[1], best[2], best[3]


def concurrent_conflicts(
    req: Request, sessions: tuple[ActiveSession, ...], policy: Policy, now: float
) -> tuple[list[ActiveSession], list[ActiveSession]]:
    """(the active transactions that make this request a concurrent one, the overlapping ones that do not because
    they began after this start did). Not counted:

    * transactions whose StartTransaction reached the gateway more than `concurrent_stale_after_s` ago (one whose
      StopTransaction was lost must not lock the token out for ever);
    * for an Authorize (OCPP 1.6 Authorize.req names no connector) every transaction at the same charger: a charger
      that lost a transaction (power cut, no StopTransaction) must not lock its driver out; a second connector of
      the same charger is caught by the StartTransaction that follows;
    * for a start: the transaction on the same connector of the same charger (a connector holds one transaction:
      a resent StartTransaction, or a new start after the charger forgot the old one); without a connector, every
      one at the same charger, as for an Authorize;
    * for a start delivered late (its charger timestamp within the stale window and before now): transactions that
      began more than START_ORDER_SLACK_S after it. When it started, offline, the token was not in them."""
    conflicts: list[ActiveSession] = []
    later: list[ActiveSession] = []
    start = req.start_time
    if start is not None and not now - policy.concurrent_stale_after_s <= start <= now + START_ORDER_SLACK_S:
        start = None  # a charger clock far off says nothing about the order
    for s in sessions:
        if s.transaction_id == req.transaction_id or now - s.started_at > policy.concurrent_stale_after_s:
            continue
        if s.charger_id == req.charger_id and (
            req.purpose != "start" or req.connector_id is None or s.connector_id == req.connector_id
        ):
            continue
        if req.purpose == "start" and start is not None and s.started_at > start + START_ORDER_SLACK_S:
            later.append(s)
            continue
        conflicts.append(s)
    return conflicts, later


def concurrent_refusal(d: AuthDecision, conflicts: Sequence[ActiveSession], note: str = "") -> AuthDecision:
    """`d` answered ConcurrentTx because of `conflicts` (concurrent_conflicts' first result, not empty), naming the
    earliest of them; `note` is added to the reason (e.g. when the conflict was found only at the write)."""
    s = min(conflicts, key=lambda c: c.started_at)
    return _with(
        d,
        "ConcurrentTx",
        f"already in transaction {s.transaction_id} at {s.charger_id} connector {s.connector_id} "
        f"(concurrent_sessions = refuse{note}); the token itself: {d.reason}",
    )


def _concurrency(req: Request, facts: Facts, policy: Policy, now: float, d: AuthDecision) -> AuthDecision:
    if policy.concurrent_sessions != "refuse" or not d.accepted or req.purpose not in ("authorize", "start"):
        return d
    conflicts, later = concurrent_conflicts(req, facts.active_sessions, policy, now)
    if conflicts:
        return concurrent_refusal(d, conflicts)
    if later:
        ids = ", ".join(str(s.transaction_id) for s in later)
        return _with(d, "Accepted", f"{d.reason}; overlaps transaction(s) {ids} that began after this start")
    return d


def _decision(
    req: Request,
    status: str,
    expiry: float | None,
    parent: str | None,
    source: Source,
    method: AuthMethod,
    reason: str,
    now: float,
    limits: Limits | None = None,
) -> AuthDecision:
    return AuthDecision(
        charger_id=req.charger_id,
        id_tag=req.id_tag,
        purpose=req.purpose,
        status=status,  # type: ignore[arg-type]
        expiry_date=format_expiry(expiry),
        parent_id_tag=parent,
        source=source,
        auth_method=method,
        reason=reason,
        limits=limits,
        decided_at=now,
        transaction_id=req.transaction_id,
    )


def _stop_verdict(req: Request, d: AuthDecision) -> AuthDecision:
    """Turn the token's own verdict into the answer to 'may this token stop that session'."""
    if d.status != "Accepted":
        return d
    if d.source == "offline_policy":
        return _with(d, "Invalid", "unknown token cannot stop another token's session")
    if d.parent_id_tag is not None and d.parent_id_tag == req.session_parent_id:
        return _with(d, "Accepted", "same parent group as the session's token")
    return _with(d, "Invalid", "not the session's token nor of its parent group")


def _with(d: AuthDecision, status: str, reason: str) -> AuthDecision:
    """The decision with another status and reason; limits only stay on an Accepted one."""
    limits = d.limits if status == "Accepted" else None
    return replace(d, status=status, reason=reason, limits=limits)  # type: ignore[arg-type]


def evaluate(
    req: Request, facts: Facts, policy: Policy, now: float, emsp: EmspResult = NOT_ASKED
) -> AuthDecision | _AskEmsp:
    """One decision step (see the module docstring). `now` is wall-clock UNIX seconds (expiry dates are wall time)."""
    if req.purpose == "stop" and req.session_id_tag is not None:
        if req.id_tag == req.session_id_tag:
            return _decision(
                req,
                "Accepted",
                None,
                req.session_parent_id,
                "session",
                "SESSION_TOKEN",
                "the session's own token",
                now,
            )
        d = _token_verdict(req, facts, policy, now, emsp)
        return d if isinstance(d, _AskEmsp) else _stop_verdict(req, d)
    d = _token_verdict(req, facts, policy, now, emsp)
    return d if isinstance(d, _AskEmsp) else _concurrency(req, facts, policy, now, d)


def _token_verdict(
    req: Request, facts: Facts, policy: Policy, now: float, emsp: EmspResult
) -> AuthDecision | _AskEmsp:
    # 1. local list (eMSP list, manual tokens, operator overrides)
    local = live_entries(facts.local, now)
    if local:
        entry, status, why = merge_local(local, req.charger_id, now)
        parent = entry.parent_id
        if parent is None:
            parent = next((e.parent_id for e in local if e.parent_id is not None), None)
        source: Source = entry.source
        method: AuthMethod = "OPERATOR_OVERRIDE" if source == "override" else "WHITELIST"
        return _decision(req, status, entry.expiry, parent, source, method, why, now)

    cache = facts.cache
    if cache is not None and cache.status == "ConcurrentTx":
        cache = None  # an answer about a transaction that has most likely ended, not about the token
    fresh = cache is not None and 0 <= now - cache.cached_at < policy.cache_ttl_s
    # 2. pre-authorize from a fresh cached Accepted
    if policy.local_pre_authorize and cache is not None and fresh and cache.status == "Accepted":
        return _from_cache(req, cache, now)

    # 3. the eMSP
    if isinstance(emsp, _NotAsked):
        if facts.emsp_reachable:
            return ASK_EMSP
    elif emsp is not None:
        status = effective_status(emsp.status, emsp.expiry, now)
        why = "eMSP answered " + emsp.status
        if status != emsp.status:
            why += " but its expiry date has passed"
        return _decision(req, status, emsp.expiry, emsp.parent_id, "emsp", "AUTH_REQUEST", why, now)
    offline_why = "eMSP unreachable" if isinstance(emsp, _NotAsked) else "no eMSP answer within the budget"

    # 4. the authorization cache
    if cache is not None:
        if cache.status != "Accepted" or fresh:
            return _from_cache(req, cache, now, offline_why)

    # 5. the offline policy
    unknown = f"unknown token, {offline_why}"
    if policy.offline == "accept":
        return _decision(
            req, "Accepted", None, None, "offline_policy", "OFFLINE_UNKNOWN", unknown + ": policy accept", now
        )
    if policy.offline == "accept_limited":
        if policy.limited_max_concurrent <= facts.limited_active:
            return _decision(
                req,
                "Invalid",
                None,
                None,
                "offline_policy",
                "OFFLINE_UNKNOWN",
                unknown
                + f": accept_limited cap of {policy.limited_max_concurrent} concurrent sessions reached",
                now,
            )
        limits = Limits(
            max_kwh=policy.limited_max_kwh or None,
            max_minutes=policy.limited_max_minutes or None,
        )
        return _decision(
            req,
            "Accepted",
            None,
            None,
            "offline_policy",
            "OFFLINE_UNKNOWN",
            unknown + ": policy accept_limited",
            now,
            limits,
        )
    return _decision(
        req, "Invalid", None, None, "offline_policy", "OFFLINE_UNKNOWN", unknown + ": policy reject", now
    )


def _from_cache(req: Request, cache: CacheEntry, now: float, context: str = "") -> AuthDecision:
    status = effective_status(cache.status, cache.expiry, now)
    why = "cached " + cache.status
    if status != cache.status:
        why += " but its expiry date has passed"
    if context:
        why += f" ({context})"
    return _decision(req, status, cache.expiry, cache.parent_id, "cache", "AUTH_CACHE", why, now)
