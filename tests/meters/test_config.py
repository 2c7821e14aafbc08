from __future__ import annotations

from pathlib import Path

import pytest

import gateway.loadmgmt.config  # noqa: F401  (registers [load])
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.meters.catalog import load_catalog
from gateway.meters.config import check_meters

BASE = {
    "chargers": [{"id": "CP1", "password": "p" * 16}],
    "buses": [{"id": "rs485", "port": "/dev/ttyUSB0", "baudrate": 19200}],
    "meters": [
        {"id": "grid", "bus": "rs485", "unit_id": 1, "model": "eastron-sdm630-v2", "role": "grid"},
        {"id": "m1", "bus": "rs485", "unit_id": 2, "model": "abb-b23-b24", "charger_id": "CP1"},
    ],
    "load": {"enabled": True, "site_limit_a": 40, "priorities": {"CP1": 2}},
}


def cfg(**over: object) -> dict[str, object]:
    d = {k: v for k, v in BASE.items()}
    d.update(over)
    return d


def test_valid_config_parses_and_cross_checks() -> None:
    c = parse_config(Path("/x/site.toml"), cfg())
    check_meters(c, load_catalog())
    assert c.sections["load"].site_limit_a == 40.0
    assert c.sections["meters"][1].charger_id == "CP1"


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"buses": [{"id": "b", "port": "/dev/x", "host": "h"}]}, "buses[0]"),
        ({"buses": [{"id": "b", "port": "/dev/x", "baudrate": 12345}]}, "buses[0]"),
        ({"meters": [{"id": "g", "bus": "rs485", "unit_id": 0, "model": "x"}]}, "meters[0]"),
        (
            {"meters": [{"id": "g", "bus": "rs485", "unit_id": 1, "model": "x", "role": "charger"}]},
            "meters[0]",
        ),
        ({"load": {"profile_lease_s": 5}}, "load"),
        ({"load": {"site_limit_a": "32"}}, "load.site_limit_a"),
    ],
)
def test_bad_sections_are_rejected(over: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(Path("/x/site.toml"), cfg(**over))
    assert e.value.key == key


@pytest.mark.parametrize(
    ("meters", "key"),
    [
        (
            [{"id": "a", "bus": "nope", "unit_id": 1, "model": "eastron-sdm120", "role": "grid"}],
            "meters[0].bus",
        ),
        ([{"id": "a", "bus": "rs485", "unit_id": 1, "model": "sdm9000", "role": "grid"}], "meters[0].model"),
        (
            [{"id": "a", "bus": "rs485", "unit_id": 1, "model": "eastron-sdm120", "charger_id": "CP9"}],
            "meters[0].charger_id",
        ),
        (
            [
                {"id": "a", "bus": "rs485", "unit_id": 1, "model": "eastron-sdm120", "role": "grid"},
                {"id": "b", "bus": "rs485", "unit_id": 1, "model": "eastron-sdm120", "charger_id": "CP1"},
            ],
            "meters[1].unit_id",
        ),
    ],
)
def test_cross_checks(meters: list[dict[str, object]], key: str) -> None:
    c = parse_config(Path("/x/site.toml"), cfg(meters=meters))
    with pytest.raises(ConfigError) as e:
        check_meters(c, load_catalog())
    assert e.value.key == key
