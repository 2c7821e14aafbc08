"""Certificate rotation and revocation on a running gateway, real TLS on loopback, certificates and CRLs made with
the openssl CLI: files replaced on disk are picked up without a restart ([ocpp] tls_reload_interval_s).

- a renewed gateway certificate is served to new connections while the chargers already connected stay up; a
  half-done replacement (certificate without its key) keeps the old pair in force;
- a CRL that revokes a profile-3 charger's certificate disconnects it and refuses its reconnect, other chargers
  are not touched.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from agent.port_cpython import client_tls_context
from hil_tests.certs import CLIENT_EXT, SERVER_EXT, make_ca, make_crl, make_leaf, revoke
from hil_tests.gateway_proc import ChargerSpec, GatewayProcess
from hil_tests.rawclient import RawChargePoint, run_async

# The gateway looks for changed files this often in these tests (the default is 60 s).
RELOAD_INTERVAL_S = 0.2
# Bound on waiting for a reload to show (a few reload rounds on a healthy box; generous for a loaded CI machine).
WAIT_S = 20.0
SOCKET_TIMEOUT_S = 10.0


class Site:
    def __init__(self, gw: GatewayProcess, certs: Path, live: Path) -> None:
        self.gw, self.certs, self.live = gw, certs, live

    def tls(self, client: str) -> ssl.SSLContext:
        c = self.certs
        return client_tls_context(str(c / "ca.pem"), str(c / f"{client}.pem"), str(c / f"{client}.key"))

    def cp(self, cid: str) -> RawChargePoint:
        return RawChargePoint(self.gw.url(cid), cid, None, tls=self.tls(cid))

    def install(self, src: str, dst: str) -> None:
        """Put certs/<src> in place of live/<dst> the way rotation tooling should: write beside, then rename."""
        tmp = self.live / f"{dst}.tmp"
        tmp.write_bytes((self.certs / src).read_bytes())
        os.replace(tmp, self.live / dst)

    def served_certificate(self) -> bytes:
        """The certificate (DER) the wss:// listener presents to a new TLS client."""
        ctx = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=SOCKET_TIMEOUT_S) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def tls_status(self) -> dict[str, object]:
        status: dict[str, object] = self.gw.control({"op": "status"})["result"]["ocpp"]["tls"]
        return status

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {WAIT_S} s\n{self.gw.output()}")
            time.sleep(0.05)


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    certs, live = tmp_path / "certs", tmp_path / "live"
    certs.mkdir()
    live.mkdir()
    make_ca(certs, "ca")
    make_leaf(certs, "gateway", "/CN=127.0.0.1", "ca", SERVER_EXT)
    make_leaf(certs, "gateway-next", "/CN=127.0.0.1", "ca", SERVER_EXT, days=1)
    for cid in ("CP1", "CP2"):
        make_leaf(certs, cid, f"/CN={cid}", "ca", CLIENT_EXT)
    make_crl(certs, "ca", "crl-none.pem")
    revoke(certs, "ca", "CP1")
    make_crl(certs, "ca", "crl-cp1.pem")
    s = Site(GatewayProcess(tmp_path / "gw", chargers=[ChargerSpec("CP1"), ChargerSpec("CP2")]), certs, live)
    for src, dst in (("gateway.pem", "gateway.pem"), ("gateway.key", "gateway.key"), ("ca.pem", "ca.pem")):
        s.install(src, dst)
    s.install("crl-none.pem", "crl.pem")
    s.gw.write_config(
        host="127.0.0.1",
        security_profile=3,
        tls_cert=str(live / "gateway.pem"),
        tls_key=str(live / "gateway.key"),
        client_ca=str(live / "ca.pem"),
        client_crl=str(live / "crl.pem"),
        tls_reload_interval_s=RELOAD_INTERVAL_S,
    )
    s.gw.start()
    try:
        yield s
    finally:
        s.gw.stop()


def test_a_renewed_gateway_certificate_is_served_without_a_restart(site: Site) -> None:
    pid = site.gw.pid
    assert site.served_certificate() == der(site.certs / "gateway.pem")

    async def body() -> None:
        async with site.cp("CP2") as cp:
            assert (await cp.boot())["status"] == "Accepted"
            # half-done: the new certificate without its key; the gateway keeps serving the old pair
            site.install("gateway-next.pem", "gateway.pem")
            site.wait_for("the failed reload reported", lambda: bool(site.tls_status()["reload_error"]))
            assert "ocpp.tls_cert" in str(site.tls_status()["reload_error"])
            assert site.served_certificate() == der(site.certs / "gateway.pem")
            site.install("gateway-next.key", "gateway.key")
            site.wait_for(
                "the renewed certificate served",
                lambda: site.served_certificate() == der(site.certs / "gateway-next.pem"),
            )
            # the charger connected before the renewal is still on its connection, and answered on it
            assert await cp.call("Heartbeat", {}) != {}
            assert cp.is_open

    run_async(body())
    status = site.tls_status()
    assert status["reload_error"] is None and status["reloads"] == 1 and status["reload_failures"] == 1
    assert site.gw.pid == pid and site.gw.running()


def test_a_revoked_charger_is_disconnected_and_refused_without_a_restart(site: Site) -> None:
    async def body() -> None:
        async with site.cp("CP1") as cp1, site.cp("CP2") as cp2:
            assert (await cp1.boot())["status"] == (await cp2.boot())["status"] == "Accepted"
            site.install("crl-cp1.pem", "crl.pem")
            assert await cp1.wait_closed(WAIT_S) == 1008
            with pytest.raises(InvalidStatus) as err:
                await site.cp("CP1").connect()
            assert err.value.response.status_code == 401
            assert await cp2.call("Heartbeat", {}) != {}
            assert cp2.is_open

    run_async(body())
    out = site.gw.output()
    assert "CP1 disconnected: its client certificate is revoked" in out
    assert "refused CP1: its client certificate is revoked" in out
    assert site.tls_status()["crl_entries"] == 1
