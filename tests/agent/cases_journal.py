"""Journaled persistence of the offline queue, the authorization cache and the local list on flash
(agent/journal.py): replay equals the live state after every change, a power cut at any byte of the last record
gives the state before or after it, damage stops replay, a compaction bounds the journal and is written in pieces
before the pointer switches to it, the older layout (a JSON snapshot + journal) is read and migrated, and the
queue keeps only an index in RAM. Run by pytest (test_journal.py) and under MicroPython (tests/mpy/run.mjs).
Common subset only."""

import json

from agentfakes import FakeHal, boot, current_file, decode_log, step

from agent import journal
from agent.hal import Hal
from agent.localauth import CACHE_STORAGE, LIST_STORAGE, LocalAuth
from agent.txqueue import JOURNAL_MAX_BYTES, METER, QUEUE_CAP, START, STOP, TxQueue

Q = "txqueue"


class JHal(FakeHal):
    """FakeHal with a native append and per-blob counters (FakeHal itself uses the Hal default fallback)."""

    def __init__(self):
        FakeHal.__init__(self, 1)
        self.calls = {}  # name -> [storage_write calls, storage_append calls]
        self.ops = []  # (name, "w" | "a", bytes): every write and append in order
        self.biggest = 0  # the largest piece handed to storage_write/storage_append

    def _count(self, name, i, data):
        if name not in self.calls:
            self.calls[name] = [0, 0]
        self.calls[name][i] += 1
        self.ops.append((name, "wa"[i], bytes(data)))
        if len(data) > self.biggest:
            self.biggest = len(data)

    def storage_write(self, name, data):
        self._count(name, 0, data)
        FakeHal.storage_write(self, name, data)

    def storage_append(self, name, data):
        self._count(name, 1, data)
        self.storage[name] = self.storage.get(name, b"") + bytes(data)

    def copy(self, **override):
        h = JHal()
        h.storage = dict(self.storage)
        for k in override:
            h.storage[k] = override[k]
        return h


class BareHal(Hal):
    """A port written before storage_read_into and storage_append: only whole-blob reads and writes (the Hal
    defaults fill in)."""

    def __init__(self):
        self.storage = {}

    def storage_read(self, name):
        return self.storage.get(name)

    def storage_write(self, name, data):
        self.storage[name] = bytes(data)


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
    # continued over pieces, as records are checked
    assert journal.crc32(b"6789", journal.crc32(b"12345")) == 0xCBF43926
    assert journal.crc32_py(b"6789", journal.crc32_py(b"12345")) == 0xCBF43926


def test_record_meta_and_bulk_round_trip():
    rec = journal.encode_record({"o": "p", "s": 3}, '{"a":[1,2]}')
    records, stopped = decode_log(bytes(rec))
    assert stopped is None and records == [({"o": "p", "s": 3}, b'{"a":[1,2]}')]
    assert journal.bulk_of(rec) == {"a": [1, 2]}
    assert journal.bulk_of(journal.encode_record({"o": "x"})) is None
    padded = journal.encode_record(["T1", 0, None, None], None, 64)
    assert len(padded) == 64 and decode_log(bytes(padded)) == ([(["T1", 0, None, None], None)], None)


def test_queue_replay_equals_live_state_after_every_change():
    hal = JHal()
    q = TxQueue(hal)
    n = 0
    for _ in _script(q):
        n += 1
        assert _q_state(_reloaded(hal)) == _q_state(q), n
    assert n == 18
    changes = n + 2  # one step makes three changes
    # the first change wrote the state (file 0, then the pointer); every later change appended to file 0
    assert current_file(hal, Q) == Q + ".0"
    assert hal.calls[Q][0] == 1 and hal.calls[Q + ".0"][0] == 1
    assert hal.calls[Q + ".0"][1] == changes - 1
    records, stopped = decode_log(hal.storage[Q + ".0"])
    assert stopped is None and len(records) == changes  # the header + one record per appended change
    assert records[0][0]["o"] == "h" and records[0][0]["g"] == json.loads(hal.storage[Q])["g"]


