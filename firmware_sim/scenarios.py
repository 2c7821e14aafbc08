"""Driver scenarios: what happens at one connector, visit after visit, until the fleet's deadline.

A scenario is a coroutine taking a `ConnectorCtx`. It acts only as the world would: an EV plugs in or leaves, a
driver taps a card, a charger loses power, an app asks the gateway for a remote start. It observes the agent only
through what a driver sees (the connector status the agent computed), and fails with `ScenarioError` when the
charger does not do what it should within a protocol timeout.

Charging times are simulated (`sleep_sim`, sped up by the fleet's clock); protocol waits are real seconds.
When the deadline passes, every wait on charging time returns at once and the visit winds down (the EV leaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from firmware_sim.clock import SimClock
from firmware_sim.ev import MODELS, Ev, EvSpec
from firmware_sim.fleet import Visit, mask_token

if TYPE_CHECKING:
    from firmware_sim.fleet import Fleet, SimCharger

# How long (real seconds) a protocol step may take before the charger counts as misbehaving: a tap is an
# Authorize round trip plus a StartTransaction; on a loaded 2-core box with SQLite fsync per commit that is well
# under a second, so 20 s means "it is not going to happen".
STEP_TIMEOUT_S = 20.0
# A charger that lost power takes: the runner's restart + connect + BootNotification.
REBOOT_TIMEOUT_S = 30.0
# A driver who tapped and saw nothing happen taps again after this long (real seconds).
RETAP_S = 5.0
# Pause between two attempts of the app asking the gateway for a remote start (real seconds).
RETRY_S = 1.0
# A driver waits at most this long for the neighbouring connector's EV to start before plugging in / tapping.
TURN_TIMEOUT_S = 60.0
# Longest network outage (real seconds): the agent's reconnect backoff doubles while it is cut off, and other
# drivers at the same charger wait for their transaction ids meanwhile (REBOOT_TIMEOUT_S).
OUTAGE_MAX_REAL_S = 4.0
# A new visit starts only with at least this much real time left before the deadline, so the last visits are
# not a burst of zero-energy sessions.
MIN_VISIT_REAL_S = 3.0
# Poll period (real seconds) of waits on agent state.
POLL_S = 0.05

CHARGING_STATES = ("Charging", "SuspendedEV", "SuspendedEVSE")


class ScenarioError(Exception):
    pass


class NoVisit(Exception):
    """The deadline came before this visit could begin (not an error)."""


class ConnectorCtx:
    def __init__(
        self,
        fleet: Fleet,
        charger: SimCharger,
        connector_id: int,
        deadline: float,
        rng: random.Random,
        index: int,
    ) -> None:
        self.fleet = fleet
        self.charger = charger
        self.connector_id = connector_id
        self.deadline = deadline
        self.rng = rng
        self.index = index  # position of this connector in the fleet (rotates the scenario mix)
        self.visit: Visit | None = None
        self.ev: Ev | None = None
        self.lives = charger.lives  # the charger's life the present transaction started in
        self.visit_lives = charger.lives  # the charger's life when the EV arrived
        self.held_token: str | None = None  # the card of this connector's driver, from new_ev until leave

    @property
    def label(self) -> str:
        return f"{self.charger.id}/{self.connector_id}"

    @property
    def clock(self) -> SimClock:
        return self.fleet.clock

    def ending(self) -> bool:
        return time.monotonic() >= self.deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- observations -----------------------------------------------------------------------------------------
    def status(self) -> str:
        return self.charger.status(self.connector_id)

    def tx(self) -> int | None:
        return self.charger.transaction_id(self.connector_id)

    async def wait_for(self, what: str, pred: Callable[[], bool], timeout: float = STEP_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() >= end:
                raise ScenarioError(
                    f"{self.label}: {what} did not happen within {timeout:.0f} s "
                    f"(status {self.status()}, tx {self.tx()}, scenario {self.visit.scenario if self.visit else '-'})"
                )
            await asyncio.sleep(POLL_S)

    async def wait_status(self, *statuses: str, timeout: float = STEP_TIMEOUT_S) -> None:
        await self.wait_for(f"status {'/'.join(statuses)}", lambda: self.status() in statuses, timeout)

    async def sleep_sim(self, sim_seconds: float) -> bool:
        """Let `sim_seconds` of simulated time pass; returns False when cut short by the deadline."""
        real = self.clock.sim_to_real(sim_seconds)
        left = self.remaining()
        if left <= 0:
            return False
        await asyncio.sleep(min(real, left))
        return real <= left

    # -- actions ----------------------------------------------------------------------------------------------
    async def new_ev(self, soc: tuple[float, float], target: float = 1.0, spec: EvSpec | None = None) -> Ev:
        """An EV with a driver holding a card no other EV uses right now (waits for one until the deadline)."""
        token = await self.fleet.take_token(self.rng, self.deadline - MIN_VISIT_REAL_S)
        if token is None:
            raise NoVisit(f"{self.label}: no free card before the deadline")
        self.held_token = token
        spec = spec or self.rng.choice(MODELS)
        start = round(self.rng.uniform(*soc), 3)
        return Ev(spec, soc=start, target_soc=max(target, start), id_tag=token)

    def arrive(self, ev: Ev, scenario: str) -> None:
        hal = self.charger.hal
        hal.plug_in(self.connector_id, ev)
        self.ev = ev
        self.visit = Visit(
            charger_id=self.charger.id,
            connector_id=self.connector_id,
            scenario=scenario,
            id_tag=ev.id_tag or "",
            ev_model=ev.spec.name,
            soc_start=ev.soc,
            plugged_at=time.monotonic(),
            register_start=hal.meter_wh(self.connector_id),
        )
        self.charger.visits[self.connector_id] = self.visit
        self.fleet.visits.append(self.visit)
        self.visit_lives = self.charger.lives

    def leave(self) -> None:
        hal = self.charger.hal
        ev = hal.unplug(self.connector_id)
        if self.visit is not None:
            self.visit.left_at = time.monotonic()
            self.visit.register_end = hal.meter_wh(self.connector_id)
            self.visit.soc_end = ev.soc if ev is not None else None
        self.charger.visits[self.connector_id] = None
        self.ev = None
        self.release_token()

    def release_token(self) -> None:
        self.fleet.release_token(self.held_token)
        self.held_token = None

    def tap(self) -> None:
        assert self.ev is not None and self.ev.id_tag
        self.charger.hal.tap(self.ev.id_tag)

    def note(self, text: str) -> None:
        if self.visit is not None:
            self.visit.notes.append(text)

    async def remote_start(self) -> bool:
        """Ask the gateway (control socket `call` op) to send RemoteStartTransaction; False without a channel."""
        sock = self.fleet.control_socket
        if not sock or self.ev is None or not self.ev.id_tag:
            return False
        from gateway.control import request

        req = {
            "op": "call",
            "charger": self.charger.id,
            "action": "RemoteStartTransaction",
            "payload": {"connectorId": self.connector_id, "idTag": self.ev.id_tag},
        }
        # The app retries while the gateway restarts or the charger reconnects, like a real backend client.
        give_up = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                answer = await request(Path(sock), req, timeout=STEP_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as e:
                answer = {"ok": False, "error": f"control socket: {type(e).__name__}: {e}"}
            if answer.get("ok"):
                status = answer.get("result", {}).get("status")
                if status != "Accepted":
                    raise ScenarioError(
                        f"{self.label}: charger answered RemoteStartTransaction with {status!r}"
                    )
                return True
            if self.status() in CHARGING_STATES:
                return True  # the answer was lost, the start was not
            if time.monotonic() >= give_up:
                raise ScenarioError(
                    f"{self.label}: remote start failed at the gateway: {answer.get('error')}"
                )
            await asyncio.sleep(RETRY_S)

    # -- starting a transaction ------------------------------------------------------------------------------
    # A charger with one card reader and several connectors gives a tap to the first connector with an EV
    # waiting for an id. So drivers at one charger take turns: a driver plugs in / taps only while no
    # lower-numbered connector has an EV without a transaction, and holds the charger's turn until their own
    # transaction runs. Otherwise a tap could start the neighbour's EV, as it would on a real charger.
    def _my_turn(self) -> bool:
        hal = self.charger.hal
        return all(
            hal.connector(n).ev is None or self.charger.transaction_id(n) is not None
            for n in range(1, self.connector_id)
        )

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        lock = self.fleet.charger_lock(self.charger.id)
        while True:
            await self.wait_for(
                "a free card reader (the neighbour's EV to start)", self._my_turn, TURN_TIMEOUT_S
            )
            await lock.acquire()
            if self._my_turn():
                break
            lock.release()
        try:
            yield
        finally:
            lock.release()

    async def _start(self, remote: bool) -> None:
        """With the turn held and the EV plugged in: tap (or ask for a remote start), wait for the transaction."""
        await self.wait_for("the charger online", self.charger.registered, REBOOT_TIMEOUT_S)
        await self.wait_status("Preparing")
        if remote and await self.remote_start():
            await self.wait_status(*CHARGING_STATES)
        else:
            if remote:
                self.note("no control channel: tapped instead of a remote start")
            await self._tap_until_started()
        # a transaction started offline gets its id once the gateway is back
        await self.wait_for("transaction id from the gateway", lambda: (self.tx() or 0) > 0, REBOOT_TIMEOUT_S)

    async def _tap_until_started(self) -> None:
        """Tap; when nothing happens (the charger could not authorize the card, e.g. offline with an uncached
        card), tap again a little later, as a driver would."""
        give_up = time.monotonic() + STEP_TIMEOUT_S
        while True:
            self.tap()
            try:
                await self.wait_status(*CHARGING_STATES, timeout=RETAP_S)
                return
            except ScenarioError:
                if time.monotonic() >= give_up or self.tx() is not None or self.status() != "Preparing":
                    await self.wait_status(*CHARGING_STATES, timeout=max(0.0, give_up - time.monotonic()))
                    return
                self.note("nothing happened; tapped again")

    async def start(self, remote: bool = False) -> None:
        """Start this EV's transaction; when the charger reboots meanwhile (a power cut at a neighbour), the tap
        was lost with it: take the turn again and retry once."""
        for attempt in (1, 2):
            lives = self.charger.lives
            try:
                async with self.turn():
                    await self._start(remote and attempt == 1)
                break
            except ScenarioError:
                if attempt == 2 or (self.charger.lives == lives and self.charger.hal.reboot_pending is None):
                    raise
                self.note("charger rebooted while starting; tapped again")
        self.lives = self.charger.lives

    async def arrive_and_start(self, ev: Ev, scenario: str, remote: bool = False) -> None:
        """Plug in and start, holding the charger's turn so no other driver's tap lands on this EV."""
        async with self.turn():
            self.arrive(ev, scenario)
            try:
                await self._start(remote)
                self.lives = self.charger.lives
                return
            except ScenarioError:
                if self.charger.lives == self.visit_lives and self.charger.hal.reboot_pending is None:
                    raise
        self.note("charger rebooted while starting; tapped again")
        await self.start()

    async def charge_for(self, sim_seconds: float) -> bool:
        """Keep charging for `sim_seconds` (or until the EV is full and its departure comes), re-tapping when a
        reboot ended the transaction the way a driver would. False when cut short by the deadline."""
        end = self.clock.sim() + sim_seconds
        while True:
            left = end - self.clock.sim()
            if left <= 0:
                return True
            if not await self.sleep_sim(min(left, self.clock.speed * 1.0)):
                return False
            await self.recover_after_reboot()

    async def recover_after_reboot(self) -> None:
        if self.charger.hal.reboot_pending is None and self.charger.lives == self.lives:
            return
        await self.wait_for("the charger back online", self.charger.registered, REBOOT_TIMEOUT_S)
        if self.tx() is None:
            # the agent closed the interrupted transaction (PowerLoss); the driver taps again
            self.note("transaction ended by the reboot; tapped again")
            await self.start()
        self.lives = self.charger.lives

    async def finish(self, stop_by_tap: bool) -> None:
        """End the visit: optionally tap to stop first, then unplug and wait for the connector to be free."""
        if stop_by_tap and self.tx() is not None:
            self.tap()
            await self.wait_for("transaction stopped by tap", lambda: self.tx() is None)
            await self.wait_status("Finishing", "Preparing")
        self.leave()
        await self.wait_for("transaction ended after unplug", lambda: self.tx() is None)
        await self.wait_status("Available")


# -- scenarios ------------------------------------------------------------------------------------------------
async def arrive_tap_charge_leave(ctx: ConnectorCtx) -> None:
    """Plug in, tap, charge until departure, leave (half of the drivers tap to stop before unplugging)."""
    await ctx.arrive_and_start(await ctx.new_ev(soc=(0.15, 0.6)), "arrive_tap_charge_leave")
    await ctx.charge_for(ctx.rng.uniform(30 * 60, 90 * 60))
    await ctx.finish(stop_by_tap=ctx.rng.random() < 0.5)


async def idle_after_full(ctx: ConnectorCtx) -> None:
    """An EV nearly full charges to its target, stops requesting (SuspendedEV) and stays parked a while.

    Under load management the gateway may pause the session (0 A: SuspendedEVSE) at any time, and when it offers
    current again the charger reports SuspendedEV until the EV requests (pilot B -> C): so "full" is the EV's own
    state, not the status alone, no time counts while the session is paused, and a full EV may be paused."""
    ev = await ctx.new_ev(soc=(0.86, 0.9))
    ev.target_soc = min(1.0, ev.soc + 0.03)
    await ctx.arrive_and_start(ev, "idle_after_full")
    # time to full at the taper's lowest power, plus slack: beyond that the EV should have stopped requesting
    need_wh = (ev.target_soc - ev.soc) * ev.spec.capacity_kwh * 1000 / ev.spec.efficiency
    worst_s = need_wh / (ev.spec.max_ac_power_w * ev.spec.taper_floor) * 3600
    give_up = time.monotonic() + ctx.clock.sim_to_real(worst_s) + STEP_TIMEOUT_S
    while not ((ctx.status() == "SuspendedEV" and ev.full) or ctx.ending()):
        if ctx.status() == "SuspendedEVSE":  # paused by the charger's limit: the EV cannot get full meanwhile
            give_up = max(give_up, time.monotonic() + ctx.clock.sim_to_real(worst_s) + STEP_TIMEOUT_S)
        if time.monotonic() >= give_up:
            raise ScenarioError(f"{ctx.label}: a full EV never became SuspendedEV (status {ctx.status()})")
        await asyncio.sleep(POLL_S)
        await ctx.recover_after_reboot()
    if not ctx.ending():
        ctx.note("full: SuspendedEV")
        await ctx.charge_for(ctx.rng.uniform(10 * 60, 30 * 60))  # parked, full
        if ctx.status() not in ("SuspendedEV", "SuspendedEVSE") and not ctx.ending():
            raise ScenarioError(f"{ctx.label}: a full EV left SuspendedEV ({ctx.status()})")
    await ctx.finish(stop_by_tap=False)


async def remote_start(ctx: ConnectorCtx) -> None:
    """The EV plugs in and waits; the driver's app asks the gateway, which sends RemoteStartTransaction."""
    await ctx.arrive_and_start(await ctx.new_ev(soc=(0.2, 0.5)), "remote_start", remote=True)
    await ctx.charge_for(ctx.rng.uniform(20 * 60, 60 * 60))
    await ctx.finish(stop_by_tap=False)


