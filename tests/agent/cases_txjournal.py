"""Journaled running-transaction records (agent.core.TransactionLog on agent/journal.py): the record that lets a
restarted charger send a correct StopTransaction (PowerLoss: meterStop read at boot, transactionData = the
persisted samples + Transaction.End) after a power cut. Replay equals the live records after every change, a power
cut at any byte of the last record reloads the records before or after it (and the restarted core stops exactly
that), stops and the size bound compact, the samples stay on flash (RAM holds where they are), the old policy and
the older layouts' blobs still work. Run by pytest (test_txjournal.py) and under MicroPython (tests/mpy/run.mjs).
Common subset only."""

import json

from agentfakes import Central, FakeHal, current_file, decode_log, step

from agent import journal
from agent.core import (
    MAX_TXN_DATA,
    TX_JOURNAL_MAX_BYTES,
    TX_STORAGE,
    AgentConfig,
    ChargePointCore,
    TransactionLog,
)
from agent.txqueue import STOP


class THal(FakeHal):
    """FakeHal with a native append, per-blob call counters and copies (a restart on the same flash)."""

    def __init__(self, connectors=1):
        FakeHal.__init__(self, connectors)
        self.calls = {}  # name -> [storage_write calls, storage_append calls]
        self.ops = []  # (name, "w" | "a", data): every storage call in order

    def _count(self, name, i):
        if name not in self.calls:
            self.calls[name] = [0, 0]
        self.calls[name][i] += 1

    def storage_write(self, name, data):
        self._count(name, 0)
        self.ops.append((name, "w", bytes(data)))
        FakeHal.storage_write(self, name, data)

    def storage_append(self, name, data):
        self._count(name, 1)
        self.ops.append((name, "a", bytes(data)))
        self.storage[name] = self.storage.get(name, b"") + bytes(data)

    def copy(self, **override):
        """Same flash (with `override` blobs replaced) and same meters, fresh counters: the restarted charger."""
        h = THal(len(self.pilot))
        h.storage = dict(self.storage)
        for k in override:
            h.storage[k] = override[k]
        for i in self.energy:
            h.energy[i] = self.energy[i]
        h.now = self.now
        h.wall = self.wall
        return h


def _core(hal, journal_on=True):
    core = ChargePointCore(AgentConfig("CP1", connectors=len(hal.pilot), storage_journal=journal_on), hal)
    core.cfg.change("MeterValueSampleInterval", "10")
    core.cfg.change("AllowOfflineTxForUnknownId", "true")
    return core


def _online(hal, journal_on=True):
    """A booted core with a Central System that answers at once."""
    c = Central(_core(hal, journal_on), hal)
    c.core.tick()
    c.connect()
    step(c)
    return c


def _start(c, cid, tag="TAG-OK-1"):
    c.hal.cards.append(tag)
    step(c)
    c.hal.pilot[cid] = "C"
    step(c, n=2)
    assert c.core.connectors[cid - 1].tx is not None


def _stop(c, cid, tag="TAG-OK-1"):
    c.hal.cards.append(tag)
    step(c)
    assert c.core.connectors[cid - 1].tx is None


def _live(core):
    """The running transactions as the core holds them: {connector id: (record, samples read back)}."""
    out = {}
    for conn in core.connectors:
        if conn.tx is not None:
            out[str(conn.cid)] = (conn.tx, core.transactions.data(conn.cid))
    return out


def _state(log):
    """A TransactionLog's state: {connector id: (record, samples read back)}."""
    out = {}
    for key in log.records:
        out[key] = (log.records[key], log.data(int(key)))
    return out


def _reloaded(hal, **override):
    log = TransactionLog(hal.copy(**override))
    log.load()
    return log


def _deep(obj):
    return json.loads(json.dumps(obj))  # a copy that later live changes do not touch


