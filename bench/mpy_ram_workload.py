"""The agent RAM benchmark's workload (bench/bench_agent_ram.py), in the CPython/MicroPython common subset.

One realistic charger life through the agent core's public API (`ChargePointCore`: receive / tick / outgoing /
on_connected / on_disconnected; `core.queue` and `core.auth` are read for counts only), on the agent tests' fake
HAL (tests/agent/agentfakes.FakeHal) with its storage moved to files. agentfakes' in-RAM storage and its Central
(which keeps every frame it saw) would sit in the same heap and be counted as the agent's: on a charger the blobs
are in flash; here they are files (under MicroPython's WebAssembly port: Emscripten's MEMFS, outside the GC
heap), and LeanCentral answers like agentfakes.Central keeping counters only.

`run()` is a generator: every `live = yield` is a sample point, after every frame the core handled (`receive`)
and every `tick`. The driver takes the reading while the workload is suspended and sends the live heap in:
- MicroPython (WebAssembly port, bench/mpy_ram_run.mjs): this port cannot scan the wasm stack, so gc.collect()
  only marks a collection pending and it runs when control returns to JavaScript. The driver therefore makes
  every step a separate call from JavaScript (`step()`): at the end of a step it reads gc.mem_alloc() (the
  live heap at the step's start plus everything the step allocated: no collection can run inside it) and asks
  for a collection; at the start of the next step gc.mem_alloc() is the live heap, exactly.
- CPython (bench_agent_ram.py --cpython-peer): tracemalloc's current size (reference counting frees garbage at
  once) and its peak since the previous step (the true in-step peak).

Phases (each ends with a sample: its steady state):
  boot            core constructed on empty flash, connected, BootNotification Accepted, 3 StatusNotifications,
                  ChangeConfiguration AllowOfflineTxForUnknownId=true (so every configuration can charge offline)
  local_list      SendLocalList: Full with the first <= SendLocalListMaxLength entries (the core's read-only key:
                  AgentConfig.send_list_max, 200 on CPython, 20 under MicroPython), then Differentials of that
                  many up to `list` entries (LocalAuthListMaxLength is 1000)
  auth_cache      `cache` taps of distinct cards, Authorize answered Accepted: the cache holds min(cache,
                  AgentConfig.cache_cap: 1000 on CPython, 200 under MicroPython)
  sessions_online `sessions` sessions, two at a time (one per connector), `meter_values` MeterValues each;
                  the cards come from the local list, else from the cache, else are new (and then cached)
  offline_fill    link down; both connectors charge offline until the offline queue is at its cap (100), then
                  `extra_minutes` more (the oldest MeterValues evicted)
  power_cut       the core is dropped while both transactions run (storage survives): only the harness is left
  reboot_replay   a new core on the same storage: snapshots + journals replayed, both transactions stopped
                  (PowerLoss)
  drain           link up: BootNotification, the whole offline queue delivered
"""

import json
import os

from agentfakes import FakeHal  # type: ignore[import-not-found,unused-ignore]

from agent.compat import iso_utc
from agent.core import AgentConfig, ChargePointCore
from agent.txqueue import QUEUE_CAP

try:
    from typing import Any
except ImportError:
    pass

# What a list/cache entry carries: an expiry date on every entry, a parentIdTag (fleet) on every 4th list entry.
EXPIRY = "2028-01-01T00:00:00Z"
# Simulated time per tick: MeterValueSampleInterval is 60 s, so 6 ticks per sample.
TICK_MS = 10000
TICKS_PER_MINUTE = 6
# Cache fill: one slope point every this many entries.
CACHE_POINT_EVERY = 100
# Offline queue: slope points start once the queue holds this many messages: both transactions' transactionData
# (MAX_TXN_DATA = 16 samples) has stopped growing by then (20 minutes of 2 MeterValues a minute).
QUEUE_SLOPE_FROM = 40
# Yielded where an exact steady-state reading is wanted (phase ends, slope points): the CPython driver runs a full
# collection only there (MicroPython's collects before every step anyway).
STEADY = "steady"


