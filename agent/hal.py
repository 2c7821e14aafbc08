"""The agent's hardware abstraction layer: the only way the core reaches hardware.

A port (CPython simulator, MicroPython device) provides one object with these methods. Everything is synchronous
and non-blocking: the core polls it from `tick()`. Stay inside the CPython/MicroPython common subset: no typing
imports at run time, no dataclasses, no f-string `=` specifiers.

Pilot states follow IEC 61851-1: 'A' no vehicle, 'B' vehicle connected not requesting, 'C' requesting charge,
'D' requesting with ventilation, 'E' no pilot / short, 'F' EVSE fault.
"""

try:
    from typing import Any
except ImportError:
    pass


class Hal:
    """Base class of every port. Subclasses override all methods; the defaults describe the contract."""

    # -- clock ------------------------------------------------------------------------------------------------
    def ticks_ms(self) -> int:
        """Monotonic milliseconds (int). Wraps are not expected within the agent's lifetime on CPython;
        MicroPython ports return time.ticks_ms() extended to a non-wrapping counter."""
        raise NotImplementedError

    def wall_time(self) -> float:
        """Wall-clock UNIX time in seconds (int or float), used for OCPP timestamps only. It need not be right:
        a charger without a battery-backed RTC may start at 0; the core takes the Central System's time from the
        BootNotification/Heartbeat answers and keeps its own offset to this clock."""
        raise NotImplementedError

    def set_wall_time(self, unix: int) -> None:
        """Optional: set the RTC to `unix` seconds (the Central System's time). After it, wall_time() should
        return about `unix`. The default does nothing; the core measures the offset after calling it either way,
        so a port that cannot set its clock simply keeps the default."""
        return None

    # -- per connector (connector ids are 1..n) ---------------------------------------------------------------
    def pilot_state(self, connector_id: int) -> str:
        """'A', 'B', 'C', 'D', 'E' or 'F'."""
        raise NotImplementedError

    def set_relay(self, connector_id: int, closed: bool) -> None:
        """Close (True) or open (False) the contactor feeding the connector."""
        raise NotImplementedError

    def set_current_limit(self, connector_id: int, amps: float) -> None:
        """Offer at most `amps` per phase to the EV (the PWM duty cycle); 0 pauses charging."""
        raise NotImplementedError

    def meter_wh(self, connector_id: int) -> int:
        """Cumulative imported energy register of the connector's meter, Wh (int)."""
        raise NotImplementedError

    def meter_power_w(self, connector_id: int) -> float:
        """Present active power, W (float)."""
        raise NotImplementedError

    def lock_connector(self, connector_id: int, locked: bool) -> bool:
        """Lock/unlock the cable; returns True when the lock reached the asked state."""
        return True

    def fault_code(self, connector_id: int) -> "str | None":
        """None, or an OCPP 1.6 ChargePointErrorCode string such as 'GroundFailure' when the connector is faulted."""
        return None

    # -- card reader ------------------------------------------------------------------------------------------
    def read_card(self) -> "str | None":
        """One tap, already normalized to an idTag string, or None. Each tap is returned once (debounced)."""
        raise NotImplementedError

    # -- storage: named blobs that survive a restart ---------------------------------------------------------
    # `data` handed to storage_write/storage_append is bytes-like (bytes, bytearray or memoryview) and may be a
    # buffer the core reuses: write it (or copy it) before returning.
    def storage_read(self, name: str) -> "bytes | None":
        """bytes, or None when absent. The core reads only small blobs whole (configuration, the stores'
        pointers, charging profiles); everything that grows is read in pieces through storage_read_into."""
        raise NotImplementedError

    def storage_read_into(self, name: str, offset: int, buf: "Any") -> int:
        """Positional read: fill `buf` (a bytearray or memoryview) with the blob's bytes from `offset`; return how
        many were read (fewer than len(buf) at the blob's end, 0 past it or when the blob is absent).

        The journals, the offline queue's messages and the local authorization list are read this way, record by
        record, so the core never holds a whole store in RAM. A port should implement it as open, seek,
        readinto, close. This default reads the blob whole through storage_read and copies the piece: correct,
        but it costs a whole-blob buffer per call, so ports written before storage_read_into existed keep
        working without the RAM saving."""
        data = self.storage_read(name)
        if not data or offset >= len(data):
            return 0
        n = min(len(buf), len(data) - offset)
        buf[0:n] = data[offset : offset + n]
        return n

    def storage_write(self, name: str, data: bytes) -> None:
        """Replace the blob atomically (write temp + rename, or equivalent on flash)."""
        raise NotImplementedError

    def storage_append(self, name: str, data: bytes) -> None:
        """Append `data` to the blob (creating it when absent), for the journals (agent/journal.py).

        Contract: the bytes already in the blob are never changed; once it returns, `data` is as durable as a
        storage_write would be; a power cut during the call may leave any prefix of `data` appended (a torn
        tail, which the journal detects and ignores) but nothing else. It need not be atomic. Compactions also
        write a new file as a storage_write of its first piece followed by appends. A port should
        implement it as a real append (open for append, write, close). This default reads the blob and rewrites
        it whole through storage_write: correct, but it costs a full rewrite, so ports written before
        storage_append existed keep working without the flash saving."""
        old = self.storage_read(name)
        self.storage_write(name, (old or b"") + bytes(data))

    # -- system -----------------------------------------------------------------------------------------------
    def reboot(self, hard: bool) -> None:
        """Restart the charger (the port decides what that means; a simulator restarts the core)."""
        raise NotImplementedError
