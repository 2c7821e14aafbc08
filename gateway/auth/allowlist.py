"""The simplest authorizer: a fixed allow-list from the config. Used until (and alongside) the token store."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["authorize", "start", "stop"]


@dataclass(frozen=True)
class AuthDecision:
    status: str  # OCPP AuthorizationStatus
    source: str = "allow_list"
    auth_method: str = "WHITELIST"
    reason: str = ""
    expiry_date: str | None = None
    parent_id_tag: str | None = None
    latency_ms: float = 0.0

    def id_tag_info(self) -> dict[str, str]:
        info = {"status": self.status}
        if self.expiry_date:
            info["expiryDate"] = self.expiry_date
        if self.parent_id_tag:
            info["parentIdTag"] = self.parent_id_tag
        return info


class AllowListAuthorizer:
    def __init__(self, allow: tuple[str, ...]) -> None:
        self._allow = frozenset(t.upper() for t in allow)

    async def decide(
        self, charger_id: str, id_tag: str, *, purpose: Purpose, transaction_id: int | None = None
    ) -> AuthDecision:
        if id_tag.upper() in self._allow:
            return AuthDecision("Accepted", reason="on allow-list")
        return AuthDecision("Invalid", reason="not on allow-list")

    def record(
        self, conn: sqlite3.Connection, decision: AuthDecision, *, transaction_id: int | None = None
    ) -> None:
        return None
