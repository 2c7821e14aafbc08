"""A real mosquitto broker for the demo, tests and benchmarks: own config, free port, own data dir; no system
service. (Part of the installed package so `chargegate demo` can start one; hil_tests/mosquitto.py re-exports it.)

    with Mosquitto(tmp_path) as broker:          # starts; stops (SIGTERM, then SIGKILL) on exit
        broker.port                              # stays the same across broker.restart()
    Mosquitto(tmp_path, users={"gw": "secret"})  # password file (anonymous access off)
    Mosquitto(tmp_path, tls=make_test_pki(tmp_path))   # TLS listener with a test CA made with the openssl CLI

`start()` returns once the broker accepts TCP connections on its port.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# A broker that is not listening after this long failed to start (it takes ~10 ms here).
START_TIMEOUT_S = 10.0
# Graceful stop (persistence is written on SIGTERM) before SIGKILL.
STOP_TIMEOUT_S = 10.0


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TestPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_pki(directory: Path, hostname: str = "localhost") -> TestPki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI)."""
    d = directory / "pki"
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=chargegate test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "server.ext").write_text(
        f"subjectAltName=DNS:{hostname},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, cn in (("server", hostname), ("client", "chargegate-gateway")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    for key in d.glob("*.key"):
        os.chmod(key, 0o600)
    return TestPki(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


def password_line(user: str, password: str) -> str:
    """A mosquitto 2.x password file entry ($7$: PBKDF2-SHA512, as mosquitto_passwd writes it)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: TestPki | None = None,
        require_client_cert: bool = False,
        persistence: bool = True,
        extra_config: str = "",
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.binary = binary
        self.dir = workdir / f"mosquitto-{os.getpid()}-{id(self):x}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = users
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.persistence = persistence
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "mosquitto.log"
        self.starts = 0

    @property
    def config_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "max_queued_messages 0",  # an offline persistent subscriber loses nothing (default: 1000)
            "max_inflight_messages 64",
            # run as whoever runs the tests (as root, mosquitto would otherwise drop to user 'mosquitto' and
            # could not read its own files in a private temp dir)
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.users is not None:
            pw = self.dir / "passwd"
            pw.write_text("".join(password_line(u, p) + "\n" for u, p in self.users.items()))
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Mosquitto:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._write_config()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S}s"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM: persistent sessions and queued messages are written to disk)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
