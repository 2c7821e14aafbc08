"""OCPP 1.6 security profiles 2 and 3 on a real gateway, real TLS on loopback, certificates made here with the
openssl CLI (the same commands as docs/ocpp.md "Security profiles").

One gateway for the module, a site at profile 3 with older chargers overriding it:
    CP1, CP2  profile 3 (client certificate with commonName = charger id)
    CP4       profile 3, no password configured; certificate commonName "SERIAL-0004", subjectAltName DNS:CP4
    CP5       profile 2 (Basic over TLS)
    CP6       profile 1 (Basic; reaches the gateway on the extra ws:// listener, [ocpp] plain_port)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from agent.core import AgentConfig, ChargePointCore
from agent.port_cpython import client_tls_context, run_charge_point
from firmware_sim.clock import SimClock
from firmware_sim.hal import SimHal
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.ocpp.tls import TlsFiles, load
from hil_tests.certs import CLIENT_EXT, SERVER_EXT, make_ca, make_leaf
from hil_tests.gateway_proc import REPO, ChargerSpec, GatewayProcess, config_text
from hil_tests.rawclient import RawChargePoint, run_async

# The gateway logs its extra ws:// listener just before its ready line; stderr is read by another thread.
LOG_WAIT_S = 10.0
# Upper bound for the agent to connect over TLS and be Accepted (normally well under a second).
AGENT_BOOT_S = 20.0
# A TLS probe of the gateway answers in milliseconds; bound a hung one.
SOCKET_TIMEOUT_S = 10.0
# The fleet simulator run: process start, connect, boot, one second of scenarios, drain (normally ~2 s).
FLEET_TIMEOUT_S = 120.0


@dataclass
class Site:
    gw: GatewayProcess
    certs: Path
    wss: str  # wss://127.0.0.1:PORT/ocpp/
    ws: str  # the plain listener, ws://127.0.0.1:PORT/ocpp/

    def tls(self, client: str | None = None) -> ssl.SSLContext:
        """A charger's TLS settings: trusts the site CA; with `client`, presents certs/<client>.pem."""
        if client is None:
            return client_tls_context(str(self.certs / "ca.pem"))
        return client_tls_context(
            str(self.certs / "ca.pem"), str(self.certs / f"{client}.pem"), str(self.certs / f"{client}.key")
        )

    def log_lines(self, pattern: str) -> list[str]:
        return [line for line in self.gw.output().splitlines() if re.search(pattern, line)]

    def wait_log(self, pattern: str) -> str:
        deadline = time.monotonic() + LOG_WAIT_S
        while time.monotonic() < deadline:
            found = self.log_lines(pattern)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}\n{self.gw.output()}")


