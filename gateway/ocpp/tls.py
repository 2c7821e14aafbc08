"""The wss:// listener's TLS material: the gateway's certificate, the chargers' CA, their revocation list, and the
reload of all three while the gateway runs (docs/ocpp.md "Rotation").

The listener is bound to one SSLContext for its lifetime, so a renewed certificate could only be served after a
restart, which drops every charger's connection. Instead every handshake is handed the newest loaded context in the
listener context's SNI callback (called for every ClientHello, with or without a server name, before the server
certificate is chosen): the certificate, key and CA store of that context serve the handshake. Connections already
up keep the keys they were made with.

`ServerTls.reload_if_changed()` compares the files' (inode, size, mtime) with what was loaded and, when one changed,
loads all of them into a new context. A file that fails to load (half-written, key not matching the certificate,
CRL not signed by a CA in client_ca) leaves the old context in force; the error is logged once per change of the
files and shown in `chargegate status` (`ocpp.tls.reload_error`), and the next change is tried again.

Revocation ([ocpp] client_crl) is checked here, not by OpenSSL: OpenSSL's CRL check refuses every certificate once
the CRL is past its nextUpdate, which at a site without backhaul would lock out every profile-3 charger because the
CA's CRL could not be fetched. Here a CRL past its nextUpdate still applies (what it revokes stays refused) and the
status and log say it is out of date. A CRL must be signed by a CA in client_ca. A client certificate whose issuer
has no CRL in the file is not checked for revocation.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.config import SiteConfig
from gateway.errors import ConfigError

log = logging.getLogger("chargegate.ocpp")

# TLS floor for profiles 2 and 3 (the Security Whitepaper asks for TLS 1.2 or above). Cipher suites are Python's
# defaults: TLS 1.3 suites, and for 1.2 ECDHE/DHE with AES-GCM, ChaCha20 or AES-CBC-SHA2 (forward secrecy only: the
# whitepaper's TLS_RSA_WITH_AES_*_GCM key-transport suites are not offered; its ECDHE-ECDSA-AES-GCM ones are).
TLS_MINIMUM = ssl.TLSVersion.TLSv1_2
# A certificate (the gateway's) or CRL this close to its end is warned about at every load: a month leaves time to
# issue a new one before chargers refuse the gateway.
EXPIRY_WARNING_S = 30 * 86400.0
# Cap on a CRL file read into memory. It is installer-provided, but may come from a CA with many revocations; a
# CRL of 100,000 entries is ~4 MB.
MAX_CRL_BYTES = 32 * 1024 * 1024

Stamp = tuple[int, int, int]  # (inode, size, mtime_ns): a replaced or rewritten file changes at least one


@dataclass(frozen=True)
class TlsFiles:
    """The paths as configured, resolved against the config file, and the config file for error messages."""

    config_file: str
    cert: Path
    key: Path
    client_ca: Path | None = None
    client_crl: Path | None = None

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> TlsFiles:
        o = cfg.ocpp
        base = cfg.path.parent
        return cls(
            config_file=str(cfg.path),
            cert=base / o.tls_cert,
            key=base / o.tls_key,
            client_ca=base / o.client_ca if o.client_ca else None,
            client_crl=base / o.client_crl if o.client_crl else None,
        )

    def named(self) -> list[tuple[str, Path]]:
        out = [("ocpp.tls_cert", self.cert), ("ocpp.tls_key", self.key)]
        if self.client_ca is not None:
            out.append(("ocpp.client_ca", self.client_ca))
        if self.client_crl is not None:
            out.append(("ocpp.client_crl", self.client_crl))
        return out

    def stamps(self) -> tuple[Stamp | None, ...]:
        out: list[Stamp | None] = []
        for _, p in self.named():
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)


@dataclass(frozen=True)
class Loaded:
    """One consistent load of the files: the context handshakes get, and what the status reports."""

    context: ssl.SSLContext
    cert_not_after: datetime
    # issuer name (DER) -> revoked serial numbers of that issuer's CRL
    revoked: dict[bytes, frozenset[int]]
    crl_next_update: datetime | None  # the earliest nextUpdate among the CRLs
    crl_entries: int


def _fail(files: TlsFiles, key: str, problem: str) -> ConfigError:
    return ConfigError(files.config_file, key, problem)


def _read(files: TlsFiles, key: str, path: Path, cap: int = MAX_CRL_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise _fail(files, key, f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > cap:
        raise _fail(files, key, f"{path} is larger than {cap} bytes")
    return data


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False  # chargers' CAs are EC or RSA; anything else is not accepted as a CRL signer
    return crl.is_signature_valid(key)


def _load_crls(
    files: TlsFiles, cas: list[x509.Certificate]
) -> tuple[dict[bytes, frozenset[int]], datetime | None, int]:
    assert files.client_crl is not None
    key = "ocpp.client_crl"
    data = _read(files, key, files.client_crl)
    pem_marker = b"-----BEGIN X509 CRL-----"
    try:
        if pem_marker in data:
            crls = [x509.load_pem_x509_crl(pem_marker + part) for part in data.split(pem_marker)[1:]]
        else:
            crls = [x509.load_der_x509_crl(data)]
    except ValueError as e:
        raise _fail(files, key, f"{files.client_crl} is not a CRL in PEM or DER ({e})") from None
    revoked: dict[bytes, set[int]] = {}
    next_update: datetime | None = None
    entries = 0
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        signers = [ca for ca in cas if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in signers):
            raise _fail(
                files,
                key,
                f"the CRL issued by {issuer!r} in {files.client_crl} is not signed by a CA in client_ca: "
                "use the CRL of the CA that signs the chargers' certificates",
            )
        serials = revoked.setdefault(crl.issuer.public_bytes(), set())
        for entry in crl:
            serials.add(entry.serial_number)
            entries += 1
        nu = crl.next_update_utc
        if nu is not None and (next_update is None or nu < next_update):
            next_update = nu
    return {k: frozenset(v) for k, v in revoked.items()}, next_update, entries


def load(files: TlsFiles) -> Loaded:
    """Read every file into a new server context. Raises ConfigError naming the key of the file that failed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = TLS_MINIMUM
    try:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as e:
        raise _fail(
            files,
            "ocpp.tls_cert",
            f"cannot load the certificate {files.cert} with key {files.key} ({e}): both PEM, the key "
            "unencrypted and matching the certificate",
        ) from None
    try:
        [leaf, *_] = x509.load_pem_x509_certificates(_read(files, "ocpp.tls_cert", files.cert))
    except ValueError as e:
        raise _fail(files, "ocpp.tls_cert", f"{files.cert}: {e}") from None
    cas: list[x509.Certificate] = []
    if files.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(files.client_ca))
            cas = x509.load_pem_x509_certificates(_read(files, "ocpp.client_ca", files.client_ca))
        except (OSError, ssl.SSLError, ValueError) as e:
            raise _fail(
                files,
                "ocpp.client_ca",
                f"cannot load the CA bundle {files.client_ca} ({e}): expected PEM CA certificates",
            ) from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    revoked: dict[bytes, frozenset[int]] = {}
    next_update = None
    entries = 0
    if files.client_crl is not None:
        revoked, next_update, entries = _load_crls(files, cas)
    return Loaded(ctx, leaf.not_valid_after_utc, revoked, next_update, entries)


