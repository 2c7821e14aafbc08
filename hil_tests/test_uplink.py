"""Uplink system tests: a real mosquitto on a free port, the uplink as its own process (gateway.uplink.runner,
SIGKILLed for real), the simulated eMSP (firmware_sim.emsp) as the consumer."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.emsp import SimEmsp
from gateway.uplink.contract import encode_message

try:
    from hil_tests.mosquitto import Mosquitto, make_test_pki, mosquitto_binary
except ImportError:  # run with hil_tests/ as rootdir-relative path
    from mosquitto import Mosquitto, make_test_pki, mosquitto_binary  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
GW = "gw-test"

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="mosquitto not installed (apt-get install mosquitto)"
)


def events_per_session(readings: int) -> int:
    # started + readings + an update every 10 readings + stopped + record (gateway.uplink.runner.emit_session)
    return 1 + readings + readings // 10 + 1 + 1


class Runner:
    """The uplink in its own process."""

    def __init__(
        self, tmp: Path, port: int, *args: str, password: str | None = None, name: str = "gw"
    ) -> None:
        self.data = tmp / name
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if password is not None:
            env["UPLINK_PASSWORD"] = password
        self.stderr_path = tmp / f"{name}-{time.monotonic_ns()}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.uplink.runner", "--data", str(self.data), "--port", str(port),
             "--gateway-id", GW, "--log-level", "INFO", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._stderr,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert "uplink-runner: ready" in line, f"runner not ready: {line!r} {self.stderr()}"

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads((self.data / "uplink-stats.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def check_complete_stream(emsp: SimEmsp, total: int) -> None:
    """Every seq 1..total arrived, first arrivals strictly in order, duplicates identical to the first copy."""
    view = emsp.gateways[GW]
    assert sorted(view.events) == list(range(1, total + 1))
    assert view.order == list(range(1, total + 1))
    assert view.out_of_order == 0
    assert view.duplicate_mismatches == 0
    # per session: started < readings < stopped < record
    by_tx: dict[int, list[str]] = {}
    for seq in view.order:
        e = view.events[seq]
        tx = e["body"].get("transaction_id", e["body"].get("tx"))
        if isinstance(tx, int):
            by_tx.setdefault(tx, []).append(e["kind"])
    for kinds in by_tx.values():
        assert kinds[0] == "session.started" and kinds[-2:] == ["session.stopped", "session.record"], kinds


def unsent_rows(data: Path) -> int:
    with sqlite3.connect(data / "chargegate.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])


def test_broker_down_for_several_sessions_then_up(tmp_path: Path) -> None:
    readings, filled, live = 30, 8, 4
    total = (filled + live) * events_per_session(readings)

    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = SimEmsp("127.0.0.1", broker.port, client_id="emsp-outage")  # persistent session
        emsp.start()
        runner = None
        try:
            await emsp.wait_connected()
            broker.stop()  # the eMSP's session (subscriptions + queue) persists in the broker
            runner = Runner(tmp_path, broker.port, "--fill-sessions", str(filled), "--readings-per-session",
                            str(readings), "--live-sessions", str(live), "--reconnect-max", "1")  # fmt: skip
            runner.wait_ready()
            r = runner
            await until(lambda: r.stats().get("backlog_events") == total, 30, "all sessions recorded offline")
            assert runner.stats()["connected"] is False and runner.stats()["sent_events"] == 0
            broker.start()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= total, 30, "backlog delivered")
            check_complete_stream(emsp, total)
            assert len(emsp.gateway(GW).sessions) == filled + live
            await until(lambda: r.stats().get("backlog_events") == 0, 10, "all marked sent")
        finally:
            if runner is not None:
                runner.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_sigkill_while_draining_loses_nothing(tmp_path: Path) -> None:
    sessions, readings = 120, 100
    total = sessions * events_per_session(readings)

    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = SimEmsp("127.0.0.1", broker.port)
        emsp.start()
        runners: list[Runner] = []
        try:
            await emsp.wait_connected()
            # small batches: draining takes seconds, so the kill lands in the middle of it
            first = Runner(tmp_path, broker.port, "--fill-sessions", str(sessions), "--readings-per-session",
                           str(readings), "--batch-max", "4")  # fmt: skip
            runners.append(first)
            first.wait_ready()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= 1000, 60, "draining under way")
            first.kill()
            at_kill = len(emsp.gateway(GW).events)
            print("killed at", at_kill, "of", total)
            assert at_kill < total, "the drain finished before the kill: the test proves nothing"
            assert unsent_rows(first.data) > 0
            # the broker publishes the last will: the gateway is offline, retained
            await emsp.wait_for(
                lambda: (emsp.gateway(GW).presence or {}).get("online") is False, 10, "last will"
            )
            assert emsp.gateway(GW).presence["reason"] == "connection_lost"  # type: ignore[index]
            second = Runner(tmp_path, broker.port)  # same data dir, no new events
            runners.append(second)
            second.wait_ready()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= total, 60, "rest of the backlog")
            check_complete_stream(emsp, total)
            await until(lambda: second.stats().get("backlog_events") == 0, 10, "all marked sent")
        finally:
            for r in runners:
                r.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_broker_restarted_mid_stream(tmp_path: Path) -> None:
    live, readings = 20, 20
    total = live * events_per_session(readings)

    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = SimEmsp("127.0.0.1", broker.port, client_id="emsp-restart")
        emsp.start()
        runner = None
        try:
            await emsp.wait_connected()
            runner = Runner(tmp_path, broker.port, "--live-sessions", str(live), "--readings-per-session",
                            str(readings), "--live-interval", "0.1", "--reconnect-max", "1")  # fmt: skip
            runner.wait_ready()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= 50, 30, "stream started")
            broker.restart()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= total, 30, "stream complete")
            check_complete_stream(emsp, total)
            assert emsp.connects >= 2 and runner.stats()["connects"] >= 2
            assert emsp.gateway(GW).presence is not None and emsp.gateway(GW).presence["online"] is True
        finally:
            if runner is not None:
                runner.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_wrong_credentials_reported_and_not_retried_hot(tmp_path: Path) -> None:
    wrong, right = "wrong-password-0001", "right-password-0001"

    async def main() -> None:
        broker = Mosquitto(tmp_path, users={"gw": right, "emsp": "emsp-password-0001"}).start()
        emsp = SimEmsp("127.0.0.1", broker.port, username="emsp", password="emsp-password-0001")
        emsp.start()
        runners: list[Runner] = []
        try:
            await emsp.wait_connected()
            bad = Runner(
                tmp_path, broker.port, "--username", "gw", "--fill-sessions", "1", password=wrong, name="bad"
            )
            runners.append(bad)
            bad.wait_ready()
            await until(lambda: bad.stats().get("state") == "refused", 20, "refused state")
            stats = bad.stats()
            # straight to the 60 s cap (equal jitter: 30..60 s), not a hot loop
            assert stats["next_retry_in_s"] >= 25 and stats["connects"] == 0
            assert "refused" in bad.stderr() and "username/password" in bad.stderr()
            assert wrong not in bad.stderr() and wrong not in json.dumps(stats)
            bad.terminate()
            good = Runner(tmp_path, broker.port, "--username", "gw", "--fill-sessions", "1", password=right,
                          name="good")  # fmt: skip
            runners.append(good)
            good.wait_ready()
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= events_per_session(20), 20, "events")
        finally:
            for r in runners:
                r.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_tls_with_test_ca_and_client_certificate(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "good")
    other = make_test_pki(tmp_path / "other")

    async def main() -> None:
        broker = Mosquitto(tmp_path, tls=pki, require_client_cert=True).start()
        emsp = SimEmsp("localhost", broker.port, tls_ca=str(pki.ca_cert), tls_cert=str(pki.client_cert),
                       tls_key=str(pki.client_key))  # fmt: skip
        emsp.start()
        runners: list[Runner] = []
        try:
            await emsp.wait_connected()
            ok = Runner(tmp_path, broker.port, "--tls-ca", str(pki.ca_cert), "--tls-cert", str(pki.client_cert),
                        "--tls-key", str(pki.client_key), "--fill-sessions", "2", name="tls-ok")  # fmt: skip
            runners.append(ok)
            ok.wait_ready()
            await emsp.wait_for(
                lambda: len(emsp.gateway(GW).events) >= 2 * events_per_session(20), 20, "events"
            )
            check_complete_stream(emsp, 2 * events_per_session(20))
            # a broker certificate from another CA: refused, reported, not retried hot
            bad = Runner(tmp_path, broker.port, "--tls-ca", str(other.ca_cert), "--tls-cert", str(pki.client_cert),
                         "--tls-key", str(pki.client_key), name="tls-bad")  # fmt: skip
            runners.append(bad)
            bad.wait_ready()
            await until(lambda: bad.stats().get("state") == "refused", 20, "TLS refusal")
            assert "CERTIFICATE_VERIFY_FAILED" in bad.stats()["last_error"]
        finally:
            for r in runners:
                r.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_bad_downlink_messages_get_results_and_gateway_keeps_running(tmp_path: Path) -> None:
    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        emsp = SimEmsp("127.0.0.1", broker.port)
        emsp.start()
        runner = None
        try:
            await emsp.wait_connected()
            # a command retained on the broker (an eMSP bug) must not run at every reconnect
            retained = {"id": "retained-1", "op": "set_site_limit", "args": {"amps": 1}}
            await emsp.send_raw(GW, encode_message(retained, "cbor"), retain=True)
            runner = Runner(tmp_path, broker.port, "--fill-sessions", "1")
            runner.wait_ready()
            await emsp.wait_for(lambda: (emsp.gateway(GW).presence or {}).get("online") is True, 20, "online")
            await emsp.wait_for(
                lambda: any(
                    r["error"]["code"] == "retained" and r.get("id") == "retained-1"
                    for r in emsp.results.values()
                    if not r.get("ok")
                ),
                10,
                "retained command refused, with its id",
            )
            emsp.results.clear()
            await emsp.send_raw(GW, b"\xbf\x61a\xff\xff\x00 not cbor")
            await emsp.wait_for(
                lambda: any(r.get("id") is None for r in emsp.results.values()), 10, "malformed"
            )
            (malformed,) = [r for r in emsp.results.values() if r.get("id") is None]
            assert malformed["ok"] is False and malformed["error"]["code"] == "malformed"
            unknown = await emsp.command(GW, "self_destruct", {"charger": "CP1"})
            assert unknown["ok"] is False and unknown["error"]["code"] == "unknown_op"
            nocharger = await emsp.command(
                GW, "remote_start", {"charger": "CP404", "id_tag": "04A2B3C4D5E6F7"}
            )
            assert nocharger["ok"] is False and nocharger["error"]["code"] == "charger_not_connected"
            badargs = await emsp.command(GW, "reset", {"charger": "CP1", "type": "Explosive"})
            assert badargs["error"]["code"] == "invalid_args"
            tokens = await emsp.send_token_list(GW, "full", 1, [{"uid": "04A2B3C4D5E6F7"}])
            assert tokens["error"]["code"] == "not_supported"
            # still alive, connected and draining
            assert runner.proc.poll() is None
            await until(lambda: runner.stats().get("commands_rejected") == 5, 5, "stats")
            assert runner.stats()["connected"] is True
            await emsp.wait_for(lambda: len(emsp.gateway(GW).events) >= events_per_session(20), 10, "events")
        finally:
            if runner is not None:
                runner.terminate()
            await emsp.stop()
            broker.stop()

    asyncio.run(main())


def test_shared_subscription_consumers_split_the_stream(tmp_path: Path) -> None:
    total = 6 * events_per_session(20)

    async def main() -> None:
        broker = Mosquitto(tmp_path).start()
        consumers = [
            SimEmsp("127.0.0.1", broker.port, share_group="billing", persistent=False) for _ in range(2)
        ]
        for c in consumers:
            c.start()
        runner = None
        try:
            for c in consumers:
                await c.wait_connected()
            # small batches so that there are enough publishes to spread
            runner = Runner(tmp_path, broker.port, "--fill-sessions", "6", "--batch-max", "10")
            runner.wait_ready()

            def union() -> set[int]:
                return set().union(*(set(c.gateway(GW).events) for c in consumers))

            await until(lambda: len(union()) >= total, 20, "all events across the group")
            assert union() == set(range(1, total + 1))
            counts = [len(c.gateway(GW).events) for c in consumers]
            assert all(n > 0 for n in counts) and sum(counts) >= total, counts  # each got a share
            for c in consumers:  # each consumer's share arrives in seq order
                assert c.gateway(GW).out_of_order == 0
        finally:
            if runner is not None:
                runner.terminate()
            for c in consumers:
                await c.stop()
            broker.stop()

    asyncio.run(main())
