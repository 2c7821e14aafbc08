"""session.update from the MeterValues handler, against a real SQLite store: the interval (charger time), resends,
the end of the session, energy that must not shrink, restarts, the config key, and the contract codec / simulated
eMSP that consume it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import gateway.uplink.config  # noqa: F401  registers [uplink] (session_update_interval_s)
from firmware_sim.emsp import SimEmsp
from gateway import events
from gateway.auth.service import AuthService
from gateway.config import parse_config
from gateway.csms import ConnectionState, Csms, power_w, register_wh
from gateway.errors import ConfigError
from gateway.events import StatusBus
from gateway.store import Store
from gateway.uplink.contract import OutboxRow, decode_batch, encode_batch

TAG = "04A2B3C4"
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.") + "000Z"


class Env:
    def __init__(self, tmp_path: Path, interval: float | None = 60, data: str = "data") -> None:
        uplink: dict[str, Any] = {} if interval is None else {"session_update_interval_s": interval}
        self.cfg = parse_config(
            tmp_path / "site.toml",
            {
                "auth": {"allow": [TAG]},
                "uplink": uplink,
                "chargers": [
                    {"id": "CP1", "password": "0123456789abcdef", "connectors": 2},
                    {"id": "CP2", "password": "0123456789abcdef"},
                ],
            },
        )
        self.store = Store.open(tmp_path / data)
        self.loop = asyncio.new_event_loop()
        self.auth = AuthService(self.store, self.cfg.auth)
        self.csms = Csms(self.cfg, self.store, StatusBus(), self.auth)
        self.run(self.auth.start())
        self.st = ConnectionState("CP1")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.auth.close())
        self.loop.close()
        self.store.close()

    def call(self, action: str, payload: dict[str, Any], st: ConnectionState | None = None) -> dict[str, Any]:
        reply = self.run(self.csms.handle(st or self.st, action, payload))
        result: dict[str, Any] = reply.payload
        return result

    def start(self, meter_start: int = 1000, connector: int = 1) -> int:
        answer = self.call(
            "StartTransaction",
            {"connectorId": connector, "idTag": TAG, "meterStart": meter_start, "timestamp": ts(0)},
        )
        return int(answer["transactionId"])

    def meter(
        self, tx: int, *readings: tuple[float, list[dict[str, Any]]], connector: int = 1, **kw: Any
    ) -> None:
        self.call(
            "MeterValues",
            {
                "connectorId": connector,
                "transactionId": tx,
                "meterValue": [{"timestamp": ts(t), "sampledValue": sv} for t, sv in readings],
            },
            **kw,
        )

    def updates(self) -> list[dict[str, Any]]:
        return self.store.read(
            lambda c: [
                {
                    **events.decode_body(r["body"]),
                    "_charger_ts": r["charger_ts"],
                    "_droppable": r["droppable"],
                }
                for r in c.execute(
                    "SELECT * FROM outbox WHERE kind = ? ORDER BY seq", (events.SESSION_UPDATE,)
                )
            ]
        )

    def kinds(self) -> list[str]:
        return self.store.read(lambda c: [r[0] for r in c.execute("SELECT kind FROM outbox ORDER BY seq")])


def reg(wh: float, unit: str = "Wh", **extra: str) -> dict[str, Any]:
    return {"value": f"{wh:g}", "measurand": "Energy.Active.Import.Register", "unit": unit, **extra}


def pw(w: float, unit: str = "W", **extra: str) -> dict[str, Any]:
    return {"value": f"{w:g}", "measurand": "Power.Active.Import", "unit": unit, **extra}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def test_first_reading_reports_then_at_most_once_per_interval_of_charger_time(env: Env) -> None:
    tx = env.start(meter_start=1000)
    env.meter(tx, (10, [reg(1200), pw(7200)]))
    env.meter(tx, (40, [reg(1500)]))  # 30 s after the last report: none
    env.meter(tx, (69, [reg(1800)]))  # 59 s: none
    env.meter(tx, (70, [reg(1900), pw(6900)]))  # 60 s: reports
    env.meter(tx, (100, [reg(2200)]))
    env.meter(tx, (131, [reg(2500)]))  # 61 s after 70: reports
    got = env.updates()
    assert [(u["energy_wh"], u["power_w"], u["ts"]) for u in got] == [
        (200, 7200.0, ts(10)),
        (900, 6900.0, ts(70)),
        (1500, None, ts(131)),
    ]
    first = got[0]
    assert (first["tx"], first["charger"], first["connector"]) == (tx, "CP1", 1)
    assert first["_charger_ts"] == ts(10) and first["_droppable"] == 0  # never thinned under disk pressure
    # every reading still travels as meter.reading; the update follows the reading it reports, in the same write
    kinds = env.kinds()
    assert kinds.count(events.METER_READING) == 6
    assert kinds.index(events.SESSION_UPDATE) == kinds.index(events.METER_READING) + 1


def test_resent_meter_values_report_nothing_again(env: Env) -> None:
    tx = env.start()
    env.meter(tx, (10, [reg(1100)]))
    env.meter(tx, (10, [reg(1100)]))  # the answer was lost: the same MeterValues again
    env.meter(tx, (80, [reg(1700)]))
    env.meter(tx, (80, [reg(1700)]))
    env.meter(tx, (10, [reg(1100)]), (80, [reg(1700)]))  # both again in one message
    assert [u["energy_wh"] for u in env.updates()] == [100, 700]


def test_no_update_after_stop_and_the_progress_row_goes(env: Env) -> None:
    tx = env.start()
    env.meter(tx, (10, [reg(1100)]))
    stop = {"transactionId": tx, "meterStop": 1500, "timestamp": ts(100), "reason": "Local"}
    env.call("StopTransaction", stop)
    env.meter(tx, (200, [reg(1600)]))  # a late reading of the stopped transaction: stored, not reported
    assert [u["energy_wh"] for u in env.updates()] == [100]
    kinds = env.kinds()
    assert kinds.index(events.SESSION_STOPPED) > kinds.index(events.SESSION_UPDATE)
    assert kinds[-1] == events.METER_READING
    assert env.store.read(lambda c: c.execute("SELECT COUNT(*) FROM session_progress").fetchone()[0]) == 0


def test_energy_never_goes_backwards_and_out_of_order_readings_do_not_report(env: Env) -> None:
    tx = env.start(meter_start=1000)
    env.meter(tx, (0, [reg(1000)]))  # Transaction.Begin-like reading: 0 Wh so far
    env.meter(tx, (60, [reg(5000)]))
    env.meter(tx, (120, [reg(300)]))  # a meter glitch / swap: the register fell
    env.meter(tx, (180, [reg(6000)]))
    env.meter(tx, (150, [reg(5800)]))  # arrives late, older than the last report
    assert [u["energy_wh"] for u in env.updates()] == [0, 4000, 4000, 5000]


def test_below_meter_start_is_zero_and_units_and_phases(env: Env) -> None:
    tx = env.start(meter_start=10_000)
    env.meter(tx, (0, [reg(9000)]))  # below meterStart: 0, not negative
    env.meter(tx, (60, [reg(12.5, "kWh"), pw(3.6, "kW")]))
    env.meter(tx, (120, [reg(13.0, "kWh"), pw(2000, phase="L1"), pw(2100, phase="L2"), pw(2200, phase="L3")]))
    assert [(u["energy_wh"], u["power_w"]) for u in env.updates()] == [
        (0, None),
        (2500, 3600.0),
        (3000, 6300.0),
    ]


def test_readings_without_a_usable_register_report_nothing(env: Env) -> None:
    tx = env.start(meter_start=0)
    env.meter(tx, (10, [pw(7000), {"value": "16", "measurand": "Current.Import", "unit": "A"}]))
    env.meter(tx, (20, [reg(100, phase="L1")]))  # per-phase register: not the total
    env.meter(tx, (30, [reg(100, location="EV")]))
    env.meter(tx, (40, [{"value": "OCMF|{}|{}", "format": "SignedData", "context": "Sample.Periodic"}]))
    env.meter(tx, (50, [{"value": "5", "measurand": "Energy.Active.Import.Interval", "unit": "Wh"}]))
    env.meter(tx, (55, [reg(1e15)]))  # not a charger's meter
    assert env.updates() == []
    env.meter(tx, (60, [{"value": "250"}]))  # every field at its OCPP default: the energy register in Wh
    assert [u["energy_wh"] for u in env.updates()] == [250]


def test_a_queued_burst_reports_its_history_at_the_interval(env: Env) -> None:
    """An outage's queue arrives in one burst: reported by charger time, not once for the whole burst."""
    tx = env.start(meter_start=0)
    for i in range(10):  # a reading every 30 s for 4.5 minutes, delivered back to back
        env.meter(tx, (30 * i, [reg(100 * i)]))
    assert [(u["ts"], u["energy_wh"]) for u in env.updates()] == [
        (ts(t), t * 100 // 30) for t in (0, 60, 120, 180, 240)
    ]


def test_one_message_with_several_readings(env: Env) -> None:
    tx = env.start(meter_start=0)
    env.meter(tx, *[(20 * i, [reg(10 * i)]) for i in range(7)])  # 0 .. 120 s in one MeterValues
    assert [u["energy_wh"] for u in env.updates()] == [0, 30, 60]


def test_only_a_running_transaction_of_this_charger_on_its_connector(env: Env) -> None:
    tx = env.start()
    other = ConnectionState("CP2")
    env.meter(
        tx, (10, [reg(1500)]), st=other
    )  # CP2 names CP1's transaction: stored as CP2 sent it, no update
    env.meter(999_999, (10, [reg(1500)]))  # unknown transaction
    env.call(
        "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": ts(10), "sampledValue": [reg(1500)]}]}
    )
    assert env.updates() == []
    env.meter(
        tx, (20, [reg(1500)]), connector=2
    )  # the charger's connectorId is wrong: the transaction's counts
    assert [(u["connector"], u["energy_wh"]) for u in env.updates()] == [(1, 500)]