def _iso(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


class ServerTls:
    """The TLS side of the wss:// listener. `listener_context` is given to the server once; `reload_if_changed()`
    is called periodically; `revoked(der)` is asked for every profile-3 client certificate."""

    def __init__(self, files: TlsFiles, wall: Callable[[], float] = time.time) -> None:
        self.files = files
        self._wall = wall
        self._stamps = files.stamps()
        self._loaded = load(files)  # raises ConfigError: the gateway does not start with unloadable files
        self._failed_stamps: tuple[Stamp | None, ...] | None = None
        # what `chargegate status` shows under ocpp.tls (kept up to date in place)
        self.status: dict[str, Any] = {"reloads": 0, "reload_failures": 0, "reload_error": None}
        self._describe("loaded")
        # The listener's own context: the first load's settings (verify mode fixed by the config, which a reload
        # does not change); each handshake is switched to the newest loaded context before a certificate is chosen.
        self.listener_context = self._loaded.context
        self.listener_context.sni_callback = self._pick

    def _pick(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        conn.context = self._loaded.context

    @property
    def current(self) -> Loaded:
        return self._loaded

    def reload_if_changed(self) -> bool:
        """Load the files again if any of them changed since the last attempt. True when a new context is in force.
        Never raises for bad files: the old context stays, the error is logged and shown in `status`."""
        stamps = self.files.stamps()
        if stamps == self._stamps or stamps == self._failed_stamps:
            return False
        try:
            loaded = load(self.files)
        except ConfigError as e:
            self._failed_stamps = stamps
            self.status["reload_failures"] += 1
            self.status["reload_error"] = str(e)
            log.error("TLS files changed but cannot be loaded, the previous ones stay in force: %s", e)
            return False
        self._loaded = loaded
        self._stamps = stamps
        self._failed_stamps = None
        self.status["reloads"] += 1
        self.status["reload_error"] = None
        self._describe("reloaded")
        return True

    def revoked(self, peer_der: bytes) -> bool:
        """True when the client certificate (DER, as the TLS layer verified it) is on its issuer's CRL."""
        revoked = self._loaded.revoked
        if not revoked:
            return False
        try:
            cert = x509.load_der_x509_certificate(peer_der)
        except ValueError as e:
            # OpenSSL verified it, but it cannot be checked against the CRL: refused rather than let through
            log.warning("a client certificate cannot be checked for revocation, refused: %s", e)
            return True
        serials = revoked.get(cert.issuer.public_bytes())
        return serials is not None and cert.serial_number in serials

    def _describe(self, what: str) -> None:
        loaded = self._loaded
        now = datetime.fromtimestamp(self._wall(), UTC)
        left = (loaded.cert_not_after - now).total_seconds()
        crl_stale = loaded.crl_next_update is not None and loaded.crl_next_update < now
        self.status.update(
            certificate_not_after=_iso(loaded.cert_not_after),
            certificate_days_left=round(left / 86400.0, 1),
            crl_entries=loaded.crl_entries if self.files.client_crl is not None else None,
            crl_next_update=_iso(loaded.crl_next_update),
            crl_out_of_date=crl_stale,
            loaded_at=_iso(now),
        )
        log.info(
            "TLS %s: certificate valid until %s%s",
            what,
            _iso(loaded.cert_not_after),
            f", CRL with {loaded.crl_entries} revoked" if self.files.client_crl is not None else "",
        )
        if left < EXPIRY_WARNING_S:
            log.warning(
                "the gateway's TLS certificate %s on %s: chargers will refuse it then; issue a new one (docs/ocpp.md "
                "Rotation)",
                "expired" if left < 0 else "expires",
                _iso(loaded.cert_not_after),
            )
        if crl_stale:
            log.warning(
                "the client CRL is out of date (nextUpdate %s): what it revokes stays refused; install a fresh one",
                _iso(loaded.crl_next_update),
            )
