"""Pure parts of the fleet runner and the demo: config loading, masking, the energy check, and the network-cut
relay on loopback (the frame checker is tested in test_ocpp_check.py)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from firmware_sim import demo, fleet
from firmware_sim.fleet import ChargerCreds, Visit, load_password_file, load_site_chargers, mask_token
from firmware_sim.netcut import NetLink
from gateway.config import load_config


def test_mask_token():
    assert mask_token("04A2B3C4D5E6F7") == "04A2****F7"
    assert mask_token("ABC") == "A**"
    assert mask_token(None) == "-"
    assert "B3C4D5" not in mask_token("04A2B3C4D5E6F7")


def test_password_file(tmp_path: Path):
    p = tmp_path / "pw"
    p.write_text("# site\nCP1 aaaaaaaaaaaaaaaa\nCP2=bbbbbbbbbbbbbbbb 2  # two sockets\n\n")
    assert load_password_file(p) == [
        ChargerCreds("CP1", "aaaaaaaaaaaaaaaa", 1),
        ChargerCreds("CP2", "bbbbbbbbbbbbbbbb", 2),
    ]
    p.write_text("CP1\n")
    with pytest.raises(ValueError, match="pw:1"):
        load_password_file(p)


def test_demo_site_config_is_valid_for_the_gateway_and_private(tmp_path: Path):
    path, creds, tokens = demo.write_site(tmp_path, chargers=5, connectors=2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = load_config(path)  # the gateway's own validation
    assert [c.id for c in cfg.chargers] == [c.id for c in creds]
    assert all(16 <= len(c.password) <= 40 for c in cfg.chargers)
    assert len({c.password for c in cfg.chargers}) == 5
    assert set(cfg.auth.allow) == set(tokens) and len(tokens) >= 8
    assert cfg.ocpp.port == 0  # the gateway picks a free port and announces it
    # the fleet reads the same file
    chargers, allow, url, control = load_site_chargers(path)
    assert chargers == creds and allow == tokens
    assert url is None and control is None  # no gateway has run yet


def test_load_site_finds_the_running_gateway(tmp_path: Path):
    path, _, _ = demo.write_site(tmp_path, chargers=1, connectors=1)
    data = tomllib.loads(path.read_text())["site"]["data_dir"]
    Path(data).mkdir(parents=True)
    (Path(data) / "gateway.json").write_text(
        json.dumps({"ocpp_url": "ws://127.0.0.1:1234/ocpp/", "control_socket": "/x"})
    )
    _, _, url, control = load_site_chargers(path)
    assert (url, control) == ("ws://127.0.0.1:1234/ocpp/", "/x")


def test_fleet_cli_rejects_bad_input_without_running(tmp_path: Path, capsys):
    pw = tmp_path / "pw"
    pw.write_text("CP1 aaaaaaaaaaaaaaaa\n")
    assert fleet.main(["--password-file", str(pw)]) == 2  # no URL
    assert "no --url" in capsys.readouterr().err
    assert fleet.main(["--password-file", str(pw), "--url", "ws://127.0.0.1:1/ocpp/"]) == 2  # no tokens
    assert (
        fleet.main(["--password-file", str(pw), "--url", "ws://x/", "--token", "A1", "--chargers", "3"]) == 2
    )
    assert fleet.main(["--password-file", str(tmp_path / "missing")]) == 2


def test_demo_cli_validates_arguments(capsys):
    assert demo.main(["--chargers", "0"]) == 2
    assert "--chargers must be" in capsys.readouterr().err
    assert demo.main(["--duration", "-1"]) == 2


# -- the demo's energy check ----------------------------------------------------------------------------------------
def _visit(charger: str, conn: int, start: int, end: int) -> Visit:
    return Visit(charger, conn, "s", "T", "ev", 0.5, 0.0, start, 1.0, end)


def _tx(i: int, charger: str, conn: int, wh: int | None, state: str = "stopped") -> dict:
    return {"id": i, "charger_id": charger, "connector_id": conn, "energy_wh": wh, "state": state}


def test_energy_check_matches_per_connector():
    f = SimpleNamespace(
        visits=[_visit("CP1", 1, 0, 1000), _visit("CP1", 1, 1000, 1500), _visit("CP2", 1, 0, 700)]
    )
    # the reboot split CP1's second visit into two transactions: still 1500 Wh in total
    txs = [_tx(1, "CP1", 1, 1000), _tx(2, "CP1", 1, 200), _tx(3, "CP1", 1, 300), _tx(4, "CP2", 1, 699)]
    assert demo.check_energy(f, txs) == []  # 1 Wh per transaction of slack


def test_energy_check_reports_mismatch_missing_energy_and_unrecorded_sessions():
    f = SimpleNamespace(visits=[_visit("CP1", 1, 0, 1000), _visit("CP2", 2, 0, 500)])
    problems = demo.check_energy(f, [_tx(1, "CP1", 1, 900), _tx(2, "CP1", 1, None)])
    assert any("CP1/1" in p and "900 Wh" in p for p in problems)
    assert any("stopped without energy" in p for p in problems)
    assert any("CP2/2" in p and "500 Wh" in p for p in problems)  # energy delivered, nothing recorded


# -- network cut ----------------------------------------------------------------------------------------------------
def test_netlink_relays_cuts_and_restores():
    async def go() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(100):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass  # the relay resets connections when the link is cut
            w.close()

        async def dead(r: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(r.read(100), 5) == b""
            except ConnectionResetError:
                return True

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        link = await NetLink("127.0.0.1", server.sockets[0].getsockname()[1]).start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", link.port)
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            link.cut()
            assert await dead(r)  # the open connection died
            w.close()
            r2, w2 = await asyncio.open_connection("127.0.0.1", link.port)
            assert await dead(r2)  # new ones are dropped at once
            w2.close()
            link.restore()
            r3, w3 = await asyncio.open_connection("127.0.0.1", link.port)
            w3.write(b"back")
            assert await asyncio.wait_for(r3.readexactly(4), 5) == b"back"
            w3.close()
            assert link.connections == 2
        finally:
            await link.close()
            server.close()
            await server.wait_closed()

    asyncio.run(go())


def test_session_duration_uses_the_chargers_timestamps():
    t = {
        "start_ts": "2026-11-21T10:00:00Z",
        "stop_ts": "2026-11-21T10:00:42Z",
        "started_at": 5.0,
        "stopped_at": 6.0,
    }
    assert demo.charger_duration(t) == 42.0
    assert demo.charger_duration({"start_ts": "2026-11-21T10:00:00Z", "stop_ts": None}) is None
