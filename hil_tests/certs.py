"""Certificates and CRLs for the TLS tests, made with the openssl CLI (the commands docs/ocpp.md gives installers).

Files land in one directory as <name>.pem / <name>.key. A CA made here can revoke: `revoke(d, ca, leaf)` records
the leaf in the CA's database and `make_crl(d, ca, out)` writes its CRL (`openssl ca -gencrl`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CLIENT_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
)
SERVER_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    "subjectAltName=IP:127.0.0.1\n"
)
# `openssl ca` for revocation and CRLs only (certificates are signed with `openssl x509 -req`)
_CA_CONFIG = "[ca]\ndefault_ca = d\n[d]\ndatabase = {name}.index\ncrlnumber = {name}.crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n"


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_leaf(d: Path, name: str, subject: str, ca: str, ext: str, days: int = 2) -> None:
    (d / f"{name}.ext").write_text(ext)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
        cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", str(days), "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


def _ca_args(d: Path, ca: str) -> list[str]:
    cnf = d / f"{ca}.cnf"
    if not cnf.exists():
        cnf.write_text(_CA_CONFIG.format(name=ca))
        (d / f"{ca}.index").write_text("")
        (d / f"{ca}.crlnumber").write_text("01\n")
    return ["-config", cnf.name, "-keyfile", f"{ca}.key", "-cert", f"{ca}.pem"]


def revoke(d: Path, ca: str, leaf: str) -> None:
    openssl("ca", *_ca_args(d, ca), "-revoke", f"{leaf}.pem", cwd=d)


def make_crl(d: Path, ca: str, out: str, *, next_update: str | None = None) -> Path:
    """The CA's CRL (PEM) written to d/out through a temporary file and a rename, as an installer's tooling
    should. `next_update` (YYYYMMDDHHMMSSZ) back-dates it: a CRL already out of date."""
    dates = ["-crl_lastupdate", "20200101000000Z", "-crl_nextupdate", next_update] if next_update else []
    openssl("ca", *_ca_args(d, ca), "-gencrl", *dates, "-out", f"{out}.tmp", cwd=d)
    os.replace(d / f"{out}.tmp", d / out)
    return d / out
