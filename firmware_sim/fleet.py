"""Fleet runner: N simulated chargers, each the real agent core over a real websocket, driven by scenarios.

Every charger is `agent.core.ChargePointCore` on a `SimHal`, connected by `agent.port_cpython.run_charge_point`:
the same agent code a device runs. All chargers live in one process as asyncio tasks. A reboot (the agent asked
for one after Reset, or a scenario cut the power) ends that charger's connection; the runner then powers the
simulated hardware back on and builds a new core on the same HAL, so only what the agent persisted survives.

    python -m firmware_sim.fleet --config site.toml --speed 60 --duration 120
    python -m firmware_sim.fleet --url ws://127.0.0.1:9000/ocpp/ --password-file pw.txt --chargers 5
    python -m firmware_sim.fleet --config site.toml --ca certs/ca.pem --cert-dir certs/chargers   # wss://, profile 3
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import random
import ssl
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent.core import AgentConfig, ChargePointCore
from agent.port_cpython import client_tls_context, run_charge_point
from firmware_sim.clock import SimClock
from firmware_sim.hal import SimHal
from firmware_sim.netcut import NetLink
from firmware_sim.ocpp_check import FrameChecker
from gateway.aio import within

log = logging.getLogger("chargegate.sim")

# A charger whose agent raised an exception restarts after this pause (a watchdog reset), so a crash loop
# cannot spin the CPU.
CRASH_RESTART_S = 1.0
# How long `Fleet.drain()` waits for every agent to deliver its queued transaction messages at the end.
DRAIN_TIMEOUT_S = 30.0
# Control-socket request timeout: the gateway waits up to its call_timeout (30 s) for the charger.
CONTROL_TIMEOUT_S = 40.0
# Problems kept per list; a broken agent must not fill the memory with the same complaint.
MAX_PROBLEMS = 200

FrameHook = Callable[[str, str], None]


@dataclass(frozen=True)
class ChargerCreds:
    id: str
    password: str
    connectors: int = 1
    url: str | None = (
        None  # this charger's OCPP URL when it differs from base URL + id (e.g. through a NetLink)
    )
    tls: ssl.SSLContext | None = None  # wss:// settings (CA, client certificate for security profile 3)


@dataclass
class Visit:
    """One EV's stay at one connector, as the simulator saw it (the ground truth the gateway's DB is held to)."""

    charger_id: str
    connector_id: int
    scenario: str
    id_tag: str
    ev_model: str
    soc_start: float
    plugged_at: float  # real monotonic seconds
    register_start: int
    left_at: float | None = None
    register_end: int | None = None
    soc_end: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def energy_wh(self) -> int:
        return (
            self.register_end if self.register_end is not None else self.register_start
        ) - self.register_start

    def as_dict(self) -> dict[str, Any]:
        return {
            "charger": self.charger_id,
            "connector": self.connector_id,
            "scenario": self.scenario,
            "id_tag": mask_token(self.id_tag),
            "ev": self.ev_model,
            "soc_start": round(self.soc_start, 3),
            "soc_end": None if self.soc_end is None else round(self.soc_end, 3),
            "energy_wh": self.energy_wh,
            "duration_s": None if self.left_at is None else round(self.left_at - self.plugged_at, 2),
            "notes": self.notes,
        }


def mask_token(token: str | None) -> str:
    """`04A2B3C4D5E6F7` -> `04A2****F7`: enough to tell cards apart on a screen, not enough to clone one."""
    if not token:
        return "-"
    if len(token) <= 6:
        return token[:1] + "*" * (len(token) - 1)
    return token[:4] + "****" + token[-2:]


class Problems:
    """A bounded list of error messages shared by the fleet's parts."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, msg: str) -> None:
        log.error("%s", msg)
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(msg)
        else:
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.items) + self.dropped


