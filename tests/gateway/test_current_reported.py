"""What the CSMS passes to load management from a charger's own Current.Import samples."""

from __future__ import annotations

from typing import Any

from gateway.csms import _current_import


def mv(*samples: tuple[str, str | None]) -> dict[str, Any]:
    values = []
    for value, phase in samples:
        sv = {"value": value, "measurand": "Current.Import", "unit": "A"}
        if phase:
            sv["phase"] = phase
        values.append(sv)
    return {"timestamp": "2026-11-21T10:00:00Z", "sampledValue": values}


def test_all_three_phases_give_a_per_phase_tuple() -> None:
    assert _current_import([mv(("16.0", "L1"), ("15.5", "L2"), ("0.2", "L3"))]) == (16.0, 15.5, 0.2)


def test_no_phase_or_some_phases_give_the_highest_value() -> None:
    assert _current_import([mv(("12.5", None))]) == 12.5
    assert _current_import([mv(("9.0", "L1"), ("11.0", "L2"))]) == 11.0


def test_newest_sampled_value_with_a_current_wins_and_bad_values_are_skipped() -> None:
    energy_only = {
        "timestamp": "t",
        "sampledValue": [{"value": "100", "measurand": "Energy.Active.Import.Register"}],
    }
    older = mv(("6.0", "L1"), ("6.0", "L2"), ("6.0", "L3"))
    newer = mv(("nan?", "L1"), ("NaN", "L2"), ("7.0", None))
    assert _current_import([older, newer, energy_only]) == 7.0
    assert _current_import([energy_only]) is None
