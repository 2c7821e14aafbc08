"""The agent's hardware abstraction layer: the only way the core reaches hardware.

A port (CPython simulator, MicroPython device) provides one object with these methods. Everything is synchronous
and non-blocking: the core polls it from `tick()`. Stay inside the CPython/MicroPython common subset: no typing
imports at run time, no dataclasses, no f-string `=` specifiers.

Pilot states follow IEC 61851-1: 'A' no vehicle, 'B' vehicle connected not requesting, 'C' requesting charge,
'D' requesting with ventilation, 'E' no pilot / short, 'F' EVSE fault.
"""


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

    # -- storage: small named blobs that survive a restart ----------------------------------------------------
    def storage_read(self, name: str) -> "bytes | None":
        """bytes, or None when absent."""
        raise NotImplementedError

    def storage_write(self, name: str, data: bytes) -> None:
        """Replace the blob atomically (write temp + rename, or equivalent on flash)."""
        raise NotImplementedError

    def storage_append(self, name: str, data: bytes) -> None:
        """Append `data` to the blob (creating it when absent), for the journals (agent/journal.py).

        Contract: the bytes already in the blob are never changed; once it returns, `data` is as durable as a
        storage_write would be; a power cut during the call may leave any prefix of `data` appended (a torn
        tail, which the journal detects and ignores) but nothing else. It need not be atomic. A port should
        implement it as a real append (open for append, write, close). This default reads the blob and rewrites
        it whole through storage_write: correct, but it costs a full rewrite, so ports written before
        storage_append existed keep working without the flash saving."""
        old = self.storage_read(name)
        self.storage_write(name, (old or b"") + bytes(data))

    # -- system -----------------------------------------------------------------------------------------------
    def reboot(self, hard: bool) -> None:
        """Restart the charger (the port decides what that means; a simulator restarts the core)."""
        raise NotImplementedError