class SimCharger:
    """One simulated charger: its hardware (kept across reboots) and the agent core of its current life."""

    def __init__(
        self,
        creds: ChargerCreds,
        base_url: str,
        clock: SimClock,
        state_dir: Path,
        problems: Problems,
        *,
        tick_interval: float = 0.1,
        check_frames: bool = True,
        extra_frame_hook: FrameHook | None = None,
    ) -> None:
        self.creds = creds
        self.id = creds.id
        self.url = creds.url or base_url.rstrip("/") + "/" + creds.id
        self.clock = clock
        self.problems = problems
        self.tick_interval = tick_interval
        self.check_frames = check_frames
        self.extra_frame_hook = extra_frame_hook
        self.hal = SimHal(creds.id, creds.connectors, state_dir / creds.id, clock)
        self.core: ChargePointCore | None = None
        self.lives = 0  # cores built so far; > 1 means the charger rebooted
        self.crashes = 0
        self.frames = 0
        self.schema_problems = 0
        self.visits: dict[int, Visit | None] = {c: None for c in range(1, creds.connectors + 1)}
        self.link: NetLink | None = None  # this charger's network, when the fleet runs with links
        self._life_stop: asyncio.Event | None = None
        self._checker: FrameChecker | None = None

    # -- reboot plumbing ------------------------------------------------------------------------------------
    # Two ways a charger restarts. The agent asks (Reset): the core sets `reboot_requested` and calls
    # hal.reboot(); the port closes the connection, builds a new core on the same HAL and calls `_on_port_reboot`.
    # The scenario cuts the power: `power_cut()` drops the contactors at once and ends this life's
    # run_charge_point; `run()` then powers the hardware on and starts a new life.
    def _on_port_reboot(self, core: ChargePointCore) -> None:
        self.hal.power_on()
        self.core = core
        self.lives += 1

    def power_cut(self) -> None:
        """Scenario: the charger loses power now. With a NetLink its TCP connection dies without a goodbye
        (reset), as it would; without one the port closes the websocket normally."""
        self.hal.power_cut()
        if self.link is not None:
            self.link.cut()
        if self._life_stop is not None:
            self._life_stop.set()

    def _on_frame(self, direction: str, text: str) -> None:
        self.frames += 1
        checker = self._checker
        if checker is not None:
            for p in checker.check(direction, text):
                self.schema_problems += 1
                self.problems.add(f"{self.id}: OCPP schema: {direction}: {p}: {text[:300]}")
        if self.extra_frame_hook is not None:
            self.extra_frame_hook(direction, text)

    # -- state for scenarios and displays ---------------------------------------------------------------------
    def status(self, connector_id: int) -> str:
        core = self.core
        if core is None or self.hal.reboot_pending is not None:
            return "Rebooting"
        return str(core.status(connector_id))

    def transaction_id(self, connector_id: int) -> int | None:
        core = self.core
        if core is None or self.hal.reboot_pending is not None:
            return None
        tx = core.transaction_id(connector_id)
        return None if tx is None else int(tx)

    def registered(self) -> bool:
        core = self.core
        return core is not None and self.hal.reboot_pending is None and core.registration_status == "Accepted"

    def queue_length(self) -> int | None:
        """Transaction messages the agent still has to deliver, if the core exposes it."""
        core = self.core
        q = getattr(core, "txqueue", None) or getattr(core, "queue", None)
        entries = getattr(q, "entries", None)
        return len(entries) if isinstance(entries, list) else None

    # -- the charger's life cycle -----------------------------------------------------------------------------
    def _new_core(self) -> ChargePointCore:
        cfg = AgentConfig(
            self.id,
            connectors=self.creds.connectors,
            model="agent-sim",
            serial=f"SIM-{self.id}",
        )
        return ChargePointCore(cfg, self.hal)

    async def run(self, stop: asyncio.Event) -> None:
        """Run lives until `stop`; every life is one core on the same hardware."""
        while not stop.is_set():
            life = asyncio.Event()
            self._life_stop = life
            self._checker = FrameChecker(f"{self.id}#{self.lives + 1}") if self.check_frames else None
            try:
                self.core = self._new_core()
                self.lives += 1
                relay = asyncio.create_task(_relay_event(stop, life))
                try:
                    await run_charge_point(
                        self.core,
                        self.url,
                        self.creds.password or None,
                        stop=life,
                        on_frame=self._on_frame,
                        tick_interval=self.tick_interval,
                        on_reboot=self._on_port_reboot,
                        tls=self.creds.tls,
                    )
                finally:
                    relay.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # an agent bug: report it, then restart the charger like a watchdog would
                self.crashes += 1
                self.problems.add(
                    f"{self.id}: agent raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
                )
                self.core = None
                await _sleep_or(stop, CRASH_RESTART_S)
            self._life_stop = None
            if stop.is_set():
                break
            if self.hal.reboot_pending is None and self.core is not None:
                # run_charge_point returned without a reboot or a stop: that is a port bug, not a charger event
                self.problems.add(f"{self.id}: run_charge_point returned on its own")
                await _sleep_or(stop, CRASH_RESTART_S)
            self.core = None
            self.hal.power_on()
            if self.link is not None:
                self.link.restore()


