"""The demo's site electrics: a building, the grid connection, Modbus meters and the gateway's load management.

`chargegate demo` (firmware_sim/demo.py) runs this unless `--no-load-management`:

* Meters: one RS-485 bus per 16 meters, each a real pty pair served by `firmware_sim.modbus_meter.PtyMeterBus`
  in the demo process (wire timing emulated at the configured baud rate); the gateway polls them with pyserial as
  it would /dev/ttyUSB0. A grid meter (Eastron SDM630) measures the whole site; every connector has a meter of
  its own (a single-connector charger one for the whole charger), cycling through catalog models with different
  encodings (SDM630 float32, ABB B23 fixed-point u64, Iskra WM3M4 T5/T6 + exponent counters, Janitza float32),
  each starting from its own register reading, so the gateway's decoders see large counters.
* The physics: every `SAMPLE_S` the demo samples each simulated connector (the EV's actual draw, which follows
  the current limit the agent applies on the pilot) and the building's base load, a step profile scaled to the
  site limit, so the allocation visibly reacts. The meters answer with that sample (a real meter refreshes its
  registers a few times a second too); a connector meter's energy register is the energy its connector delivered
  on the simulated timeline. Sampling happens on the event loop that runs the agents, so the meter thread
  never touches the simulated hardware.
* Ground truth: the same samples give the site's per-phase current; the demo reports the peak, the time spent
  above the limit and each excursion with what happened just before it (a building-load step, an EV starting to
  draw, the gateway gone). SetChargingProfile frames are counted where the chargers receive them.
* Billing: at the end, the gateway's per-session check of the charger's own figure against its Modbus meter
  (table `session_meter_energy`, gateway/meters/billing.py) is read from the database. The tolerance in the demo's
  config is scaled to the time lapse: the gateway reads a connector meter's register up to one poll cycle before
  a session ends, and at x300 one poll cycle is minutes of simulated charging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware_sim.ev import NOMINAL_VOLTAGE
from firmware_sim.fleet import ChargerCreds, FrameHook
from firmware_sim.modbus_meter import PtyMeterBus, SimMeter
from gateway.meters.catalog import MeterModel, load_catalog

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet
    from firmware_sim.hal import SimConnector

Phases = tuple[float, float, float]
ZERO: Phases = (0.0, 0.0, 0.0)

# -- timing and sizing --------------------------------------------------------------------------------------------
# The site is sampled this often (real s): ground truth for the limit check, and what the meters answer with.
# 10 Hz costs next to nothing; the excursion times below are accurate to this.
SAMPLE_S = 0.1
# Above the limit by more than this counts (A): float rounding of power / voltage, not a physical overshoot.
EXCURSION_EPS_A = 0.05
# Events (building-load step, an EV starting to draw, the gateway gone) this long before an excursion are named as
# what preceded it (s).
CAUSE_WINDOW_S = 3.0
# Excursions listed in the report (the longest first); the totals count all of them.
MAX_EXCURSIONS_LISTED = 10
# The gateway's view (control op load.status) is polled this often for the live table and the mode count (s).
LOAD_STATUS_POLL_S = 1.0
# A control request to the gateway that takes longer than this is dropped (s): it is a display, not a check.
CONTROL_TIMEOUT_S = 5.0

# [load]: what each charger may draw on its own (TxDefaultProfile): the IEC 61851 minimum, so the fail-safe still
# charges every EV.
SAFE_CURRENT_A = 6.0
MIN_CURRENT_A = 6.0  # the gateway's default min_current_a: below it a session is queued at 0 A
MARGIN_A = 1.0
# TxProfile lease (s): the shortest the gateway accepts (10..86400), so that the chargers of a killed gateway fall
# back to SAFE_CURRENT_A within seconds, on the demo's real-time protocol clock.
LEASE_S = 10
# The leases run out at most LEASE_S after the last renewal, plus the startSchedule's whole-second truncation and
# the agent's evaluation tick: after a SIGKILL the demo keeps the gateway down until every charger has fallen back,
# at most this long (s).
FALLBACK_WAIT_S = LEASE_S + 3.0
# Allocation every this many seconds at least (it also runs on every meter reading), increases at most every
# MIN_CHANGE_INTERVAL_S per session: the demo's EVs live on a sped-up clock, the gateway's defaults (2 s, 10 s)
# would look sluggish.
CONTROL_INTERVAL_S = 1.0
MIN_CHANGE_INTERVAL_S = 2.0
# Highest building-load estimate over this long (s); at least one bus poll cycle (see [load] in docs/meters.md).
BUILDING_LOAD_HOLD_S = 1.0

# [[buses]]: 115200 baud with the wire timing emulated: a meter poll (3 reads) takes ~20 ms on the line, so a
# bus of 16 meters polled every POLL_INTERVAL_S is about 60 % busy, and the gateway decodes ~50 reads/s per bus.
BUS_BAUD = 115200
POLL_INTERVAL_S = 0.5
# A simulated meter answers as soon as the demo's meter thread runs; 0.2 s covers a busy 2-core box.
RESPONSE_TIMEOUT_S = 0.2
STALE_AFTER_S = 2.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 4.0
# RS-485: up to 32 unit loads per segment; 16 keeps a bus's poll cycle well inside POLL_INTERVAL_S.
METERS_PER_BUS = 16
# Connectors with a meter of their own; the rest of a big demo site is unmetered (the gateway then counts those
# sessions at 0 A in its building-load estimate, which overestimates the building: safe). Bounds the demo's
# threads and the gateway's polling.
METERED_CONNECTORS_MAX = 32
GRID_MODEL = "eastron-sdm630-v2"
# Connector meters cycle through these (all three-phase, Wh-resolution energy registers).
CHARGER_METER_MODELS = ("eastron-sdm630-v2", "abb-b23-b24", "iskra-wm3m4", "janitza-b23")
# The first connector meter's register at the start (Wh) and the step between meters: real meters are not new.
METER_OFFSET_WH = 1_250_000.0
METER_OFFSET_STEP_WH = 731_500.0

# Billing check: the charger rating the gateway assumes ([[chargers]] max_current default, A per phase) and the
# gateway's default energy_tolerance_wh, to which the time-lapse allowance is added.
CONNECTOR_MAX_A = 32.0
BILLING_BASE_TOLERANCE_WH = 50.0
# A StartTransaction / StopTransaction the gateway received this long after the charger's timestamp came from
# the charger's offline queue (s): the gateway reads the meter when the message arrives, so such a session's
# metered figure covers another span than the charger's (timestamps are whole seconds, plus loop latency).
LATE_S = 3.0

# Building base load per phase as a fraction of the site limit, stepping at fractions of the run:
# (run fraction, share of the limit). L2 and L3 carry less (PHASE_SHARE): a real building is unbalanced.
BASE_LOAD_STEPS: tuple[tuple[float, float], ...] = ((0.0, 0.2), (0.25, 0.45), (0.5, 0.25), (0.75, 0.5))
PHASE_SHARE: Phases = (1.0, 0.85, 0.7)


def default_site_limit(chargers: int) -> float:
    """A limit that binds: a 63 A connection for up to 5 chargers (whose EVs would take 100-200 A), 12.5 A per
    charger beyond."""
    return max(63.0, 12.5 * chargers)


def building_peak(limit: float) -> float:
    """The building's highest load on its busiest phase (A), which the demo's [load] building_reserve_a is set to:
    what an installer knows from the grid meter's history, and what the gateway's static split (grid meter stale,
    or charger meters not read yet after a restart) must leave free to stay within the limit. The demo's site
    does not satisfy connectors x safe_current_a + building_reserve_a <= site_limit_a (the gateway warns in its
    log): with the gateway down, every EV at its fail-safe current plus a busy building can exceed the limit,
    and the demo reports the time that happens (`--kill-gateway-at`)."""
    return max(share for _, share in BASE_LOAD_STEPS) * limit * max(PHASE_SHARE)


def billing_tolerance_wh(speed: float) -> float:
    """Per-session tolerance between the charger's figure and its Modbus meter: the gateway's default plus what a
    connector at its full rating delivers, on the demo's sped-up timeline, during the time by which the gateway's
    last reading of the meter can precede a session's end (one poll interval plus two samples of the site)."""
    power_w = CONNECTOR_MAX_A * NOMINAL_VOLTAGE * 3
    lag_sim_s = (POLL_INTERVAL_S + 2 * SAMPLE_S) * speed
    return float(math.ceil(BILLING_BASE_TOLERANCE_WH + power_w * lag_sim_s / 3600.0))