def card(prefix: str, i: int) -> str:
    """A 7-byte ISO 14443 UID as 14 hex digits (how NFC readers report Mifare/DESFire cards)."""
    return prefix + f"{i:06X}{(i * 7919) & 0xFFFFFF:06X}"


class Meter:
    """Readings by phase. The driver calls `on_live` (live heap, after a full collection) before resuming the
    workload and `on_step_end` (the step's high-water mark as far as the runtime can tell) after each step."""

    def __init__(self) -> None:
        self.phase = "start"
        self.steps = 0
        self.live_peak = 0
        self.live_peak_at = ""
        self.step_peak = 0
        self.step_peak_at = ""
        self.by_phase = {}  # type: dict[str, dict[str, int]]

    def _rec(self) -> "dict[str, int]":
        rec = self.by_phase.get(self.phase)
        if rec is None:
            rec = {"live_peak": 0, "step_peak": 0, "steps": 0}
            self.by_phase[self.phase] = rec
        return rec

    def on_live(self, v: int) -> None:
        rec = self._rec()
        if v > rec["live_peak"]:
            rec["live_peak"] = v
        if v > self.live_peak:
            self.live_peak = v
            self.live_peak_at = self.phase

    def on_step_end(self, v: int) -> None:
        self.steps += 1
        rec = self._rec()
        rec["steps"] += 1
        if v > rec["step_peak"]:
            rec["step_peak"] = v
        if v > self.step_peak:
            self.step_peak = v
            self.step_peak_at = self.phase


class Slope:
    """Least-squares slope of bytes over a count, kept as running sums (constant memory while measuring)."""

    def __init__(self) -> None:
        self.n = 0
        self.sx = 0.0
        self.sy = 0.0
        self.sxx = 0.0
        self.sxy = 0.0
        self.xmin = -1
        self.xmax = -1

    def add(self, x: int, y: int) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += float(x) * x
        self.sxy += float(x) * y
        if self.xmin < 0 or x < self.xmin:
            self.xmin = x
        if x > self.xmax:
            self.xmax = x

    def result(self) -> "dict[str, Any] | None":
        d = self.n * self.sxx - self.sx * self.sx
        if self.n < 2 or d == 0:
            return None
        slope = (self.n * self.sxy - self.sx * self.sy) / d
        return {"bytes_per_item": round(slope, 1), "points": self.n, "from": self.xmin, "to": self.xmax}


