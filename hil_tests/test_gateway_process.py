"""The gateway as a process: config errors, ready line and gateway.json, private data files, clean shutdown."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
from pathlib import Path

import pytest

from hil_tests.gateway_proc import (
    DEFAULT_TAG,
    ChargerSpec,
    GatewayFactory,
    GatewayProcess,
    config_text,
    run_module,
)
from hil_tests.rawclient import RawChargePoint, assert_clean, meter_values, now_iso, run_async

GOOD_CHARGER = '[[chargers]]\nid = "CP1"\npassword = "0123456789abcdef-ok"\n'

# (name, config text, key the message must name)
BAD_CONFIGS = [
    ("unknown-key", "[ocpp]\nprot = 9000\n" + GOOD_CHARGER, "ocpp.prot"),
    ("short-password", '[[chargers]]\nid = "CP1"\npassword = "short"\n', "chargers[0].password"),
    ("bad-boot-status", '[ocpp]\nboot_status = "Maybe"\n' + GOOD_CHARGER, "ocpp.boot_status"),
    ("wrong-type", '[ocpp]\nheartbeat_interval = "often"\n' + GOOD_CHARGER, "ocpp.heartbeat_interval"),
    ("port-out-of-range", "[ocpp]\nport = 70000\n" + GOOD_CHARGER, "ocpp.port"),
    ("duplicate-charger", GOOD_CHARGER + GOOD_CHARGER, "chargers[1].id"),
    ("unknown-section", "[nonsense]\nx = 1\n" + GOOD_CHARGER, "nonsense"),
    ("not-toml", "[ocpp\nport = \n", ""),
]


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return run_module("gateway.cli", "run", "--config", str(config))


@pytest.mark.parametrize(("name", "text", "key"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path, name: str, text: str, key: str) -> None:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[site]\ndata_dir = "{tmp_path / "data"}"\n' + text if not text.startswith("[site]") else text
    )
    proc = _run(config)
    assert proc.returncode == 2, proc.stderr
    assert str(config) in proc.stderr, proc.stderr
    assert key in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "data" / "chargegate.db").exists()  # nothing was started


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "absent.toml"
    proc = _run(config)
    assert proc.returncode == 2, proc.stderr
    assert str(config) in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_ready_line_and_gateway_json(gateway: GatewayProcess) -> None:
    info = json.loads((gateway.data_dir / "gateway.json").read_text())
    assert info["pid"] == gateway.pid
    assert info["ocpp_url"].rstrip("/") == gateway.ocpp_url.rstrip("/")
    assert info["control_socket"] == gateway.control_socket
    assert gateway.ocpp_url.startswith("ws://127.0.0.1:") and gateway.port > 0
    answer = gateway.control({"op": "status"})
    assert answer["ok"] is True, answer


def test_data_files_are_private(gateway: GatewayProcess) -> None:
    async def body() -> None:
        async with RawChargePoint(gateway.url("CP1"), "CP1", gateway.password("CP1")) as cp:
            await cp.boot()
            tx = (
                await cp.call(
                    "StartTransaction",
                    {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 0, "timestamp": now_iso()},
                )
            )["transactionId"]
            await cp.call("MeterValues", meter_values(1, tx, 10))
        assert_clean(cp)

    run_async(body())
    loose = []
    for path in [gateway.data_dir, *gateway.data_dir.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue  # directories: 0700 would be nicer, files are what must be private
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{path.name} {oct(stat.S_IMODE(mode))}")
    assert not loose, f"data files readable or writable by others: {loose}"
    names = {p.name for p in gateway.data_dir.iterdir()}
    assert {"chargegate.db", "gateway.json"} <= names, names


def test_sigterm_exits_cleanly_and_restart_keeps_data(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(chargers=[ChargerSpec("CP1")])

    async def boot() -> None:
        async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1")) as cp:
            assert (await cp.boot())["status"] == "Accepted"
        assert_clean(cp)

    run_async(boot())
    assert gw.stop() == 0, gw.output()
    port = gw.port
    gw.start()
    assert gw.port == port
    run_async(boot())
    assert len(gw.query("SELECT id FROM chargers WHERE id = 'CP1'")) == 1


def test_config_text_round_trip(tmp_path: Path) -> None:
    """The helper other tests rely on writes a config the gateway's own loader accepts."""
    from gateway.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(
        config_text(
            tmp_path / "d",
            [ChargerSpec("CP1"), ChargerSpec("CP 2", boot_status="Pending")],
            {"heartbeat_interval": 60, "ping_interval": 5.0, "validate_schemas": True},
        )
    )
    cfg = load_config(path)
    assert [c.id for c in cfg.chargers] == ["CP1", "CP 2"]
    assert cfg.ocpp.heartbeat_interval == 60 and cfg.chargers[1].boot_status == "Pending"


def test_secrets_and_token_uids_are_not_logged(gateway_factory: GatewayFactory) -> None:
    """Even at DEBUG: no charger password (right or wrong) and no full idTag in the gateway's output."""
    gw = gateway_factory(chargers=[ChargerSpec("CP1")], log_level="DEBUG")
    wrong = "wrong-password-0123456789-xyz"
    other_tag = "0A1B2C3D4E5F60"

    async def body() -> None:
        bad = RawChargePoint(gw.url("CP1"), "CP1", wrong)
        with pytest.raises(Exception):  # noqa: B017 -- 401, checked in test_gateway_handshake
            await bad.connect()
        async with RawChargePoint(gw.url("CP1"), "CP1", gw.password("CP1")) as cp:
            await cp.boot()
            await cp.call("Authorize", {"idTag": DEFAULT_TAG})
            await cp.call("Authorize", {"idTag": other_tag})
            tx = (
                await cp.call(
                    "StartTransaction",
                    {"connectorId": 1, "idTag": DEFAULT_TAG, "meterStart": 0, "timestamp": now_iso()},
                )
            )["transactionId"]
            await cp.call(
                "StopTransaction",
                {"transactionId": tx, "meterStop": 5, "timestamp": now_iso(), "idTag": other_tag},
            )
        assert_clean(cp)

    run_async(body())
    gw.stop()
    out = gw.output()
    secrets = [gw.password("CP1"), wrong, DEFAULT_TAG, other_tag]
    # an HTTP Basic header is the password, trivially decoded
    secrets += [base64.b64encode(f"CP1:{pw}".encode()).decode() for pw in (gw.password("CP1"), wrong)]
    leaks = [s for s in secrets if s in out]
    assert not leaks, f"found in the gateway's output: {leaks}\n{out[-3000:]}"
