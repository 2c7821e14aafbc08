"""`meters scan` / `meters read` against simulated meters on a pty."""

from __future__ import annotations

import argparse
import json

import pytest

from firmware_sim.modbus_meter import PtyMeterBus, SimMeter, constant
from gateway.meters import cli
from gateway.meters.catalog import load_catalog
from gateway.meters.scan import parse_units

CATALOG = load_catalog()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chargegate")
    cli.add_subparser(ap.add_subparsers(dest="cmd"))
    return ap


@pytest.mark.parametrize(
    "model_id", ["eastron-sdm630-v2", "eastron-sdm72d-m-v2", "eastron-sdm120", "abb-b23-b24", "iskra-wm3m4"]
)
def test_scan_identifies_model_and_unit(model_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    with PtyMeterBus([SimMeter(5, CATALOG[model_id], constant(3.0))]) as bus:
        args = parser().parse_args(
            [
                "meters",
                "scan",
                "--port",
                bus.port,
                "--bauds",
                "9600",
                "--units",
                "4-6",
                "--timeout",
                "0.05",
                "--json",
            ]
        )
        assert args.func(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert [(f["unit_id"], f["model"]) for f in found] == [(5, model_id)]


def test_read_ad_hoc_prints_values(capsys: pytest.CaptureFixture[str]) -> None:
    with PtyMeterBus([SimMeter(2, CATALOG["carlogavazzi-em24"], constant(4.5))]) as bus:
        args = parser().parse_args(
            ["meters", "read", "--port", bus.port, "--unit", "2", "--model", "carlogavazzi-em24", "--json"]
        )
        assert args.func(args) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["values"]["current_l3"] == pytest.approx(4.5)
    assert line["stale"] is False and line["wall"] > 1.7e9


def test_bad_arguments_get_a_clear_answer(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["meters", "scan", "--port", "/dev/null", "--units", "0-300"])
    assert args.func(args) == 2
    assert "1..247" in capsys.readouterr().err
    args = parser().parse_args(["meters", "read", "--port", "/dev/null", "--model", "nope"])
    assert args.func(args) == 2
    args = parser().parse_args(["meters", "read", "--port", "/nonexistent/tty", "--model", "eastron-sdm120"])
    assert args.func(args) == 1
    assert "cannot open" in capsys.readouterr().err
    assert parse_units("1-3,9") == [1, 2, 3, 9]
