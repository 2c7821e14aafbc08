"""The interface authorization asks the eMSP through. The MQTT uplink implements it (gateway/uplink);
tests use a double. Kept tiny on purpose: it is the seam between two subsystems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

AuthStatus = Literal["Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"]


@dataclass(frozen=True)
class EmspAuthAnswer:
    status: AuthStatus
    expiry: float | None = None  # UNIX seconds; None = no expiry given
    parent_id: str | None = None


class EmspAuthorizer(Protocol):
    def reachable(self) -> bool:
        """True while the uplink is connected to the broker (a request has a chance of being answered)."""
        ...

    async def authorize(self, token_id: str, charger_id: str, timeout: float) -> EmspAuthAnswer | None:
        """Ask the eMSP; None when no answer arrived within `timeout` seconds (caller falls back offline)."""
        ...