def _restart_stops(hal):
    """Boot a core on `hal` (a restarted charger, not connected): {transactionId: [StopTransaction payloads]} in
    its offline queue (the PowerLoss stops it queued, and stops queued before the power went)."""
    core = ChargePointCore(AgentConfig("CP1", connectors=len(hal.pilot)), hal)
    out = {}
    for e in core.queue.entries:
        if e["action"] == STOP:
            tid = e["payload"]["transactionId"]
            if tid not in out:
                out[tid] = []
            out[tid].append(e["payload"])
    return out


def _check_restart(hal, records):
    """A core restarted on `hal` stops each transaction in `records` ({connector id: (record, samples)})
    exactly once: with PowerLoss, its persisted samples plus Transaction.End and the meter read at boot, unless
    its StopTransaction was queued before the power went. No other transaction gets a PowerLoss stop."""
    stops = _restart_stops(hal)
    locals_ = [records[key][0]["local"] for key in records]
    for tid in stops:
        for p in stops[tid]:
            assert p["reason"] != "PowerLoss" or tid in locals_, (tid, locals_)
    for key in records:
        tx, samples = records[key]
        got = stops.get(tx["local"], [])
        assert len(got) == 1, (tx["local"], got)
        stop = got[0]
        if stop["reason"] == "PowerLoss":
            assert stop["meterStop"] == max(int(hal.energy[int(key)]), tx["meter_start"])
            data = stop["transactionData"]
            assert data[:-1] == samples
            assert data[-1]["sampledValue"][0]["context"] == "Transaction.End"
    return stops


