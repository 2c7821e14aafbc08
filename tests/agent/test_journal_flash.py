"""The journal on the simulator's flash (firmware_sim DirStorage files on a tmp dir) under the real core, with a
fake clock: appends are real O_APPEND writes, reads are positional (DirStorage.read_into), and a power cut at every
byte of the last record (the file truncated there) reloads to the queue before or after that record, never
anything else."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from agentfakes import decode_log
from flashkit import counted_offline_session, offline_session, sim_hal

from agent.core import AgentConfig, ChargePointCore
from agent.txqueue import METER, START, STOP, TxQueue
from firmware_sim.storage import MAX_BLOB_BYTES, DirStorage


def _current(flash: Path, name: str) -> str:
    return f"{name}.{json.loads((flash / name).read_bytes())['f']}"


def _q_state(q: TxQueue) -> tuple[Any, ...]:
    entries = [(e["action"], e["payload"], e["tx"], e["seq"], e["attempts"]) for e in q.entries]
    return (entries, sorted(q.id_map.items()), q.next_local, q.seq)


def test_dir_storage_append_creates_0600_and_appends(tmp_path: Path) -> None:
    st = DirStorage(tmp_path / "flash")
    st.append("j.jnl", b"ab")
    st.append("j.jnl", bytearray(b"cd"))
    assert st.read("j.jnl") == b"abcd" and st.appends == 2 and st.writes == 0
    assert stat.S_IMODE(os.stat(tmp_path / "flash" / "j.jnl").st_mode) == 0o600
    st.write("j.jnl", b"x")  # a compaction replaces it whole
    st.append("j.jnl", b"y")
    assert st.read("j.jnl") == b"xy"
    with pytest.raises(ValueError):
        st.append("../escape", b"x")
    with pytest.raises(TypeError):
        st.append("j.jnl", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        st.append("j.jnl", b"z" * MAX_BLOB_BYTES)
    assert st.read("j.jnl") == b"xy"


def test_dir_storage_reads_at_an_offset(tmp_path: Path) -> None:
    st = DirStorage(tmp_path / "flash")
    st.write("blob", bytes(range(100)))
    st.append("blob", memoryview(b"tail"))
    buf = bytearray(10)
    assert st.read_into("blob", 95, buf) == 9 and bytes(buf[:9]) == bytes(range(95, 100)) + b"tail"
    view = memoryview(buf)[2:6]
    assert st.read_into("blob", 0, view) == 4 and bytes(buf[2:6]) == bytes(range(4))
    assert st.read_into("blob", 104, buf) == 0 and st.read_into("absent", 0, buf) == 0
    with pytest.raises(ValueError):
        st.read_into("../escape", 0, buf)


def test_offline_session_journals_instead_of_rewriting(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, counting = counted_offline_session(flash)
    assert [e["action"] for e in core.queue.entries].count(METER) == 6
    # one queue record per MeterValues, one transaction-journal record per transactionData sample
    qj, tj = _current(flash, "txqueue"), _current(flash, "transactions")
    assert counting.appended == [qj, tj] * 6
    assert counting.written == []  # neither the queue nor the transaction record was rewritten
    records, stopped = decode_log((flash / qj).read_bytes())
    assert stopped is None
    assert [r[0]["a"] for r in records if r[0].get("o") == "p"] == [START] + [METER] * 6


def test_power_cut_at_every_byte_of_the_last_record_on_flash(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, _hal_unused, t = offline_session(flash)
    qj = _current(flash, "txqueue")
    # tick until one tick appends exactly one record (a periodic MeterValues)
    for _ in range(30):
        before = _q_state(core.queue)
        prev = (flash / qj).read_bytes()
        t.advance(1)
        core.tick()
        full = (flash / qj).read_bytes()
        records, stopped = decode_log(full[len(prev) :])
        if len(records) == 1:
            break
    else:
        raise AssertionError("no MeterValues sampled")
    assert stopped is None and records[0][0]["o"] == "p" and records[0][0]["a"] == METER
    after = _q_state(core.queue)
    assert after != before
    pointer = (flash / "txqueue").read_bytes()
    scratch = tmp_path / "after-cut"
    rec_len = len(full) - len(prev)
    seen = {"before": 0, "after": 0}
    for k in range(rec_len + 1):
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir()
        (scratch / "txqueue").write_bytes(pointer)
        (scratch / qj).write_bytes(full[: len(prev) + k])  # power cut after k bytes of the record
        q = TxQueue(sim_hal(scratch)[0])
        got = _q_state(q)
        if k == rec_len:
            assert got == after, k
            seen["after"] += 1
        else:
            assert got == before, k
            assert q.replay_stopped == ("torn" if k else None)
            seen["before"] += 1
    assert seen == {"before": rec_len, "after": 1}


def test_restart_after_power_cut_replays_the_journal_and_stops_with_power_loss(tmp_path: Path) -> None:
    flash = tmp_path / "flash"
    core, hal, t = offline_session(flash)
    for _ in range(35):
        t.advance(1)
        core.tick()
    queued = [e["action"] for e in core.queue.entries]
    assert queued == [START, METER, METER, METER]
    qj = _current(flash, "txqueue")
    hal.power_cut()
    hal.power_on()
    core2 = ChargePointCore(AgentConfig("CP1"), hal)
    entries = core2.queue.entries
    assert [e["action"] for e in entries] == [START, METER, METER, METER, STOP]
    assert entries[-1]["payload"]["reason"] == "PowerLoss"
    # nothing was damaged: the restart appended the stop to the same file, no compaction
    assert _current(flash, "txqueue") == qj
    records, stopped = decode_log((flash / qj).read_bytes())
    assert stopped is None and [r[0].get("o") for r in records[-1:]] == ["p"]
