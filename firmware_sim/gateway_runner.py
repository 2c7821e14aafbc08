"""Start a chargegate gateway as a separate process (asyncio) and wait for its ready line; used by the demo.

(System tests use hil_tests/gateway_proc.py, the thread-based equivalent; this one lives in the installed package
so `chargegate demo` works outside a source checkout.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from gateway.aio import within

READY_RE = re.compile(r"^chargegate: ready ocpp=(?P<url>ws\S+) control=(?P<control>\S+)\s*$")
# Cold start (imports, migrations) on a loaded 2-core box can take several seconds; only a gateway that never
# becomes ready waits this long.
START_TIMEOUT_S = 30.0
# A graceful stop closes connections and the store; after this it is SIGKILLed (and that counts as an error).
STOP_TIMEOUT_S = 10.0
# Lines of gateway output kept for error reports.
KEEP_LINES = 200

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


class GatewayStartError(RuntimeError):
    pass


class GatewayRunner:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.ocpp_url = ""
        self.control_socket = ""
        self.lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._readers: list[asyncio.Task[None]] = []
        self._log_file: int | None = None
        self._ended_on_purpose: list[asyncio.subprocess.Process] = []  # processes stop()/kill() ended
        # set while a started gateway runs (its ready line seen); cleared by stop/kill
        self.ready = asyncio.Event()

    async def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or, after stop/kill, restart) the gateway and wait for its ready line."""
        assert not self.running(), "the gateway is already running"
        env = dict(os.environ)
        # running from a source checkout: make `gateway` importable in the child like it is here
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)
        self._log_file = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        ready: asyncio.Future[re.Match[str]] = asyncio.get_running_loop().create_future()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(self.proc.stdout, ready)),
            asyncio.create_task(self._pump(self.proc.stderr, None)),
        ]
        try:
            m = await within(asyncio.shield(ready), timeout)
        except (TimeoutError, EOFError):
            await self.kill()
            raise GatewayStartError(
                f"the gateway did not become ready within {timeout:.0f} s (exit code "
                f"{self.proc.returncode}); its output:\n" + "\n".join(self.lines)
            ) from None
        self.ocpp_url = m.group("url") if m.group("url").endswith("/") else m.group("url") + "/"
        self.control_socket = m.group("control")
        self.ready.set()

    async def _pump(self, stream: asyncio.StreamReader, ready: asyncio.Future[re.Match[str]] | None) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                break
            if self._log_file is not None:
                os.write(self._log_file, raw)
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if ready is not None and not ready.done():
                m = READY_RE.match(line)
                if m:
                    ready.set_result(m)
        if ready is not None and not ready.done():
            ready.set_exception(EOFError("gateway output ended"))

    def ended_on_purpose(self, proc: asyncio.subprocess.Process) -> bool:
        return any(p is proc for p in self._ended_on_purpose)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; SIGKILL after `timeout`. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        self._ended_on_purpose.append(self.proc)
        self.ready.clear()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await within(self.proc.wait(), timeout)
            except TimeoutError:
                self.lines.append(f"[demo] no exit within {timeout:.0f} s of SIGTERM: SIGKILL")
                return await self.kill()
        await self._close_readers()
        return self.proc.returncode

    async def kill(self) -> int | None:
        if self.proc is None:
            return None
        self._ended_on_purpose.append(self.proc)
        self.ready.clear()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await self._close_readers()
        return self.proc.returncode

    async def _close_readers(self) -> None:
        if self._readers:
            await asyncio.wait(self._readers, timeout=5)
            for t in self._readers:
                t.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)
            self._readers = []
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None
