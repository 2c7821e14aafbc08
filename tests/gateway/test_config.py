"""Config validation: every mistake names the file, the key and what is expected."""

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

GOOD = """
[site]
id = "s"
[ocpp]
port = 9100
[[chargers]]
id = "CP1"
password = "0123456789abcdef"
connectors = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_example_config_is_valid():
    cfg = load_config(Path(__file__).parents[2] / "configs" / "site.example.toml")
    assert [c.id for c in cfg.chargers] == ["CP1", "CP2"]


def test_good_config(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.ocpp.port == 9100 and cfg.chargers[0].connectors == 2
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.control_socket == tmp_path / "data" / "control.sock"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (GOOD + "\n[ocpp2]\nx = 1\n", "ocpp2", "unknown section"),
        (GOOD.replace("port = 9100", "port = 9100\nprot = 1"), "ocpp.prot", "unknown key"),
        (GOOD.replace("port = 9100", 'port = "9100"'), "ocpp.port", "expected an integer"),
        (GOOD.replace('password = "0123456789abcdef"\n', ""), "chargers[0].password", "required"),
        (GOOD.replace('"0123456789abcdef"', '"short"'), "chargers[0].password", "16..40"),
        (GOOD.replace("[ocpp]", '[ocpp]\nboot_status = "Maybe"'), "ocpp.boot_status", "one of"),
        (GOOD + '\n[[chargers]]\nid = "CP1"\npassword = "0123456789abcdef"\n', "chargers[1].id", "duplicate"),
        (
            GOOD.replace("connectors = 2", "connectors = true"),
            "chargers[0].connectors",
            "expected an integer",
        ),
        ("[site\n", "-", "not valid TOML"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.file == str(path)
    assert e.value.key == key
    assert words in e.value.problem
    assert str(path) in str(e.value) and key in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
