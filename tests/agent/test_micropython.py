"""Runs the agent core's shared test cases under real MicroPython (WebAssembly port under Node).

Needs `node` and `npm ci` at the repository root (installs @micropython/micropython-webassembly-pyscript,
pinned in package.json). A missing install is a FAILURE, not a skip: CI must run these.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "tests" / "mpy" / "run.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
CASE_MODULES = (
    "cases_core",
    "cases_phase2",
    "cases_journal",
    "cases_clock_reset",
    "cases_txjournal",
    "cases_reservation",
)
# The whole MicroPython run takes a few seconds; 120 s means something hangs.
RUN_TIMEOUT_S = 120


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js >= 18, then run `npm ci` at the repository root")
    if not PACKAGE.exists():
        pytest.fail(f"{PACKAGE.relative_to(ROOT)} is missing: run `npm ci` at the repository root")
    return node


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    node = _require_node()
    return subprocess.run(
        [node, str(RUNNER), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _expected_count() -> int:
    import importlib

    n = 0
    for name in CASE_MODULES:
        if (ROOT / "tests" / "agent" / (name + ".py")).exists():
            mod = importlib.import_module(name)
            n += len([k for k in dir(mod) if k.startswith("test_") and callable(getattr(mod, k))])
    return n


def test_core_cases_pass_under_micropython() -> None:
    proc = _run()
    output = proc.stdout + proc.stderr
    failures = [line for line in output.splitlines() if line.startswith("FAIL ")]
    assert proc.returncode == 0, (
        f"MicroPython run failed (rc={proc.returncode}): {failures}\n{output[-4000:]}"
    )
    m = re.search(r"^MPY-TESTS-OK (\d+)$", proc.stdout, re.MULTILINE)
    assert m is not None, output[-4000:]
    # every case CPython sees also ran under MicroPython
    assert int(m.group(1)) == _expected_count()


def test_harness_fails_when_nothing_passes() -> None:
    proc = _run("test_no_such_case")
    assert proc.returncode != 0
    assert "MPY-TESTS-OK" not in proc.stdout