CHARGERS = [ChargerSpec(cid) for cid in ("CP1", "CP2", "CP4", "CP5", "CP6")]
PROFILE_OVERRIDES = {"CP5": 2, "CP6": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    make_leaf(certs, "gateway", "/CN=127.0.0.1", "ca", SERVER_EXT)
    for cid in ("CP1", "CP2"):
        make_leaf(certs, cid, f"/CN={cid}", "ca", CLIENT_EXT)
    make_leaf(certs, "CP4", "/CN=SERIAL-0004", "ca", CLIENT_EXT + "subjectAltName=DNS:CP4\n")
    make_leaf(certs, "CP1-other-ca", "/CN=CP1", "other-ca", CLIENT_EXT)

    gw = GatewayProcess(tmp_path_factory.mktemp("gw"), chargers=CHARGERS)
    ocpp = {
        "host": "127.0.0.1",
        "port": 0,
        "security_profile": 3,
        "tls_cert": str(certs / "gateway.pem"),
        "tls_key": str(certs / "gateway.key"),
        "client_ca": str(certs / "ca.pem"),
        "plain_port": 0,
    }
    text = config_text(gw.data_dir, CHARGERS, ocpp)
    for cid, profile in PROFILE_OVERRIDES.items():
        # each [[chargers]] table starts with its id line: add the override right after it
        text = text.replace(f'id = "{cid}"\n', f'id = "{cid}"\nsecurity_profile = {profile}\n')
    # a profile-3 charger needs no password
    text = text.replace(f"password = {json.dumps(gw.password('CP4'))}\n", "")
    assert gw.password("CP4") not in text
    gw.config_path.write_text(text)
    gw.start()
    try:
        assert gw.ocpp_url.startswith("wss://"), gw.ocpp_url
        s = Site(gw, certs, gw.ocpp_url, "")
        line = s.wait_log(r"also listening on ws://\S+ ")
        m = re.search(r"(ws://\S+/ocpp/)", line)
        assert m, line
        s.ws = m.group(1)
        yield s
    finally:
        gw.stop()


def _connected(gw: GatewayProcess, cid: str) -> bool:
    chargers = {c["id"]: c for c in gw.control({"op": "status"})["result"]["chargers"]}
    return bool(chargers[cid]["connected"])


async def _boot(cp: RawChargePoint) -> str:
    async with cp:
        answer = await cp.boot()
        return str(answer["status"])


async def _refusal(cp: RawChargePoint) -> tuple[int, bytes, str | None]:
    """Connect expecting an HTTP refusal: (status, body, WWW-Authenticate)."""
    with pytest.raises(InvalidStatus) as err:
        await cp.connect()
    await cp.close()
    r = err.value.response
    return r.status_code, bytes(r.body or b""), r.headers.get("WWW-Authenticate")


def _refused(site: Site, cp: RawChargePoint) -> tuple[int, bytes, str | None]:
    refusal = run_async(_refusal(cp))
    assert refusal[0] == 401, (refusal, site.gw.output())
    return refusal


# -- profile 3 ------------------------------------------------------------------------------------------------
def test_profile3_agent_with_its_certificate_connects_and_boots(site: Site, tmp_path: Path) -> None:
    """The real agent through the CPython port with a client certificate (client_tls_context): no password."""

    async def go() -> str | None:
        hal = SimHal("CP1", 1, tmp_path / "CP1", SimClock(1.0))
        core = ChargePointCore(AgentConfig("CP1", connectors=1, model="agent-sim", serial="SIM-CP1"), hal)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_charge_point(core, site.wss + "CP1", None, stop=stop, tick_interval=0.05, tls=site.tls("CP1"))
        )
        try:
            async with asyncio.timeout(AGENT_BOOT_S):
                while core.registration_status != "Accepted" and not task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
        return core.registration_status

    assert run_async(go()) == "Accepted", site.gw.output()
    site.wait_log(r"CP1 connected from 127\.0\.0\.1 \(security profile 3, TLSv1\.[23]\)")
    rows = site.gw.query("SELECT boot_status FROM chargers WHERE id = 'CP1'")
    assert rows and rows[0]["boot_status"] == "Accepted", rows


def test_agent_port_refuses_tls_settings_for_a_ws_url(site: Site, tmp_path: Path) -> None:
    hal = SimHal("CP1", 1, tmp_path / "CP1", SimClock(1.0))
    core = ChargePointCore(AgentConfig("CP1"), hal)
    with pytest.raises(ValueError, match="wss://"):
        run_async(run_charge_point(core, site.ws + "CP1", None, stop=asyncio.Event(), tls=site.tls("CP1")))


def test_profile3_basic_credentials_are_ignored(site: Site) -> None:
    # a wrong password next to the right certificate: profile 3 does not use Basic at all
    cp = RawChargePoint(site.wss + "CP2", "CP2", "wrong-password-0123456789", tls=site.tls("CP2"))
    assert run_async(_boot(cp)) == "Accepted"


def test_profile3_subject_alt_name_may_carry_the_charger_id(site: Site) -> None:
    cp = RawChargePoint(site.wss + "CP4", "CP4", None, tls=site.tls("CP4"))
    assert run_async(_boot(cp)) == "Accepted"


def test_profile3_another_chargers_certificate_is_refused(site: Site) -> None:
    # CP1's URL with CP2's (valid, same CA) certificate, and CP1's right password for good measure
    before = len(site.log_lines(r"CP1 connected from"))
    cp = RawChargePoint(site.wss + "CP1", "CP1", site.gw.password("CP1"), tls=site.tls("CP2"))
    _refused(site, cp)
    site.wait_log(r"refused CP1: its client certificate is for 'CP2', not this charger")
    assert len(site.log_lines(r"CP1 connected from")) == before
    assert not _connected(site.gw, "CP1")


