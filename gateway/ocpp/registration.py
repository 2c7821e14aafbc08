"""The registration gate (OCPP 1.6 §4.2): which CALLs a charger may send in its registration state. Pure code.

A charger's registration is its BootNotification answer. Until it is Accepted, the charger may send nothing but
BootNotification (1.6 §4.2: "SHALL NOT send any other request" after Pending; nothing at all during a Rejected
retry interval), apart from a message the gateway itself asked for with TriggerMessage while Pending. Every other
CALL is answered with one CALLERROR and changes nothing; the connection stays up.

Which registration applies, first match wins:

1. `booted`: the answer to a BootNotification on THIS connection.
2. `stored`: no BootNotification on this connection (a websocket reconnect after a network cut, no reboot: real
   chargers do this and then deliver their queued transaction messages): the charger's last persisted answer
   (`chargers.boot_status`). Accepted keeps working, so no offline session is lost.
3. `configured`: the charger never booted against this gateway (no persisted answer, e.g. a replaced gateway or a
   wiped data directory): the answer its BootNotification would get from the config (`[[chargers]].boot_status`,
   else `[ocpp].boot_status`). Lenient where that is Accepted: its boot would be accepted anyway, and refusing
   would only burn the charger's TransactionMessageAttempts on queued transaction messages. Strict where it is
   Pending or Rejected: the installer asked to see (or bar) the charger before it records sessions; the gateway
   then asks it to boot (TriggerMessage) so the registration completes and the queue flows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# The 1.6 error code for a CALL the charger is not allowed to send in its registration state. 1.6 has no code
# for it (its ten codes: FormationViolation etc. describe the message, NotSupported/NotImplemented the action);
# SecurityError ("a security issue occurred preventing the receiver from completing the Action") is the closest
# and is what OCPP 2.0.1 prescribes for exactly this case (B02.FR.09 Pending, B03.FR.07 Rejected: the CSMS
# answers CALLERROR SecurityError). The description says why, for the charger's log.
REFUSAL_CODE: Final = "SecurityError"

ACCEPTED: Final = "Accepted"

# The only CALL an unregistered charger may always send.
BOOT_NOTIFICATION: Final = "BootNotification"

Source = Literal["boot", "stored", "configured"]


@dataclass(frozen=True, slots=True)
class Verdict:
    admitted: bool
    status: str  # the registration that applied
    source: Source  # where it came from
    triggered: bool = False  # admitted only because the gateway asked for this message (TriggerMessage)

    @property
    def description(self) -> str:
        """The CALLERROR description of a refusal (shown in the charger's log; at most 255 characters)."""
        where = {
            "boot": "answered on this connection",
            "stored": "its last answer; no BootNotification on this connection",
            "configured": "never booted here; the configured answer",
        }[self.source]
        return (
            f"charge point is not registered (BootNotification {self.status}, {where}): "
            f"only BootNotification is allowed until it is Accepted"
        )


def registration(booted: str | None, stored: str | None, configured: str) -> tuple[str, Source]:
    if booted is not None:
        return booted, "boot"
    if stored:
        return stored, "stored"
    return configured, "configured"


def decide(
    action: str, *, booted: str | None, stored: str | None, configured: str, triggered: bool = False
) -> Verdict:
    """May a charger in this registration state send `action`? `triggered`: the gateway asked for this message
    with a TriggerMessage the charger accepted on this connection."""
    status, source = registration(booted, stored, configured)
    if action == BOOT_NOTIFICATION or status == ACCEPTED:
        return Verdict(True, status, source)
    if triggered:
        # 1.6 §4.2: while Pending the Central System may retrieve information; a message it asked for with
        # TriggerMessage is an answer, not the charger acting on its own
        return Verdict(True, status, source, triggered=True)
    return Verdict(False, status, source)