def connector_phases(c: SimConnector) -> Phases:
    """The connector's present draw per phase (A): its EV's power spread over the EV's phases (L1 first)."""
    ev = c.ev
    power = c.power_w
    if ev is None or power <= 0:
        return ZERO
    n = ev.spec.phases
    i = power / (c.voltage * n)
    return (i, i if n > 1 else 0.0, i if n > 2 else 0.0)


def _add(a: Phases, b: Phases) -> Phases:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _fmt_phases(p: Phases) -> str:
    return f"L1 {p[0]:5.1f}  L2 {p[1]:5.1f}  L3 {p[2]:5.1f} A"


# -- the meters -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeterPlan:
    id: str
    bus: int  # index into the demo's buses
    unit_id: int
    model: str
    charger_id: str = ""  # "" = the grid meter
    connector_id: int = 0  # 0 = the whole charger
    connectors: tuple[int, ...] = ()  # the connectors it measures
    offset_wh: float = 0.0  # its register when the demo starts

    @property
    def grid(self) -> bool:
        return not self.charger_id


def plan_meters(creds: Sequence[ChargerCreds]) -> list[MeterPlan]:
    """The grid meter, then a meter per connector (per charger when it has one connector), up to
    METERED_CONNECTORS_MAX connectors; METERS_PER_BUS per bus, unit ids from 1."""
    plan: list[MeterPlan] = []

    def place(i: int) -> tuple[int, int]:
        return i // METERS_PER_BUS, i % METERS_PER_BUS + 1

    bus, unit = place(0)
    plan.append(MeterPlan("grid", bus, unit, GRID_MODEL))
    metered = 0
    for c in creds:
        groups = [(0, (1,))] if c.connectors == 1 else [(n, (n,)) for n in range(1, c.connectors + 1)]
        for connector_id, connectors in groups:
            if metered >= METERED_CONNECTORS_MAX:
                return plan
            k = len(plan) - 1
            bus, unit = place(len(plan))
            plan.append(
                MeterPlan(
                    f"{c.id}-m" if connector_id == 0 else f"{c.id}-{connector_id}-m",
                    bus,
                    unit,
                    CHARGER_METER_MODELS[k % len(CHARGER_METER_MODELS)],
                    c.id,
                    connector_id,
                    connectors,
                    METER_OFFSET_WH + k * METER_OFFSET_STEP_WH,
                )
            )
            metered += len(connectors)
    return plan


