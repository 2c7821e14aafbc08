"""LoadManager: the async glue between meters, transactions and chargers.

Inputs: grid and charger meter readings (a MeterSource, e.g. the MeterHub), transactions through the hooks
on_transaction_started/stopped, charger boots through on_charger_booted, the site limit through set_site_limit.
Output: SetChargingProfile calls through ChargerCommands, only to chargers that are connected (a charger that is not
keeps the limit in force on it until its lease runs out; the Allocator counts that). All decisions are the
Allocator's; this module maps each connector onto the site phases ([load] phases / phase_rotation) and hands the
allocator per-phase readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.aio import within
from gateway.commands import ChargerCommands
from gateway.config import ChargerSection
from gateway.errors import ChargegateError, ConfigError
from gateway.loadmgmt.allocator import (
    ALL_PHASES,
    Allocation,
    Allocator,
    AllocatorParams,
    Decision,
    Overdraw,
    SessionInput,
    SessionKey,
)
from gateway.loadmgmt.config import SITE_PHASES, LoadSection, Wiring, phase_names
from gateway.loadmgmt.profiles import tx_default_profile, tx_profile
from gateway.meters.hub import MeterHub
from gateway.meters.reading import MeterReading

log = logging.getLogger(__name__)

Phases = tuple[float, float, float]

# A current the charger itself reported (MeterValues Current.Import) counts for this long.
REPORTED_CURRENT_TTL = 30.0
# An inconsistent phase accounting (allocator.PHASE_MISMATCH_A) is warned about at most this often per phase: it is
# a wiring/config fault that persists, and rounds run on every meter reading.
MISMATCH_LOG_INTERVAL_S = 600.0

# Outcomes of one SetChargingProfile: the charger accepted it; it answered that it did not apply it; or no answer
# came (timeout, connection lost, ...), so it may or may not have applied it.
Outcome = Literal["accepted", "refused", "unknown"]
ACCEPTED: Outcome = "accepted"
REFUSED: Outcome = "refused"
UNKNOWN: Outcome = "unknown"


class MeterSource(Protocol):
    def grid(self) -> tuple[Phases, float] | None:
        """Fresh per-phase grid current and the monotonic time it was sampled; None when there is no grid meter
        or it is stale."""
        ...

    def session_current(self, charger_id: str, connector_id: int, at: float | None = None) -> Phases | None:
        """Fresh per-phase current of this connector's (or charger's) meter, in the meter's L1..L3 order (= the
        charger's own phase order: the meter sits in its supply), as sampled closest to monotonic time `at` (the
        latest taken no later than the grid sample, so both describe the same moment); None when unmetered or
        stale. A single-phase meter reports on L1."""
        ...

    def has_meter(self, charger_id: str, connector_id: int) -> bool:
        """Whether a meter is configured for this connector (or its whole charger)."""
        ...

    def meter_id(self, charger_id: str, connector_id: int) -> str | None:
        """Which meter that is (connectors sharing a whole-charger meter must count its draw once)."""
        ...


# Readings kept per charger meter for aligning them with the grid sample (a few poll cycles).
_HISTORY = 16


class HubMeterSource:
    """MeterSource over a gateway.meters.hub.MeterHub."""

    def __init__(self, hub: MeterHub) -> None:
        self.hub = hub
        self._history: dict[str, deque[tuple[float, Phases]]] = {}
        hub.subscribe(self._on_reading)

    def _on_reading(self, r: MeterReading) -> None:
        pc = r.phase_currents()
        if pc is not None:
            self._history.setdefault(r.meter_id, deque(maxlen=_HISTORY)).append((r.monotonic, pc))

    def grid(self) -> tuple[Phases, float] | None:
        mid = self.hub.grid_meter_id()
        r = None if mid is None else self.hub.fresh(mid)
        if r is None:
            return None
        pc = r.phase_currents()
        return None if pc is None else (pc, float(r.monotonic))

    def has_meter(self, charger_id: str, connector_id: int) -> bool:
        return self.hub.charger_meter_id(charger_id, connector_id) is not None

    def meter_id(self, charger_id: str, connector_id: int) -> str | None:
        return self.hub.charger_meter_id(charger_id, connector_id)

    def session_current(self, charger_id: str, connector_id: int, at: float | None = None) -> Phases | None:
        mid = self.hub.charger_meter_id(charger_id, connector_id)
        if mid is None or self.hub.fresh(mid) is None:
            return None
        hist = self._history.get(mid)
        if not hist:
            return None
        if at is None:
            return hist[-1][1]
        # The latest reading taken no later than the grid sample: a reading taken after it may already show an EV
        # change the grid reading does not (which made the building load look 6 A higher, then lower, and so on).
        before = [h for h in hist if h[0] <= at]
        return before[-1][1] if before else hist[0][1]


@dataclass
class _Session:
    key: SessionKey
    transaction_id: int
    started_at: float
    renewed_at: float | None = None  # monotonic time the TxProfile lease was last (re)sent


class LoadManager:
    def __init__(
        self,
        cfg: LoadSection,
        chargers: Iterable[ChargerSection],
        commands: ChargerCommands,
        meters: MeterSource | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_overdraw: Callable[[Overdraw], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.chargers = {c.id: c for c in chargers}
        problem = cfg.check_wiring(self.chargers.values())
        if problem is not None:  # gateway.loadmgmt.config.check_load reports it with the file name
            raise ConfigError("site config", problem[0], problem[1])
        self.commands = commands
        self.meters = meters
        self.clock = clock
        self.wall = wall
        self.on_overdraw = on_overdraw
        self.allocator = Allocator(
            AllocatorParams(
                site_limit=cfg.site_limit_a,
                min_current=cfg.min_current_a,
                margin=cfg.margin_a,
                building_reserve=cfg.building_reserve_a,
                hysteresis=cfg.hysteresis_a,
                min_change_interval=cfg.min_change_interval_s,
                overdraw_tolerance=cfg.overdraw_tolerance_a,
                overdraw_grace=cfg.overdraw_grace_s,
                other_load_hold=cfg.building_load_hold_s,
                lease=float(cfg.profile_lease_s),
                fallback_current=cfg.safe_current_a,
                rotation_interval=cfg.rotation_interval_s,
                idle_current=cfg.idle_current_a,
                idle_yield=cfg.idle_yield_s,
            )
        )
        self.sessions: dict[SessionKey, _Session] = {}
        # key -> (amps, monotonic): the highest phase's current, or per charger phase
        self._reported: dict[SessionKey, tuple[float | tuple[float, ...], float]] = {}
        self._mismatch_logged: dict[int, float] = {}  # site phase -> when last warned about
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last: Allocation | None = None
        self.overdraws: list[Overdraw] = []
        self.sends = 0
        self._unreachable: set[str] = set()  # chargers with a session found not connected (logged once)
        self._failing: set[str] = set()  # chargers whose last SetChargingProfile failed (logged once)
        # Fail-safe: with the gateway gone every connector may draw safe_current_a on each phase it is wired to.
        on_phase = [0, 0, 0]
        for c in self.chargers.values():
            for conn in range(1, c.connectors + 1):
                for ph in set(self.wiring(c.id, conn)):
                    on_phase[ph] += 1
        for ph in ALL_PHASES:
            worst = on_phase[ph] * cfg.safe_current_a + cfg.building_reserve_a
            if worst > cfg.site_limit_a:
                log.warning(
                    "load: %s: %d connectors x safe_current_a %.1f A + building_reserve_a %.1f A = %.1f A exceeds "
                    "the site limit %.1f A: the fail-safe (gateway down) cannot guarantee the limit",
                    SITE_PHASES[ph],
                    on_phase[ph],
                    cfg.safe_current_a,
                    cfg.building_reserve_a,
                    worst,
                    cfg.site_limit_a,
                )

        if meters is not None:
            for c in self.chargers.values():
                for conn in range(1, c.connectors + 1):
                    if meters.has_meter(c.id, conn) and len(self.cfg.meter_mappings(c, c.id, conn)) > 1:
                        log.info(
                            "load: %s/%d is wired %s and its meter's phase order is not configured: of an uneven "
                            "draw (single-phase EV) only what both possible orders agree on is credited; set "
                            '[load] meter_phase_order = { %s = "charger" } (or "site") for the full share',
                            c.id,
                            conn,
                            phase_names(self.wiring(c.id, conn)),
                            c.id,
                        )

    def wiring(self, charger_id: str, connector_id: int) -> Wiring:
        """The site phase of each of this connector's phases."""
        return self.cfg.wiring(self.chargers.get(charger_id), charger_id, connector_id)

    # ---- hooks (called by the OCPP server / composition root) ------------------------------------------------
    # The hooks are coroutines so they fit gateway.csms.CsmsHooks (run as tasks after the answer is on the wire).
    async def on_charger_booted(self, charger_id: str) -> None:
        """Give the charger its fail-safe TxDefaultProfile, then run a round at once: after a reconnect its session
        limit (or lease renewal) goes out right away instead of at the next meter reading or control interval."""
        await self._send_default(charger_id)
        self._wake.set()

    async def on_transaction_started(self, charger_id: str, connector_id: int, transaction_id: int) -> None:
        key = (charger_id, connector_id)
        self.allocator.forget(key)
        self.sessions[key] = _Session(key, transaction_id, self.clock())
        self._wake.set()

    async def on_transaction_stopped(
        self, charger_id: str, connector_id: int, transaction_id: int | None = None
    ) -> None:
        key = (charger_id, connector_id)
        s = self.sessions.get(key)
        if s is not None and (transaction_id is None or s.transaction_id == transaction_id):
            del self.sessions[key]
            self.allocator.forget(key)
            self._reported.pop(key, None)
            self._wake.set()

    def on_charger_current(self, charger_id: str, connector_id: int, amps: float | tuple[float, ...]) -> None:
        """Current the charger reported itself (MeterValues Current.Import); used when unmetered. A number is the
        highest phase's: on a three-phase charger it is counted on the charger's L1 only (where a single-phase EV
        draws; counting it on all three could release current that is not free). A tuple: per charger phase."""
        self._reported[(charger_id, connector_id)] = (amps, self.clock())

    def on_meter_reading(self, _reading: object = None) -> None:
        """Subscribe this to the MeterHub: a new reading triggers an allocation round."""
        self._wake.set()

    def set_site_limit(self, amps: float) -> None:
        """Change the site limit at run time (eMSP downlink, control socket). Raises ValueError on bad input."""
        if isinstance(amps, bool) or not isinstance(amps, int | float):
            raise ValueError("site limit must be a number")
        if not 0 <= float(amps) <= 10000:
            raise ValueError("site limit must be 0..10000 A")
        self.allocator.set_site_limit(float(amps))
        log.info("load: site limit set to %.1f A", amps)
        self._wake.set()

    # ---- loop -------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="load-manager")

    async def stop(self) -> None:
        tasks = [t for t in (self._task,) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), self.cfg.control_interval_s)
            self._wake.clear()
            try:
                await self.step()
            except Exception:  # one bad round must not end load management
                log.exception("load: allocation round failed")

    def _inputs(self, at: float | None, online: set[str]) -> list[SessionInput]:
        now = self.clock()
        out = []
        for s in self.sessions.values():
            cid, conn = s.key
            charger = self.chargers.get(cid)
            metered = self.meters is not None and self.meters.has_meter(cid, conn)
            measured: tuple[float, ...] | None = None
            meter = None
            mappings = None
            if self.meters is not None:
                measured = self.meters.session_current(cid, conn, at)
                meter = self.meters.meter_id(cid, conn)
                mappings = self.cfg.meter_mappings(charger, cid, conn)
            if measured is None and not metered and s.key in self._reported:
                amps, reported_at = self._reported[s.key]
                if now - reported_at <= REPORTED_CURRENT_TTL:
                    # the charger's own measurement: in its own phase order
                    measured = (float(amps), 0.0, 0.0) if isinstance(amps, int | float) else amps
                    mappings = None
            out.append(
                SessionInput(
                    key=s.key,
                    transaction_id=s.transaction_id,
                    started_at=s.started_at,
                    max_current=charger.max_current if charger is not None else self.cfg.safe_current_a,
                    priority=self.cfg.priorities.get(cid, 0),
                    measured=measured,
                    metered=metered,
                    reachable=cid in online,
                    phases=self.wiring(cid, conn),
                    meter=meter,
                    meter_phases=mappings,
                )
            )
        return out

    def _track_reachability(self, online: set[str]) -> None:
        """Log once per disconnect (not once per round) that a charger with a session cannot be told anything."""
        with_sessions = {cid for cid, _ in self.sessions}
        for cid in sorted(with_sessions - online - self._unreachable):
            log.info("load: charger %s unreachable; its limit stays in force until its lease runs out", cid)
            self._unreachable.add(cid)
        for cid in sorted(self._unreachable & online):
            log.info("load: charger %s reachable again", cid)
            self._unreachable.discard(cid)

    async def step(self) -> Allocation:
        """One allocation round: compute, then send decreases, then increases (none if a decrease failed), then
        lease renewals; nothing to chargers that are not connected."""
        online = set(self.commands.connected())
        self._track_reachability(online)
        sample = self.meters.grid() if self.meters is not None else None
        grid, at = (None, None) if sample is None else sample
        alloc = self.allocator.allocate(self._inputs(at, online), grid, self.clock(), at)
        self.last = alloc
        self._log_round(alloc)
        for o in alloc.overdraws:
            log.warning(
                "load: charger %s connector %d draws %.1f A over its %.1f A limit",
                o.key[0],
                o.key[1],
                o.measured,
                o.limit,
            )
            self.overdraws.append(o)
            if self.on_overdraw is not None:
                self.on_overdraw(o)
        # The allocator makes no changes for unreachable sessions; a charger may still drop in between.
        changes = [d for d in alloc.changes if d.key[0] in online]
        decreases = [d for d in changes if d.decrease]
        increases = [d for d in changes if not d.decrease]
        # Decreases must land before increases, or the site is briefly over its limit. A decrease that failed
        # leaves the old, higher limit in force while the increases were sized as if it had landed: none go out
        # this round, and the allocator counts that session at its old limit until a new one is confirmed.
        landed = await asyncio.gather(*(self._apply(d) for d in decreases))
        failed = [d for d, ok in zip(decreases, landed, strict=True) if not ok]
        for d in failed:
            self.allocator.refused(d.key)
        if failed:
            if increases:
                log.debug(
                    "load: %d decrease(s) failed: %d increase(s) held back", len(failed), len(increases)
                )
        else:
            await asyncio.gather(*(self._apply(d) for d in increases))
        changed = {d.key for d in alloc.changes}
        now = self.clock()
        renew = []
        for s in self.sessions.values():
            sent = self.allocator.sent_limit(s.key)
            if s.key in changed or sent is None or s.renewed_at is None or s.key[0] not in online:
                continue
            # a lease that has (or may have) run out is not renewed at its old limit: the allocator re-sends it
            if not self.allocator.lease_running(s.key, now):
                continue
            if now - s.renewed_at >= self.cfg.profile_lease_s / 3:
                renew.append(Decision(s.key, s.transaction_id, sent, sent, sent))
        await asyncio.gather(*(self._apply(d) for d in renew))
        return alloc

    def _log_round(self, alloc: Allocation) -> None:
        for r in alloc.rotations:
            log.info(
                "load: rotation: %s pauses, %s charges (it has waited at least %.0f s)",
                ", ".join(_name(k) for k in r.paused),
                _name(r.resumed),
                self.cfg.rotation_interval_s,
            )
        for k in alloc.yielded:
            log.info(
                "load: %s draws <= %.1f A for %.0f s: it gives its place to a waiting session",
                _name(k),
                self.cfg.idle_current_a,
                self.cfg.idle_yield_s,
            )
        now = self.clock()
        for ph in alloc.mismatch:
            last = self._mismatch_logged.get(ph)
            if last is None or now - last >= MISMATCH_LOG_INTERVAL_S:
                self._mismatch_logged[ph] = now
                log.warning(
                    "load: on %s the chargers' meters show more current than the grid meter: EV current is counted "
                    "on a phase it is not on. Check [load] phase_rotation / phases and that each charger meter's "
                    "L1..L3 are its charger's L1..L3. Static split until it is consistent again",
                    SITE_PHASES[ph],
                )

    async def _apply(self, d: Decision) -> bool:
        cid, conn = d.key
        sent_at = self.clock()
        single = len(self.wiring(cid, conn)) == 1
        payload = tx_profile(
            conn, d.transaction_id, d.limit, self.wall(), self.cfg.profile_lease_s, 1 if single else None
        )
        outcome = await self._call(cid, payload)
        if outcome == UNKNOWN:
            self.allocator.unconfirmed(d.key, d.limit, sent_at)
        if outcome != ACCEPTED:
            return False
        self.allocator.confirm(d.key, d.limit, self.clock(), sent_at=sent_at)
        s = self.sessions.get(d.key)
        if s is not None:
            s.renewed_at = self.clock()
        return True

    async def _send_default(self, charger_id: str) -> None:
        c = self.chargers.get(charger_id)
        connectors = range(1, (c.connectors if c is not None else 1) + 1)
        single = all(len(self.wiring(charger_id, conn)) == 1 for conn in connectors)
        await self._call(charger_id, tx_default_profile(self.cfg.safe_current_a, 0, 1 if single else None))

    async def _call(self, charger_id: str, payload: dict[str, Any]) -> Outcome:
        self.sends += 1
        try:
            answer = await within(
                self.commands.call(charger_id, "SetChargingProfile", payload), self.cfg.command_timeout_s
            )
        except (ChargegateError, TimeoutError) as e:
            self._failed(charger_id, f"SetChargingProfile to {charger_id} failed: {e}")
            return UNKNOWN
        status = answer.get("status")
        if status != "Accepted":
            self._failed(charger_id, f"charger {charger_id} answered SetChargingProfile with {status}")
            return REFUSED
        if charger_id in self._failing:
            self._failing.discard(charger_id)
            log.info("load: charger %s accepts charging profiles again", charger_id)
        return ACCEPTED

    def _failed(self, charger_id: str, problem: str) -> None:
        """Rounds run on every meter reading: a charger that keeps failing is logged once, until it accepts one."""
        if charger_id in self._failing:
            log.debug("load: %s", problem)
            return
        self._failing.add(charger_id)
        log.warning("load: %s (repeats are logged at DEBUG until it accepts a profile)", problem)

    # ---- control socket ops (the lead registers them: control.register("load.set_site_limit", lm.op_set_site_limit))
    async def op_set_site_limit(self, req: dict[str, Any]) -> Any:
        amps = req.get("amps")
        try:
            self.set_site_limit(amps)  # type: ignore[arg-type]
        except ValueError as e:
            from gateway.errors import CommandError

            raise CommandError(str(e)) from None
        return {"site_limit_a": self.allocator.params.site_limit}

    async def op_status(self, req: dict[str, Any]) -> Any:
        return self.status()

    def status(self) -> dict[str, Any]:
        a = self.last
        now = self.clock()
        online = set(self.commands.connected())
        waiting = set() if a is None else set(a.waiting)
        return {
            "site_limit_a": self.allocator.params.site_limit,
            "mode": None if a is None else a.mode,
            "available_a": None if a is None else a.available,
            "available_phases_a": None if a is None else list(a.available_phases),
            "other_load_a": None if a is None else a.other_load,
            "other_load_phases_a": None if a is None or a.other_phases is None else list(a.other_phases),
            "phase_mismatch": [] if a is None else [SITE_PHASES[ph] for ph in a.mismatch],
            "sessions": {
                f"{k[0]}/{k[1]}": {
                    "transaction_id": s.transaction_id,
                    "phases": phase_names(self.wiring(*k)),
                    "limit_a": self.allocator.sent_limit(k),
                    "in_force_a": self.allocator.in_force(k, now),
                    "reachable": k[0] in online,
                    "target_a": None if a is None else a.targets.get(k),
                    "waiting": k in waiting,
                    "waiting_s": _since(self.allocator.waiting_since(k), now) if k in waiting else None,
                    "parked": self.allocator.parked(k),
                }
                for k, s in self.sessions.items()
            },
            "overdraws": [
                {
                    "charger_id": o.key[0],
                    "connector_id": o.key[1],
                    "limit_a": o.limit,
                    "measured_a": o.measured,
                }
                for o in self.overdraws[-20:]
            ],
        }


def _name(key: SessionKey) -> str:
    return f"{key[0]}/{key[1]}"


def _since(t: float | None, now: float) -> float | None:
    return None if t is None else round(now - t, 1)