class FlashHal(FakeHal):  # type: ignore[misc,unused-ignore]
    """agentfakes.FakeHal with its blobs in files under `root` (the charger's flash), read whole, read at an
    offset (storage_read_into: open, seek, readinto), written or appended. Records the largest read (a blob read
    whole, or the buffer of a positional read) and the largest write: a buffer of that size has to be allocated
    in one piece."""

    def __init__(self, connectors: int, root: str):
        FakeHal.__init__(self, connectors)
        self.root = root
        self.largest_read = 0
        self.largest_read_name = ""
        self.largest_write = 0
        self.largest_write_name = ""

    def _path(self, name: str) -> str:
        return self.root + "/" + name

    def storage_read(self, name: str) -> "bytes | None":
        try:
            with open(self._path(name), "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) > self.largest_read:
            self.largest_read = len(data)
            self.largest_read_name = name
        return data

    def storage_read_into(self, name: str, offset: int, buf: "Any") -> int:
        try:
            f = open(self._path(name), "rb")
        except OSError:
            return 0
        try:
            f.seek(offset)
            n = f.readinto(buf) or 0
        finally:
            f.close()
        if len(buf) > self.largest_read:
            self.largest_read = len(buf)
            self.largest_read_name = name
        return n

    def storage_write(self, name: str, data: bytes) -> None:
        if len(data) > self.largest_write:
            self.largest_write = len(data)
            self.largest_write_name = name
        self.writes += 1
        path = self._path(name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)

    def storage_append(self, name: str, data: bytes) -> None:
        with open(self._path(name), "ab") as f:
            f.write(data)

    def flash_bytes(self) -> int:
        n = 0
        for name in os.listdir(self.root):
            n += os.stat(self._path(name))[6]
        return n


class LeanCentral:
    """An in-memory Central System like agentfakes.Central, keeping counters only (no frame history)."""

    def __init__(self, hal: FlashHal):
        self.hal = hal
        self.core = None  # type: Any
        self.connected = False
        self.next_tx_id = 1000
        self.uid = 0
        self.calls = 0
        self.by_action = {}  # type: dict[str, int]
        self.last_answer = None  # type: Any  # the payload answering our last CALL

    def connect(self) -> "Any":
        self.connected = True
        self.core.on_connected()
        yield from self.pump()

    def disconnect(self) -> None:
        self.connected = False
        self.core.on_disconnected()
        self.core.outgoing()

    def pump(self) -> "Any":
        """Answer every CALL the core sends (one sample after each answer the core handled)."""
        for _ in range(1000):
            frames = self.core.outgoing()
            if not frames:
                return
            while frames:
                text = frames.pop(0)
                if not self.connected:
                    continue
                msg = json.loads(text)
                text = ""
                if msg[0] == 2:
                    self.calls += 1
                    self.by_action[msg[2]] = self.by_action.get(msg[2], 0) + 1
                    reply = json.dumps([3, msg[1], self.answer(msg[2], msg[3])])
                    msg = None
                    self.core.receive(reply)
                    reply = ""
                    yield
                elif msg[0] == 3 and msg[1] == "cs-" + str(self.uid):
                    self.last_answer = msg[2]
                msg = None
            frames = None
        raise RuntimeError("core keeps producing frames")

    def answer(self, action: str, payload: "dict[str, Any]") -> "dict[str, Any]":
        now = iso_utc(self.hal.wall)
        if action == "BootNotification":
            return {"status": "Accepted", "currentTime": now, "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted", "expiryDate": EXPIRY}}
        if action == "StartTransaction":
            self.next_tx_id += 1
            return {
                "transactionId": self.next_tx_id,
                "idTagInfo": {"status": "Accepted", "expiryDate": EXPIRY},
            }
        if action == "StopTransaction":
            return {"idTagInfo": {"status": "Accepted", "expiryDate": EXPIRY}}
        return {}

    def call_text(self, action: str, holder: "list[str]") -> "Any":
        """Send a CALL whose payload is JSON text (holder[0], taken: the frame a websocket would deliver)."""
        self.uid += 1
        self.last_answer = None
        frame = '[2,"cs-' + str(self.uid) + '","' + action + '",' + holder.pop() + "]"
        self.core.receive(frame)
        frame = ""
        yield
        yield from self.pump()


