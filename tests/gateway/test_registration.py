"""The registration gate's rules (gateway/ocpp/registration.py), pure: which registration applies and what it
admits."""

from __future__ import annotations

import pytest

from gateway.ocpp.framing import ERROR_CODES_16
from gateway.ocpp.registration import REFUSAL_CODE, decide


@pytest.mark.parametrize(
    ("booted", "stored", "configured", "admitted", "source"),
    [
        ("Accepted", None, "Pending", True, "boot"),
        ("Pending", "Accepted", "Accepted", False, "boot"),  # this connection's answer beats the stored one
        ("Rejected", None, "Accepted", False, "boot"),
        (None, "Accepted", "Rejected", True, "stored"),  # a reconnect: the stored answer, not the new config
        (None, "Pending", "Accepted", False, "stored"),
        (None, "Rejected", "Accepted", False, "stored"),
        (None, None, "Accepted", True, "configured"),  # never booted: lenient where a boot would be accepted
        (None, None, "Pending", False, "configured"),
        (None, None, "Rejected", False, "configured"),
    ],
)
def test_which_registration_applies(
    booted: str | None, stored: str | None, configured: str, admitted: bool, source: str
) -> None:
    v = decide("StartTransaction", booted=booted, stored=stored, configured=configured)
    assert (v.admitted, v.source, v.triggered) == (admitted, source, False)
    if not admitted:
        assert v.status in v.description and len(v.description) <= 255


@pytest.mark.parametrize("booted", ["Pending", "Rejected", None])
def test_boot_notification_is_always_admitted(booted: str | None) -> None:
    assert decide("BootNotification", booted=booted, stored="Rejected", configured="Rejected").admitted


def test_a_triggered_message_is_admitted_and_marked() -> None:
    v = decide("StatusNotification", booted="Pending", stored=None, configured="Pending", triggered=True)
    assert v.admitted and v.triggered
    # an Accepted charger needs no allowance: it is not marked (and the server does not consume one)
    v = decide("StatusNotification", booted="Accepted", stored=None, configured="Pending", triggered=True)
    assert v.admitted and not v.triggered


def test_the_refusal_code_is_a_16_code() -> None:
    assert REFUSAL_CODE in ERROR_CODES_16