async def reboot_mid_session(ctx: ConnectorCtx) -> None:
    """The charger loses power in the middle of a session, comes back, and the driver carries on."""
    await ctx.arrive_and_start(await ctx.new_ev(soc=(0.2, 0.5)), "reboot_mid_session")
    if await ctx.charge_for(ctx.rng.uniform(10 * 60, 25 * 60)):
        ctx.note("power cut")
        ctx.charger.power_cut()
        await ctx.wait_for("the charger back online", ctx.charger.registered, REBOOT_TIMEOUT_S)
        await ctx.recover_after_reboot()
        await ctx.charge_for(ctx.rng.uniform(10 * 60, 25 * 60))
    await ctx.finish(stop_by_tap=False)


async def network_outage(ctx: ConnectorCtx) -> None:
    """The charger's uplink fails mid-session: it goes on charging offline, the EV leaves while it is still
    offline, and when the link comes back the agent delivers StartTransaction/MeterValues/StopTransaction in
    order. Without a NetLink (fleet run without links) this is a plain visit."""
    await ctx.arrive_and_start(await ctx.new_ev(soc=(0.2, 0.5)), "network_outage")
    link = ctx.charger.link
    if link is None:
        ctx.note("no NetLink: no outage")
        await ctx.charge_for(ctx.rng.uniform(20 * 60, 40 * 60))
    elif await ctx.charge_for(ctx.rng.uniform(5 * 60, 15 * 60)):
        ctx.note("network cut")
        link.cut()
        try:
            await ctx.charge_for(min(ctx.rng.uniform(10 * 60, 20 * 60), ctx.clock.speed * OUTAGE_MAX_REAL_S))
            ctx.leave()  # the driver leaves while the charger is offline
            await ctx.wait_for("transaction ended offline", lambda: ctx.tx() is None)
        finally:
            if ctx.charger.hal.powered:
                link.restore()
            ctx.note("network back")
        if ctx.ev is None:
            await ctx.wait_status("Available")
            return
    await ctx.finish(stop_by_tap=False)