def test_profile3_without_a_client_certificate_is_refused(site: Site) -> None:
    cp = RawChargePoint(site.wss + "CP2", "CP2", site.gw.password("CP2"), tls=site.tls())
    _refused(site, cp)
    site.wait_log(r"refused CP2: security profile 3 requires a client certificate, none sent")


async def _connect_error(cp: RawChargePoint) -> BaseException:
    try:
        await cp.connect()
    except Exception as e:
        return e
    finally:
        await cp.close()
    raise AssertionError(f"{cp.charger_id} was let in")


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


ANSWERED = "answered"


def _tls_probe(site: Site, ctx: ssl.SSLContext) -> str:
    """A TLS handshake with the wss:// listener on a plain blocking socket, then an HTTP request: ANSWERED when any
    answer comes back, else how it ended. The gateway ends a refused TLS handshake by closing the connection (for
    TLS 1.3 after the client's side of the handshake is done: the client's certificate is judged last). asyncio
    drops the alert that would say why, so the client sees an EOF."""
    host, port = site.wss.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"GET /ocpp/NOPE HTTP/1.1\r\nHost: x\r\n\r\n")
                return ANSWERED if tls.recv(1) else "EOF after the handshake"
        except ssl.SSLError as e:
            return str(e)


@pytest.mark.parametrize(
    "tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_profile3_certificate_from_another_ca_fails_the_tls_handshake(
    site: Site, tls_max: ssl.TLSVersion
) -> None:
    before = len(site.log_lines(r"CP1 connected from"))
    ctx = site.tls("CP1-other-ca")
    ctx.maximum_version = tls_max
    assert "EOF" in _tls_probe(site, ctx)
    # and a websocket client gets no HTTP answer at all (a reset or EOF, not a 101 nor a 401)
    chain = _chain(run_async(_connect_error(RawChargePoint(site.wss + "CP1", "CP1", None, tls=ctx))))
    assert any(isinstance(x, EOFError | ssl.SSLError | ConnectionError) for x in chain), repr(chain)
    assert not any(isinstance(x, InvalidStatus) for x in chain), repr(chain)
    assert len(site.log_lines(r"CP1 connected from")) == before
    # the same client with CP1's own certificate gets in (the refusal above is the certificate's, not the client's)
    ctx = site.tls("CP1")
    ctx.maximum_version = tls_max
    assert _tls_probe(site, ctx) == ANSWERED
    assert run_async(_boot(RawChargePoint(site.wss + "CP1", "CP1", None, tls=ctx))) == "Accepted"


def test_profile3_charger_on_plain_ws_is_refused(site: Site) -> None:
    cp = RawChargePoint(site.ws + "CP1", "CP1", site.gw.password("CP1"))
    _refused(site, cp)
    site.wait_log(r"refused CP1: security profile 3 requires TLS \(wss://\), it came over ws://")


# -- profile 2 ------------------------------------------------------------------------------------------------
def test_profile2_right_password_over_tls_connects(site: Site) -> None:
    cp = RawChargePoint(site.wss + "CP5", "CP5", site.gw.password("CP5"), tls=site.tls())
    assert run_async(_boot(cp)) == "Accepted"
    site.wait_log(r"CP5 connected from 127\.0\.0\.1 \(security profile 2, TLSv1\.[23]\)")


def test_profile2_wrong_password_gets_401(site: Site) -> None:
    cp = RawChargePoint(site.wss + "CP5", "CP5", "wrong-password-0123456789", tls=site.tls())
    _refused(site, cp)


def test_profile2_charger_on_plain_ws_is_refused_even_with_its_password(site: Site) -> None:
    cp = RawChargePoint(site.ws + "CP5", "CP5", site.gw.password("CP5"))
    _refused(site, cp)
    site.wait_log(r"refused CP5: security profile 2 requires TLS \(wss://\), it came over ws://")


