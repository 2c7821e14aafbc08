from __future__ import annotations

from pathlib import Path

import pytest

from gateway.meters import billing
from gateway.store import Store


@pytest.mark.parametrize(
    ("charger", "start", "stop", "expected"),
    [
        (10_000.0, 1_000.0, 11_020.0, ("charger", 10_000.0, False)),  # 20 Wh off: within 50 Wh
        (10_000.0, 1_000.0, 11_500.0, ("charger", 10_000.0, True)),  # 500 Wh off: flagged
        (None, 1_000.0, 11_500.0, ("meter", 10_500.0, False)),  # charger reports none: meter bills
        (None, 5_000.0, 1_000.0, ("none", None, False)),  # meter went backwards: no figure
        (-5.0, 0.0, 100.0, ("meter", 100.0, False)),  # negative charger energy is ignored
        (200_000.0, 0.0, 198_500.0, ("charger", 200_000.0, False)),  # 1500 Wh < 1 % of 198.5 kWh
    ],
)
def test_check_energy(
    charger: float | None, start: float, stop: float, expected: tuple[str, float | None, bool]
) -> None:
    c = billing.check_energy(charger, start, stop, tolerance_wh=50.0, tolerance_pct=1.0)
    assert (c.billing_source, c.billing_wh, c.flagged) == expected


def test_store_table_roundtrip_and_idempotent_stop(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        store.write_sync(lambda c: billing.record_start(c, 7, "m1", 1000.0, 1.0))
        first = store.write_sync(lambda c: billing.finish(c, 7, 5000.0, 7000.0, 50.0, 1.0, 2.0))
        assert first is not None and first.flagged and first.discrepancy_wh == pytest.approx(-1000.0)
        again = store.write_sync(lambda c: billing.finish(c, 7, 1.0, 1.0, 50.0, 1.0, 3.0))
        assert again == first
        assert store.write_sync(lambda c: billing.finish(c, 8, 1.0, 1.0, 50.0, 1.0, 3.0)) is None
        row = store.read(
            lambda c: c.execute("SELECT flagged, billing_source FROM session_meter_energy").fetchone()
        )
        assert tuple(row) == (1, "charger")
    finally:
        store.close()
