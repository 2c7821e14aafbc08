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


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_scan_identifies_model_and_unit(model_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    with PtyMeterBus([SimMeter(5, CATALOG[model_id], constant(3.0))]) as bus:
        found = run_scan(bus, "4-6", capsys)
    assert [(f["unit_id"], f["model"]) for f in found] == [(5, model_id)]
    # several candidates only where they read the meter identically (Eastron's shared map)
    assert found[0]["ambiguous"] is False


def run_scan(bus: PtyMeterBus, units: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    argv = ["meters", "scan", "--port", bus.port, "--bauds", "9600", "--units", units, "--timeout", "0.05"]
    args = parser().parse_args([*argv, "--json"])
    assert args.func(args) == 0
    found: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return found


def test_model_code_tells_lookalike_meters_apart(capsys: pytest.CaptureFixture[str]) -> None:
    """Meters that answer reads anywhere (as real ones do) make every Carlo Gavazzi map look plausible; the model
    code register (0x000B) decides. An unknown code matches no Carlo Gavazzi model rather than a wrong one."""
    meters = [
        SimMeter(1, CATALOG["carlogavazzi-em24"], constant(3.0), model_code=72, answer_any=True),
        SimMeter(2, CATALOG["carlogavazzi-em340"], constant(3.0), model_code=341, answer_any=True),
        # an EM540 (code 1744) answering the EM340 map
        SimMeter(3, CATALOG["carlogavazzi-em340"], constant(3.0), model_code=1744, answer_any=True),
    ]
    with PtyMeterBus(meters) as bus:
        found = run_scan(bus, "1-3", capsys)
    by_unit = {f["unit_id"]: f for f in found}
    assert by_unit[1]["model"] == "carlogavazzi-em24" and by_unit[1]["candidates"] == ["carlogavazzi-em24"]
    assert by_unit[2]["model"] == "carlogavazzi-em340" and by_unit[2]["candidates"] == ["carlogavazzi-em340"]
    assert not any(str(c).startswith("carlogavazzi") for c in by_unit[3]["candidates"])  # type: ignore[attr-defined]


def test_iskra_energy_counters_read_through_the_exponent_register(capsys: pytest.CaptureFixture[str]) -> None:
    """The WM3M4's counters: a signed 32-bit count scaled by a separate exponent register, read end to end over
    the pty (the simulator's struct encoder picks the exponent)."""
    meter = SimMeter(33, CATALOG["iskra-wm3m4"], constant(10.0))
    meter.energy_import_wh = 123_456_789_012.0  # too large for int32 Wh: the simulator needs exponent 2
    with PtyMeterBus([meter]) as bus:
        args = parser().parse_args(
            ["meters", "read", "--port", bus.port, "--unit", "33", "--model", "iskra-wm3m4", "--json"]
        )
        assert args.func(args) == 0
    values = json.loads(capsys.readouterr().out.strip())["values"]
    assert values["energy_import"] == pytest.approx(123_456_789_012.0, abs=100.0)
    assert values["power"] == pytest.approx(3 * 230.0 * 10.0, rel=1e-4)
    assert values["frequency"] == pytest.approx(50.0)


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
