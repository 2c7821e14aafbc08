"""Run a real chargegate gateway process for system tests and benchmarks.

    gw = GatewayProcess(tmp_path, chargers=[ChargerSpec("CP1")], allow=["04A2B3C4D5E6F7"])
    gw.start()                      # waits for the `chargegate: ready ...` line
    gw.url("CP1")                   # ws://127.0.0.1:PORT/ocpp/CP1
    gw.cmd("CP1", "reset", "hard")  # runs `python -m gateway.cli cmd --config FILE CP1 reset hard`
    gw.kill()                       # SIGKILL; gw.start() again reuses the same port, config and data dir
    gw.stop()                       # SIGTERM, then SIGKILL after STOP_TIMEOUT

The config file is written into `workdir/chargegate.toml`, the data dir is `workdir/data`. The gateway's stderr is
collected (last STDERR_KEEP lines) and quoted in every start failure; `gw.output()` returns it for assertion messages.
Extra TOML (other subsystems' sections) goes in `extra_toml`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GatewayFactory = Callable[..., "GatewayProcess"]

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS...` from the repository as its own process (e.g. `gateway.cli tokens ...`), output
    captured as text; the caller checks the return code."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


READY_RE = re.compile(r"^chargegate: ready ocpp=(?P<url>ws\S+) control=(?P<control>\S+)\s*$")

# Cold start imports ocpp/jsonschema/websockets and runs migrations; on a shared, loaded 2-core box that can take
# several seconds, so be generous: only a gateway that never becomes ready waits this long.
START_TIMEOUT = 30.0
# A graceful stop closes connections and the store; after this the process is SIGKILLed (and that is reported).
STOP_TIMEOUT = 10.0
# `chargegate cmd` waits for the charger (call_timeout, 30 s by default) plus process start.
CMD_TIMEOUT = 60.0
# Control-socket request timeout for `GatewayProcess.control`.
CONTROL_TIMEOUT = 30.0
# Lines of gateway stderr kept for failure messages.
STDERR_KEEP = 400

DEFAULT_TAG = "04A2B3C4D5E6F7"


class GatewayStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class ChargerSpec:
    id: str
    password: str = ""
    connectors: int = 2
    boot_status: str = ""

    @property
    def secret(self) -> str:
        # a deterministic 16..40-char password unless one is given
        return self.password or f"pw-{self.id}-0123456789abcdef"[:40]


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (benchmarks with 1000+ sockets); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_text(
    data_dir: Path,
    chargers: Iterable[ChargerSpec],
    ocpp: dict[str, Any] | None = None,
    allow: Sequence[str] = (DEFAULT_TAG,),
    site_id: str = "hil-site",
    extra_toml: str = "",
    log_level: str = "INFO",
    auth: dict[str, Any] | None = None,
) -> str:
    lines = ["[site]", f"id = {_toml(site_id)}", f"data_dir = {_toml(str(data_dir))}"]
    lines += [f"log_level = {_toml(log_level)}", "", "[ocpp]"]
    lines += [f"{k} = {_toml(v)}" for k, v in {"host": "127.0.0.1", "port": 0, **(ocpp or {})}.items()]
    lines += ["", "[auth]", f"allow = {_toml(list(allow))}"]
    # Raw test clients are scripted chargers that count the gateway's frames: the gateway's own local-list sync
    # (GetConfiguration + SendLocalList after each boot) is opt-in here; tests with real agents turn it on.
    lines += [f"{k} = {_toml(v)}" for k, v in {"sync_charger_lists": False, **(auth or {})}.items()]
    for c in chargers:
        lines += ["", "[[chargers]]", f"id = {_toml(c.id)}", f"password = {_toml(c.secret)}"]
        lines.append(f"connectors = {c.connectors}")
        if c.boot_status:
            lines.append(f"boot_status = {_toml(c.boot_status)}")
    return "\n".join(lines) + "\n\n" + extra_toml + "\n"


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        chargers: Sequence[ChargerSpec] = (ChargerSpec("CP1"),),
        ocpp: dict[str, Any] | None = None,
        allow: Sequence[str] = (DEFAULT_TAG,),
        extra_toml: str = "",
        auth: dict[str, Any] | None = None,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "chargegate.toml"
        self.chargers = {c.id: c for c in chargers}
        self._ocpp = dict(ocpp or {})
        self._allow = tuple(allow)
        self._extra = extra_toml
        self._auth = dict(auth or {})
        self.log_level = log_level
        self.cpu = cpu  # pin the gateway to one CPU (benchmarks)
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ocpp_url = ""
        self.control_socket = ""
        self.port = 0
        self._stderr: deque[str] = deque(maxlen=STDERR_KEEP)
        self._stdout: deque[str] = deque(maxlen=STDERR_KEEP)
        self._threads: list[threading.Thread] = []
        self._asked_to_exit = False
        self.write_config()

    # -- config -------------------------------------------------------------------------------------------------
    def write_config(self, **ocpp_overrides: Any) -> None:
        self._ocpp.update(ocpp_overrides)
        self.config_path.write_text(
            config_text(
                self.data_dir,
                self.chargers.values(),
                self._ocpp,
                self._allow,
                extra_toml=self._extra,
                log_level=self.log_level,
                auth=self._auth,
            )
        )

    def password(self, charger_id: str) -> str:
        return self.chargers[charger_id].secret

    def url(self, charger_id: str) -> str:
        return self.ocpp_url + charger_id

    # -- process ------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _preexec(self) -> None:
        raise_nofile_limit()
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})

    def start(self, timeout: float = START_TIMEOUT) -> GatewayProcess:
        """Start the gateway and wait for its ready line. After a previous run the same port is reused, so charge
        points reconnect to the same URL."""
        assert not self.running(), "gateway already running"
        if self.port:
            self.write_config(port=self.port)
        self._asked_to_exit = False
        env = {**os.environ, "PYTHONPATH": str(REPO), **(self._env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=self._preexec,
        )
        ready = threading.Event()
        found: dict[str, str] = {}

        def read_stdout(stream: Any) -> None:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._stdout.append(line)
                m = READY_RE.match(line)
                if m and not ready.is_set():
                    found.update(m.groupdict())
                    ready.set()
            ready.set()  # EOF: the process is gone

        def read_stderr(stream: Any) -> None:
            for raw in stream:
                self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

        self._threads = [
            threading.Thread(target=read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()
        if not ready.wait(timeout) or not found:
            self.kill()
            raise GatewayStartError(
                f"gateway did not print its ready line within {timeout:.0f} s "
                f"(exit code {self.proc.returncode})\n{self.output()}"
            )
        self.ocpp_url = found["url"] if found["url"].endswith("/") else found["url"] + "/"
        self.control_socket = found["control"]
        port_match = re.match(r"wss?://[^/]+:(\d+)/", self.ocpp_url)
        assert port_match, self.ocpp_url
        self.port = int(port_match.group(1))
        return self

    def _reap(self) -> int:
        assert self.proc is not None
        rc = self.proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        return rc

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit within `timeout`. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self._reap()
        self._asked_to_exit = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._stderr.append(f"[gateway_proc] no exit within {timeout} s of SIGTERM: SIGKILL")
            self.proc.kill()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL, as a power cut would (minus the disk cache)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._asked_to_exit = True
            self.proc.kill()
        return self._reap()

    def died_unasked(self) -> bool:
        """True when the process exited without stop()/kill() (a crash)."""
        return self.proc is not None and self.proc.poll() is not None and not self._asked_to_exit

    def output(self) -> str:
        return (
            "--- gateway stdout (tail) ---\n"
            + "\n".join(self._stdout)
            + "\n--- gateway stderr (tail) ---\n"
            + "\n".join(self._stderr)
        )

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- commands -----------------------------------------------------------------------------------------------
    def cmd(self, *args: str, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """`chargegate cmd --config FILE ARGS...` as a separate process."""
        return run_module("gateway.cli", "cmd", "--config", str(self.config_path), *args, timeout=timeout)

    def control(self, request: dict[str, Any], timeout: float = CONTROL_TIMEOUT) -> dict[str, Any]:
        """One JSON-lines request on the control socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.control_socket)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer: dict[str, Any] = json.loads(buf)
        return answer

    # -- data ---------------------------------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "chargegate.db"

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Read the gateway's SQLite store (works while it runs: WAL readers do not block the writer)."""
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
            conn.execute("SELECT 1 FROM sqlite_master").fetchall()
        except sqlite3.OperationalError:
            # a read-only connection cannot recover a WAL left by a killed writer; a normal one can
            conn = sqlite3.connect(self.db_path, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads) from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def running_gateway(workdir: Path, **kwargs: Any) -> Any:
    gw = GatewayProcess(workdir, **kwargs)
    try:
        yield gw.start()
    finally:
        gw.stop()
