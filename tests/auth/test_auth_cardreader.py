"""Card readers: the pure reader core (CPython and real MicroPython), the simulator's reader, and the nfcpy
backend driven through nfcpy's real code path with its UDP-simulated reader and an emulated card on the other
side (a second ContactlessFrontend('udp:...') listening as an ISO 14443-A target)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cases_cardreader
import pytest

from firmware_sim.sim_reader import SimReader

ROOT = Path(__file__).resolve().parents[2]
# Generous bound for a wait that normally takes milliseconds; only reached when something is broken.
WAIT_S = 20.0


@pytest.mark.parametrize("name", sorted(n for n in dir(cases_cardreader) if n.startswith("test_")))
def test_cardreader_case(name: str) -> None:
    getattr(cases_cardreader, name)()


def test_cardreader_cases_under_micropython() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: install Node.js >= 18, then `npm ci` at the repository root")
    proc = subprocess.run(
        [node, str(ROOT / "tests" / "mpy" / "run.mjs"), "--case", "tests/auth/cases_cardreader.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"^MPY-TESTS-OK (\d+)$", proc.stdout, re.MULTILINE)
    assert m is not None
    assert int(m.group(1)) == len([n for n in dir(cases_cardreader) if n.startswith("test_")])


def test_sim_reader_place_remove_and_swipe() -> None:
    t = [0]
    r = SimReader(lambda: t[0])
    r.place(bytes.fromhex("04A2B3C4D5E6F7"))
    assert r.read() == "04A2B3C4D5E6F7"
    t[0] += 2000
    assert r.read() is None  # still resting
    r.remove()
    t[0] += 100
    assert r.read() is None
    t[0] += 1000
    assert r.read() is None
    r.place(bytes.fromhex("04A2B3C4D5E6F7"))
    assert r.read() == "04A2B3C4D5E6F7"  # taken off and put back
    r.remove()
    r.tap(b"\x01\x02\x03\x04")
    r.tap(b"\x01\x02\x03\x04")
    assert [r.read(), r.read(), r.read()] == ["01020304", "01020304", None]


# -- nfcpy over its UDP-simulated reader ----------------------------------------------------------------------------
# nfcpy (the optional extra 'nfc') is part of the dev setup: a missing install fails here, it is not skipped.
import nfc  # noqa: E402
import nfc.clf  # noqa: E402

from agent.nfc_reader import NfcReader  # noqa: E402


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class EmulatedCard:
    """An ISO 14443-A card in the field of the UDP reader while `present`: nfcpy's own listen_tta answers the
    reader's SENS_REQ / SDD_REQ / SEL_REQ with this UID."""

    def __init__(self, port: int, uid: bytes) -> None:
        self.port = port
        self.uid = uid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clf = nfc.ContactlessFrontend(f"udp:127.0.0.1:{self.port}")
        try:
            target = nfc.clf.LocalTarget("106A")
            target.sens_res = bytearray.fromhex("4400")
            target.sdd_res = bytearray(self.uid)
            target.sel_res = bytearray.fromhex("00")
            while not self._stop.is_set():
                clf.listen(target, 1.0)
        finally:
            clf.close()

    def __enter__(self) -> EmulatedCard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)


class CountingReader(NfcReader):
    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: list[bytes | None] = []

    def poll_uid(self) -> bytes | None:
        uid = super().poll_uid()
        self.seen.append(uid)
        return uid


def wait_until(cond: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def reader_port() -> Iterator[int]:
    yield free_udp_port()


def test_nfcpy_reader_one_tap_per_resting_card(reader_port: int) -> None:
    taps: list[str] = []
    reader = CountingReader(f"udp:127.0.0.1:{reader_port}", targets=("106A",), on_tap=taps.append)
    reader.start()
    try:
        with EmulatedCard(reader_port, bytes.fromhex("04A2B3C4D5E6F7")):
            wait_until(lambda: len(taps) == 1, "the first tap")
            # the card rests while the reader keeps seeing it
            wait_until(
                lambda: reader.seen.count(bytes.fromhex("04A2B3C4D5E6F7")) >= 10, "ten reads of the card"
            )
            assert taps == ["04A2B3C4D5E6F7"]
            assert reader.read() == "04A2B3C4D5E6F7"
            assert reader.read() is None
        # taken off: the reader stops seeing it, then a (different) card comes
        n = len(reader.seen)
        wait_until(lambda: None in reader.seen[n:], "the reader to see an empty field")
        with EmulatedCard(reader_port, bytes.fromhex("08112233")):
            wait_until(lambda: len(taps) == 2, "the second tap")
        assert taps == ["04A2B3C4D5E6F7", "08112233"]
        assert reader.errors == 0
    finally:
        reader.close()


def test_nfcpy_reader_decimal_reversed_format(reader_port: int) -> None:
    reader = NfcReader(f"udp:127.0.0.1:{reader_port}", targets=("106A",), fmt="decimal", reverse=True)
    reader.start()
    try:
        with EmulatedCard(reader_port, bytes.fromhex("01020304")):
            wait_until(lambda: reader._taps.qsize() == 1, "the tap")
        assert reader.read() == str(0x04030201)
    finally:
        reader.close()
