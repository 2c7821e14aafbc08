"""What the downlink dispatches to. Small Protocols implemented by other subsystems (the seams).

- `ChargerCommands` (gateway.commands): the OCPP server; remote start/stop, reset, unlock, availability, trigger.
- `TokenListSink`: the token store applies an eMSP token list (full or differential, versioned).
- `StreamingTokenListSink`: optionally, a sink that also applies a list read part by part (multi-part lists staged
  on disk; gateway/uplink/tokenstaging.py uses it when the sink has these methods).
- `SiteLimitSink`: load management takes a site current limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from gateway.commands import ChargerCommands

__all__ = ["ChargerCommands", "SiteLimitSink", "StreamingTokenListSink", "TokenListSink"]


class TokenListSink(Protocol):
    async def apply_token_list(
        self, kind: str, version: int, base_version: int | None, tokens: list[dict[str, Any]]
    ) -> tuple[bool, str]:
        """Apply a token list. kind is 'full' (replace the cache) or 'differential' (apply onto base_version).
        Returns (applied, message): (False, reason) when refused (e.g. base_version is not the version held);
        the uplink acknowledges the version applied to the eMSP with that answer."""
        ...


class StreamingTokenListSink(TokenListSink, Protocol):
    def list_version(self) -> int:
        """The token list version applied (0 = none): lets the first part of a list be refused early."""
        ...

    async def apply_token_list_parts(
        self,
        kind: str,
        version: int,
        base_version: int | None,
        chunks: AsyncIterator[list[dict[str, Any]]],
        total: int,
    ) -> tuple[bool, str]:
        """apply_token_list with the entries read chunk by chunk (`total` entries in all); the same checks and
        answers, and nothing changes on refusal."""
        ...


class SiteLimitSink(Protocol):
    def set_site_limit(self, amps: float) -> None:
        """Set the site's current limit per phase (A); load management re-plans at once."""
        ...