def test_queue_keeps_an_index_in_ram_and_reads_payloads_back():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    for i in range(30):
        q.push(METER, _mv(i), lid)
    r = _reloaded(hal)
    assert len(r) == 31 and r._head is None  # nothing read back before it is needed
    for e in r._idx:  # (seq, action, tx, offset, length): no payload in RAM
        assert len(e) == 5 and journal.is_int(e[3]) and e[4] > journal.HEADER_LEN
    assert r.head()["payload"] == _start("A") and r.head() is r.head()
    r.pop_head()
    assert r.head()["payload"] == _mv(0)
    # a message pushed to an empty queue is the head: it is not read back
    hal2 = JHal()
    q2 = TxQueue(hal2)
    q2.push(METER, _mv(5), -1)
    reads = []
    hal2.storage_read_into = lambda name, off, buf: reads.append(name)
    assert q2.head()["payload"] == _mv(5) and reads == []


def test_a_sent_message_leaves_ram_and_is_read_back_for_a_resend():
    c = boot()
    c.result("ChangeConfiguration", {"key": "TransactionMessageRetryInterval", "value": "1"})
    c.hold = True  # the Central System does not answer yet
    c.hal.cards.append("TAG-OK-1")
    step(c)
    c.answer_held()  # the Authorize
    c.hold = True
    c.hal.pilot[1] = "C"
    step(c)
    head = c.core.queue._head
    assert c.actions()[-1] == START and head["payload"] is None and head["id_tag"] == "TAG-OK-1"
    c.error_for[START] = 1
    c.answer_held()  # a CALLERROR: retried after TransactionMessageRetryInterval, read back from flash
    step(c, 1000, 2)
    starts = c.of(START)
    assert len(starts) == 2 and starts[0] == starts[1] and len(c.core.queue) <= 1
    assert c.core.connectors[0].tx["id"] == c.tx_ids[-1]  # the resent one was answered and applied


def test_queue_replay_works_through_the_default_append_fallback():
    hal = FakeHal(1)  # no storage_append of its own: Hal's read + rewrite default
    q = TxQueue(hal)
    for _ in _script(q):
        h = FakeHal(1)
        h.storage = dict(hal.storage)
        assert _q_state(TxQueue(h)) == _q_state(q)


def test_queue_works_on_a_hal_with_whole_blob_storage_only():
    hal = BareHal()  # Hal's storage_read_into and storage_append defaults
    q = TxQueue(hal)
    for _ in _script(q):
        h = BareHal()
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


def test_queue_capacity_is_configurable():
    hal = JHal()
    q = TxQueue(hal, cap=20)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    assert q.can_start()
    for i in range(30):
        q.push(METER, _mv(i), lid)
    assert len(q) == 20 and not q.can_start() and q.dropped_meter_values == 11
    r = TxQueue(hal.copy(), cap=20)
    assert _q_state(r) == _q_state(q)


def _cut_every_byte(hal, q, change, state_of, reload, store):
    """Apply `change` (one record appended to the store's current file), then reload copies of storage whose file
    holds every prefix of that record: each must give the state before the change (record incomplete) or after
    it (record whole)."""
    jname = current_file(hal, store)
    before = state_of(q)
    prev = hal.storage[jname]
    change()
    assert current_file(hal, store) == jname
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
    sizes.append(_cut_every_byte(hal, q, lambda: q.push(METER, _mv(1), lid), _q_state, _reloaded, Q))
    sizes.append(_cut_every_byte(hal, q, lambda: q.resolve(lid, 5), _q_state, _reloaded, Q))
    sizes.append(_cut_every_byte(hal, q, lambda: q.pop_head(), _q_state, _reloaded, Q))
    sizes.append(_cut_every_byte(hal, q, lambda: q.new_local_id(), _q_state, _reloaded, Q))
    assert sizes[0] > 100 and sizes[2] < 40  # a push carries its payload, a pop is a few bytes


def test_torn_tail_is_folded_at_boot_so_later_records_survive():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    jname = current_file(hal, Q)
    whole = hal.storage[jname]
    q.push(METER, _mv(1), lid)
    hal.storage[jname] = hal.storage[jname][: len(whole) + 7]  # power cut during that append
    q2 = TxQueue(hal)  # the restarted charger
    assert q2.replay_stopped == journal.TORN
    assert [e["action"] for e in q2.entries] == [START]
    assert current_file(hal, Q) != jname  # folded into the other file at boot
    q2.push(METER, _mv(2), lid)  # must not land behind the torn bytes
    q3 = TxQueue(hal)
    assert q3.replay_stopped is None
    assert _q_state(q3) == _q_state(q2)