def test_two_transactions_have_their_own_interval(env: Env) -> None:
    tx1 = env.start(meter_start=0, connector=1)
    tx2 = env.start(meter_start=0, connector=2)
    env.meter(tx1, (10, [reg(100)]), connector=1)
    env.meter(tx2, (20, [reg(200)]), connector=2)
    env.meter(tx1, (40, [reg(400)]), connector=1)
    env.meter(tx2, (80, [reg(800)]), connector=2)
    assert [(u["tx"], u["energy_wh"]) for u in env.updates()] == [(tx1, 100), (tx2, 200), (tx2, 800)]


def test_the_interval_survives_a_restart(tmp_path: Path) -> None:
    first = Env(tmp_path)
    tx = first.start(meter_start=0)
    first.meter(tx, (10, [reg(100)]))
    first.close()
    again = Env(tmp_path)  # a new process on the same store: nothing is remembered in memory
    again.meter(tx, (10, [reg(100)]))  # resent after the restart
    again.meter(tx, (40, [reg(400)]))  # within the interval of the report before the restart
    again.meter(tx, (70, [reg(50)]))  # due, but the register fell: the last report's energy again
    assert [u["energy_wh"] for u in again.updates()] == [100, 100]
    again.close()


def test_interval_zero_disables_it_and_the_default_is_60_s(tmp_path: Path) -> None:
    off = Env(tmp_path, interval=0, data="off")
    tx = off.start(meter_start=0)
    off.meter(tx, (10, [reg(100)]), (100, [reg(900)]))
    assert off.updates() == [] and off.kinds().count(events.METER_READING) == 2
    off.close()
    default = Env(tmp_path, interval=None, data="default")
    assert default.csms.session_update_interval == 60.0
    default.close()


