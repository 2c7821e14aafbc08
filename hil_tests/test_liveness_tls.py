"""Dead chargers are detected by websocket ping; TLS (wss://, security profile 2) with a test CA made here."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

from websockets.asyncio.client import connect

from hil_tests.gateway_proc import ChargerSpec

# Polling bound for the gateway to notice a silent peer: ping_interval + ping_timeout + close handling, generously.
DETECT_WITHIN = 30.0


def _status(gw) -> dict:
    return {c["id"]: c for c in gw.control({"op": "status"})["result"]["chargers"]}


def test_a_peer_that_stops_answering_pings_is_dropped(gateway_factory):
    gw = gateway_factory(chargers=[ChargerSpec("CP1")], ocpp={"ping_interval": 0.5, "ping_timeout": 0.5})
    host, port = gw.ocpp_url.split("//")[1].split("/")[0].split(":")
    auth = base64.b64encode(f"CP1:{gw.password('CP1')}".encode()).decode()
    sock = socket.create_connection((host, int(port)))
    try:
        # A hand-made websocket handshake: after it this "charger" never reads or answers anything (a dead peer
        # whose TCP connection is still open, like a charger whose modem hung).
        sock.sendall(
            (
                "GET /ocpp/CP1 HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: ocpp1.6\r\nAuthorization: Basic {auth}\r\n\r\n"
            ).encode()
        )
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        deadline = time.monotonic() + DETECT_WITHIN
        seen_connected = False
        while time.monotonic() < deadline:
            connected = _status(gw)["CP1"]["connected"]
            seen_connected = seen_connected or connected
            if seen_connected and not connected:
                break
            time.sleep(0.2)
        assert seen_connected, "the gateway never registered the connection"
        assert not _status(gw)["CP1"]["connected"], (
            "a peer that answers no ping is still considered connected"
        )
    finally:
        sock.close()


def _make_cert(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "gw.key", tmp_path / "gw.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_security_profile_2(gateway_factory, tmp_path):
    cert, key = _make_cert(tmp_path)
    gw = gateway_factory(chargers=[ChargerSpec("CP1")], ocpp={"tls_cert": str(cert), "tls_key": str(key)})
    assert gw.ocpp_url.startswith("wss://")
    ctx = ssl.create_default_context(cafile=str(cert))
    auth = base64.b64encode(f"CP1:{gw.password('CP1')}".encode()).decode()

    async def session() -> list:
        async with connect(
            gw.url("CP1"),
            ssl=ctx,
            subprotocols=["ocpp1.6"],
            additional_headers={"Authorization": f"Basic {auth}"},
        ) as ws:
            await ws.send(
                json.dumps([2, "1", "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}])
            )
            return json.loads(await ws.recv())

    answer = asyncio.run(session())
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"

    # A client that does not trust the gateway's certificate cannot connect.
    async def untrusted() -> None:
        async with connect(gw.url("CP1"), ssl=ssl.create_default_context(), subprotocols=["ocpp1.6"]):
            pass

    try:
        asyncio.run(untrusted())
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("an untrusted certificate was accepted")
