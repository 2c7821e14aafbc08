"""The running-transaction journal on the simulator's flash (firmware_sim DirStorage files on a tmp dir, real
O_APPEND writes) under the real core and the simulator's EV and meter, with a fake clock: every sample is one
appended record, a power cut at every byte of the last record (the file truncated there) restarts into a
StopTransaction (PowerLoss) carrying the samples persisted before or after that record, never anything else, and a
real power cut mid-session (SimHal.power_cut) delivers every persisted sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from agentfakes import decode_log
from flashkit import counted_offline_session, offline_session

from agent.core import MAX_TXN_DATA, TX_STORAGE, AgentConfig, ChargePointCore, TransactionLog
from agent.txqueue import METER, START, STOP
from firmware_sim.storage import DirStorage


def _current(flash: Path, name: str) -> str:
    return f"{name}.{json.loads((flash / name).read_bytes())['f']}"


def _queued_stops(core: ChargePointCore) -> list[dict[str, Any]]:
    return [e["payload"] for e in core.queue.entries if e["action"] == STOP]


def test_each_sample_is_one_appended_record_on_flash(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, counting = counted_offline_session(flash)
    tj = _current(flash, TX_STORAGE)
    assert counting.appended.count(tj) == 6 and counting.written == []
    records, stopped = decode_log((flash / tj).read_bytes())
    assert stopped is None and [r[0].get("o") for r in records[2:]] == ["m"] * 6
    assert json.loads(records[2][1])["sampledValue"][0]["context"] == "Sample.Periodic"
    # the start wrote the record and its Transaction.Begin sample as one record
    assert records[1][0]["o"] == "b" and json.loads(records[1][1])["sampledValue"][0]["context"] == (
        "Transaction.Begin"
    )
    assert "data" not in records[1][0]["x"]
    # RAM holds where the samples are, not the samples
    assert all(isinstance(loc, tuple) for loc in core.transactions.samples["1"])


def test_power_cut_at_every_byte_of_the_last_sample_on_flash(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, hal, t = offline_session(flash)
    for _ in range(25):
        t.advance(1)
        core.tick()
    before = json.loads(json.dumps(core.transactions.data(1)))
    tx = dict(core.connectors[0].tx)
    tj = _current(flash, TX_STORAGE)
    prev = (flash / tj).read_bytes()
    for _ in range(10):
        t.advance(1)
        core.tick()
    full = (flash / tj).read_bytes()
    after = json.loads(json.dumps(core.transactions.data(1)))
    assert len(after) == len(before) + 1 and full.startswith(prev)
    others = {n: (flash / n).read_bytes() for n in DirStorage(flash).names() if n != tj}
    live_storage = hal.storage
    scratch = tmp_path / "after-cut"
    rec_len = len(full) - len(prev)
    seen = {"before": 0, "after": 0}
    for k in range(rec_len + 1):
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir()
        for name, data in others.items():
            (scratch / name).write_bytes(data)
        (scratch / tj).write_bytes(full[: len(prev) + k])  # power cut after k bytes of the record
        hal.storage = DirStorage(scratch)  # the same charger (meter, EV) restarted on that flash
        restarted = ChargePointCore(AgentConfig("CP1"), hal)
        [stop] = _queued_stops(restarted)
        expected = after if k == rec_len else before
        seen["after" if k == rec_len else "before"] += 1
        assert stop["reason"] == "PowerLoss" and stop["transactionId"] == tx["local"], k
        assert stop["meterStop"] == hal.meter_wh(1)
        assert stop["transactionData"][:-1] == expected, k
        assert stop["transactionData"][-1]["sampledValue"][0]["context"] == "Transaction.End"
        # boot folded what it found: nothing running, the current file holds a header only
        log = TransactionLog(hal)
        log.load()
        assert log.records == {} and log.replay_stopped is None
        records, stopped = decode_log((scratch / _current(scratch, TX_STORAGE)).read_bytes())
        assert stopped is None and [r[0]["o"] for r in records] == ["h"]
    hal.storage = live_storage
    assert seen == {"before": rec_len, "after": 1}


def test_real_power_cut_mid_session_stops_with_every_persisted_sample(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, hal, t = offline_session(flash)
    for _ in range(200):  # 20 samples: past MAX_TXN_DATA, the oldest after Transaction.Begin dropped
        t.advance(1)
        core.tick()
    persisted = json.loads(json.dumps(core.transactions.data(1)))
    assert len(persisted) == MAX_TXN_DATA
    hal.power_cut()
    register = hal.meter_wh(1)
    hal.power_on()
    core2 = ChargePointCore(AgentConfig("CP1"), hal)
    acts = [e["action"] for e in core2.queue.entries]
    assert acts[0] == START and acts[-1] == STOP and set(acts[1:-1]) == {METER}
    [stop] = _queued_stops(core2)
    assert stop["reason"] == "PowerLoss" and stop["meterStop"] == register
    assert stop["transactionData"][:-1] == persisted
    end = stop["transactionData"][-1]["sampledValue"][0]
    assert end["context"] == "Transaction.End" and end["value"] == str(register)
    assert core2.connectors[0].tx is None
    records, _stopped = decode_log((flash / _current(flash, TX_STORAGE)).read_bytes())
    assert [r[0]["o"] for r in records] == ["h"]  # folded: nothing running
