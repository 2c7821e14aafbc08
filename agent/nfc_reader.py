"""USB NFC readers (ACR122U, PN533 / PN531 / RC-S380 class) through nfcpy, for the CPython agent port.

CPython only; install the optional extra: `pip install chargegate[nfc]` (nfcpy==1.0.4). nfcpy's calls block
(each `sense` waits for the card's answer), so a daemon thread polls the reader and queues taps; `read()` never
blocks and can be called from the agent's tick or an asyncio loop. Debounce and UID formatting are CardReader's
(agent/cardreader.py), fed from the polling thread with the injected millisecond clock.

Device paths are nfcpy's: 'usb' (first USB reader), 'usb:072f:2200' (ACR122U by vendor:product), 'tty:USB0:pn532',
or 'udp:HOST:PORT' (nfcpy's simulated reader over UDP, used by the tests).

Note for ACR122U: Linux loads the pn533_usb kernel module for it, which nfcpy cannot share; blacklist
pn533_usb / pn533 / nfc (see nfcpy's documentation) or use the reader through pcscd-free access.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import nfc  # type: ignore[import-untyped,unused-ignore]
import nfc.clf  # type: ignore[import-untyped,unused-ignore]

from agent.cardreader import RELEASE_MS, CardReader

log = logging.getLogger("chargegate.agent.nfc")

# Pause between polls while a card rests on the reader (a present card answers in a few ms; without a pause the
# thread would spin). With no card, nfcpy's sense itself waits for the (absent) answer.
POLL_INTERVAL_S = 0.1
# Taps waiting for read(); beyond this the oldest are dropped (nobody is reading).
MAX_QUEUED_TAPS = 8
# After a reader error (unplugged, USB hiccup), wait this long before reopening it.
REOPEN_DELAY_S = 2.0
# Technologies polled: ISO 14443-A (MIFARE, NTAG, DESFire...), ISO 14443-B, FeliCa.
TARGETS = ("106A", "106B", "212F")


def target_uid(target: Any) -> bytes | None:
    """The UID of a sensed target: NFCID1 (type A), PUPI (type B) or IDm (FeliCa)."""
    sdd = getattr(target, "sdd_res", None)
    if sdd:
        return bytes(sdd)
    sensb = getattr(target, "sensb_res", None)
    if sensb and len(sensb) >= 5:
        return bytes(sensb[1:5])
    sensf = getattr(target, "sensf_res", None)
    if sensf and len(sensf) >= 9:
        return bytes(sensf[1:9])
    return None


class NfcReader(CardReader):
    """A USB reader polled by a background thread. Start with `start()`, stop with `close()`."""

    def __init__(
        self,
        path: str = "usb",
        clock_ms: Callable[[], int] | None = None,
        fmt: str = "hex",
        reverse: bool = False,
        release_ms: int = RELEASE_MS,
        on_tap: Callable[[str], None] | None = None,
        targets: tuple[str, ...] = TARGETS,
    ) -> None:
        super().__init__(clock_ms or (lambda: int(time.monotonic() * 1000)), fmt, reverse, release_ms)
        self.path = path
        self.targets = targets
        self._on_tap = on_tap
        self._taps: queue.Queue[str] = queue.Queue(MAX_QUEUED_TAPS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._clf: Any = None
        self.errors = 0

    def start(self) -> None:
        """Open the reader (raises OSError when it cannot be opened) and start polling."""
        self._clf = self._open()
        self._thread = threading.Thread(target=self._poll_loop, name="nfc-reader", daemon=True)
        self._thread.start()

    def _open(self) -> Any:
        clf = nfc.ContactlessFrontend()
        if not clf.open(self.path):
            raise OSError(f"no NFC reader found at {self.path!r}")
        return clf

    def poll_uid(self) -> bytes | None:
        """One sense round on the polling thread (blocks up to nfcpy's sense timeout)."""
        clf = self._clf
        if clf is None:
            return None
        target = clf.sense(*[nfc.clf.RemoteTarget(t) for t in self.targets], iterations=1, interval=0.05)
        return None if target is None else target_uid(target)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                uid = self.poll_uid()
            except (OSError, nfc.clf.Error) as e:
                self.errors += 1
                log.warning("NFC reader %s: %s; reopening", self.path, e)
                self._reopen()
                continue
            tag = self.observe(uid)
            if tag is not None:
                self._deliver(tag)
            if uid is not None:
                self._stop.wait(POLL_INTERVAL_S)

    def _reopen(self) -> None:
        try:
            if self._clf is not None:
                self._clf.close()
        except (OSError, nfc.clf.Error):
            pass
        self._clf = None
        while not self._stop.wait(REOPEN_DELAY_S):
            try:
                self._clf = self._open()
                return
            except OSError as e:
                log.debug("NFC reader %s still unavailable: %s", self.path, e)

    def _deliver(self, tag: str) -> None:
        if self._on_tap is not None:
            self._on_tap(tag)
        try:
            self._taps.put_nowait(tag)
        except queue.Full:
            try:
                self._taps.get_nowait()
            except queue.Empty:
                pass
            self._taps.put_nowait(tag)

    def read(self) -> str | None:
        """The next tap, or None; never blocks (the polling thread fills the queue)."""
        try:
            return self._taps.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._clf is not None:
            try:
                self._clf.close()
            except (OSError, nfc.clf.Error):
                pass
            self._clf = None
