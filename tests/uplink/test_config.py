from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.uplink.config import UplinkSection


def test_uplink_section_parsed_and_paths_resolved(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "site.toml", {"uplink": {"enabled": True, "host": "broker", "protocol": "3.1.1",
                       "tls": True, "tls_ca": "ca.crt", "username": "gw", "password": "s3cret-pass"}})  # fmt: skip
    up = cfg.sections["uplink"]
    assert isinstance(up, UplinkSection) and up.protocol == "3.1.1" and up.encoding == "cbor"
    assert up.resolve(tmp_path).tls_ca == str(tmp_path / "ca.crt")
    assert "s3cret-pass" not in repr(up)
    assert parse_config(tmp_path / "s.toml", {}).sections["uplink"].enabled is False


@pytest.mark.parametrize(
    "table",
    [{"protocol": 4}, {"port": 0}, {"tls_cert": "c.pem"}, {"tls_ca": "ca.pem"}, {"password": "x"},
     {"batch_max": 0}, {"encoding": "xml"}, {"outbox_budget_mb": 0}, {"colour": "red"}, {"gateway_id": "a/b"}],
)  # fmt: skip
def test_bad_values_are_config_errors(tmp_path: Path, table: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as e:
        parse_config(tmp_path / "site.toml", {"uplink": table})
    assert "uplink" in str(e.value)
