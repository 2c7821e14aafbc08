"""Card reader: turns what an RFID/NFC reader sees into taps, each one normalized idTag.

Pure code in the CPython/MicroPython common subset (no typing or dataclasses at run time, no f-string `=`).
A backend only says which card UID is in the field right now (`poll_uid()`, raw bytes or None); this module does
the rest:
- debounce: a card resting on the reader is one tap. A new tap needs either a different card or the same card
  absent for `release_ms` over at least two polls (readers miss single reads, so one empty poll is not a removal). The clock is injected
  (milliseconds, monotonic: the HAL's ticks_ms).
- formatting: the UID bytes as an idTag, configurable to match what the eMSP printed on its token list:
  'hex' (uppercase, e.g. 04A2B3C4D5E6F7), 'hex' with `reverse` (byte order reversed, as many Wiegand and
  keyboard-emulating readers report it), 'decimal' (the bytes as one big-endian integer, `reverse` for
  little-endian) - all limited to the 20 characters of an OCPP idTag.

Backends: agent/nfc_reader.py (nfcpy, USB readers, CPython), firmware_sim/sim_reader.py (simulator).
"""

from agent.compat import const

try:
    from typing import Any
except ImportError:  # MicroPython: annotations are never evaluated
    pass

FORMATS = ("hex", "decimal")
# OCPP 1.6 IdToken is CiString20.
MAX_ID_TAG = const(20)
# UIDs are 4, 7 or 10 bytes (ISO 14443-3), 8 for FeliCa IDm / ISO 15693; anything longer is a bad read.
MAX_UID_BYTES = const(10)
# A card must be out of the field this long before it counts as a new tap: longer than a reader's missed reads
# (a poll every ~100-250 ms, an occasional miss), shorter than lifting a card and tapping it again (~1 s).
RELEASE_MS = const(800)
# ... and over at least this many consecutive empty polls (a single lost answer can take longer than RELEASE_MS on
# some readers: nfcpy's sense waits up to 1 s).
RELEASE_POLLS = const(2)
_HEX = "0123456789ABCDEF"


def format_uid(uid: "bytes", fmt: "str" = "hex", reverse: "bool" = False) -> "str":
    """The idTag for a UID. Raises ValueError when the UID is empty or too long, or the result exceeds 20 chars."""
    if fmt not in FORMATS:
        raise ValueError("format must be 'hex' or 'decimal'")
    n = len(uid)
    if n == 0 or n > MAX_UID_BYTES:
        raise ValueError("UID must be 1..10 bytes")
    b = bytes(reversed(bytes(uid))) if reverse else bytes(uid)
    if fmt == "hex":
        out = "".join(_HEX[x >> 4] + _HEX[x & 15] for x in b)
    else:
        value = 0
        for x in b:
            value = (value << 8) | x
        out = str(value)
    if len(out) > MAX_ID_TAG:
        raise ValueError("UID too long for a 20-character idTag in this format")
    return out


class Debouncer:
    """Feed it every poll result (UID bytes or None) with the time; it returns the UID once per tap.

    A card counts as taken off only after `release_polls` consecutive empty polls spanning at least `release_ms`
    since it was last seen: one missed read is not a removal, and neither is a long pause between polls (the
    card may rest there all along)."""

    def __init__(self, release_ms: "int" = RELEASE_MS, release_polls: "int" = RELEASE_POLLS):
        self.release_ms = release_ms
        self.release_polls = release_polls
        self._uid = None  # the card considered resting on the reader
        self._last_seen = 0
        self._empty = 0  # consecutive empty polls since it was last seen

    def observe(self, uid: "Any", now_ms: "int") -> "Any":
        """A new tap's UID, or None (nothing in the field, or the same card still resting)."""
        if uid is None:
            if self._uid is not None:
                self._empty += 1
                if self._empty >= self.release_polls and now_ms - self._last_seen >= self.release_ms:
                    self._uid = None
            return None
        uid = bytes(uid)
        resting = self._uid == uid
        self._uid = uid
        self._last_seen = now_ms
        self._empty = 0
        return None if resting else uid


class CardReader:
    """Base of every reader backend: subclasses implement `poll_uid()`; callers use `read()`.

    `clock_ms` is a function returning monotonic milliseconds. Invalid UIDs (too long for the format) are
    counted in `bad_reads` and never become taps."""

    def __init__(
        self, clock_ms: "Any", fmt: "str" = "hex", reverse: "bool" = False, release_ms: "int" = RELEASE_MS
    ):
        if fmt not in FORMATS:
            raise ValueError("format must be 'hex' or 'decimal'")
        self._clock_ms = clock_ms
        self.fmt = fmt
        self.reverse = reverse
        self._debounce = Debouncer(release_ms)
        self.bad_reads = 0

    def poll_uid(self) -> "Any":
        """The UID (bytes) of the card in the field now, or None. Must not block for long."""
        raise NotImplementedError

    def observe(self, uid: "Any") -> "Any":
        """Run one observation through debounce and formatting: the idTag of a new tap, or None."""
        new = self._debounce.observe(uid, self._clock_ms())
        if new is None:
            return None
        try:
            return format_uid(new, self.fmt, self.reverse)
        except ValueError:
            self.bad_reads += 1
            return None

    def read(self) -> "Any":
        """One tap as an idTag, or None; each tap is returned once (the HAL's read_card())."""
        return self.observe(self.poll_uid())

    def close(self) -> None:
        pass