def _cut_every_byte(hal, change):
    """Apply `change` (it must append one record to the transaction journal's current file), then reload copies of
    storage whose file holds every prefix of that record: the records are those before the change (record
    incomplete) or after it (record whole), never anything else, and a core restarted on each of them stops
    exactly those transactions, each once. Returns the record's length."""
    tj = current_file(hal, TX_STORAGE)
    prev = hal.storage[tj]
    before = _deep(_state(_reloaded(hal)))
    change()
    assert current_file(hal, TX_STORAGE) == tj
    full = hal.storage[tj]
    assert full[: len(prev)] == prev and len(full) > len(prev)  # appended, not rewritten
    after = _deep(_state(_reloaded(hal)))
    assert after != before
    rec_len = len(full) - len(prev)
    records, stopped = decode_log(full[len(prev) :])
    assert stopped is None and len(records) == 1, "one change, one record"
    for k in range(rec_len + 1):
        torn = full[: len(prev) + k]
        log = _reloaded(hal, **{tj: torn})
        expected = after if k == rec_len else before
        assert _deep(_state(log)) == expected, (records[0][0]["o"], k, rec_len)
        assert log.replay_stopped == (journal.TORN if 0 < k < rec_len else None), k
        _check_restart(hal.copy(**{tj: torn}), expected)
    # erased flash (0xFF) or zero fill after a torn record changes nothing either
    for pad in (b"\xff" * 40, b"\x00" * 40):
        assert _deep(_state(_reloaded(hal, **{tj: full[: len(prev) + rec_len // 2] + pad}))) == before
    return rec_len


# ---------------------------------------------------------------------------------------------------------
def test_replay_equals_live_records_after_every_tick():
    hal = THal(2)
    c = _online(hal)
    compared = [0]

    def ticks(n, ms=1000):
        for _ in range(n):
            step(c, ms)
            live = _live(c.core)
            assert _state(c.core.transactions) == live
            for key in live:  # the connector's record is the log's own: every change goes through the log
                assert c.core.transactions.records[key] is live[key][0]
            assert _state(_reloaded(hal)) == live
            compared[0] += 1

    _start(c, 1)
    ticks(35)  # samples on connector 1; the journal started with a compaction, samples appended
    _start(c, 2, "TAG-OK-2")
    ticks(150)  # both connectors sample; connector 1 passes MAX_TXN_DATA (oldest after Begin dropped)
    data = c.core.transactions.data(1)
    assert len(data) == MAX_TXN_DATA and data[0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert c.core.connectors[0].tx["id"] == c.tx_ids[0]  # the StartTransaction answer is persisted too
    # the samples are on flash: RAM holds where each one is
    for loc in c.core.transactions.samples["1"]:
        assert isinstance(loc, tuple) and journal.is_int(loc[0]) and journal.is_int(loc[1])
    _stop(c, 1)  # connector 2 still runs: a stop record
    ticks(3)
    _stop(c, 2, "TAG-OK-2")  # the last one: compaction to a header only
    ticks(2)
    assert compared[0] == 190 and _reloaded(hal).records == {}
    stops = c.of("StopTransaction")
    assert [len(s["transactionData"]) for s in stops] == [MAX_TXN_DATA + 1, MAX_TXN_DATA + 1]


def test_power_cut_at_every_byte_of_the_last_transaction_record():
    hal = THal(2)
    c = _online(hal)
    _start(c, 1)
    step(c, 1000, 25)
    _stop(c, 1)  # the first session started the journal; the stop compacted it
    # "b": a start (offline, so the StartTransaction answer does not follow at once), Transaction.Begin inside
    c.disconnect()
    sizes = {}
    sizes["b"] = _cut_every_byte(hal, lambda: _start(c, 1, "TAG-OFFLINE"))
    # "m": one transactionData sample
    sizes["m"] = _cut_every_byte(hal, lambda: step(c, 1000, 10))
    # "u": the StartTransaction answer when the link comes back (id mapped; the id is not accepted: invalid)
    c.core.cfg.change("StopTransactionOnInvalidId", "false")  # the transaction continues, energy withheld

    def reconnect():
        c.connect()
        step(c)

    sizes["u"] = _cut_every_byte(hal, reconnect)
    assert c.core.connectors[0].tx["invalid"] is True
    # "e": a stop while another transaction runs (offline: the StopTransaction stays queued, as it is at the
    # moment of the append); the restart must not stop it a second time
    _start(c, 2)
    step(c, 1000, 10)
    c.disconnect()
    local2 = c.core.connectors[1].tx["local"]
    sizes["e"] = _cut_every_byte(hal, lambda: _stop(c, 2))
    tj = current_file(hal, TX_STORAGE)
    for k in (0, sizes["e"] // 2, sizes["e"]):
        torn = hal.storage[tj][: len(hal.storage[tj]) - sizes["e"] + k]
        stops = _check_restart(hal.copy(**{tj: torn}), _state(_reloaded(hal, **{tj: torn})))
        assert [p["reason"] for p in stops[local2]] == ["Local"], k
    assert sizes["b"] > sizes["m"] > sizes["u"] > sizes["e"], sizes  # begin carries the record and a sample


def test_last_stop_compacts_to_a_header_and_idle_boot_writes_nothing():
    hal = THal(1)
    c = _online(hal)
    _start(c, 1)
    step(c, 1000, 30)
    assert hal.calls[TX_STORAGE][0] == 1  # the journal started with the first change (the pointer, once)
    tj = current_file(hal, TX_STORAGE)
    assert hal.calls[tj][1] == 4  # then: the StartTransaction answer and 3 samples appended
    _stop(c, 1)
    ptr = json.loads(hal.storage[TX_STORAGE])
    records, stopped = decode_log(hal.storage[current_file(hal, TX_STORAGE)])
    assert stopped is None and records == [({"o": "h", "g": ptr["g"]}, None)]
    restarted = hal.copy()
    _core(restarted)
    # nothing to recover, nothing written
    assert [name for name in restarted.calls if name.startswith(TX_STORAGE)] == []
    # the next session appends its start: no compaction
    writes = hal.calls[TX_STORAGE][0]
    _start(c, 1)
    assert hal.calls[TX_STORAGE][0] == writes


def test_power_cut_between_the_storage_calls_of_a_stop_stops_exactly_once():
    hal = THal(1)
    c = _online(hal)
    _start(c, 1)
    step(c, 1000, 20)
    c.disconnect()  # the StopTransaction stays queued, as it is while the stop is being persisted
    local = c.core.connectors[0].tx["local"]
    flash = dict(hal.storage)
    first = len(hal.ops)
    tj = current_file(hal, TX_STORAGE)
    other = TX_STORAGE + (".1" if tj.endswith(".0") else ".0")
    _stop(c, 1)
    ops = hal.ops[first:]
    assert [e["action"] for e in c.core.queue.entries][-1] == STOP
    # the StopTransaction is queued first, then the record goes (the other file with a header only, the pointer)
    assert [(name, kind) for name, kind, _ in ops] == [
        (current_file(hal, "txqueue"), "a"),
        (other, "w"),
        (TX_STORAGE, "w"),
    ]
    reasons = []
    for i in range(len(ops) + 1):  # the power goes after i whole storage calls of the stop
        cut = dict(flash)
        for name, kind, data in ops[:i]:
            cut[name] = data if kind == "w" else cut.get(name, b"") + data
        restarted = hal.copy()
        restarted.storage = cut
        records = _state(_reloaded(restarted))
        stops = _check_restart(restarted.copy(), records)
        assert len(stops) == 1
        reasons.append(stops[local][0]["reason"])
    # nothing persisted: the restart stops it; the StopTransaction queued: never a second stop
    assert reasons == ["PowerLoss", "Local", "Local", "Local"]


def test_long_session_keeps_the_journal_bounded():
    hal = THal(1)
    c = _online(hal)
    c.core.cfg.change(
        "StopTxnSampledData", "Energy.Active.Import.Register,Power.Active.Import,Current.Offered"
    )
    _start(c, 1)
    biggest = 0
    log = c.core.transactions
    for _ in range(60):
        step(c, 1000, 10)
        biggest = max(biggest, log._journal.size - log._journal.base)
    assert biggest <= TX_JOURNAL_MAX_BYTES
    compactions = hal.calls[TX_STORAGE][0]  # pointer writes
    assert 2 <= compactions <= 6, compactions  # 60 samples x ~500 B over 16 kB journals, + the first
    assert _state(_reloaded(hal)) == _live(c.core)
    hal.energy[1] += 100
    _check_restart(hal.copy(), _live(c.core))


def test_journal_off_rewrites_the_record_on_every_sample():
    hal = THal(1)
    c = _online(hal, journal_on=False)
    _start(c, 1)
    before = hal.calls[TX_STORAGE][0]
    step(c, 1000, 50)
    assert hal.calls[TX_STORAGE][0] == before + 5  # one whole rewrite (file, then pointer) per sample
    assert [n for n in hal.calls if n.startswith(TX_STORAGE + ".") and hal.calls[n][1]] == []  # no appends
    assert _state(_reloaded(hal)) == _live(c.core)
    _check_restart(hal.copy(), _live(c.core))


def test_pre_journal_blob_is_recovered_with_its_samples():
    hal = THal(1)
    begin = {
        "timestamp": "2026-11-19T12:00:00Z",
        "sampledValue": [
            {
                "context": "Transaction.Begin",
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "value": "1000",
                "unit": "Wh",
            }
        ],
    }
    periodic = _deep(begin)
    periodic["sampledValue"][0]["context"] = "Sample.Periodic"
    periodic["sampledValue"][0]["value"] = "1400"
    tx = {
        "local": -1,
        "id_tag": "TAG-OK-1",
        "meter_start": 1000,
        "start": "2026-11-19T12:00:00Z",
        "start_wall": 1795003200,
    }
    old = dict(tx)
    old["data"] = [begin, periodic]
    hal.storage[TX_STORAGE] = json.dumps({"1": old}).encode()  # written by the firmware before the journal
    hal.energy[1] = 1500.0
    _check_restart(hal.copy(), {"1": (tx, [begin, periodic])})
    core = _core(hal)
    assert core.connectors[0].tx is None and _reloaded(hal).records == {}
    assert json.loads(hal.storage[TX_STORAGE])["f"] in (0, 1)  # this layout's pointer replaced the old blob


def test_older_layout_journal_with_samples_is_recovered():
    """The layout of the firmware before this one: snapshot {"gen"} + journal records carrying the samples."""
    hal = THal(1)
    begin = {
        "timestamp": "2026-11-19T12:00:00Z",
        "sampledValue": [{"value": "1000", "context": "Transaction.Begin"}],
    }
    later = [
        {"timestamp": "2026-11-19T12:0" + str(i) + ":00Z", "sampledValue": [{"value": str(1000 + i)}]}
        for i in range(3)
    ]
    tx = {
        "local": -4,
        "id_tag": "TAG-OK-1",
        "meter_start": 1000,
        "start": "2026-11-19T12:00:00Z",
        "start_wall": 1,
    }
    old = dict(tx)
    old["data"] = [begin]
    jnl = journal.encode_record({"gen": 6}) + journal.encode_record({"o": "b", "c": "1", "x": old})
    for v in later:
        jnl += journal.encode_record({"o": "m", "c": "1", "v": v})
    jnl += journal.encode_record({"o": "u", "c": "1", "k": {"id": 812}})
    hal.storage[TX_STORAGE] = json.dumps({"gen": 6}).encode()
    hal.storage[TX_STORAGE + journal.SUFFIX] = bytes(jnl)
    hal.energy[1] = 1700.0
    tx["id"] = 812
    samples = [begin]
    samples.extend(later)
    log = _reloaded(hal)
    assert _state(log) == {"1": (tx, samples)} and log.replay_stopped is None
    _check_restart(hal.copy(), {"1": (tx, samples)})
    _core(hal)
    assert hal.storage[TX_STORAGE + journal.SUFFIX] == b""  # emptied after the migration


def test_torn_tail_is_folded_at_boot_and_damage_stops_replay():
    hal = THal(1)
    c = _online(hal)
    _start(c, 1)
    step(c, 1000, 10)
    tj = current_file(hal, TX_STORAGE)
    ends = [len(hal.storage[tj])]
    states = [_deep(_live(c.core))]
    for _ in range(4):
        step(c, 1000, 10)
        ends.append(len(hal.storage[tj]))
        states.append(_deep(_live(c.core)))
    full = hal.storage[tj]
    # one flipped byte in the second sample record: replay keeps the records before it
    pos = ends[1] + 30
    bad = full[:pos] + bytes([full[pos] ^ 0x01]) + full[pos + 1 :]
    log = _reloaded(hal, **{tj: bad})
    assert _deep(_state(log)) == states[1] and log.replay_stopped == journal.CORRUPT
    # a torn tail: the restarted charger stops the transaction as persisted, folds the journal, and what it
    # appends next replays cleanly
    torn = full[: ends[3] + 11]
    restarted = hal.copy(**{tj: torn})
    _check_restart(restarted.copy(), states[3])
    c2 = Central(_core(restarted), restarted)
    c2.core.tick()
    c2.connect()
    step(c2)
    _start(c2, 1)
    step(c2, 1000, 20)
    log = _reloaded(restarted)
    assert log.replay_stopped is None and _state(log) == _live(c2.core) and log.data(1)


def test_transaction_log_ignores_records_it_cannot_apply():
    hal = THal(1)
    log = TransactionLog(hal)
    log.load()
    log.begin(1, {"local": -1, "id_tag": "T", "meter_start": 5}, None)
    log.update(1, {"id": 9})
    # a whole record with a valid CRC that names no running transaction: replay stops before it
    tj = current_file(hal, TX_STORAGE)
    hal.storage_append(tj, journal.encode_record({"o": "m", "c": "2"}, "{}"))
    hal.storage_append(tj, journal.encode_record({"o": "e", "c": "1"}))
    r = _reloaded(hal)
    assert r.replay_stopped == "unusable" and r.records == {
        "1": {"local": -1, "id_tag": "T", "meter_start": 5, "id": 9}
    }