async def _relay_event(src: asyncio.Event, dst: asyncio.Event) -> None:
    await src.wait()
    dst.set()


async def _sleep_or(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` is set first; True when it slept the whole time."""
    try:
        await within(stop.wait(), seconds)
        return False
    except TimeoutError:
        return True


@dataclass
class FleetReport:
    visits: list[Visit]
    errors: list[str]
    chargers: dict[str, dict[str, Any]]
    frames: int
    schema_problems: int

    @property
    def energy_wh(self) -> int:
        return sum(v.energy_wh for v in self.visits)

    def as_dict(self) -> dict[str, Any]:
        return {
            "visits": len(self.visits),
            "visits_completed": sum(1 for v in self.visits if v.left_at is not None),
            "sim_energy_kwh": round(self.energy_wh / 1000.0, 3),
            "frames": self.frames,
            "schema_problems": self.schema_problems,
            "errors": len(self.errors),
            "error_messages": self.errors[:50],
            "chargers": self.chargers,
        }


class Fleet:
    def __init__(
        self,
        chargers: Sequence[ChargerCreds],
        url: str,
        tokens: Sequence[str],
        *,
        speed: float = 60.0,
        state_dir: Path | None = None,
        control_socket: str | None = None,
        seed: int | None = None,
        scenarios: Sequence[str] | None = None,
        tick_interval: float = 0.1,
        check_frames: bool = True,
        frame_hook_factory: Callable[[str], FrameHook | None] | None = None,
        links: bool = False,
    ) -> None:
        from firmware_sim import scenarios as sc

        if not chargers:
            raise ValueError("a fleet needs at least one charger")
        if not tokens:
            raise ValueError("a fleet needs at least one idTag its drivers can tap")
        self.clock = SimClock(speed)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="chargegate-fleet-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.problems = Problems()
        self.tokens = list(tokens)
        self.control_socket = control_socket
        self.links = links
        self.rng = random.Random(seed)
        self.scenario_names = list(scenarios) if scenarios else list(sc.DEFAULT_MIX)
        for name in self.scenario_names:
            if name not in sc.SCENARIOS:
                raise ValueError(f"unknown scenario {name!r} (known: {', '.join(sorted(sc.SCENARIOS))})")
        self.chargers = [
            SimCharger(
                c,
                url,
                self.clock,
                self.state_dir,
                self.problems,
                tick_interval=tick_interval,
                check_frames=check_frames,
                extra_frame_hook=frame_hook_factory(c.id) if frame_hook_factory else None,
            )
            for c in chargers
        ]
        self.visits: list[Visit] = []
        self._tokens_in_use: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self.stop = asyncio.Event()
        self._charger_tasks: list[asyncio.Task[None]] = []

    def charger(self, charger_id: str) -> SimCharger:
        for c in self.chargers:
            if c.id == charger_id:
                return c
        raise KeyError(charger_id)

    def charger_lock(self, charger_id: str) -> asyncio.Lock:
        """Held by the driver whose EV is starting at that charger (see scenarios.ConnectorCtx.turn)."""
        lock = self._locks.get(charger_id)
        if lock is None:
            lock = self._locks[charger_id] = asyncio.Lock()
        return lock

    async def take_token(self, rng: random.Random, give_up_at: float) -> str | None:
        """A card no EV is using right now: a card at two chargers at once would stop the first session when
        tapped at the second. With fewer cards than connectors, drivers wait for one; None at `give_up_at`."""
        while True:
            free = [t for t in self.tokens if t not in self._tokens_in_use]
            if free:
                token = rng.choice(free)
                self._tokens_in_use.add(token)
                return token
            if time.monotonic() >= give_up_at:
                return None
            await asyncio.sleep(0.1)

    def release_token(self, token: str | None) -> None:
        if token:
            self._tokens_in_use.discard(token)

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every charger's agent (connect, boot); scenarios run separately. With `links`, each charger
        reaches the gateway through its own NetLink, so its network can fail on its own."""
        if self.links:
            for c in self.chargers:
                u = urlsplit(c.url)
                if u.hostname is None or u.port is None:
                    raise ValueError(f"{c.id}: links need an explicit host:port in {c.url}")
                c.link = await NetLink(u.hostname, u.port).start()
                c.url = urlunsplit(u._replace(netloc=f"127.0.0.1:{c.link.port}"))
        self._charger_tasks = [
            asyncio.create_task(c.run(self.stop), name=f"agent-{c.id}") for c in self.chargers
        ]

    async def wait_registered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.registered() for c in self.chargers):
                return True
            await asyncio.sleep(0.05)
        missing = [c.id for c in self.chargers if not c.registered()]
        self.problems.add(
            f"chargers not registered (BootNotification Accepted) within {timeout:.0f} s: {missing}"
        )
        return False

    async def change_configuration(self, key: str, value: str) -> None:
        """ChangeConfiguration on every charger through the gateway's control channel (as an operator would)."""
        if not self.control_socket:
            return
        from gateway.control import request

        for c in self.chargers:
            req = {
                "op": "call",
                "charger": c.id,
                "action": "ChangeConfiguration",
                "payload": {"key": key, "value": value},
            }
            try:
                answer = await request(Path(self.control_socket), req, timeout=CONTROL_TIMEOUT_S)
            except (OSError, TimeoutError) as e:
                self.problems.add(f"{c.id}: ChangeConfiguration {key}: control socket: {e}")
                continue
            status = answer.get("result", {}).get("status") if answer.get("ok") else answer.get("error")
            if status not in ("Accepted", "RebootRequired"):
                self.problems.add(f"{c.id}: ChangeConfiguration {key}={value} answered {status!r}")

    async def run_scenarios(self, duration_s: float) -> None:
        """Drive every connector through the scenario mix for `duration_s` real seconds; visits in progress at
        the end finish early (the EV leaves)."""
        from firmware_sim import scenarios as sc

        deadline = time.monotonic() + duration_s
        tasks = []
        index = 0
        for ch in self.chargers:
            for conn in range(1, ch.creds.connectors + 1):
                ctx = sc.ConnectorCtx(self, ch, conn, deadline, random.Random(self.rng.random()), index)
                tasks.append(asyncio.create_task(sc.drive_connector(ctx), name=f"scenario-{ch.id}/{conn}"))
                index += 1
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                self.problems.add(f"scenario crashed: {type(r).__name__}: {r}")

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until every connector is idle with no transaction and (when visible) an empty offline queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._idle(c) for c in self.chargers):
                return True
            await asyncio.sleep(0.1)
        busy = [
            f"{c.id}: "
            + ", ".join(f"{n}={c.status(n)}/tx={c.transaction_id(n)}" for n in c.visits)
            + f" queue={c.queue_length()}"
            for c in self.chargers
            if not self._idle(c)
        ]
        self.problems.add(f"agents still busy {timeout:.0f} s after the end: {busy}")
        return False

    @staticmethod
    def _idle(c: SimCharger) -> bool:
        if not c.registered():
            return False
        for n in c.visits:
            if c.transaction_id(n) is not None or c.status(n) not in ("Available", "Unavailable", "Faulted"):
                return False
        q = c.queue_length()
        return q is None or q == 0

    async def close(self) -> None:
        self.stop.set()
        if self._charger_tasks:
            done, pending = await asyncio.wait(self._charger_tasks, timeout=10)
            for t in pending:
                t.cancel()
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    e = t.exception()
                    self.problems.add(f"charger task failed: {type(e).__name__}: {e}")
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self._charger_tasks = []
        for c in self.chargers:
            if c.link is not None:
                await c.link.close()
                c.link = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def run(self, duration_s: float, register_timeout: float = 30.0) -> FleetReport:
        await self.start()
        try:
            if await self.wait_registered(register_timeout):
                await self.run_scenarios(duration_s)
                await self.drain()
        finally:
            await self.close()
        return self.report()

    # -- results ----------------------------------------------------------------------------------------------
    def report(self) -> FleetReport:
        per: dict[str, dict[str, Any]] = {}
        for c in self.chargers:
            vs = [v for v in self.visits if v.charger_id == c.id]
            per[c.id] = {
                "visits": len(vs),
                "sim_energy_kwh": round(sum(v.energy_wh for v in vs) / 1000.0, 3),
                "reboots": c.hal.reboots,
                "agent_crashes": c.crashes,
                "frames": c.frames,
            }
        return FleetReport(
            visits=list(self.visits),
            errors=list(self.problems.items)
            + ([f"... and {self.problems.dropped} more"] if self.problems.dropped else []),
            chargers=per,
            frames=sum(c.frames for c in self.chargers),
            schema_problems=sum(c.schema_problems for c in self.chargers),
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per connector for live displays."""
        out = []
        for c in self.chargers:
            for n, visit in c.visits.items():
                power = c.hal.meter_power_w(n)
                ev = c.hal.connector(n).ev
                register = c.hal.meter_wh(n)
                out.append(
                    {
                        "charger": c.id,
                        "connector": n,
                        "status": c.status(n),
                        "token": mask_token(visit.id_tag) if visit else "-",
                        "kw": power / 1000.0,
                        "kwh": (register - visit.register_start) / 1000.0 if visit else 0.0,
                        "soc": None if visit is None or ev is None else ev.soc,
                        "tx": c.transaction_id(n),
                    }
                )
        return out


# -- command line ---------------------------------------------------------------------------------------------
def load_site_chargers(path: Path) -> tuple[list[ChargerCreds], list[str], str | None, str | None]:
    """Chargers, allow-listed tokens, OCPP URL and control socket from a site config (and its gateway.json)."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    chargers = [
        # no password: a charger at security profile 3 (its client certificate comes from --cert-dir)
        ChargerCreds(str(c["id"]), str(c.get("password", "")), int(c.get("connectors", 1)))
        for c in raw.get("chargers", [])
    ]
    tokens = [str(t) for t in raw.get("auth", {}).get("allow", [])]
    data_dir = Path(raw.get("site", {}).get("data_dir", "data"))
    if not data_dir.is_absolute():
        data_dir = path.parent / data_dir
    url = control = None
    try:
        info = json.loads((data_dir / "gateway.json").read_text())
        url, control = info.get("ocpp_url"), info.get("control_socket")
    except (OSError, ValueError):
        ocpp = raw.get("ocpp", {})
        if ocpp.get("port"):
            url = f"ws://{ocpp.get('host', '127.0.0.1')}:{ocpp['port']}/ocpp/"
    return chargers, tokens, url, control


def load_password_file(path: Path) -> list[ChargerCreds]:
    """Lines `CHARGER_ID PASSWORD [CONNECTORS]` (whitespace, ':' or '=' separated); '#' starts a comment."""
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace("=", " ").replace(":", " ").split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{path}:{lineno}: expected 'CHARGER_ID PASSWORD [CONNECTORS]'")
        out.append(ChargerCreds(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1))
    return out


def with_tls(chargers: Sequence[ChargerCreds], ca: Path | None, cert_dir: Path | None) -> list[ChargerCreds]:
    """Give every charger its wss:// settings: the CA of the gateway's certificate and, with `cert_dir`, its client
    certificate `cert_dir/<id>.pem` with key `cert_dir/<id>.key` (security profile 3)."""
    out = []
    for c in chargers:
        if cert_dir is None:
            tls = client_tls_context(str(ca) if ca else None)
        else:
            cert, key = cert_dir / f"{c.id}.pem", cert_dir / f"{c.id}.key"
            try:
                tls = client_tls_context(str(ca) if ca else None, str(cert), str(key))
            except OSError as e:  # ssl's own message names no file
                raise ValueError(f"{c.id}: cannot load {cert} / {key}: {e}") from None
        out.append(dataclasses.replace(c, tls=tls))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chargegate sim", description="Run simulated chargers (the real agent) against a gateway."
    )
    p.add_argument("--url", help="OCPP base URL, e.g. ws://127.0.0.1:9000/ocpp/ (default: from --config)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="site config: chargers, passwords and allow-listed tokens")
    src.add_argument("--password-file", type=Path, help="lines 'CHARGER_ID PASSWORD [CONNECTORS]'")
    p.add_argument("--chargers", type=int, help="use only the first N chargers")
    p.add_argument("--ca", type=Path, help="wss://: CA certificate(s) of the gateway (default: system trust)")
    p.add_argument(
        "--cert-dir",
        type=Path,
        help="wss:// with client certificates (profile 3): DIR/<id>.pem and DIR/<id>.key",
    )
    p.add_argument(
        "--token", action="append", default=[], help="idTag drivers tap (repeatable; default: [auth].allow)"
    )
    p.add_argument("--control", help="gateway control socket, for remote starts (default: from gateway.json)")
    p.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second (default 60)")
    p.add_argument("--duration", type=float, default=60.0, help="real seconds of scenarios (default 60)")
    p.add_argument("--scenario", action="append", choices=None, help="restrict the mix (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--state-dir", type=Path, help="where the chargers' flash lives (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the final report as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    url = args.url
    control = args.control
    tokens = list(args.token)
    try:
        if args.config:
            chargers, allow, cfg_url, cfg_control = load_site_chargers(args.config)
            url = url or cfg_url
            control = control or cfg_control
            tokens = tokens or allow
        else:
            chargers = load_password_file(args.password_file)
    except (OSError, ValueError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"chargegate sim: {e}", file=sys.stderr)
        return 2
    if args.chargers is not None:
        if args.chargers < 1 or args.chargers > len(chargers):
            print(f"chargegate sim: --chargers must be 1..{len(chargers)}", file=sys.stderr)
            return 2
        chargers = chargers[: args.chargers]
    if args.ca or args.cert_dir:
        try:
            chargers = with_tls(chargers, args.ca, args.cert_dir)
        except (OSError, ValueError) as e:
            print(f"chargegate sim: {e}", file=sys.stderr)
            return 2
    if not url:
        print("chargegate sim: no --url, and the config names no port or running gateway", file=sys.stderr)
        return 2
    if not chargers:
        print("chargegate sim: no chargers", file=sys.stderr)
        return 2
    if not tokens:
        print("chargegate sim: no idTags: pass --token or allow-list some in [auth].allow", file=sys.stderr)
        return 2

    async def go() -> FleetReport:
        fleet = Fleet(
            chargers,
            url,
            tokens,
            speed=args.speed,
            state_dir=args.state_dir,
            control_socket=control,
            seed=args.seed,
            scenarios=args.scenario,
        )
        if args.json or not sys.stdout.isatty():
            return await fleet.run(args.duration)
        from firmware_sim.demo import live_display

        display_stop = asyncio.Event()
        display = asyncio.create_task(
            live_display(fleet, time.monotonic(), args.duration, sys.stdout, display_stop, "chargegate sim")
        )
        try:
            return await fleet.run(args.duration)
        finally:
            display_stop.set()
            await display

    try:
        report = asyncio.run(go())
    except ValueError as e:
        print(f"chargegate sim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    out = report.as_dict()
    out["visit_log"] = [v.as_dict() for v in report.visits]
    if args.json:
        print(json.dumps(out, indent=None if not os.isatty(1) else 2))
    else:
        print(
            f"{out['visits_completed']} visits, {out['sim_energy_kwh']} kWh delivered, {out['frames']} frames, "
            f"{out['errors']} errors"
        )
        for problem in report.errors[:20]:
            print(f"  error: {problem}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
