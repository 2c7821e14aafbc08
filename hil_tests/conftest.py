"""Shared fixtures for the system tests: real gateway processes on free loopback ports.

`gateway_factory(chargers=..., ocpp=..., allow=..., extra_toml=...)` returns a started GatewayProcess in its own
temporary directory; every gateway it started is stopped at teardown (SIGKILL as a last resort), and a gateway that
had already died is reported with its stderr. `gateway` is one started gateway with chargers CP1 and CP2.

At the end of the session every child process the test run started and left running is killed and reported (a
test that leaks a gateway, broker or simulator fails the run instead of leaving it behind).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil_tests.gateway_proc import ChargerSpec, GatewayFactory, GatewayProcess


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    started: list[GatewayProcess] = []
    counter = itertools.count(1)

    def make(start: bool = True, **kwargs: Any) -> GatewayProcess:
        kwargs.setdefault("chargers", [ChargerSpec("CP1"), ChargerSpec("CP2")])
        gw = GatewayProcess(tmp_path / f"gw{next(counter)}", **kwargs)
        started.append(gw)
        return gw.start() if start else gw

    yield make
    crashed = [gw for gw in started if gw.died_unasked()]
    for gw in started:
        gw.stop()
    if crashed:
        pytest.fail("gateway exited on its own during the test:\n" + "\n".join(gw.output() for gw in crashed))


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    return gateway_factory()


def _child_processes() -> list[tuple[int, str]]:
    """Live (non-zombie) direct children of this pytest process: (pid, command line)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            if int(ppid) != me or state == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        found.append((int(entry), cmd))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    before = {pid for pid, _ in _child_processes()}
    yield
    leaked = [(pid, cmd) for pid, cmd in _child_processes() if pid not in before]
    for pid, _ in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leaked:
        pytest.fail(
            "processes left running by the tests (now killed): "
            + "; ".join(f"{p} {c[:200]}" for p, c in leaked)
        )
