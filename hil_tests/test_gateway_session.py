"""Core OCPP 1.6 messages from a raw charge point, checked frame by frame and in the gateway's SQLite store."""

from __future__ import annotations

import asyncio

from hil_tests.gateway_proc import DEFAULT_TAG, ChargerSpec, GatewayFactory, GatewayProcess
from hil_tests.rawclient import RawChargePoint, assert_clean, meter_values, now_iso, run_async

UNKNOWN_TAG = "DEADBEEF000001"


def _cp(gw: GatewayProcess, cp_id: str = "CP1") -> RawChargePoint:
    return RawChargePoint(gw.url(cp_id), cp_id, gw.password(cp_id))


def test_boot_accepted_with_configured_heartbeat_interval(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(ocpp={"heartbeat_interval": 123})

    async def body() -> None:
        async with _cp(gw) as cp:
            boot = await cp.call(
                "BootNotification",
                {
                    "chargePointVendor": "HilVendor",
                    "chargePointModel": "RawCP",
                    "chargePointSerialNumber": "SN-42",
                    "firmwareVersion": "1.2.3",
                },
            )
            assert boot["status"] == "Accepted"
            assert boot["interval"] == 123
            assert "currentTime" in await cp.call("Heartbeat", {})
        assert_clean(cp)

    run_async(body())
    [row] = gw.query("SELECT * FROM chargers WHERE id = 'CP1'")
    assert (row["vendor"], row["model"], row["serial"], row["firmware"]) == (
        "HilVendor",
        "RawCP",
        "SN-42",
        "1.2.3",
    )
    assert row["boot_status"] == "Accepted"


def test_pending_boot_then_accepted_after_retry_interval(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(
        ocpp={"boot_status": "Pending", "pending_retry_interval": 1, "heartbeat_interval": 77}
    )

    async def body() -> None:
        async with _cp(gw) as cp:
            first = await cp.boot()
            assert first["status"] == "Pending"
            assert first["interval"] == 1  # retry after pending_retry_interval
            await asyncio.sleep(first["interval"] + 0.2)  # a charger waits `interval` before it boots again
            second = await cp.boot()
            assert second["status"] == "Accepted", second
            assert second["interval"] == 77
        assert_clean(cp)

    run_async(body())
    [row] = gw.query("SELECT boot_status FROM chargers WHERE id = 'CP1'")
    assert row["boot_status"] == "Accepted"


def test_per_charger_boot_status_override(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(
        ocpp={"boot_status": "Pending"},
        chargers=[ChargerSpec("CP1", boot_status="Accepted"), ChargerSpec("CP2", boot_status="Rejected")],
    )

    async def body() -> None:
        async with _cp(gw, "CP1") as cp1, _cp(gw, "CP2") as cp2:
            assert (await cp1.boot())["status"] == "Accepted"
            assert (await cp2.boot())["status"] == "Rejected"
        assert_clean(cp1, cp2)

    run_async(body())


def test_full_session_is_recorded(gateway: GatewayProcess) -> None:
    """boot, status, authorize, start, meter values, stop -- every answer checked, then every row."""
    t_start, t_mv1, t_mv2, t_stop = (f"2026-11-21T10:0{i}:00.000Z" for i in range(4))

    async def body() -> int:
        async with _cp(gateway) as cp:
            assert (await cp.boot())["status"] == "Accepted"
            for connector in (0, 1, 2):
                assert await cp.status(connector, "Available") == {}
            assert (await cp.call("Authorize", {"idTag": DEFAULT_TAG}))["idTagInfo"]["status"] == "Accepted"
            assert (await cp.call("Authorize", {"idTag": UNKNOWN_TAG}))["idTagInfo"]["status"] != "Accepted"
            assert await cp.status(1, "Preparing") == {}
            start = await cp.call(
                "StartTransaction",
                {"connectorId": 1, "idTag": DEFAULT_TAG, "meterStart": 1000, "timestamp": t_start},
            )
            assert start["idTagInfo"]["status"] == "Accepted"
            tx = start["transactionId"]
            assert isinstance(tx, int) and tx > 0
            assert await cp.status(1, "Charging") == {}
            assert await cp.call("MeterValues", meter_values(1, tx, 1500, t_mv1, power_w=7200.0)) == {}
            assert await cp.call("MeterValues", meter_values(1, tx, 2500, t_mv2, power_w=7100.0)) == {}
            stop = await cp.call(
                "StopTransaction",
                {
                    "transactionId": tx,
                    "meterStop": 3210,
                    "timestamp": t_stop,
                    "reason": "EVDisconnected",
                    "idTag": DEFAULT_TAG,
                    "transactionData": [
                        {
                            "timestamp": t_stop,
                            "sampledValue": [
                                {
                                    "value": "3210",
                                    "measurand": "Energy.Active.Import.Register",
                                    "unit": "Wh",
                                    "context": "Transaction.End",
                                }
                            ],
                        }
                    ],
                },
            )
            assert stop.get("idTagInfo", {"status": "Accepted"})["status"] == "Accepted"
            assert await cp.status(1, "Finishing") == {}
            assert await cp.status(1, "Available") == {}
            # the rest of Core that a charger sends
            assert await cp.call("DiagnosticsStatusNotification", {"status": "Idle"}) == {}
            assert await cp.call("FirmwareStatusNotification", {"status": "Idle"}) == {}
            dt = await cp.call(
                "DataTransfer", {"vendorId": "com.example.nobody", "messageId": "x", "data": "y"}
            )
            assert dt["status"] == "UnknownVendorId"
        assert_clean(cp)
        return tx

    tx = run_async(body())
    [row] = gateway.query("SELECT * FROM transactions WHERE id = ?", (tx,))
    assert row["charger_id"] == "CP1" and row["connector_id"] == 1
    assert row["id_tag"] == DEFAULT_TAG and row["auth_status"] == "Accepted"
    assert (row["meter_start"], row["meter_stop"], row["energy_wh"]) == (1000, 3210, 2210)
    assert row["state"] == "stopped" and row["stop_reason"] == "EVDisconnected"
    assert row["start_ts"].startswith("2026-11-21T10:00:00") and row["stop_ts"].startswith(
        "2026-11-21T10:03:00"
    )
    samples = gateway.query(
        "SELECT measurand, value, charger_ts FROM meter_samples WHERE transaction_id = ? ORDER BY charger_ts, measurand",
        (tx,),
    )
    energy = [s["value"] for s in samples if s["measurand"] == "Energy.Active.Import.Register"]
    assert energy == ["1500", "2500", "3210"], samples
    assert len([s for s in samples if s["measurand"] == "Power.Active.Import"]) == 2, samples
    statuses = gateway.query(
        "SELECT connector_id, status FROM connector_status WHERE charger_id = 'CP1' ORDER BY 1"
    )
    assert [(s["connector_id"], s["status"]) for s in statuses] == [
        (0, "Available"),
        (1, "Available"),
        (2, "Available"),
    ]
    history = [
        h["status"]
        for h in gateway.query(
            "SELECT status FROM status_history WHERE charger_id = 'CP1' AND connector_id = 1 ORDER BY id"
        )
    ]
    assert history == ["Available", "Preparing", "Charging", "Finishing", "Available"]


def test_unknown_tag_start_is_not_accepted(gateway: GatewayProcess) -> None:
    async def body() -> dict[str, object]:
        async with _cp(gateway) as cp:
            await cp.boot()
            start = await cp.call(
                "StartTransaction",
                {"connectorId": 2, "idTag": UNKNOWN_TAG, "meterStart": 0, "timestamp": now_iso()},
            )
        assert_clean(cp)
        return start

    start = run_async(body())
    assert start["idTagInfo"]["status"] != "Accepted"  # type: ignore[index]


def test_resent_start_meter_values_and_stop_are_not_counted_twice(gateway: GatewayProcess) -> None:
    ts = "2026-11-21T11:00:00.000Z"

    async def body() -> int:
        async with _cp(gateway) as cp:
            await cp.boot()
            start = {"connectorId": 2, "idTag": DEFAULT_TAG, "meterStart": 500, "timestamp": ts}
            tx = (await cp.call("StartTransaction", start))["transactionId"]
            again = await cp.call("StartTransaction", start)  # answer lost, charger resends (new message id)
            assert again["transactionId"] == tx
            mv = meter_values(2, tx, 800, "2026-11-21T11:01:00.000Z")
            assert await cp.call("MeterValues", mv) == {}
            assert await cp.call("MeterValues", mv) == {}
            stop = {
                "transactionId": tx,
                "meterStop": 1400,
                "timestamp": "2026-11-21T11:05:00.000Z",
                "reason": "Local",
                "transactionData": [meter_values(2, None, 1400, "2026-11-21T11:05:00.000Z")["meterValue"][0]],
            }
            first = await cp.call("StopTransaction", stop)
            second = await cp.call("StopTransaction", stop)
            assert second == first
            # a different session on the same connector afterwards is a new transaction
            later = {
                "connectorId": 2,
                "idTag": DEFAULT_TAG,
                "meterStart": 1400,
                "timestamp": "2026-11-21T11:10:00.000Z",
            }
            tx2 = (await cp.call("StartTransaction", later))["transactionId"]
            assert tx2 != tx
        assert_clean(cp)
        return tx

    tx = run_async(body())
    rows = gateway.query(
        "SELECT * FROM transactions WHERE charger_id = 'CP1' AND connector_id = 2 ORDER BY id"
    )
    assert len(rows) == 2, rows
    assert rows[0]["id"] == tx
    assert (rows[0]["meter_start"], rows[0]["meter_stop"], rows[0]["energy_wh"], rows[0]["state"]) == (
        500,
        1400,
        900,
        "stopped",
    )
    samples = gateway.query(
        "SELECT value FROM meter_samples WHERE transaction_id = ? ORDER BY charger_ts", (tx,)
    )
    assert [s["value"] for s in samples] == ["800", "1400"], samples


def test_stop_or_meter_values_for_unknown_transaction_change_nothing(gateway: GatewayProcess) -> None:
    async def body() -> None:
        async with _cp(gateway) as cp:
            await cp.boot()
            stop = await cp.call(
                "StopTransaction",
                {"transactionId": 999_999, "meterStop": 10, "timestamp": now_iso(), "reason": "Local"},
            )
            # answered (a charger would otherwise resend it forever); a given idTagInfo must not be Accepted for
            # a transaction that does not exist -- or absent
            assert isinstance(stop, dict)
            assert await cp.call("MeterValues", meter_values(1, 999_999, 42)) == {}
            assert "currentTime" in await cp.call("Heartbeat", {})
        assert_clean(cp)

    run_async(body())
    assert gateway.query("SELECT * FROM transactions") == []


def test_allow_list_is_case_insensitive(gateway: GatewayProcess) -> None:
    async def body() -> None:
        async with _cp(gateway) as cp:
            await cp.boot()
            answer = await cp.call("Authorize", {"idTag": DEFAULT_TAG.lower()})
            assert answer["idTagInfo"]["status"] == "Accepted"
        assert_clean(cp)

    run_async(body())


def test_pipelined_calls_are_each_answered_once_and_stored(gateway: GatewayProcess) -> None:
    """OCPP asks a charger for one outstanding CALL at a time; a charger that pipelines must still get every
    answer exactly once (the gateway queues per connection, up to [ocpp].max_queue)."""
    n = 20

    async def body() -> int:
        async with _cp(gateway) as cp:
            await cp.boot()
            tx = (
                await cp.call(
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": DEFAULT_TAG,
                        "meterStart": 0,
                        "timestamp": "2026-11-21T09:00:00.000Z",
                    },
                )
            )["transactionId"]
            calls = [
                cp.call("MeterValues", meter_values(1, tx, 10 * i, f"2026-11-21T09:{i:02d}:00.000Z"))
                for i in range(1, n + 1)
            ]
            answers = await asyncio.gather(*calls)
            assert answers == [{}] * n
            assert "currentTime" in await cp.call("Heartbeat", {})
        assert_clean(cp)
        return tx

    tx = run_async(body())
    rows = gateway.query(
        "SELECT value FROM meter_samples WHERE transaction_id = ? ORDER BY charger_ts", (tx,)
    )
    assert [int(r["value"]) for r in rows] == [10 * i for i in range(1, n + 1)]


def test_reconnect_without_reboot_is_served_without_a_new_boot(gateway: GatewayProcess) -> None:
    """A charger that lost its network (not its power) reconnects and goes on without BootNotification (OCPP 1.6
    sends BootNotification only after a (re)boot); its open transaction continues."""

    async def body() -> int:
        async with _cp(gateway) as cp:
            await cp.boot()
            start = {
                "connectorId": 1,
                "idTag": DEFAULT_TAG,
                "meterStart": 100,
                "timestamp": "2026-11-21T08:00:00.000Z",
            }
            tx: int = (await cp.call("StartTransaction", start))["transactionId"]
        async with _cp(gateway) as again:
            assert await again.status(1, "Charging") == {}
            assert await again.call("MeterValues", meter_values(1, tx, 300, "2026-11-21T08:05:00.000Z")) == {}
            stop = {"transactionId": tx, "meterStop": 400, "timestamp": "2026-11-21T08:10:00.000Z"}
            await again.call("StopTransaction", stop)
            assert "currentTime" in await again.call("Heartbeat", {})
        assert_clean(cp, again)
        return tx

    tx = run_async(body())
    [row] = gateway.query("SELECT state, energy_wh FROM transactions WHERE id = ?", (tx,))
    assert (row["state"], row["energy_wh"]) == ("stopped", 300)
