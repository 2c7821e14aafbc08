"""`chargegate tokens ...` against a real site config and store, including while a gateway process has it open."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from authfakes import cli

from gateway.auth import tokenstore as ts
from gateway.auth.service import AuthService
from gateway.auth.settings import AuthSection
from gateway.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_import_csv_and_json_then_list_and_show(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "tokens.csv"
    csv_file.write_text(
        "id,status,expiry,parent_id,chargers\n"
        "04a2b3c4d5e6f7,Accepted,,FLEET,\n"
        "BADCARD,Blocked,,,\n"
        "LOCAL1,,2030-01-01T00:00:00Z,,CP1;CP2\n"
    )
    assert cli(site, "import", str(csv_file)) == 0
    json_file = tmp_path / "more.json"
    json_file.write_text(
        json.dumps([{"id": "J1", "status": "Accepted"}, {"idTag": "J2", "status": "Invalid"}])
    )
    assert cli(site, "import", str(json_file)) == 0
    capsys.readouterr()
    assert cli(site, "list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["04A2B3C4D5E6F7", "BADCARD", "J1", "J2", "LOCAL1"]
    local1 = rows[-1]
    assert local1 == {
        "id": "LOCAL1",
        "source": "manual",
        "status": "Accepted",
        "expiry": "2030-01-01T00:00:00Z",
        "chargers": ["CP1", "CP2"],
    }
    assert cli(site, "show", "04a2b3c4d5e6f7") == 0
    out = capsys.readouterr().out
    assert '"parent_id": "FLEET"' in out
    assert "offline answer at any charger: Accepted via manual" in out
    assert cli(site, "show", "LOCAL1", "--charger", "CP9") == 0
    assert "Invalid via manual (not valid at this charger)" in capsys.readouterr().out


def test_bad_import_changes_nothing(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,status\nGOOD1,Accepted\nTOOLONG_TOOLONG_TOOLONG,Accepted\n")
    assert cli(site, "import", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3" in err and "longer than 20" in err and "nothing imported" in err
    bad.write_text("id,status\nGOOD1,Maybe\n")
    assert cli(site, "import", str(bad)) == 2
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"id": "A1", "status": "Accepted"}, {"status": "Accepted"}]')
    assert cli(site, "import", str(bad_json)) == 2
    assert "entry 1" in capsys.readouterr().err
    assert cli(site, "list", "--json") == 0
    assert capsys.readouterr().out == ""


def test_add_block_remove(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(site, "add", "card9", "--parent", "grp", "--expiry", "2031-05-01T00:00:00Z") == 0
    assert cli(site, "block", "CARD9", "--note", "reported stolen") == 0
    capsys.readouterr()
    assert cli(site, "list", "--json", "--status", "Blocked") == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["id"], row["status"], row["parent_id"], row["expiry"]) == (
        "CARD9",
        "Blocked",
        "GRP",
        "2031-05-01T00:00:00Z",
    )
    assert cli(site, "remove", "card9") == 0
    assert cli(site, "remove", "card9") == 1
    assert cli(site, "add", "x" * 21) == 2


def test_cli_process_changes_are_seen_by_a_running_gateway(site: Path) -> None:
    """A separate `chargegate tokens` process writes while this process holds the store open and decides."""

    async def body() -> None:
        store = Store.open(site.parent / "data")
        try:
            svc = AuthService(store, AuthSection())
            await svc.start()
            seen: list[int] = []
            svc.add_list_listener(lambda: seen.append(1))
            assert (await svc.decide("CP1", "LIVE1", purpose="authorize")).status == "Invalid"
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            for args in (["add", "LIVE1"], ["block", "LIVE2"]):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.auth.cli",
                    "tokens",
                    *args,
                    "--config",
                    str(site),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                _, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
            d = await svc.decide("CP1", "LIVE1", purpose="authorize")
            assert (d.status, d.source) == ("Accepted", "manual")
            assert (await svc.decide("CP1", "LIVE2", purpose="authorize")).status == "Blocked"
            await svc.supervise_once()
            assert seen == [1]
            assert store.read(lambda c: ts.meta(c, "revision")) == 2
            await svc.close()
        finally:
            store.close()

    asyncio.run(body())