def test_damaged_record_in_the_middle_stops_replay_there():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    jname = current_file(hal, Q)
    ends = [len(hal.storage[jname])]  # file length after each change
    states = [_q_state(q)]
    for i in range(6):
        q.push(METER, _mv(i), lid)
        ends.append(len(hal.storage[jname]))
        states.append(_q_state(q))
    full = hal.storage[jname]
    # flip one byte of the third push's record: replay keeps the two before it, ignores the rest
    pos = ends[2] + 20
    bad = full[:pos] + bytes([full[pos] ^ 0x01]) + full[pos + 1 :]
    r = _reloaded(hal, **{jname: bad})
    assert _q_state(r) == states[2]
    assert r.replay_stopped == journal.CORRUPT
    # damage that leaves valid JSON (a digit of a meter reading in the payload) is caught by the CRC alone
    digit = full.find(b'"1002"', ends[2]) + 4
    assert ends[2] < digit < ends[3]
    quiet = full[:digit] + bytes([full[digit] ^ 0x01]) + full[digit + 1 :]
    payload = quiet[ends[2] + journal.HEADER_LEN : ends[3]]
    nl = payload.find(b"\n")
    assert json.loads(payload[nl + 1 :])["meterValue"][0]["sampledValue"][0]["value"] == "1003"
    assert _q_state(_reloaded(hal, **{jname: quiet})) == states[2]
    # a wrong length field is caught too (by the CRC, or by running past the end)
    bad_len = full[: ends[3] + 1] + b"\x00\x00\x00\x05" + full[ends[3] + 5 :]
    assert _q_state(_reloaded(hal, **{jname: bad_len})) == states[3]


def test_damaged_payload_is_dropped_when_it_is_needed():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    q.push(METER, _mv(1), lid)
    q.push(METER, _mv(2), lid)
    jname = current_file(hal, Q)
    r = _reloaded(hal)
    # the second message's record goes bad on flash after boot (its CRC no longer matches)
    off = r._idx[1][3]
    data = r._hal.storage[jname]
    r._hal.storage[jname] = data[: off + 30] + bytes([data[off + 30] ^ 0x01]) + data[off + 31 :]
    r.pop_head()
    assert r.head()["payload"] == _mv(2) and r.discarded == 1 and len(r) == 1


