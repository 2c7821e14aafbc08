"""The gateway's websocket handshake: charger identity, HTTP Basic auth, subprotocol, connection replacement."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from hil_tests.gateway_proc import GatewayProcess
from hil_tests.rawclient import RawChargePoint, assert_clean, run_async


async def _connect_status(gw: GatewayProcess, url: str, cp_id: str, password: str | None) -> int:
    cp = RawChargePoint(url, cp_id, password)
    with pytest.raises(InvalidStatus) as err:
        await cp.connect()
    await cp.close()
    return err.value.response.status_code


def test_unknown_charger_gets_404(gateway: GatewayProcess) -> None:
    status = run_async(_connect_status(gateway, gateway.url("NOPE"), "NOPE", "pw-NOPE-0123456789abcdef"))
    assert status == 404, gateway.output()


def test_basic_user_must_match_the_charger_id_in_the_url(gateway: GatewayProcess) -> None:
    # the charger id comes from the URL path; the Basic user must match it
    status = run_async(_connect_status(gateway, gateway.url("CP1"), "CP2", gateway.password("CP2")))
    assert status == 401, gateway.output()


@pytest.mark.parametrize(
    "password", ["wrong-password-0123456789", None, ""], ids=["wrong", "missing", "empty"]
)
def test_bad_or_missing_password_gets_401(gateway: GatewayProcess, password: str | None) -> None:
    status = run_async(_connect_status(gateway, gateway.url("CP1"), "CP1", password))
    assert status == 401, gateway.output()


def test_other_chargers_password_gets_401(gateway: GatewayProcess) -> None:
    status = run_async(_connect_status(gateway, gateway.url("CP1"), "CP1", gateway.password("CP2")))
    assert status == 401, gateway.output()


@pytest.mark.parametrize("offered", [["ocpp2.0.1"], None], ids=["ocpp2.0.1-only", "none-offered"])
def test_subprotocol_mismatch_is_closed_with_protocol_error(
    gateway: GatewayProcess, offered: list[str] | None
) -> None:
    async def body() -> tuple[str | None, int | None]:
        cp = RawChargePoint(gateway.url("CP1"), "CP1", gateway.password("CP1"), subprotocols=offered)
        await cp.connect()
        assert cp.ws is not None
        negotiated = cp.ws.subprotocol
        code = await cp.wait_closed()
        await cp.close()
        return negotiated, code

    negotiated, code = run_async(body())
    assert negotiated is None
    assert code == 1002, gateway.output()


def test_ocpp16_among_several_offered_is_selected(gateway: GatewayProcess) -> None:
    async def body() -> None:
        async with RawChargePoint(
            gateway.url("CP1"), "CP1", gateway.password("CP1"), subprotocols=["ocpp2.0.1", "ocpp1.6"]
        ) as cp:
            assert cp.ws is not None and cp.ws.subprotocol == "ocpp1.6"
            assert (await cp.boot())["status"] == "Accepted"
            assert "currentTime" in await cp.call("Heartbeat", {})
        assert_clean(cp)

    run_async(body())


def test_second_connection_with_same_id_replaces_the_first(gateway: GatewayProcess) -> None:
    async def body() -> None:
        old = await RawChargePoint(gateway.url("CP1"), "CP1", gateway.password("CP1")).connect()
        await old.boot()
        new = await RawChargePoint(gateway.url("CP1"), "CP1", gateway.password("CP1")).connect()
        try:
            await old.wait_closed()  # the gateway closes the old connection
            assert (await new.boot())["status"] == "Accepted"
            assert "currentTime" in await new.call("Heartbeat", {})
            # commands go to the new connection
            proc = await asyncio.to_thread(gateway.cmd, "CP1", "clear-cache")
            assert proc.returncode == 0, proc.stderr + gateway.output()
            action, _ = await new.next_gateway_call("ClearCache")
            assert action == "ClearCache"
            assert not [c for c in old.gateway_calls if c[0] == "ClearCache"]
            status = gateway.control({"op": "status"})
            assert status["ok"], status
            [cp1] = [c for c in status["result"]["chargers"] if c["id"] == "CP1"]
            assert cp1["connected"] is True, status
            # closing the replaced connection must not mark the charger disconnected
            [row] = gateway.query("SELECT connected FROM chargers WHERE id = 'CP1'")
            assert row["connected"] == 1
        finally:
            await new.close()
            await old.close()
        assert_clean(old, new)

    run_async(body())
