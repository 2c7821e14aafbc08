"""gateway.ocpp.tls: loading the listener's certificate, client CA and CRL, revocation, and reload on change, with
certificates and CRLs made by the openssl CLI (hil_tests.certs)."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.ocpp.tls import ServerTls, TlsFiles, load
from hil_tests.certs import CLIENT_EXT, SERVER_EXT, make_ca, make_crl, make_leaf, revoke


def der(d: Path, name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert((d / f"{name}.pem").read_text())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "gateway", "/CN=127.0.0.1", "ca", SERVER_EXT)
    make_leaf(d, "gateway-next", "/CN=127.0.0.1", "ca", SERVER_EXT, days=1)
    for cid in ("CP1", "CP2"):
        make_leaf(d, cid, f"/CN={cid}", "ca", CLIENT_EXT)
    make_leaf(d, "CP1-other-ca", "/CN=CP1", "other-ca", CLIENT_EXT)
    make_crl(d, "ca", "empty.crl")
    make_crl(d, "other-ca", "other.crl")
    revoke(d, "ca", "CP1")
    make_crl(d, "ca", "cp1.crl")
    make_crl(d, "ca", "cp1-old.crl", next_update="20200102000000Z")
    return d


def files(d: Path, crl: str | None = None) -> TlsFiles:
    return TlsFiles("site.toml", d / "gateway.pem", d / "gateway.key", d / "ca.pem", d / crl if crl else None)


def test_the_crl_revokes_the_certificates_it_lists_and_no_others(certs: Path) -> None:
    tls = ServerTls(files(certs, "cp1.crl"))
    assert tls.revoked(der(certs, "CP1"))
    assert not tls.revoked(der(certs, "CP2"))
    # same serial space, another issuer: the CRL is the issuer's, so not revoked by it
    assert not tls.revoked(der(certs, "CP1-other-ca"))
    assert tls.status["crl_entries"] == 1 and tls.status["crl_out_of_date"] is False
    assert not ServerTls(files(certs, "empty.crl")).revoked(der(certs, "CP1"))
    assert not ServerTls(files(certs)).revoked(der(certs, "CP1"))  # no CRL configured


def test_a_crl_past_its_next_update_still_revokes_and_is_reported(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "chargegate.ocpp"):
        tls = ServerTls(files(certs, "cp1-old.crl"))
    assert tls.revoked(der(certs, "CP1"))
    assert tls.status["crl_out_of_date"] is True and tls.status["crl_next_update"] == "2020-01-02T00:00:00Z"
    assert "client CRL is out of date (nextUpdate 2020-01-02T00:00:00Z)" in caplog.text


def test_a_crl_not_signed_by_client_ca_is_refused_naming_the_key(certs: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(files(certs, "other.crl"))
    assert err.value.key == "ocpp.client_crl" and err.value.file == "site.toml"
    assert "CN=other-ca" in err.value.problem and "not signed by a CA in client_ca" in err.value.problem
    (certs / "junk.crl").write_bytes(b"not a crl")
    with pytest.raises(ConfigError) as err:
        load(files(certs, "junk.crl"))
    assert err.value.key == "ocpp.client_crl" and "not a CRL in PEM or DER" in err.value.problem


def test_a_certificate_close_to_its_end_is_warned_about(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "chargegate.ocpp"):
        tls = ServerTls(files(certs))
    assert 1.0 < tls.status["certificate_days_left"] <= 2.0
    assert "the gateway's TLS certificate expires on" in caplog.text


def test_replaced_files_are_loaded_and_a_bad_replacement_keeps_the_old_ones(
    tmp_path: Path, certs: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name in ("ca.pem", "gateway.pem", "gateway.key", "empty.crl", "cp1.crl"):
        (live / name).write_bytes((certs / name).read_bytes())
    tls = ServerTls(files(live, "empty.crl"))
    first = tls.current
    assert not tls.reload_if_changed()  # nothing changed
    # a half-done rotation: the new certificate is in place, its key not yet
    os.replace(_copy(certs / "gateway-next.pem", live / "next.tmp"), live / "gateway.pem")
    assert not tls.reload_if_changed()
    assert tls.current is first
    assert tls.status["reload_failures"] == 1 and "ocpp.tls_cert" in tls.status["reload_error"]
    assert not tls.reload_if_changed()  # the same files are not tried (and logged) again
    assert tls.status["reload_failures"] == 1
    os.replace(_copy(certs / "gateway-next.key", live / "next.tmp"), live / "gateway.key")
    assert tls.reload_if_changed()
    assert tls.current is not first and tls.current.cert_not_after < first.cert_not_after
    assert tls.status["reloads"] == 1 and tls.status["reload_error"] is None
    # a new CRL is picked up the same way
    assert not tls.revoked(der(certs, "CP1"))
    os.replace(live / "cp1.crl", live / "empty.crl")
    assert tls.reload_if_changed() and tls.revoked(der(certs, "CP1"))
    # the listener keeps its context object; it hands each handshake the newest one
    assert tls.listener_context is first.context and tls.listener_context.sni_callback is not None


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst
