"""Journaled persistence of the offline queue and the authorization cache (agent/journal.py): replay equals the
live state after every change, a power cut at any byte of the last record gives the state before or after it,
damage stops replay, compaction bounds the journal. Run by pytest (test_journal.py) and under MicroPython
(tests/mpy/run.mjs). Common subset only."""

import json

from agentfakes import FakeHal

from agent import journal
from agent.localauth import LocalAuth
from agent.txqueue import JOURNAL_MAX_BYTES, METER, QUEUE_CAP, START, STOP, TxQueue

QJ = "txqueue" + journal.SUFFIX
CJ = "authcache" + journal.SUFFIX


class JHal(FakeHal):
    """FakeHal with a native append and per-blob counters (FakeHal itself uses the Hal default fallback)."""

    def __init__(self):
        FakeHal.__init__(self, 1)
        self.calls = {}  # name -> [storage_write calls, storage_append calls]

    def _count(self, name, i):
        if name not in self.calls:
            self.calls[name] = [0, 0]
        self.calls[name][i] += 1

    def storage_write(self, name, data):
        self._count(name, 0)
        FakeHal.storage_write(self, name, data)

    def storage_append(self, name, data):
        self._count(name, 1)
        self.storage[name] = self.storage.get(name, b"") + bytes(data)

    def copy(self, **override):
        h = JHal()
        h.storage = dict(self.storage)
        for k in override:
            h.storage[k] = override[k]
        return h


def _q_state(q):
    entries = [(e["action"], e["payload"], e["tx"], e["seq"], e["attempts"]) for e in q.entries]
    return (entries, sorted(q.id_map.items()), q.next_local, q.seq)


def _reloaded(hal, **override):
    """The queue a restart would load from (a copy of) this storage; override replaces blobs in the copy."""
    return TxQueue(hal.copy(**override))


def _mv(i):
    return {
        "connectorId": 1,
        "transactionId": -1,
        "meterValue": [
            {
                "timestamp": "2026-11-19T12:00:00Z",
                "sampledValue": [{"value": str(1000 + i), "measurand": "Energy.Active.Import.Register"}],
            }
        ],
    }


def _start(tag):
    return {"connectorId": 1, "idTag": tag, "meterStart": 1000, "timestamp": "2026-11-19T12:00:00Z"}


def _stop(tx):
    return {"transactionId": tx, "meterStop": 2000, "timestamp": "2026-11-19T13:00:00Z", "reason": "Local"}


def _script(q):
    """Every kind of change the core makes, one by one (yields after each)."""
    lid = q.new_local_id()
    yield
    q.push(START, _start("A"), lid)
    yield
    for i in range(4):
        q.push(METER, _mv(i), lid)
        yield
    q.resolve(lid, 77)
    yield
    head = q.head()
    head["attempts"] += 1
    q.note_attempt(head)
    yield
    q.pop_head()
    yield
    q.next_seq()  # non-transaction messages take sequence numbers too
    q.next_seq()
    q.push(STOP, _stop(lid), lid)
    yield
    lid2 = q.new_local_id()
    q.push(START, _start("B"), lid2)
    q.push(METER, _mv(9), lid2)
    yield
    q.drop_transaction(lid2)
    yield
    while len(q):
        q.pop_head()
        yield
    q.forget(lid)
    yield


def test_crc32_fallback_is_the_standard_crc32():
    assert journal.crc32_py(b"123456789") == 0xCBF43926
    assert journal.crc32(b"123456789") == 0xCBF43926
    data = bytes(range(256)) * 3
    assert journal.crc32_py(data) == journal.crc32(data)


def test_queue_replay_equals_live_state_after_every_change():
    hal = JHal()
    q = TxQueue(hal)
    n = 0
    for _ in _script(q):
        n += 1
        assert _q_state(_reloaded(hal)) == _q_state(q), n
    assert n == 18
    changes = n + 2  # one step makes three changes
    # one snapshot (written by the first change, which starts the journal), every later change appended
    assert hal.calls["txqueue"][0] == 1 and hal.calls[QJ][0] == 1
    assert hal.calls[QJ][1] == changes - 1
    records, stopped = journal.decode_records(hal.storage[QJ])
    assert stopped is None and len(records) == changes  # the header + one record per appended change


def test_queue_replay_works_through_the_default_append_fallback():
    hal = FakeHal(1)  # no storage_append of its own: Hal's read + rewrite default
    q = TxQueue(hal)
    for _ in _script(q):
        h = FakeHal(1)
        h.storage = dict(hal.storage)
        assert _q_state(TxQueue(h)) == _q_state(q)


def test_full_queue_eviction_replays_identically():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    for i in range(QUEUE_CAP + 15):
        q.push(METER, _mv(i), lid)
    q.push(STOP, _stop(lid), lid)
    assert len(q) == QUEUE_CAP and q.dropped_meter_values == 17  # the stop evicted one more
    acts = [e["action"] for e in q.entries]
    assert acts[0] == START and acts[-1] == STOP
    r = _reloaded(hal)
    assert _q_state(r) == _q_state(q)
    assert r.dropped_meter_values == 0  # run counters are not persisted (as before)


def _cut_every_byte(hal, q, change, state_of, reload, jname):
    """Apply `change`, then reload copies of storage whose journal holds every prefix of the change's record:
    each must give the state before the change (record incomplete) or after it (record whole)."""
    before = state_of(q)
    prev = hal.storage[jname]
    change()
    after = state_of(q)
    full = hal.storage[jname]
    assert full[: len(prev)] == prev and len(full) > len(prev)  # appended, not rewritten
    rec_len = len(full) - len(prev)
    for k in range(rec_len + 1):
        torn = full[: len(prev) + k]
        loaded = reload(hal, **{jname: torn})
        expected = after if k == rec_len else before
        assert state_of(loaded) == expected, (jname, k, rec_len)
    # erased flash (0xFF) or zero fill after a torn record changes nothing either
    for pad in (b"\xff" * 40, b"\x00" * 40):
        assert state_of(reload(hal, **{jname: full[: len(prev) + rec_len // 2] + pad})) == before
    return rec_len


def test_power_cut_at_every_byte_of_the_last_queue_record():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    q.push(METER, _mv(0), lid)
    sizes = []
    sizes.append(_cut_every_byte(hal, q, lambda: q.push(METER, _mv(1), lid), _q_state, _reloaded, QJ))
    sizes.append(_cut_every_byte(hal, q, lambda: q.resolve(lid, 5), _q_state, _reloaded, QJ))
    sizes.append(_cut_every_byte(hal, q, lambda: q.pop_head(), _q_state, _reloaded, QJ))
    sizes.append(_cut_every_byte(hal, q, lambda: q.new_local_id(), _q_state, _reloaded, QJ))
    assert sizes[0] > 100 and sizes[2] < 40  # a push carries its payload, a pop is a few bytes


def test_torn_tail_is_folded_at_boot_so_later_records_survive():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    whole = hal.storage[QJ]
    q.push(METER, _mv(1), lid)
    hal.storage[QJ] = hal.storage[QJ][: len(whole) + 7]  # power cut during that append
    q2 = TxQueue(hal)  # the restarted charger
    assert q2.replay_stopped == journal.TORN
    assert [e["action"] for e in q2.entries] == [START]
    q2.push(METER, _mv(2), lid)  # must not land behind the torn bytes
    q3 = TxQueue(hal)
    assert q3.replay_stopped is None
    assert _q_state(q3) == _q_state(q2)


def test_damaged_record_in_the_middle_stops_replay_there():
    hal = JHal()
    q = TxQueue(hal)
    ends = []  # journal length after each change
    states = []
    lid = q.new_local_id()
    ends.append(len(hal.storage[QJ]))
    states.append(_q_state(q))
    for i in range(6):
        q.push(METER, _mv(i), lid)
        ends.append(len(hal.storage[QJ]))
        states.append(_q_state(q))
    full = hal.storage[QJ]
    # flip one payload byte of the third push's record: replay keeps the two before it, ignores the rest
    pos = ends[2] + 20
    bad = full[:pos] + bytes([full[pos] ^ 0x01]) + full[pos + 1 :]
    r = _reloaded(hal, **{QJ: bad})
    assert _q_state(r) == states[2]
    assert r.replay_stopped == journal.CORRUPT
    # damage that leaves valid JSON (a digit of a meter reading) is caught by the CRC alone
    digit = full.find(b'"1002"', ends[2]) + 4
    assert ends[2] < digit < ends[3]
    quiet = full[:digit] + bytes([full[digit] ^ 0x01]) + full[digit + 1 :]
    assert (
        json.loads(quiet[ends[2] + journal.HEADER_LEN : ends[3]])["p"]["meterValue"][0]["sampledValue"][0][
            "value"
        ]
        == "1003"
    )
    assert _q_state(_reloaded(hal, **{QJ: quiet})) == states[2]
    # a wrong length field is caught too (by the CRC, or by running past the end)
    bad_len = full[: ends[3] + 1] + b"\x00\x00\x00\x05" + full[ends[3] + 5 :]
    assert _q_state(_reloaded(hal, **{QJ: bad_len})) == states[3]


def test_stale_journal_after_an_interrupted_compaction_is_ignored():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    q.push(METER, _mv(1), lid)
    old_journal = hal.storage[QJ]
    q.save()  # compaction: snapshot (next generation) then a fresh journal
    # power cut after the snapshot, before the journal restart: the old records must not apply twice
    r = _reloaded(hal, **{QJ: old_journal})
    assert _q_state(r) == _q_state(q)
    assert r.replay_stopped == journal.STALE


def test_compaction_keeps_the_journal_bounded():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    biggest = 0
    for i in range(600):
        q.push(METER, _mv(i), lid)
        if i % 3 == 2:
            q.pop_head()
        biggest = max(biggest, len(hal.storage[QJ]))
    assert biggest <= JOURNAL_MAX_BYTES
    compactions = hal.calls["txqueue"][0]
    assert 2 <= compactions <= 12, compactions  # ~600 pushes x ~200 B over 32 kB journals
    assert _q_state(_reloaded(hal)) == _q_state(q)


def test_pre_journal_blob_loads_and_the_next_change_starts_the_journal():
    hal = JHal()
    old = {
        "q": [{"action": START, "payload": _start("A"), "tx": -1, "seq": 4, "attempts": 2, "not_before": 9}],
        "map": {},
        "next_local": -2,
        "seq": 6,
    }
    hal.storage["txqueue"] = json.dumps(old).encode()
    q = TxQueue(hal)
    assert _q_state(q) == ([(START, _start("A"), -1, 4, 2)], [], -2, 6)
    assert q.head()["not_before"] == 0
    assert QJ not in hal.storage and hal.calls == {}  # nothing written at boot: nothing to fold in
    q.push(METER, _mv(1), -1)
    assert hal.calls["txqueue"][0] == 1 and QJ in hal.storage
    q.push(METER, _mv(2), -1)
    assert hal.calls["txqueue"][0] == 1 and hal.calls[QJ][1] == 1
    assert _q_state(_reloaded(hal)) == _q_state(q)


def test_corrupt_snapshot_ignores_its_journal():
    hal = JHal()
    q = TxQueue(hal)
    q.push(START, _start("A"), q.new_local_id())
    r = _reloaded(hal, txqueue=b"\xff{not json")
    assert len(r) == 0 and r.replay_stopped == journal.NO_BASE
    r.push(START, _start("B"), r.new_local_id())
    assert _q_state(TxQueue(r._hal)) == _q_state(r)


def test_journal_off_rewrites_the_snapshot_on_every_change():
    hal = JHal()
    q = TxQueue(hal, journal=False)
    n = 0
    for _ in _script(q):
        n += 1
    assert hal.calls["txqueue"][0] == n + 2 and QJ not in hal.storage  # every change (one step makes three)
    assert _q_state(TxQueue(hal.copy())) == _q_state(q)


def _c_state(a):
    return (sorted([(k, json.dumps(a.cache[k]["info"]), a.cache[k]["t"]) for k in a.cache]), a._counter)


def _auth_reloaded(hal, **override):
    return LocalAuth(hal.copy(**override), cache_cap=3)


def test_auth_cache_is_journaled_and_replays_eviction_list_and_clear():
    hal = JHal()
    a = LocalAuth(hal, cache_cap=3)
    ok = {"status": "Accepted"}
    steps = [
        lambda: a.remember("T1", ok, True),
        lambda: a.remember("T2", {"status": "Blocked"}, True),
        lambda: a.remember("T3", ok, True),
        lambda: a.remember("T4", ok, True),  # full: the Blocked one goes first
        lambda: a.remember("T1", {"status": "Expired", "expiryDate": "2026-01-01T00:00:00Z"}, True),
        lambda: a.remember("T5", ok, True),  # full: Expired T1 goes
        lambda: a.apply_update(
            {
                "listVersion": 1,
                "updateType": "Full",
                "localAuthorizationList": [{"idTag": "T3", "idTagInfo": ok}],
            },
            True,
            10,
            10,
        ),
        lambda: a.clear_cache(),
        lambda: a.remember("T6", ok, True),
    ]
    for fn in steps:
        fn()
        assert _c_state(_auth_reloaded(hal)) == _c_state(a)
    assert sorted(a.cache.keys()) == ["T6"]
    # the snapshot once (the first change starts the journal); every later change appended, the list update's
    # removal of now list-managed ids included (the list itself is its own blob, rewritten)
    assert hal.calls["authcache"][0] == 1
    assert hal.calls[CJ][1] == len(steps) - 1


def test_power_cut_at_every_byte_of_the_last_auth_cache_record():
    hal = JHal()
    a = LocalAuth(hal, cache_cap=3)
    a.remember("T1", {"status": "Accepted"}, True)
    a.remember("T2", {"status": "Accepted"}, True)
    a.remember("T3", {"status": "Accepted"}, True)
    change = lambda: a.remember("T4", {"status": "Accepted", "parentIdTag": "G1"}, True)  # noqa: E731
    _cut_every_byte(hal, a, change, _c_state, _auth_reloaded, CJ)
