"""Test doubles for the agent core, in the CPython/MicroPython common subset.

FakeHal is an in-memory charger (clock, pilot, relay, meter, card reader, storage). Central is an in-memory
Central System that answers the core's CALLs, sends CALLs to it, and records every frame. On CPython the test
module installs FRAME_HOOK to validate every frame against the official OCPP 1.6 JSON schemas.
"""

import json

from agent.compat import iso_utc
from agent.hal import Hal

# Set by the CPython test module: hook(direction, action, kind, payload) validates one frame.
FRAME_HOOK = [None]


class FakeHal(Hal):
    def __init__(self, connectors=1):
        self.now = 1000
        self.wall = 1795000000.0  # 2026-11-19
        self.pilot = {}
        self.relay = {}
        self.limit = {}
        self.energy = {}
        self.power = {}
        self.locked = {}
        self.faults = {}
        for i in range(1, connectors + 1):
            self.pilot[i] = "A"
            self.energy[i] = 1000.0
            self.power[i] = 7200.0
            self.faults[i] = None
        self.cards = []
        self.storage = {}
        self.reboots = []
        self.writes = 0

    def advance(self, ms):
        """Move both clocks; a closed relay with an EV requesting charge imports energy."""
        self.now += ms
        self.wall += ms / 1000.0
        for i in self.energy:
            if self.relay.get(i) and self.pilot[i] in ("C", "D") and self.limit.get(i, 0) > 0:
                self.energy[i] += self.power[i] * ms / 3600000.0

    def ticks_ms(self):
        return self.now

    def wall_time(self):
        return self.wall

    def pilot_state(self, connector_id):
        return self.pilot[connector_id]

    def set_relay(self, connector_id, closed):
        self.relay[connector_id] = closed

    def set_current_limit(self, connector_id, amps):
        self.limit[connector_id] = amps

    def meter_wh(self, connector_id):
        return int(self.energy[connector_id])

    def meter_power_w(self, connector_id):
        if self.relay.get(connector_id) and self.pilot[connector_id] in ("C", "D"):
            return self.power[connector_id]
        return 0.0

    def lock_connector(self, connector_id, locked):
        self.locked[connector_id] = locked
        return True

    def fault_code(self, connector_id):
        return self.faults[connector_id]

    def read_card(self):
        if self.cards:
            return self.cards.pop(0)
        return None

    def storage_read(self, name):
        return self.storage.get(name)

    def storage_read_into(self, name, offset, buf):
        data = self.storage.get(name)
        if not data or offset >= len(data):
            return 0
        n = min(len(buf), len(data) - offset)
        buf[0:n] = data[offset : offset + n]
        return n

    def storage_write(self, name, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("storage_write wants bytes")
        self.writes += 1
        self.storage[name] = bytes(data)

    def reboot(self, hard):
        self.reboots.append(hard)


def decode_log(raw):
    """Test helper: the records of a journal file (agent/journal.py) or of the older layout's journal, read
    whole: ([(meta, bulk bytes or None), ...], None | "torn" | "corrupt"), with journal.scan's rules."""
    from agent import journal

    out = []
    pos = 0
    n = len(raw)
    while pos < n:
        if pos + journal.HEADER_LEN > n:
            return out, journal.TORN
        length = int.from_bytes(raw[pos + 1 : pos + 5], "big")
        if raw[pos] != journal.MAGIC or length > journal.MAX_RECORD_BYTES:
            return out, journal.CORRUPT
        stop = pos + journal.HEADER_LEN + length
        if stop > n:
            return out, journal.TORN
        payload = raw[pos + journal.HEADER_LEN : stop]
        why = journal.TORN if stop == n else journal.CORRUPT
        crc = journal.crc32(payload, journal.crc32(raw[pos + 1 : pos + 5]))
        if int.from_bytes(raw[pos + 5 : pos + 9], "big") != crc:
            return out, why
        nl = payload.find(b"\n")
        try:
            meta = json.loads(payload if nl < 0 else payload[:nl])
        except ValueError:
            return out, why
        out.append((meta, None if nl < 0 else payload[nl + 1 :]))
        pos = stop
    return out, None


def current_file(hal, name):
    """Test helper: the current log file of store `name` (agent/journal.py), from its pointer."""
    return name + "." + str(json.loads(hal.storage[name])["f"])


class Central:
    """An in-memory Central System connected to one core."""

    def __init__(
        self, core, hal, boot_status="Accepted", interval=300, accepted_tags=("TAG-OK-1", "TAG-OK-2")
    ):
        self.core = core
        self.hal = hal
        self.boot_status = boot_status
        self.interval = interval
        self.accepted_tags = list(accepted_tags)
        self.connected = False
        self.calls = []  # (uid, action, payload) CALLs received from the charge point, in order
        self.answers = {}  # uid -> ("result", payload) | ("error", code) for CALLs we sent
        self.next_tx_id = 100
        self.tx_ids = []  # transactionIds we handed out
        self.error_for = {}  # action -> remaining number of CALLERROR answers to give
        self.hold = False  # True: record CALLs but do not answer (lost answers)
        self.handlers = {}  # action -> fn(payload) -> answer payload (overrides defaults)
        self._sent = {}  # uid -> action for our CALLs (to validate the result against the right schema)
        self._uid = 0
        self.max_inflight_seen = 0
        self.check_answers = True  # False: tests feeding deliberately malformed answers
        self.clock_skew_s = 0  # Central System time minus the charger's wall clock, in currentTime answers

    # -- link -------------------------------------------------------------------------------------------
    def connect(self):
        self.connected = True
        self.core.on_connected()
        self.pump()

    def disconnect(self):
        self.connected = False
        self.core.on_disconnected()
        self.core.outgoing()

    def attach(self, core):
        """A rebooted charger: new core, same HAL."""
        self.core = core

    def pump(self):
        for _ in range(200):
            frames = self.core.outgoing()
            if not frames:
                return
            unanswered = 0
            for text in frames:
                if not self.connected:
                    continue
                msg = json.loads(text)
                if msg[0] == 2:
                    unanswered += 1
                    self._hook("tx", msg[2], "call", msg[3])
                    self.calls.append((msg[1], msg[2], msg[3]))
                    if not self.hold:
                        self._answer(msg[1], msg[2], msg[3])
                        unanswered -= 1
                elif msg[0] == 3:
                    self._hook("tx", self._sent.get(msg[1]), "result", msg[2])
                    self.answers[msg[1]] = ("result", msg[2])
                else:
                    self.answers[msg[1]] = ("error", msg[2])
            if unanswered > self.max_inflight_seen:
                self.max_inflight_seen = unanswered
        raise AssertionError("core keeps producing frames")

    def _hook(self, direction, action, kind, payload):
        hook = FRAME_HOOK[0]
        if hook is not None and action is not None:
            hook(direction, action, kind, payload)

    def _answer(self, uid, action, payload):
        if self.error_for.get(action, 0) > 0:
            self.error_for[action] -= 1
            self.core.receive(json.dumps([4, uid, "InternalError", "test", {}]))
            return
        handler = self.handlers.get(action)
        if handler is not None:
            answer = handler(payload)
        else:
            answer = self.default_answer(action, payload)
        if self.check_answers:
            self._hook("rx", action, "result", answer)
        self.core.receive(json.dumps([3, uid, answer]))

    def default_answer(self, action, payload):
        # the Central System's clock: the charger's wall clock plus clock_skew_s (0: they agree)
        now = iso_utc(self.hal.wall + self.clock_skew_s)
        if action == "BootNotification":
            return {"status": self.boot_status, "currentTime": now, "interval": self.interval}
        if action == "Heartbeat":
            return {"currentTime": now}
        if action == "Authorize":
            return {"idTagInfo": {"status": self.tag_status(payload["idTag"])}}
        if action == "StartTransaction":
            self.next_tx_id += 1
            self.tx_ids.append(self.next_tx_id)
            return {
                "transactionId": self.next_tx_id,
                "idTagInfo": {"status": self.tag_status(payload["idTag"])},
            }
        return {}

    def tag_status(self, tag):
        return "Accepted" if tag in self.accepted_tags else "Invalid"

    def answer_held(self):
        """Answer the CALLs recorded while `hold` was set (in order)."""
        self.hold = False
        # only the last CALL can be unanswered: the core sends one at a time
        uid, action, payload = self.calls[-1]
        self._answer(uid, action, payload)
        self.pump()

    # -- CALLs from the Central System ---------------------------------------------------------------
    def call(self, action, payload, valid=True):
        """Send a CALL; valid=False for deliberately malformed requests (skips the schema hook)."""
        self._uid += 1
        uid = "cs-" + str(self._uid)
        self._sent[uid] = action
        if valid:
            self._hook("rx", action, "call", payload)
        self.core.receive(json.dumps([2, uid, action, payload]))
        self.pump()
        return self.answers.get(uid)

    def result(self, action, payload):
        """CALL and expect a CALLRESULT; return its payload."""
        answer = self.call(action, payload)
        if answer is None or answer[0] != "result":
            raise AssertionError(action + " answered " + repr(answer))
        return answer[1]

    # -- queries ----------------------------------------------------------------------------------------
    def actions(self):
        return [c[1] for c in self.calls]

    def of(self, action):
        return [c[2] for c in self.calls if c[1] == action]

    def last(self, action):
        found = self.of(action)
        if not found:
            raise AssertionError("no " + action + " in " + repr(self.actions()))
        return found[-1]

    def clear(self):
        self.calls = []


def step(central, ms=100, n=1):
    """Advance the fake clock by `ms` and tick the core `n` times, pumping frames each time."""
    for _ in range(n):
        central.hal.advance(ms)
        central.core.tick()
        central.pump()


def boot(connectors=1, hal=None, boot_status="Accepted", interval=300, connect=True, cfg_kw=None):
    """A core + fake HAL + central; connected and booted unless connect=False."""
    from agent.core import AgentConfig, ChargePointCore

    if hal is None:
        hal = FakeHal(connectors)
    kw = cfg_kw or {}
    core = ChargePointCore(AgentConfig("CP1", connectors=connectors, serial="SN1", **kw), hal)
    central = Central(core, hal, boot_status=boot_status, interval=interval)
    core.tick()
    if connect:
        central.connect()
        step(central)
    return central


def reboot(central, connect=True):
    """Simulate a charger restart: a new core on the same HAL (storage survives)."""
    from agent.core import AgentConfig, ChargePointCore

    n = len(central.core.connectors)
    central.connected = False
    core = ChargePointCore(AgentConfig("CP1", connectors=n, serial="SN1"), central.hal)
    central.attach(core)
    core.tick()
    if connect:
        central.connect()
        step(central)
    return central
