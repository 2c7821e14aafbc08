"""The simulator's card reader: the same CardReader interface (debounce, UID formatting) as a real reader, with a
card the scenario places on it and takes off again.

    reader = SimReader(hal.ticks_ms)
    reader.place(bytes.fromhex("04A2B3C4D5E6F7"))   # the driver holds the card on the reader
    reader.read()  -> "04A2B3C4D5E6F7" once, then None while the card rests there
    reader.remove()

`tap(uid)` is a quick swipe (in and out between two polls): the next read() returns it once, and the same card
may tap again right away. A SimHal can answer read_card() with reader.read().
"""

from __future__ import annotations

from collections.abc import Callable

from agent.cardreader import RELEASE_MS, CardReader

# Swipes queued beyond this are dropped (a real reader has no queue at all).
MAX_PENDING_SWIPES = 8


class SimReader(CardReader):
    def __init__(
        self,
        clock_ms: Callable[[], int],
        fmt: str = "hex",
        reverse: bool = False,
        release_ms: int = RELEASE_MS,
    ) -> None:
        super().__init__(clock_ms, fmt, reverse, release_ms)
        self._card: bytes | None = None
        self._swipes: list[bytes] = []

    def place(self, uid: bytes) -> None:
        """A card enters the field and stays there until remove()."""
        self._card = bytes(uid)

    def remove(self) -> None:
        self._card = None

    def tap(self, uid: bytes) -> None:
        """A quick swipe of a card past the reader."""
        if len(self._swipes) < MAX_PENDING_SWIPES:
            self._swipes.append(bytes(uid))

    def poll_uid(self) -> bytes | None:
        return self._card

    def read(self) -> str | None:
        if self._swipes:
            uid = self._swipes.pop(0)
            result = self.observe(uid)
            # the swiped card left the field: a new debouncer state lets the same card count again at once
            self._debounce = type(self._debounce)(self._debounce.release_ms)
            return result  # type: ignore[no-any-return]
        return self.observe(self._card)  # type: ignore[no-any-return]