def list_payload(version: int, update_type: str, first: int, count: int) -> str:
    """SendLocalList JSON text: entries first .. first+count-1."""
    parts = []
    for i in range(first, first + count):
        info = '{"status":"Accepted","expiryDate":"' + EXPIRY + '"'
        if i % 4 == 0:
            info += ',"parentIdTag":"FLEET-' + str(i // 40) + '"'
        parts.append('{"idTag":"' + card("04", i) + '","idTagInfo":' + info + "}}")
    head = '{"listVersion":' + str(version) + ',"updateType":"' + update_type + '","localAuthorizationList":['
    return head + ",".join(parts) + "]}"


class Workload:
    """State of one run; `run()` is the generator the driver steps through."""

    def __init__(self, params: "dict[str, Any]", meter: Meter, root: str):
        self.n_list = int(params.get("list", 0))
        self.n_cache = int(params.get("cache", 0))
        self.sessions = int(params.get("sessions", 10))
        self.meter_values = int(params.get("meter_values", 30))
        self.extra_minutes = int(params.get("extra_minutes", 20))
        self.meter = meter
        self.hal = FlashHal(2, root)
        self.central = LeanCentral(self.hal)
        self.core = None  # type: Any
        self.phases = {}  # type: dict[str, Any]
        self.slopes = {}  # type: dict[str, Any]
        self.k = 0  # sessions started

    # -- helpers (generators: every `yield` is a sample point) --------------------------------------------------
    def step(self, n: int = 1) -> "Any":
        for _ in range(n):
            self.hal.advance(TICK_MS)
            self.core.tick()
            yield
            yield from self.central.pump()

    def tap(self, tag: str) -> "Any":
        self.hal.cards.append(tag)
        yield from self.step()

    def begin(self, name: str) -> None:
        self.meter.phase = name

    def end_phase(self, name: str, extra: "dict[str, Any] | None" = None) -> "Any":
        live = yield STEADY
        rec = {"steady": live}  # type: dict[str, Any]
        if extra:
            for k in extra:
                rec[k] = extra[k]
        self.phases[name] = rec

    def session_tag(self, k: int) -> str:
        if self.n_list:
            return card("04", k % self.n_list)
        if self.n_cache:
            return card("08", k % self.n_cache)
        return card("0C", k)

    def start(self, cid: int) -> "Any":
        yield from self.tap(self.session_tag(self.k))
        self.k += 1
        self.hal.pilot[cid] = "C"
        yield from self.step()
        if self.core.transaction_id(cid) is None:
            raise RuntimeError("no transaction started on connector " + str(cid))

    def stop(self, cid: int) -> "Any":
        self.hal.pilot[cid] = "A"
        yield from self.step()
        if self.core.transaction_id(cid) is not None:
            raise RuntimeError("transaction still running on connector " + str(cid))

    def new_core(self) -> None:
        self.core = ChargePointCore(AgentConfig("CP-RAM-1", connectors=2, serial="SN-RAM-1"), self.hal)
        self.central.core = self.core

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> "Any":
        central = self.central
        self.phases["harness"] = {"steady": (yield STEADY)}

        self.begin("boot")
        self.new_core()
        yield
        self.core.tick()
        yield from central.connect()
        yield from self.step()
        yield from central.call_text(
            "ChangeConfiguration", ['{"key":"AllowOfflineTxForUnknownId","value":"true"}']
        )
        if central.last_answer is None or central.last_answer.get("status") != "Accepted":
            raise RuntimeError("ChangeConfiguration answered " + repr(central.last_answer))
        yield from self.end_phase("boot")

        self.begin("local_list")
        slope = Slope()
        slope.add(0, (yield STEADY))
        sent = 0
        version = 1
        while sent < self.n_list:
            count = min(self.core.cfg.get("SendLocalListMaxLength"), self.n_list - sent)
            holder = [list_payload(version, "Full" if sent == 0 else "Differential", sent, count)]
            yield from central.call_text("SendLocalList", holder)
            if central.last_answer is None or central.last_answer.get("status") != "Accepted":
                raise RuntimeError("SendLocalList answered " + repr(central.last_answer))
            sent += count
            version += 1
            slope.add(sent, (yield STEADY))
        self.slopes["local_list_entry"] = slope.result()
        yield from self.end_phase("local_list", {"entries": len(self.core.auth.entries)})

        self.begin("auth_cache")
        slope = Slope()
        slope.add(len(self.core.auth.cache), (yield STEADY))
        for i in range(self.n_cache):
            yield from self.tap(card("08", i))
            if (i + 1) % CACHE_POINT_EVERY == 0:
                slope.add(len(self.core.auth.cache), (yield STEADY))
        yield from self.step(TICKS_PER_MINUTE + 1)  # the last authorization's ConnectionTimeOut (60 s) passes
        self.slopes["auth_cache_entry"] = slope.result()
        yield from self.end_phase("auth_cache", {"entries": len(self.core.auth.cache)})

        self.begin("sessions_online")
        for _ in range(self.sessions // 2):
            yield from self.start(1)
            yield from self.start(2)
            yield from self.step(self.meter_values * TICKS_PER_MINUTE)
            yield from self.stop(1)
            yield from self.stop(2)
        yield from self.end_phase("sessions_online", {"sessions": self.k, "calls": central.calls})

        self.begin("offline_fill")
        central.disconnect()
        slope = Slope()
        yield from self.start(1)
        yield from self.start(2)
        minutes_at_cap = 0
        while minutes_at_cap < self.extra_minutes:
            before = len(self.core.queue)
            yield from self.step(TICKS_PER_MINUTE)
            n = len(self.core.queue)
            if n >= QUEUE_CAP:
                minutes_at_cap += 1
            elif n != before and n >= QUEUE_SLOPE_FROM:
                slope.add(n, (yield STEADY))
        self.slopes["offline_queue_message"] = slope.result()
        yield from self.end_phase(
            "offline_fill",
            {"queued": len(self.core.queue), "evicted_meter_values": self.core.queue.dropped_meter_values},
        )

        self.begin("power_cut")
        central.core = None
        self.core = None
        yield from self.end_phase("power_cut", {"flash_bytes": self.hal.flash_bytes()})

        self.begin("reboot_replay")
        self.new_core()
        yield
        self.core.tick()
        yield from self.end_phase(
            "reboot_replay",
            {
                "queued": len(self.core.queue),
                "list_entries": len(self.core.auth.entries),
                "cache_entries": len(self.core.auth.cache),
            },
        )

        self.begin("drain")
        calls_before = central.calls
        yield from central.connect()
        yield from self.step(3)
        if len(self.core.queue):
            raise RuntimeError("offline queue not drained")
        yield from self.end_phase("drain", {"calls": central.calls - calls_before})

    def result(self) -> "dict[str, Any]":
        m = self.meter
        return {
            "phases": self.phases,
            "by_phase": m.by_phase,
            "slopes": self.slopes,
            "live_peak": m.live_peak,
            "live_peak_phase": m.live_peak_at,
            "step_peak": m.step_peak,
            "step_peak_phase": m.step_peak_at,
            "steps": m.steps,
            "largest_blob_read": [self.hal.largest_read, self.hal.largest_read_name],
            "largest_blob_written": [self.hal.largest_write, self.hal.largest_write_name],
            "calls": self.central.calls,
            "by_action": self.central.by_action,
        }


# -- MicroPython driver (bench/mpy_ram_run.mjs calls setup(), then step() until False, then finish()) -------------
_state = {}  # type: dict[str, Any]


def setup(params: "dict[str, Any]", imports: "list[Any]") -> None:
    import gc

    meter = Meter()
    os.mkdir("/flash")
    w = Workload(params, meter, "/flash")
    _state["w"] = w
    _state["gen"] = w.run()
    _state["first"] = True
    _state["imports"] = imports
    _state["total0"] = gc.mem_free() + gc.mem_alloc()  # type: ignore[attr-defined,unused-ignore]
    _state["error"] = None
    gc.collect()


def step() -> bool:
    """One step of the workload, called from JavaScript: the collection asked for at the end of the previous
    step has run when this starts, so gc.mem_alloc() is the live heap."""
    import gc

    meter = _state["w"].meter
    live = gc.mem_alloc()  # type: ignore[attr-defined,unused-ignore]
    meter.on_live(live)
    try:
        if _state["first"]:
            _state["first"] = False
            next(_state["gen"])
        else:
            _state["gen"].send(live)
    except StopIteration:
        return False
    except MemoryError as e:  # a heap that cannot grow: where it broke is the finding
        _state["error"] = "MemoryError in " + meter.phase + ": " + repr(e)
        return False
    meter.on_step_end(gc.mem_alloc())  # type: ignore[attr-defined,unused-ignore]
    gc.collect()  # runs when this call returns to JavaScript
    return True


def finish() -> None:
    import gc

    w = _state["w"]
    out = w.result()
    out["imports"] = _state["imports"]
    out["error"] = _state["error"]
    out["heap_grew"] = gc.mem_free() + gc.mem_alloc() != _state["total0"]  # type: ignore[attr-defined,unused-ignore]
    print("RAM-RESULT " + json.dumps(out))
