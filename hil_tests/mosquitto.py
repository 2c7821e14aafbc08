"""A real mosquitto broker for tests and benchmarks (the implementation lives in firmware_sim/broker.py so the
installed `chargegate demo` can start one too). See firmware_sim.broker for usage."""

from firmware_sim.broker import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Mosquitto,
    TestPki,
    free_port,
    make_test_pki,
    mosquitto_binary,
    password_line,
)

__all__ = [
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "Mosquitto",
    "TestPki",
    "free_port",
    "make_test_pki",
    "mosquitto_binary",
    "password_line",
]