def test_tls_below_1_2_is_refused(site: Site) -> None:
    ctx = site.tls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/TLSv1_1 are deprecated: that is the point
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.0/1.1
    # the gateway hangs up on the ClientHello (an EOF; not this client's own "no protocols available")
    assert "UNEXPECTED_EOF" in _tls_probe(site, ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _tls_probe(site, ctx) == ANSWERED


# -- profile 1 and the refusal answer -------------------------------------------------------------------------
def test_profile1_charger_connects_on_plain_ws_and_over_tls(site: Site) -> None:
    cp = RawChargePoint(site.ws + "CP6", "CP6", site.gw.password("CP6"))
    assert run_async(_boot(cp)) == "Accepted"
    site.wait_log(r"CP6 connected from 127\.0\.0\.1 \(security profile 1, no TLS\)")
    # a higher profile than configured is fine
    cp = RawChargePoint(site.wss + "CP6", "CP6", site.gw.password("CP6"), tls=site.tls())
    assert run_async(_boot(cp)) == "Accepted"
    cp = RawChargePoint(site.ws + "CP6", "CP6", "wrong-password-0123456789")
    _refused(site, cp)


def test_every_refusal_is_the_same_answer(site: Site) -> None:
    """A prober cannot tell a wrong certificate from a missing one, a wrong password or the wrong transport."""
    answers = {
        "other charger's certificate": _refused(
            site, RawChargePoint(site.wss + "CP1", "CP1", None, tls=site.tls("CP2"))
        ),
        "no certificate": _refused(site, RawChargePoint(site.wss + "CP1", "CP1", None, tls=site.tls())),
        "profile 3 on ws://": _refused(site, RawChargePoint(site.ws + "CP1", "CP1", None)),
        "wrong password": _refused(
            site, RawChargePoint(site.wss + "CP5", "CP5", "wrong-password-0123456789", tls=site.tls())
        ),
        "profile 2 on ws://": _refused(site, RawChargePoint(site.ws + "CP5", "CP5", site.gw.password("CP5"))),
    }
    assert len(set(answers.values())) == 1, answers


def test_unknown_charger_is_still_404(site: Site) -> None:
    cp = RawChargePoint(site.wss + "NOPE", "NOPE", None, tls=site.tls("CP1"))

    async def go() -> int:
        with pytest.raises(InvalidStatus) as err:
            await cp.connect()
        await cp.close()
        return err.value.response.status_code

    assert run_async(go()) == 404


# -- configuration ------------------------------------------------------------------------------------------
def _cfg(tmp_path: Path, ocpp: dict[str, Any], chargers: list[dict[str, Any]] | None = None) -> Any:
    for name in ("gw.pem", "gw.key", "ca.pem"):
        (tmp_path / name).touch()
    default = [{"id": "CP1", "password": "0123456789abcdef"}]
    return parse_config(
        tmp_path / "site.toml", {"ocpp": ocpp, "chargers": default if chargers is None else chargers}
    )


def _config_error(tmp_path: Path, ocpp: dict[str, Any], chargers: list[dict[str, Any]] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, ocpp, chargers)
    return str(err.value)


TLS = {"tls_cert": "gw.pem", "tls_key": "gw.key"}


def test_config_default_profile_follows_tls(tmp_path: Path) -> None:
    assert _cfg(tmp_path, {}).ocpp.profile == 1
    cfg = _cfg(tmp_path, TLS)
    assert cfg.ocpp.profile == 2 and cfg.chargers[0].profile(cfg.ocpp) == 2
    old = {"id": "CP1", "password": "0123456789abcdef", "security_profile": 1}
    cfg = _cfg(tmp_path, {**TLS, "security_profile": 2}, [old])
    assert cfg.chargers[0].profile(cfg.ocpp) == 1


def test_config_errors_name_the_key_and_the_fix(tmp_path: Path) -> None:
    msg = _config_error(tmp_path, {"security_profile": 2})
    assert "ocpp.security_profile" in msg and "tls_cert" in msg
    msg = _config_error(tmp_path, {**TLS, "security_profile": 3})
    assert "ocpp.security_profile" in msg and "client_ca" in msg
    msg = _config_error(
        tmp_path, TLS, [{"id": "CP1", "password": "0123456789abcdef"}, {"id": "CP2", "security_profile": 3}]
    )
    assert "chargers[1].security_profile" in msg and "client_ca" in msg
    msg = _config_error(tmp_path, {}, [{"id": "CP1", "security_profile": 2, "password": "0123456789abcdef"}])
    assert "chargers[0].security_profile" in msg and "tls_cert" in msg
    msg = _config_error(tmp_path, {**TLS, "security_profile": 2}, [{"id": "CP1"}])
    assert "chargers[0].password" in msg and "required at security profile 2" in msg
    msg = _config_error(tmp_path, {"security_profile": 4})
    assert "ocpp.security_profile" in msg and "1, 2, 3" in msg
    assert "ocpp.plain_port" in _config_error(tmp_path, {"plain_port": 9001})
    assert "ocpp.client_ca" in _config_error(tmp_path, {"client_ca": "ca.pem"})
    msg = _config_error(tmp_path, {**TLS, "security_profile": 3, "client_ca": "missing.pem"})
    assert "ocpp.client_ca" in msg and "no such file" in msg
    msg = _config_error(tmp_path, {**TLS, "client_crl": "ca.pem"})
    assert "ocpp.client_crl" in msg and "set [ocpp] client_ca" in msg
    msg = _config_error(
        tmp_path, {**TLS, "security_profile": 3, "client_ca": "ca.pem", "client_crl": "no.crl"}
    )
    assert "ocpp.client_crl" in msg and "no such file" in msg
    assert "ocpp.tls_reload_interval_s" in _config_error(tmp_path, {**TLS, "tls_reload_interval_s": -1})


def test_config_profile3_charger_needs_no_password(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {**TLS, "security_profile": 3, "client_ca": "ca.pem"}, [{"id": "CP1"}])
    assert cfg.chargers[0].profile(cfg.ocpp) == 3 and cfg.chargers[0].password == ""


def test_unloadable_client_ca_is_a_config_error_naming_the_key(site: Site, tmp_path: Path) -> None:
    real = {
        "tls_cert": str(site.certs / "gateway.pem"),
        "tls_key": str(site.certs / "gateway.key"),
        "client_ca": str(site.certs / "ca.pem"),
        "security_profile": 3,
    }
    ctx = load(TlsFiles.from_config(_cfg(tmp_path, real))).context
    assert ctx.verify_mode == ssl.CERT_OPTIONAL and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError) as err:
        load(TlsFiles.from_config(_cfg(tmp_path, {**real, "client_ca": "ca.pem"})))  # an empty file here
    assert err.value.key == "ocpp.client_ca"
    with pytest.raises(ConfigError) as err:
        load(
            TlsFiles.from_config(_cfg(tmp_path, {**real, "tls_key": str(site.certs / "CP1.key")}))
        )  # not its key
    assert err.value.key == "ocpp.tls_cert"


def test_fleet_simulator_runs_profile3_chargers_with_their_certificates(site: Site) -> None:
    """`chargegate sim --ca --cert-dir`: the fleet's agents connect with certs/<id>.pem and certs/<id>.key."""
    before = len(site.log_lines(r"CP2 connected from \S+ \(security profile 3, TLS"))
    run = subprocess.run(
        [
            sys.executable, "-m", "firmware_sim.fleet", "--config", str(site.gw.config_path),
            "--ca", str(site.certs / "ca.pem"), "--cert-dir", str(site.certs),
            "--chargers", "2", "--duration", "1", "--json",
        ],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=FLEET_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["errors"] == 0 and report["chargers"]["CP2"]["frames"] > 0, report
    assert len(site.log_lines(r"CP2 connected from \S+ \(security profile 3, TLS")) > before


def test_logs_name_reasons_but_hold_no_certificate_or_key(site: Site) -> None:
    # runs last in this module: every refusal above has been logged by now
    out = site.gw.output()
    assert "refused CP1: its client certificate is for 'CP2'" in out
    for secret in ("BEGIN", "PRIVATE KEY", site.gw.password("CP1"), site.gw.password("CP5")):
        assert secret not in out, secret