@dataclass(frozen=True)
class Sample:
    """The site at one instant (immutable: the meter threads read the latest one without locks)."""

    at: float  # monotonic
    base: Phases
    site: Phases
    site_energy_wh: float
    meter_currents: dict[str, Phases] = field(default_factory=dict)
    meter_energy_wh: dict[str, float] = field(default_factory=dict)


@dataclass
class Excursion:
    at_s: float  # since the scenarios started
    duration_s: float
    peak_a: float
    gateway_down: bool
    after: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_s": round(self.at_s, 1),
            "duration_s": round(self.duration_s, 2),
            "peak_a": round(self.peak_a, 1),
            "gateway_down": self.gateway_down,
            "after": self.after,
        }


@dataclass
class Outage:
    """A gateway SIGKILL (--kill-gateway-at) as the chargers lived it."""

    killed_at_s: float
    fell_back_after_s: float | None = None  # every charger at SAFE_CURRENT_A this long after the kill
    drawing_at_fallback: int = 0  # connectors drawing current at that moment
    not_fallen_back: list[str] = field(
        default_factory=list
    )  # connectors still above it when the gateway returned
    down_s: float | None = None


class DemoSite:
    """The building, the meters on their ptys and the ground-truth record; see the module docstring."""

    def __init__(
        self,
        creds: Sequence[ChargerCreds],
        site_limit: float,
        duration: float,
        speed: float,
        catalog: dict[str, MeterModel] | None = None,
    ) -> None:
        self.creds = list(creds)
        self.limit = float(site_limit)
        self.duration = float(duration)
        self.speed = float(speed)
        self.catalog = catalog if catalog is not None else load_catalog()
        self.plan = plan_meters(self.creds)
        self.tolerance_wh = billing_tolerance_wh(self.speed)
        self.steps: list[tuple[float, Phases]] = [
            (frac * self.duration, (share * self.limit * PHASE_SHARE[0],
                                    share * self.limit * PHASE_SHARE[1],
                                    share * self.limit * PHASE_SHARE[2]))
            for frac, share in BASE_LOAD_STEPS
        ]  # fmt: skip
        self.fleet: Fleet | None = None
        self.sample = Sample(time.monotonic(), self.steps[0][1], self.steps[0][1], 0.0)
        self.meters: dict[str, SimMeter] = {}
        self.buses: list[PtyMeterBus] = []
        self.grid_reported: tuple[float, Phases] | None = (
            None  # (monotonic, currents) of the last grid answer
        )
        self._sampler: asyncio.Task[None] | None = None
        # ground truth, from begin() to end()
        self.t0: float | None = None
        self._recording = False
        self.peak_a = 0.0
        self.peak_at_s: float | None = None
        self.above_s = 0.0  # while the gateway ran
        self.above_down_s = 0.0  # while it was down (the chargers on their own)
        self.excursions: list[Excursion] = []
        self._open: Excursion | None = None
        self._events: deque[tuple[float, str]] = deque(maxlen=64)
        self._step = 0
        self._drawing: set[tuple[str, int]] = set()
        self._last_sim: float | None = None
        self._site_energy_wh = 0.0
        # the gateway, as the chargers and its control socket show it
        self.gateway_down = False
        self.outages: list[Outage] = []
        self.profile_frames = 0
        self.profiles: Counter[str] = Counter()
        self.queued: set[int] = set()  # transactions that got a TxProfile below MIN_CURRENT_A
        self.profiled: set[int] = set()  # transactions that got any TxProfile
        self.load_status: dict[str, Any] | None = None
        self.load_status_at: float | None = None
        self.load_modes: Counter[str] = Counter()
        self.meters_status: dict[str, Any] | None = None

    # -- set-up ----------------------------------------------------------------------------------------------------
    def open_buses(self) -> None:
        """Open the ptys and start answering (before the gateway's config is written: it names the ptys)."""
        for index in range(max(p.bus for p in self.plan) + 1):
            sims = []
            for p in self.plan:
                if p.bus != index:
                    continue
                sim = SimMeter(
                    p.unit_id,
                    self.catalog[p.model],
                    self._grid_currents if p.grid else self._currents_of(p.id),
                    energy=self._energy_of(p.id),
                )
                self.meters[p.id] = sim
                sims.append(sim)
            bus = PtyMeterBus(sims, line_baud=BUS_BAUD)
            self.buses.append(bus)
            bus.start()

    def _grid_currents(self) -> Phases:
        s = self.sample.site
        self.grid_reported = (time.monotonic(), s)
        return s

    def _currents_of(self, meter_id: str) -> Callable[[], Phases]:
        return lambda: self.sample.meter_currents.get(meter_id, ZERO)

    def _energy_of(self, meter_id: str) -> Callable[[], float]:
        return lambda: self.sample.meter_energy_wh.get(meter_id, 0.0)

    def config_lines(self) -> list[str]:
        """The gateway config's [[buses]], [[meters]] and [load] (keys from gateway/meters/config.py and
        gateway/loadmgmt/config.py)."""
        lines: list[str] = []
        for i, bus in enumerate(self.buses):
            lines += [
                "",
                "[[buses]]",
                f'id = "rs485-{i + 1}"',
                f"port = {json.dumps(bus.port)}",
                f"baudrate = {BUS_BAUD}",
                f"response_timeout = {RESPONSE_TIMEOUT_S}",
                f"poll_interval = {POLL_INTERVAL_S}",
                "retries = 1",
                f"backoff_min = {BACKOFF_MIN_S}",
                f"backoff_max = {BACKOFF_MAX_S}",
                f"stale_after = {STALE_AFTER_S}",
            ]
        for p in self.plan:
            lines += ["", "[[meters]]", f'id = "{p.id}"']
            if p.grid:
                lines.append('role = "grid"')
            else:
                lines += [
                    'role = "charger"',
                    f'charger_id = "{p.charger_id}"',
                    f"connector_id = {p.connector_id}",
                    f"energy_tolerance_wh = {self.tolerance_wh}",
                ]
            lines += [f'bus = "rs485-{p.bus + 1}"', f"unit_id = {p.unit_id}", f'model = "{p.model}"']
        lines += [
            "",
            "[load]",
            "enabled = true",
            f"site_limit_a = {self.limit}",
            f"safe_current_a = {SAFE_CURRENT_A}",
            f"min_current_a = {MIN_CURRENT_A}",
            f"margin_a = {MARGIN_A}",
            f"building_reserve_a = {building_peak(self.limit):g}",
            f"min_change_interval_s = {MIN_CHANGE_INTERVAL_S}",
            f"control_interval_s = {CONTROL_INTERVAL_S}",
            f"building_load_hold_s = {BUILDING_LOAD_HOLD_S}",
            f"profile_lease_s = {LEASE_S}",
        ]
        return lines

    def attach(self, fleet: Fleet) -> None:
        """Follow this fleet's connectors from now on, sampling them on this event loop."""
        self.fleet = fleet
        self._last_sim = fleet.clock.sim()
        self._sampler = asyncio.create_task(self._sample_loop(), name="demo-site-sampler")

    def frame_hook(self, charger_id: str) -> FrameHook:
        """Counts the SetChargingProfile requests this charger receives (its side of the websocket)."""

        def hook(direction: str, text: str) -> None:
            if direction == "rx" and '"SetChargingProfile"' in text:
                self._on_profile(text)

        return hook

    def _on_profile(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if not (isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and msg[2] == "SetChargingProfile"):
            return
        self.profile_frames += 1
        profile = msg[3].get("csChargingProfiles") if isinstance(msg[3], dict) else None
        if not isinstance(profile, dict):
            return
        purpose = str(profile.get("chargingProfilePurpose"))
        self.profiles[purpose] += 1
        if purpose != "TxProfile":
            return
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
            schedule = profile["chargingSchedule"]
            limit = float(schedule["chargingSchedulePeriod"][0]["limit"])
            tx = profile.get("transactionId")
            if isinstance(tx, int):
                self.profiled.add(tx)
                if schedule.get("chargingRateUnit") == "A" and limit < MIN_CURRENT_A:
                    self.queued.add(tx)

    # -- sampling ----------------------------------------------------------------------------------------------------
    def base_load(self, now: float) -> Phases:
        t = 0.0 if self.t0 is None else now - self.t0
        value = self.steps[0][1]
        for start, phases in self.steps:
            if t >= start:
                value = phases
        return value

    async def _sample_loop(self) -> None:
        while True:
            self.take_sample()
            await asyncio.sleep(SAMPLE_S)

    def take_sample(self) -> Sample:
        now = time.monotonic()
        base = self.base_load(now)
        site = base
        currents: dict[str, Phases] = {}
        energy: dict[str, float] = {}
        fleet = self.fleet
        per_connector: dict[tuple[str, int], tuple[Phases, float]] = {}
        drawing: set[tuple[str, int]] = set()
        if fleet is not None:
            for c in fleet.chargers:
                hal = c.hal
                hal.advance()  # physics up to now (this is the loop the agents run on)
                for n, sc in hal.connectors.items():
                    draw = connector_phases(sc)
                    per_connector[(c.id, n)] = (draw, sc.meter.energy_wh)
                    site = _add(site, draw)
                    if max(draw) > 0:
                        drawing.add((c.id, n))
            sim_now = fleet.clock.sim()
            if self._last_sim is not None:
                self._site_energy_wh += sum(site) * NOMINAL_VOLTAGE * (sim_now - self._last_sim) / 3600.0
            self._last_sim = sim_now
        for p in self.plan:
            if p.grid:
                energy[p.id] = self._site_energy_wh
                continue
            amps, wh = ZERO, p.offset_wh
            for n in p.connectors:
                draw, e = per_connector.get((p.charger_id, n), (ZERO, 0.0))
                amps = _add(amps, draw)
                wh += e
            currents[p.id] = amps
            energy[p.id] = wh
        previous = self.sample.at
        self.sample = Sample(now, base, site, self._site_energy_wh, currents, energy)
        if self._recording:
            self._record(now, now - previous, base, site, drawing)
        self._drawing = drawing
        return self.sample

    def _record(
        self, now: float, dt: float, base: Phases, site: Phases, drawing: set[tuple[str, int]]
    ) -> None:
        assert self.t0 is not None
        t = now - self.t0
        step = max(i for i, (start, _) in enumerate(self.steps) if t >= start) if t >= 0 else 0
        if step != self._step:
            old, new = self.steps[self._step][1][0], self.steps[step][1][0]
            self._events.append((now, f"building load L1 {old:.0f} -> {new:.0f} A"))
            self._step = step
        for cid, n in sorted(drawing - self._drawing):
            self._events.append((now, f"{cid}/{n} started drawing"))
        peak = max(site)
        if peak > self.peak_a:
            self.peak_a, self.peak_at_s = peak, t
        if peak > self.limit + EXCURSION_EPS_A:
            if self.gateway_down:
                self.above_down_s += dt
            else:
                self.above_s += dt
            ex = self._open
            if ex is None:
                after = [
                    f"{what} ({now - at:.1f} s before)"
                    for at, what in self._events
                    if now - at <= CAUSE_WINDOW_S
                ]
                ex = self._open = Excursion(t, 0.0, peak, self.gateway_down, after[-4:])
                self.excursions.append(ex)
            ex.duration_s += dt
            ex.peak_a = max(ex.peak_a, peak)
            ex.gateway_down = ex.gateway_down or self.gateway_down
        else:
            self._open = None

    def begin(self) -> None:
        """The scenarios start now: the base-load profile's clock and the ground-truth record."""
        self.t0 = time.monotonic()
        self._recording = True
        self.take_sample()

    def end(self) -> None:
        self.take_sample()
        self._recording = False
        self._open = None

    # -- the gateway, killed ---------------------------------------------------------------------------------------------
    def fallen_back(self) -> tuple[bool, list[str], int]:
        """Whether every powered charger applies SAFE_CURRENT_A on every connector (its TxDefaultProfile), the
        connectors that do not, and how many connectors are drawing."""
        fleet = self.fleet
        if fleet is None:
            return False, [], 0
        above, drawing = [], 0
        for c in fleet.chargers:
            hal = c.hal
            if not hal.powered or hal.reboot_pending is not None:
                continue
            for n, sc in hal.connectors.items():
                if abs(sc.offered_amps - SAFE_CURRENT_A) > 1e-6:
                    above.append(f"{c.id}/{n} at {sc.offered_amps:g} A")
                if sc.power_w > 0:
                    drawing += 1
        return not above, above, drawing

    def gateway_killed(self) -> Outage:
        now = time.monotonic()
        self.gateway_down = True
        self._events.append((now, "gateway killed"))
        o = Outage(killed_at_s=round(now - (self.t0 or now), 1))
        self.outages.append(o)
        self.load_status = None
        return o

    async def wait_fallback(self, outage: Outage, timeout: float = FALLBACK_WAIT_S) -> None:
        """While the gateway is down: wait until every charger fell back to its TxDefaultProfile current."""
        start = time.monotonic()
        while True:
            ok, above, drawing = self.fallen_back()
            if ok:
                outage.fell_back_after_s = round(time.monotonic() - start, 1)
                outage.drawing_at_fallback = drawing
                return
            if time.monotonic() - start >= timeout:
                outage.not_fallen_back = above
                return
            await asyncio.sleep(SAMPLE_S)

    def gateway_back(self, outage: Outage, down_s: float) -> None:
        self.gateway_down = False
        outage.down_s = round(down_s, 1)
        self._events.append((time.monotonic(), "gateway back"))

    # -- the gateway's view ------------------------------------------------------------------------------------------
    async def poll_load_status(self, control_socket: Callable[[], str | None]) -> None:
        """Poll load.status (the gateway's allocation: mode, building estimate, available current) for the table;
        nothing while the gateway is down."""
        from gateway.control import request

        while True:
            path = control_socket()
            if path and not self.gateway_down:
                try:
                    answer = await request(Path(path), {"op": "load.status"}, timeout=CONTROL_TIMEOUT_S)
                except (OSError, TimeoutError, ValueError):
                    answer = {}
                result = answer.get("result") if answer.get("ok") else None
                if isinstance(result, dict) and not self.gateway_down:
                    self.load_status, self.load_status_at = result, time.monotonic()
                    if result.get("mode") is not None:  # None: no round yet
                        self.load_modes[str(result["mode"])] += 1
            await asyncio.sleep(LOAD_STATUS_POLL_S)

    async def read_meters_status(self, control_socket: str) -> None:
        """The gateway's bus counters and per-meter poll counts (control op meters.status), once at the end."""
        from gateway.control import request

        try:
            answer = await request(Path(control_socket), {"op": "meters.status"}, timeout=CONTROL_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError):
            return
        result = answer.get("result") if answer.get("ok") else None
        if isinstance(result, dict):
            self.meters_status = result

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        for bus in self.buses:
            await asyncio.to_thread(bus.stop)

    # -- display -------------------------------------------------------------------------------------------------------
    def table_lines(self, ansi: bool) -> list[str]:
        s = self.sample
        over = max(s.site) > self.limit + EXCURSION_EPS_A
        truth = _fmt_phases(s.site)
        if ansi and over:
            truth = f"\x1b[31m{truth}\x1b[0m"
        longest = max((e.duration_s for e in self.excursions if not e.gateway_down), default=0.0)
        lines = [
            f"site (truth)  {truth}  limit {self.limit:g} A   building L1 {s.base[0]:4.1f} A   "
            f"above limit {self.above_s:4.1f} s (longest {longest:.1f} s)"
            + (f", {self.above_down_s:.1f} s with the gateway down" if self.above_down_s else "")
        ]
        grid = self.grid_reported
        if grid is None:
            lines.append("grid meter    not read yet")
        else:
            at, phases = grid
            reads = self.meters["grid"].requests
            lines.append(
                f"grid meter    {_fmt_phases(phases)}  ({GRID_MODEL}, unit 1, answered {time.monotonic() - at:.1f} s "
                f"ago; {reads} reads)"
            )
        lines.append("gateway       " + self._gateway_line())
        return lines

    def _gateway_line(self) -> str:
        profiles = f"{self.profile_frames} SetChargingProfile received by the chargers"
        if self.gateway_down:
            return (
                f"DOWN: chargers keep their TxProfile leases ({LEASE_S} s) then fall back to their "
                f"TxDefaultProfile {SAFE_CURRENT_A:g} A; {profiles}"
            )
        st = self.load_status
        if st is None:
            return f"load management starting; {profiles}"
        sessions = st.get("sessions") or {}
        queued = sum(
            1 for v in sessions.values() if isinstance(v, dict) and (v.get("target_a") or 0) < MIN_CURRENT_A
        )
        other, avail = st.get("other_load_a"), st.get("available_a")
        est = "-" if other is None else f"{other:.1f} A"
        av = "-" if avail is None else f"{avail:.1f} A"
        return (
            f"{st.get('mode')}: building estimate {est}, available {av} for {len(sessions)} sessions "
            f"({queued} queued at 0 A); {profiles}"
        )

    # -- the report -------------------------------------------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        gw = self.meters_status or {}
        buses = gw.get("buses") if isinstance(gw.get("buses"), dict) else {}
        line: Counter[str] = Counter()
        polls_ok = 0
        assert isinstance(buses, dict)
        for b in buses.values():
            for k, v in (b.get("line") or {}).items():
                line[k] += int(v)
            for m in (b.get("meters") or {}).values():
                polls_ok += int(m.get("successes", 0))
        down = [e for e in self.excursions if e.gateway_down]
        up = [e for e in self.excursions if not e.gateway_down]
        listed = sorted(self.excursions, key=lambda e: -e.duration_s)[:MAX_EXCURSIONS_LISTED]
        return {
            "load_management": True,
            "site_limit_a": self.limit,
            # every connector at its TxDefaultProfile current plus the building's peak: the site with the gateway down
            "fail_safe_worst_case_a": round(
                sum(c.connectors for c in self.creds) * SAFE_CURRENT_A + building_peak(self.limit), 1
            ),
            "building_load_steps": [[round(t, 1), round(p[0], 1)] for t, p in self.steps],
            "site_peak_a": round(self.peak_a, 1),
            "site_peak_at_s": None if self.peak_at_s is None else round(self.peak_at_s, 1),
            "site_above_limit_s": round(self.above_s, 2),
            "site_longest_excursion_s": round(max((e.duration_s for e in up), default=0.0), 2),
            "site_excursions": len(up),
            "site_above_limit_gateway_down_s": round(self.above_down_s, 2),
            "site_excursions_gateway_down": len(down),
            "site_excursion_list": [e.as_dict() for e in sorted(listed, key=lambda e: e.at_s)],
            "set_charging_profile_frames": self.profile_frames,
            "tx_profiles": self.profiles.get("TxProfile", 0),
            "tx_default_profiles": self.profiles.get("TxDefaultProfile", 0),
            "sessions_profiled": len(self.profiled),
            "sessions_queued": len(self.queued),
            "queued_transactions": sorted(self.queued),
            "load_modes": dict(self.load_modes),
            "meters": len(self.plan),
            "meter_models": sorted({p.model for p in self.plan}),
            "metered_connectors": sum(len(p.connectors) for p in self.plan),
            "meter_reads_answered": sum(m.requests for m in self.meters.values()),
            "grid_meter_reads": self.meters["grid"].requests if "grid" in self.meters else 0,
            "gateway_meter_polls_ok": polls_ok if buses else None,
            "gateway_meter_line": dict(line) if buses else None,
            "gateway_outages": [o.__dict__ for o in self.outages],
        }


def no_load_fields(note: str) -> dict[str, Any]:
    return {"load_management": False, "load_management_note": note}


# -- the billing check ------------------------------------------------------------------------------------------------
def _epoch(ts: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def delivered_late(t: dict[str, Any]) -> bool:
    """Whether the gateway got this session's StartTransaction or StopTransaction from the charger's offline queue
    (received more than LATE_S after the charger's timestamp)."""
    for ts, received in ((t.get("start_ts"), t.get("started_at")), (t.get("stop_ts"), t.get("stopped_at"))):
        at = _epoch(ts)
        if at is not None and received is not None and float(received) - at > LATE_S:
            return True
    return False


def read_billing(db_path: Path) -> dict[int, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM session_meter_energy")]
        except sqlite3.OperationalError:  # no such table: a gateway without the meters migrations
            return {}
    finally:
        conn.close()
    return {int(r["transaction_id"]): r for r in rows}


def billing_check(
    txs: list[dict[str, Any]],
    metered: dict[int, dict[str, Any]],
    tolerance_wh: float,
    emsp_events: list[dict[str, Any]] | None,
) -> tuple[dict[str, Any], list[str]]:
    """The gateway's per-session comparison of the charger's figure with its Modbus meter, as recorded in its
    database: (report fields, errors). A flagged session is an error unless its start or stop reached the gateway
    late (then the gateway read the meter at another moment than the charger: expected, reported). With the eMSP,
    its session.stopped events must carry the same flags as the database."""
    errors: list[str] = []
    checked = within = flagged = late_flagged = no_reading = no_charger_figure = 0
    largest = 0.0
    late_list: list[int] = []
    for t in txs:
        if t["state"] != "stopped":
            continue
        tx = int(t["id"])
        row = metered.get(tx)
        if row is None:
            continue
        if row.get("metered_wh") is None:
            no_reading += 1
            continue
        if row.get("charger_wh") is None:
            no_charger_figure += 1
            continue
        checked += 1
        diff = float(row.get("discrepancy_wh") or 0.0)
        late = delivered_late(t)
        if row.get("flagged"):
            flagged += 1
            if late:
                late_flagged += 1
                late_list.append(tx)
            else:
                errors.append(
                    f"billing: session {tx} ({t['charger_id']}/{t['connector_id']}): the charger reported "
                    f"{row['charger_wh']:.0f} Wh, its Modbus meter {row['metered_wh']:.0f} Wh (tolerance "
                    f"{tolerance_wh:.0f} Wh), and both messages arrived on time"
                )
        else:
            within += 1
        if not late:
            largest = max(largest, abs(diff))
    emsp_agree: bool | None = None
    if emsp_events is not None:
        stopped = {
            int(e["body"]["tx"]): e["body"]
            for e in emsp_events
            if e.get("kind") == "session.stopped" and isinstance(e.get("body"), dict) and "tx" in e["body"]
        }
        wrong = []
        for tx, row in metered.items():
            body = stopped.get(tx)
            if body is None or row.get("checked_at") is None:
                continue  # the eMSP's session check reports a missing session
            if bool(body.get("energy_flagged")) != bool(row.get("flagged")) or "metered_wh" not in body:
                wrong.append(tx)
        emsp_agree = not wrong
        if wrong:
            errors.append(
                f"billing: the eMSP's session.stopped events disagree with the database's energy check for "
                f"transactions {sorted(wrong)[:20]}"
            )
    fields = {
        "billing_tolerance_wh": tolerance_wh,
        "billing_sessions_metered": sum(
            1 for t in txs if int(t["id"]) in metered and t["state"] == "stopped"
        ),
        "billing_checked": checked,
        "billing_within_tolerance": within,
        "billing_flagged": flagged,
        "billing_flagged_late": late_flagged,
        "billing_flagged_late_transactions": late_list,
        # the gateway had no fresh reading of the meter at the start or the stop
        "billing_no_meter_reading": no_reading,
        # the charger reported 0 -> 0 Wh, which the gateway takes for "no meter of its own": the Modbus meter bills
        "billing_no_charger_figure": no_charger_figure,
        "billing_largest_difference_wh": round(largest, 1),
        "billing_emsp_flags_agree": emsp_agree,
    }
    return fields, errors
