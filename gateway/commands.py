"""The one internal API for sending OCPP commands to chargers. The OCPP server implements it; load management,
the uplink's downlink commands and the control socket (`chargegate cmd`) all go through it."""

from __future__ import annotations

from typing import Any, Protocol


class ChargerCommands(Protocol):
    def connected(self) -> list[str]:
        """Ids of chargers with a live connection."""
        ...

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send an OCPP 1.6 CALL (camelCase payload, validated against the official schema) and return the
        CALLRESULT payload. Raises ChargerNotConnected, or CommandError for a CALLERROR, a timeout or an invalid
        request. Never call this from inside a message handler: schedule it as a task."""
        ...
