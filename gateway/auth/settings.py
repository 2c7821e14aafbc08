"""The `[auth]` config section. Imports nothing from gateway.config so gateway/config.py can import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OfflinePolicyMode = Literal["reject", "accept", "accept_limited"]
ConcurrentSessionsMode = Literal["allow", "refuse"]

# Bounds of concurrent_stale_after_s: below a minute a charger's own StartTransaction resend window would already
# count as stale; beyond 30 days a lost StopTransaction would lock a card out for a month.
MIN_CONCURRENT_STALE_S = 60.0
MAX_CONCURRENT_STALE_S = 30 * 86400.0


@dataclass(frozen=True)
class AuthSection:
    # Manual tokens from the config: Accepted at every charger (idTags compared case-insensitively). They are
    # stored as manual tokens (origin 'config') at start, so chargers' local lists carry them too.
    allow: tuple[str, ...] = ()
    # Tokens known neither to the local list nor to the cache, while the eMSP is unreachable or silent:
    # 'reject' refuses them, 'accept' accepts them, 'accept_limited' accepts them under the caps below.
    offline_policy: OfflinePolicyMode = "reject"
    # Caps of an 'accept_limited' session (0 = no cap on that quantity); the gateway stops the session
    # (RemoteStopTransaction) when one is reached.
    limited_max_kwh: float = 10.0
    limited_max_minutes: float = 120.0
    # Most 'accept_limited' sessions active at once on the site; further unknown tokens are refused.
    limited_max_concurrent: int = 2
    # How long a decision may wait for the eMSP's answer before falling back to the cache / offline policy
    # (seconds). Chargers time an Authorize out after ~30 s and drivers give up much sooner: 2 s by default.
    emsp_budget_s: float = 2.0
    # How long an Accepted answer of the eMSP stays usable from the authorization cache (seconds).
    # Blocked / Expired / Invalid answers are honoured until the eMSP says otherwise.
    cache_ttl_s: float = 86400.0
    # Most entries kept in the authorization cache; the oldest are dropped beyond it.
    cache_max_entries: int = 100_000
    # Answer from a fresh cached Accepted without asking the eMSP (OCPP LocalPreAuthorize); faster, but a
    # token blocked at the eMSP keeps working until its cache entry's TTL runs out.
    local_pre_authorize: bool = False
    # A session started under the offline policy whose token the eMSP later rejects: 'stop' sends
    # RemoteStopTransaction, 'flag' only records it (AUTH_DECISION event with reason 'recheck').
    invalid_action: Literal["stop", "flag"] = "stop"
    # Keep chargers' OCPP local authorization lists in step with the token store (SendLocalList).
    sync_charger_lists: bool = True
    # An idTag that already has an active transaction on another charger (or another connector of the same charger):
    # 'allow' lets it start another one (OCPP 1.6 sets no limit); 'refuse' answers its Authorize and
    # StartTransaction with idTagInfo status ConcurrentTx. Per idTag, not per parent group (a fleet's parentIdTag
    # is shared by many drivers). An offline-queued StartTransaction answered ConcurrentTx is still recorded.
    concurrent_sessions: ConcurrentSessionsMode = "allow"
    # Active transactions whose StartTransaction reached the gateway longer ago than this (seconds) do not count
    # for 'refuse': a transaction whose StopTransaction never came must not lock its card out for ever.
    concurrent_stale_after_s: float = 86400.0

    def validate(self) -> str | None:
        if not 0 < self.emsp_budget_s <= 30:
            return "emsp_budget_s: expected 0 < seconds <= 30"
        if self.cache_ttl_s < 0:
            return "cache_ttl_s: expected >= 0"
        if self.limited_max_kwh < 0 or self.limited_max_minutes < 0:
            return "limited_max_kwh / limited_max_minutes: expected >= 0 (0 = no cap)"
        if self.limited_max_concurrent < 0:
            return "limited_max_concurrent: expected >= 0"
        if not 0 < self.cache_max_entries <= 10_000_000:
            return "cache_max_entries: expected 1..10000000"
        if not MIN_CONCURRENT_STALE_S <= self.concurrent_stale_after_s <= MAX_CONCURRENT_STALE_S:
            return (
                f"concurrent_stale_after_s: expected {MIN_CONCURRENT_STALE_S:g}..{MAX_CONCURRENT_STALE_S:g} seconds "
                "(a transaction older than this no longer blocks its token)"
            )
        for t in self.allow:
            if not t.strip() or len(t.strip()) > 20:
                return f"allow: {t[:24]!r} is not an idTag of 1..20 characters"
        return None