@pytest.mark.parametrize("value", [-1, 86401, float("nan"), "60"])
def test_config_rejects_a_bad_interval(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="session_update_interval_s"):
        parse_config(tmp_path / "site.toml", {"uplink": {"session_update_interval_s": value}})


def test_register_and_power_selection() -> None:
    assert register_wh([pw(100), reg(2, "kWh")]) == 2000.0
    assert register_wh([reg(5, "varh")]) is None
    assert register_wh([{"value": "nan"}]) is None
    assert register_wh([reg(100, location="Outlet"), reg(7)]) == 100.0
    assert power_w([pw(1000, phase="L1-N"), pw(1000, phase="L2-N")]) == 2000.0
    assert power_w([pw(1000, phase="L1"), pw(5000)]) == 5000.0  # the total wins over phases
    assert power_w([pw(1000, location="EV"), {"value": "x", "measurand": "Power.Active.Import"}]) is None


def test_the_event_travels_the_contract_and_the_simulated_emsp_keeps_it(env: Env) -> None:
    tx = env.start(meter_start=0)
    env.meter(tx, (10, [reg(1234), pw(7100.5)]))
    rows = env.store.read(
        lambda c: [
            OutboxRow(r["seq"], r["kind"], r["charger_id"], r["created_at"], r["charger_ts"], r["body"])
            for r in c.execute("SELECT * FROM outbox ORDER BY seq")
        ]
    )
    want = {"tx": tx, "charger": "CP1", "connector": 1, "energy_wh": 1234, "power_w": 7100.5, "ts": ts(10)}
    for encoding in ("cbor", "json"):
        payload = encode_batch("gw-1", rows, encoding)  # type: ignore[arg-type]
        [update] = [e for e in decode_batch(payload) if e["kind"] == events.SESSION_UPDATE]
        assert update["body"] == want and update["charger_id"] == "CP1" and update["charger_ts"] == ts(10)
        emsp = SimEmsp("127.0.0.1", 1)  # not connected: only its batch consumer runs
        emsp._on_batch("gw-1", payload)
        view = emsp.gateway("gw-1")
        assert view.duplicates == view.out_of_order == 0 and not emsp.malformed
        assert [e["body"] for e in view.events.values() if e["kind"] == events.SESSION_UPDATE] == [want]
