"""The [uplink] config section (registered with gateway.config at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config import register_section


@dataclass(frozen=True)
class UplinkSection:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 1883
    # MQTT protocol version: 5 (default) or "3.1.1"
    protocol: Literal[5, "3.1.1"] = 5
    # Gateway id in the topics (chargegate/v1/<gateway_id>/...); empty = [site].id
    gateway_id: str = ""
    # MQTT client id; empty = "chargegate-<gateway_id>"
    client_id: str = ""
    username: str = ""
    password: str = ""  # never logged
    # TLS: tls = true uses the system CAs unless tls_ca is set; tls_cert + tls_key present a client certificate.
    # Relative paths are relative to the config file.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Payload encoding: cbor (the contract's compact form) or json (debugging)
    encoding: Literal["cbor", "json"] = "cbor"
    # Disk budget of the unsent outbox; above it periodic meter readings are thinned (never session records).
    outbox_budget_mb: float = 256.0
    # Most events per published batch, and a byte target per batch payload.
    batch_max: int = 500
    batch_max_bytes: int = 65536
    # Upper bound on waiting for an eMSP authorization answer (the caller's timeout is capped by it).
    auth_timeout: float = 5.0
    # Timeout of a downlink command sent to a charger.
    command_timeout: float = 30.0
    keepalive: int = 30
    # How long the broker keeps this gateway's MQTT session while it is offline, so QoS 1 commands the eMSP sends
    # during a backhaul outage are delivered when it reconnects (MQTT 5 Session Expiry Interval; with 3.1.1 any
    # value > 0 means a persistent session whose lifetime the broker decides). 0 = clean session: commands sent
    # while the gateway is offline are lost and the eMSP must retry them.
    command_session_s: int = 3600
    # Reconnect backoff cap (seconds); the contract value is 60.
    reconnect_max: float = 60.0
    # Largest downlink message accepted (MQTT 5 Maximum Packet Size; token lists are the large ones).
    max_downlink_bytes: int = 4 * 1024 * 1024
    # session.update (compact progress of a running session, never dropped): at most one per transaction per this
    # many seconds of charger time, from the MeterValues that carry the energy register; 0 = no session.update.
    session_update_interval_s: float = 60.0

    def validate(self) -> str | None:
        if not 1 <= self.port <= 65535:
            return "port: expected 1..65535"
        if bool(self.tls_cert) != bool(self.tls_key):
            return "tls_cert and tls_key must be set together"
        if (self.tls_ca or self.tls_cert) and not self.tls:
            return "tls_ca/tls_cert are set but tls = false"
        if self.password and not self.username:
            return "password is set without a username"
        if not 1 <= self.batch_max <= 10_000:
            return "batch_max: expected 1..10000"
        if not 1024 <= self.batch_max_bytes <= 16 * 1024 * 1024:
            return "batch_max_bytes: expected 1024..16777216"
        if self.outbox_budget_mb <= 0:
            return "outbox_budget_mb: expected a positive number"
        if not 0 < self.auth_timeout <= 60:
            return "auth_timeout: expected 0..60 seconds"
        if not 1 <= self.reconnect_max <= 3600:
            return "reconnect_max: expected 1..3600 seconds"
        if not 5 <= self.keepalive <= 3600:
            return "keepalive: expected 5..3600 seconds"
        if not 0 <= self.command_session_s <= 7 * 86400:
            return "command_session_s: expected 0..604800 seconds (0 = clean session)"
        if not 1024 <= self.max_downlink_bytes <= 256 * 1024 * 1024:
            return "max_downlink_bytes: expected 1024..268435456"
        if not 0 <= self.session_update_interval_s <= 86400:
            return "session_update_interval_s: expected 0 (off) or up to 86400 seconds"
        if "/" in self.gateway_id or "+" in self.gateway_id or "#" in self.gateway_id:
            return "gateway_id: must not contain '/', '+' or '#'"
        return None

    def resolve(self, base_dir: Path) -> UplinkSection:
        """A copy with TLS file paths made absolute against the config file's directory."""

        def p(v: str) -> str:
            return v if not v or Path(v).is_absolute() else str((base_dir / v).resolve())

        from dataclasses import replace

        return replace(self, tls_ca=p(self.tls_ca), tls_cert=p(self.tls_cert), tls_key=p(self.tls_key))

    def __repr__(self) -> str:  # the password never reaches a log line through repr()
        return (
            f"UplinkSection(host={self.host!r}, port={self.port}, username={self.username!r}, password=***)"
        )


register_section("uplink", UplinkSection)
