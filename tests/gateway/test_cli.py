"""`chargegate cmd` words -> OCPP calls; every built payload must pass the official schema."""

import pytest

from gateway.cli import build_call, main
from gateway.ocpp import framing


@pytest.mark.parametrize(
    ("command", "args", "connector", "action"),
    [
        ("reset", ["hard"], None, "Reset"),
        ("reset", ["soft"], None, "Reset"),
        ("remote-start", ["AABB"], 2, "RemoteStartTransaction"),
        ("remote-stop", ["17"], None, "RemoteStopTransaction"),
        ("unlock", ["1"], None, "UnlockConnector"),
        ("availability", ["0", "inoperative"], None, "ChangeAvailability"),
        ("get-config", [], None, "GetConfiguration"),
        ("get-config", ["HeartbeatInterval"], None, "GetConfiguration"),
        ("set-config", ["HeartbeatInterval", "60"], None, "ChangeConfiguration"),
        ("clear-cache", [], None, "ClearCache"),
        ("trigger", ["StatusNotification"], 1, "TriggerMessage"),
        ("raw", ["DataTransfer", '{"vendorId": "x"}'], None, "DataTransfer"),
    ],
)
def test_commands_build_valid_calls(command, args, connector, action):
    got_action, payload = build_call(command, args, connector)
    assert got_action == action
    assert framing.validate_payload(framing.CALL, action, payload) is None


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("reset", ["medium"]),
        ("unlock", []),
        ("nope", []),
        ("raw", ["X", "{"]),
        ("availability", ["1", "maybe"]),
    ],
)
def test_bad_command_words_are_refused(command, args):
    with pytest.raises(ValueError, match=r"usage|unknown|JSON"):
        build_call(command, args, None)


def test_bad_config_exits_2_with_file_and_key(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text('[ocpp]\nport = "x"\n')
    assert main(["check-config", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "ocpp.port" in err
