"""The task that owns one bus: polls its meters in turn, as the PollScheduler decides, through one Transport."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.meters import rtu
from gateway.meters.catalog import MeterModel, ReadBlock
from gateway.meters.reading import MeterReading, decode_blocks
from gateway.meters.scheduler import PollPolicy, PollScheduler
from gateway.meters.transport import Transport, TransportError

log = logging.getLogger(__name__)

# After the port itself fails (adapter unplugged), wait this long before reopening it: USB re-enumeration takes ~1 s.
REOPEN_DELAY = 2.0


@dataclass(frozen=True)
class PolledMeter:
    id: str
    unit_id: int
    model: MeterModel

    def blocks(self) -> tuple[ReadBlock, ...]:
        return self.model.blocks()


class BusPoller:
    def __init__(
        self,
        bus_id: str,
        transport: Transport,
        meters: list[PolledMeter],
        policy: PollPolicy,
        on_reading: Callable[[MeterReading], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bus_id = bus_id
        self.transport = transport
        self.meters = {m.id: m for m in meters}
        self.clock = clock
        self.wall = wall
        self.scheduler = PollScheduler([m.id for m in meters], policy, clock())
        self.on_reading = on_reading
        self._blocks = {m.id: m.blocks() for m in meters}

    @property
    def stats(self) -> rtu.LineStats:
        return self.transport.stats

    def is_stale(self, meter_id: str) -> bool:
        return self.scheduler.is_stale(meter_id, self.clock())

    async def poll_once(self, meter_id: str) -> MeterReading | None:
        """One poll of one meter (all its blocks) within the attempts the scheduler allows."""
        meter = self.meters[meter_id]
        # Failed requests this poll may still cost: the first plus the retries (one probe while backing off).
        retries_left = self.scheduler.attempts(meter_id) - 1
        started = self.clock()
        words: list[tuple[int, ...]] = []
        for block in self._blocks[meter_id]:
            while True:
                answer = await self.transport.read(meter.unit_id, block.function, block.address, block.count)
                if answer is not None or retries_left <= 0:
                    break
                retries_left -= 1
            if not isinstance(answer, rtu.Registers) or len(answer.words) != block.count:
                if isinstance(answer, rtu.ModbusException):
                    log.warning(
                        "meter %s (unit %d) answered %s for %d@%d",
                        meter_id,
                        meter.unit_id,
                        answer.name,
                        block.count,
                        block.address,
                    )
                backoff = self.scheduler.record_failure(meter_id, self.clock())
                log.debug("meter %s failed a poll; backing off %.1f s", meter_id, backoff)
                return None
            words.append(answer.words)
        values, invalid = decode_blocks(meter.model, self._blocks[meter_id], words)
        now = self.clock()
        self.scheduler.record_success(meter_id, started, now)
        # The values were sampled while we read: stamp them with the time the poll started.
        reading = MeterReading(meter_id, values, started, self.wall() - (now - started), invalid)
        self.on_reading(reading)
        return reading

    async def run(self) -> None:
        while True:
            try:
                await self.transport.open()
            except TransportError as e:
                log.error("bus %s: %s; retrying in %.0f s", self.bus_id, e, REOPEN_DELAY)
                await asyncio.sleep(REOPEN_DELAY)
                continue
            try:
                while True:
                    meter_id, due = self.scheduler.next_poll()
                    delay = due - self.clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await self.poll_once(meter_id)
            except TransportError as e:
                log.error("bus %s: %s; reopening", self.bus_id, e)
                await self.transport.close()
                await asyncio.sleep(REOPEN_DELAY)
            finally:
                await self.transport.close()