def test_interrupted_compaction_leaves_the_old_file_in_charge():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    q.push(METER, _mv(1), lid)
    old_ptr = hal.storage[Q]
    q.save()  # compaction: file 1 written whole, then the pointer switched to it
    assert current_file(hal, Q) == Q + ".1"
    new_file = hal.storage[Q + ".1"]
    # a power cut before the pointer write: the old pointer and file 0 are intact, file 1 is any prefix
    for cut in (0, 5, len(new_file) // 2, len(new_file)):
        r = _reloaded(hal, **{Q: old_ptr, Q + ".1": new_file[:cut]})
        assert _q_state(r) == _q_state(q) and r.replay_stopped is None, cut
    # what the compaction wrote replays to the same state, and later changes append to it
    q.push(METER, _mv(2), lid)
    assert _q_state(_reloaded(hal)) == _q_state(q)


def test_compaction_keeps_the_journal_bounded_and_writes_in_pieces():
    hal = JHal()
    q = TxQueue(hal)
    lid = q.new_local_id()
    q.push(START, _start("A"), lid)
    biggest = 0
    for i in range(600):
        q.push(METER, _mv(i), lid)
        if i % 3 == 2:
            q.pop_head()
        biggest = max(biggest, q._journal.size - q._journal.base)
    assert biggest <= JOURNAL_MAX_BYTES
    compactions = hal.calls[Q][0]  # one pointer write each
    assert 2 <= compactions <= 6, compactions  # ~600 pushes x ~190 B over 48 kB of records, + the first
    assert _q_state(_reloaded(hal)) == _q_state(q)
    # a full queue's compaction: the file written in pieces no larger than the write buffer, then the pointer
    for i in range(QUEUE_CAP):
        q.push(METER, _mv(i), lid)
    hal.ops = []
    hal.biggest = 0
    q.save()
    names = [(name, kind) for name, kind, _ in hal.ops]
    target = current_file(hal, Q)
    assert names[0] == (target, "w") and names[-1] == (Q, "w")
    assert set(names[1:-1]) == {(target, "a")} and len(names) > 3
    assert hal.biggest <= journal.WRITE_CHUNK
    assert _q_state(_reloaded(hal)) == _q_state(q)


def _legacy_journal(gen, *records):
    """The older layout's journal: a {"gen": g} header record then the records (compact JSON, no bulk)."""
    out = journal.encode_record({"gen": gen})
    for r in records:
        out += journal.encode_record(r)
    return bytes(out)


def test_older_layout_snapshot_is_migrated_at_boot():
    hal = JHal()
    old = {
        "q": [{"action": START, "payload": _start("A"), "tx": -1, "seq": 4, "attempts": 2, "not_before": 9}],
        "map": {},
        "next_local": -2,
        "seq": 6,
    }
    hal.storage[Q] = json.dumps(old).encode()
    q = TxQueue(hal)
    assert _q_state(q) == ([(START, _start("A"), -1, 4, 2)], [], -2, 6)
    assert q.head()["not_before"] == 0
    # written in this layout at once: the pointer replaced the old snapshot, the payload is on flash
    assert json.loads(hal.storage[Q])["f"] == 0 and journal.is_int(q._idx[0][3])
    assert _q_state(_reloaded(hal)) == _q_state(q)
    q.push(METER, _mv(1), -1)
    assert hal.calls[Q][0] == 1 and hal.calls[Q + ".0"][1] == 1  # the next change appends
    assert _q_state(_reloaded(hal)) == _q_state(q)


def test_older_layout_journal_is_replayed_migrated_and_emptied():
    snap = {
        "q": [{"action": START, "payload": _start("A"), "tx": -1, "seq": 4, "attempts": 0, "not_before": 0}],
        "map": {},
        "next_local": -2,
        "seq": 6,
        "gen": 3,
    }
    jnl = _legacy_journal(
        3,
        {"o": "p", "a": METER, "p": _mv(1), "t": -1, "s": 7},
        {"o": "r", "l": -1, "r": 55, "s": 7},
        {"o": "p", "a": STOP, "p": _stop(-1), "t": -1, "s": 8},
    )
    expected = ([(START, _start("A"), -1, 4, 0), (METER, _mv(1), -1, 7, 0), (STOP, _stop(-1), -1, 8, 0)],)
    expected += ([("-1", 55)], -2, 8)
    hal = JHal()
    hal.storage[Q] = json.dumps(snap).encode()
    hal.storage[Q + journal.SUFFIX] = jnl
    q = TxQueue(hal.copy())
    assert _q_state(q) == expected and q.replay_stopped is None
    assert q._hal.storage[Q + journal.SUFFIX] == b""  # emptied once its records were written in this layout
    assert _q_state(TxQueue(q._hal.copy())) == expected
    # a torn tail in the old journal: the records before it
    torn = JHal()
    torn.storage[Q] = json.dumps(snap).encode()
    torn.storage[Q + journal.SUFFIX] = jnl[:-5]
    r = TxQueue(torn)
    assert r.replay_stopped == journal.TORN and [e["action"] for e in r.entries] == [START, METER]
    # an old journal of another generation (power cut between its snapshot and the journal restart): ignored
    stale = JHal()
    stale.storage[Q] = json.dumps(snap).encode()
    stale.storage[Q + journal.SUFFIX] = _legacy_journal(2, {"o": "x", "s": 5})
    r = TxQueue(stale)
    assert r.replay_stopped == journal.STALE and [e["action"] for e in r.entries] == [START]


def test_corrupt_pointer_starts_empty():
    hal = JHal()
    q = TxQueue(hal)
    q.push(START, _start("A"), q.new_local_id())
    r = _reloaded(hal, txqueue=b"\xff{not json")
    assert len(r) == 0 and r.replay_stopped == journal.NO_BASE
    r.push(START, _start("B"), r.new_local_id())
    assert _q_state(TxQueue(r._hal.copy())) == _q_state(r)
    # a pointer whose file does not carry its generation: no base either
    ptr = json.loads(hal.storage[Q])
    ptr["g"] += 1
    r = _reloaded(hal, txqueue=json.dumps(ptr).encode())
    assert len(r) == 0 and r.replay_stopped == journal.NO_BASE


def test_journal_off_rewrites_the_state_on_every_change():
    hal = JHal()
    q = TxQueue(hal, journal=False)
    n = 0
    for _ in _script(q):
        n += 1
    assert hal.calls[Q][0] == n + 2  # every change (one step makes three): a new file, then the pointer
    assert hal.calls[Q + ".0"][1] == 0 and hal.calls[Q + ".1"][1] == 0  # never appended to
    assert _q_state(TxQueue(hal.copy())) == _q_state(q)


# -- authorization cache -----------------------------------------------------------------------------------
def _c_state(a):
    return (sorted([(k, list(a.cache[k])) for k in a.cache]), a._counter)


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
    # the pointer once (the first change starts the journal); every later change appended, the list update's
    # removal of now list-managed ids included (the list itself is its own files)
    assert hal.calls[CACHE_STORAGE][0] == 1
    assert hal.calls[CACHE_STORAGE + ".0"][1] == len(steps) - 1


def test_auth_cache_entries_are_compact_and_read_back_as_id_tag_info():
    hal = JHal()
    a = LocalAuth(hal, cache_cap=10)
    a.remember(
        "T1", {"status": "Accepted", "expiryDate": "2028-01-01T00:00:00.500+01:00", "parentIdTag": "G"}, True
    )
    a.remember("T2", {"status": "Blocked"}, True)
    # (status code, expiry as seconds since 2020, parent, counter): no strings kept per entry but the tags
    assert a.cache["T1"] == (0, 1830294000 - 1577836800, "G", 1) and a.cache["T2"] == (1, None, None, 2)
    assert a.lookup("T1", True, True) == {
        "status": "Accepted",
        "expiryDate": "2027-12-31T23:00:00Z",
        "parentIdTag": "G",
    }
    assert a.lookup("T2", True, True) == {"status": "Blocked"} and a.lookup("T2", True, False) is None
    r = LocalAuth(hal.copy(), cache_cap=10)
    assert _c_state(r) == _c_state(a)
    # a smaller capacity after a restart (e.g. a firmware with a smaller default): replay evicts as the live
    # calls would have with that capacity
    r = LocalAuth(hal.copy(), cache_cap=1)
    assert list(r.cache.keys()) == ["T2"]


def test_power_cut_at_every_byte_of_the_last_auth_cache_record():
    hal = JHal()
    a = LocalAuth(hal, cache_cap=3)
    a.remember("T1", {"status": "Accepted"}, True)
    a.remember("T2", {"status": "Accepted"}, True)
    a.remember("T3", {"status": "Accepted"}, True)
    change = lambda: a.remember("T4", {"status": "Accepted", "parentIdTag": "G1"}, True)  # noqa: E731
    _cut_every_byte(hal, a, change, _c_state, _auth_reloaded, CACHE_STORAGE)


def test_older_layout_auth_cache_and_journal_are_migrated():
    hal = JHal()
    snap = {
        "cache": {"T1": {"info": {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00Z"}, "t": 4}},
        "counter": 4,
        "gen": 2,
    }
    hal.storage[CACHE_STORAGE] = json.dumps(snap).encode()
    hal.storage[CACHE_STORAGE + journal.SUFFIX] = _legacy_journal(
        2,
        {"o": "c", "k": "T2", "i": {"status": "Blocked", "parentIdTag": "G"}, "t": 5},
        {"o": "u", "k": ["T1"]},
        {"o": "c", "k": "T3", "i": {"status": "Accepted"}, "t": 6},
    )
    a = LocalAuth(hal, cache_cap=10)
    assert _c_state(a) == ([("T2", [1, None, "G", 5]), ("T3", [0, None, None, 6])], 6)
    assert hal.storage[CACHE_STORAGE + journal.SUFFIX] == b"" and "f" in json.loads(
        hal.storage[CACHE_STORAGE]
    )
    assert _c_state(LocalAuth(hal.copy(), cache_cap=10)) == _c_state(a)


# -- local authorization list (on flash) -------------------------------------------------------------------
def _item(tag, status="Accepted", parent=None, exp=None):
    info = {"status": status}
    if parent is not None:
        info["parentIdTag"] = parent
    if exp is not None:
        info["expiryDate"] = exp
    return {"idTag": tag, "idTagInfo": info}


def _update(a, version, kind, items, max_update=200, max_total=1000):
    payload = {"listVersion": version, "updateType": kind, "localAuthorizationList": items}
    return a.apply_update(payload, True, max_update, max_total)


def _tag(i):
    return "04" + f"{(i * 7919) & 0xFFFFFF:06X}{i:06X}"


def test_local_list_lives_on_flash_and_is_searched_there():
    hal = JHal()
    a = LocalAuth(hal)
    n = 0
    want = {}
    for v in range(1, 6):  # 5 differential updates of 60: 300 entries, every 4th with a parent, some expiring
        items = []
        for i in range(n, n + 60):
            parent = "FLEET-" + str(i // 40) if i % 4 == 0 else None
            exp = "2027-06-01T00:00:00Z" if i % 5 == 0 else None
            items.append(_item(_tag(i), "Accepted" if i % 7 else "Blocked", parent, exp))
            want[_tag(i)] = items[-1]["idTagInfo"]
        assert _update(a, v, "Differential" if v > 1 else "Full", items) == "Accepted"
        n += 60
    assert len(a.entries) == 300 and a.version(True) == 5
    assert a.entries.keys() == sorted(want)  # sorted on flash
    for tag in want:
        assert a.lookup(tag, True, False) == want[tag], tag
    assert a.lookup("04FFFFFFFFFFFF", True, False) is None and a.lookup("", True, False) is None
    assert a.lookup(_tag(3), False, False) is None  # list disabled
    # the list is not in RAM: the LocalList object holds its position on flash only
    assert sorted(a.entries.__dict__.keys()) == [
        "_hal",
        "_j",
        "count",
        "damaged",
        "log",
        "start",
        "version",
        "width",
    ]
    # a differential that removes, replaces and adds, merged with the list as both are read in order
    removed = [_tag(i) for i in range(0, 300, 3)]
    changes = [{"idTag": t} for t in removed] + [_item(_tag(1), "Invalid"), _item("00-NEW-FIRST")]
    assert _update(a, 6, "Differential", changes) == "Accepted"
    for t in removed:
        del want[t]
    want[_tag(1)] = {"status": "Invalid"}
    want["00-NEW-FIRST"] = {"status": "Accepted"}
    assert a.entries.keys() == sorted(want)
    # a longer entry widens every slot (the others are padded further, not re-encoded); a tag with JSON escapes
    width = a.entries.width
    long_one = _item("Z" * 20, "Accepted", "P" * 20, "2030-01-01T00:00:00Z")
    odd = _item('A"B\\C', "Blocked")
    assert _update(a, 7, "Differential", [long_one, odd]) == "Accepted"
    assert a.entries.width > width
    want["Z" * 20] = long_one["idTagInfo"]
    want['A"B\\C'] = odd["idTagInfo"]
    assert a.entries.keys() == sorted(want)
    r = LocalAuth(hal.copy())  # a restart reads the pointer only
    assert r.version(True) == 7 and len(r.entries) == len(want)
    for tag in want:
        assert r.lookup(tag, True, False) == want[tag], tag


def test_local_list_updates_are_validated_before_any_change():
    hal = JHal()
    a = LocalAuth(hal)
    assert _update(a, 1, "Full", [_item("A"), _item("B")]) == "Accepted"
    files = dict(hal.storage)
    assert _update(a, 2, "Differential", [_item("C"), _item("D")], max_total=3) == "Failed"  # would hold 4
    assert _update(a, 2, "Full", [_item("C"), _item("D"), _item("E"), _item("F")], max_total=3) == "Failed"
    assert _update(a, 2, "Full", [_item("C"), {"idTag": "D"}]) == "Failed"  # full entries need idTagInfo
    assert _update(a, 1, "Differential", [_item("C")]) == "VersionMismatch"
    assert _update(a, 2, "Differential", [_item("C")] * 3, max_update=2) == "Failed"
    assert hal.storage[LIST_STORAGE] == files[LIST_STORAGE] and a.entries.keys() == ["A", "B"]
    assert LocalAuth(hal.copy()).entries.keys() == ["A", "B"]
    # the same tag twice in one update: the last one counts, as before
    assert _update(a, 3, "Differential", [_item("A", "Blocked"), _item("A", "Expired")]) == "Accepted"
    assert a.lookup("A", True, False) == {"status": "Expired"}
    # ids now in the list leave the cache; the cache never takes listed ids
    a.remember("Z", {"status": "Accepted"}, True)
    a.remember("A", {"status": "Accepted"}, True)
    assert list(a.cache.keys()) == ["Z"]
    assert _update(a, 4, "Differential", [_item("Z")]) == "Accepted" and a.cache == {}


def test_local_list_power_cut_while_it_is_written_keeps_the_old_list():
    hal = JHal()
    a = LocalAuth(hal)
    assert _update(a, 1, "Full", [_item("T" + str(i)) for i in range(50)]) == "Accepted"
    before = dict(hal.storage)
    hal.ops = []
    assert _update(a, 2, "Differential", [_item("U" + str(i)) for i in range(150)]) == "Accepted"
    ops = hal.ops
    assert ops[-1][0] == LIST_STORAGE and all(name == LIST_STORAGE + ".1" for name, _k, _d in ops[:-1])
    # the power goes after i of the storage calls: the old list until the pointer is written
    for i in range(len(ops)):
        cut = hal.copy()
        cut.storage = dict(before)
        for name, kind, data in ops[:i]:
            cut.storage[name] = data if kind == "w" else cut.storage.get(name, b"") + data
        r = LocalAuth(cut)
        assert r.version(True) == 1 and len(r.entries) == 50 and r.lookup("T7", True, False) is not None, i
        assert r.lookup("U7", True, False) is None
    r = LocalAuth(hal.copy())
    assert r.version(True) == 2 and len(r.entries) == 200


def test_local_list_damage_is_a_miss_not_a_crash():
    hal = JHal()
    a = LocalAuth(hal)
    assert _update(a, 1, "Full", [_item(f"T{i:03d}") for i in range(64)]) == "Accepted"
    name = current_file(hal, LIST_STORAGE)
    data = hal.storage[name]
    mid = a.entries.start + 31 * a.entries.width + 12  # inside entry 31, the binary search's first probe
    hal.storage[name] = data[:mid] + bytes([data[mid] ^ 0x20]) + data[mid + 1 :]
    assert a.lookup("T031", True, False) is None and a.entries.damaged
    a.remember("T031", {"status": "Accepted"}, True)  # not known as listed: it may be cached
    assert a.lookup("T031", True, True) == {"status": "Accepted"}
    # a file cut short is no list at all after a restart
    hal.storage[name] = data[: len(data) // 2]
    r = LocalAuth(hal.copy())
    assert len(r.entries) == 0 and r.version(True) == 0
    # the next full update writes a good list again
    assert _update(r, 5, "Full", [_item("T1")]) == "Accepted" and r.lookup("T1", True, False) is not None


def test_older_layout_local_list_is_migrated():
    hal = JHal()
    old = {
        "version": 7,
        "entries": {
            "B": {"status": "Accepted", "parentIdTag": "G"},
            "A": {"status": "Blocked", "expiryDate": "2030-01-01T00:00:00Z"},
            "bad": {"status": "Sleeping"},
        },
    }
    hal.storage[LIST_STORAGE] = json.dumps(old).encode()
    a = LocalAuth(hal)
    assert a.version(True) == 7 and a.entries.keys() == ["A", "B"]
    assert a.lookup("B", True, False) == {"status": "Accepted", "parentIdTag": "G"}
    assert a.lookup("A", True, False) == {"status": "Blocked", "expiryDate": "2030-01-01T00:00:00Z"}
    assert json.loads(hal.storage[LIST_STORAGE])["v"] == 7  # the pointer replaced the old blob
    assert LocalAuth(hal.copy()).entries.keys() == ["A", "B"]


class _ReadOnlyHal:
    """A HAL written before storage_read_into existed (not derived from agent.hal.Hal): whole-blob reads only."""

    def __init__(self, blobs):
        self.blobs = blobs

    def storage_read(self, name):
        return self.blobs.get(name)


def test_positional_read_falls_back_to_whole_blob_reads():
    read_into = journal.read_into
    hal = _ReadOnlyHal({"b": b"0123456789"})
    buf = bytearray(4)
    assert read_into(hal, "b", 3, buf) == 4 and bytes(buf) == b"3456"
    assert read_into(hal, "b", 8, buf) == 2 and bytes(buf[:2]) == b"89"
    assert read_into(hal, "b", 10, buf) == 0
    assert read_into(hal, "missing", 0, buf) == 0