Scenario = Callable[[ConnectorCtx], Awaitable[None]]
SCENARIOS: dict[str, Scenario] = {
    "arrive_tap_charge_leave": arrive_tap_charge_leave,
    "idle_after_full": idle_after_full,
    "remote_start": remote_start,
    "reboot_mid_session": reboot_mid_session,
    "network_outage": network_outage,
}
DEFAULT_MIX = (
    "arrive_tap_charge_leave",
    "idle_after_full",
    "remote_start",
    "reboot_mid_session",
    "network_outage",
)
# Idle time between two visits at one connector (simulated seconds).
GAP_SIM_S = (2 * 60, 10 * 60)


async def drive_connector(ctx: ConnectorCtx) -> None:
    """Visit after visit until the deadline; a failed visit is reported and the connector is cleared."""
    names = ctx.fleet.scenario_names
    n = 0
    while ctx.remaining() >= MIN_VISIT_REAL_S:
        name = names[(ctx.index + n) % len(names)]
        n += 1
        try:
            await SCENARIOS[name](ctx)
        except NoVisit:
            break
        except ScenarioError as e:
            ctx.fleet.problems.add(str(e))
            await _clear(ctx)
        except Exception as e:  # a bug in a scenario or the agent: report, clear, go on
            ctx.fleet.problems.add(f"{ctx.label}: scenario {name} crashed: {type(e).__name__}: {e}")
            await _clear(ctx)
        await ctx.sleep_sim(ctx.rng.uniform(*GAP_SIM_S))


async def _clear(ctx: ConnectorCtx) -> None:
    if ctx.ev is not None:
        ctx.leave()
    ctx.release_token()
    try:
        await ctx.wait_for("connector free after a failed visit", lambda: ctx.tx() is None, STEP_TIMEOUT_S)
    except ScenarioError as e:
        ctx.fleet.problems.add(str(e))


__all__ = ["DEFAULT_MIX", "SCENARIOS", "ConnectorCtx", "ScenarioError", "drive_connector", "mask_token"]
