"""A firmware update: flash written by the agent before the RAM work (JSON snapshots + journals: the offline queue
at its cap with two transactions running, the authorization cache, the local list; produced by that code, see
make_legacy_flash.py) is read by this agent. Nothing is lost: every queued message in order, the PowerLoss stops of
the running transactions with their persisted samples, the cache and the list; it is rewritten in the current
layout at that first boot (old journals emptied), a second restart changes nothing, and the queue drains."""

from __future__ import annotations

import base64
import gzip
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from agentfakes import Central, FakeHal, step

from agent import journal
from agent.core import AgentConfig, ChargePointCore
from agent.txqueue import METER, QUEUE_CAP, START, STOP

FIXTURE = Path(__file__).with_name("legacy_flash.json.gz")


def _fixture() -> dict[str, Any]:
    fx: dict[str, Any] = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    return fx


def _hal(fx: dict[str, Any]) -> FakeHal:
    hal = FakeHal(2)
    hal.storage = {k: base64.b64decode(v) for k, v in fx["blobs"].items()}
    st = fx["state"]
    hal.energy = {int(k): v for k, v in st["energy"].items()}
    hal.wall = st["wall"]
    hal.now = st["now"]
    return hal


def _core(hal: FakeHal) -> ChargePointCore:
    return ChargePointCore(AgentConfig("CP1", connectors=2, serial="SN1"), hal)


def _expected_queue(st: dict[str, Any]) -> list[list[Any]]:
    """The old queue after the two PowerLoss stops were pushed onto it (full: each evicts the oldest MeterValues
    after the head)."""
    queue = [list(e) for e in st["queue"]]
    assert len(queue) == QUEUE_CAP
    for _ in st["transactions"]:
        i = next(i for i in range(1, len(queue)) if queue[i][0] == METER)
        queue.pop(i)
    return queue


def test_fixture_is_the_older_layout() -> None:
    fx = _fixture()
    assert sorted(fx["blobs"]) == [
        "authcache",
        "authcache" + journal.SUFFIX,
        "config",
        "locallist",
        "transactions",
        "transactions" + journal.SUFFIX,
        "txqueue",
        "txqueue" + journal.SUFFIX,
    ]
    st = fx["state"]
    assert len(st["queue"]) == QUEUE_CAP and sorted(st["transactions"]) == ["1", "2"]
    snap = json.loads(base64.b64decode(fx["blobs"]["txqueue"]))
    assert "q" in snap and "f" not in snap  # a JSON snapshot, not this layout's pointer


def test_firmware_update_keeps_everything_and_migrates() -> None:
    fx = _fixture()
    st = fx["state"]
    hal = _hal(fx)
    core = _core(hal)
    entries = core.queue.entries
    kept = _expected_queue(st)
    assert [
        [e["action"], e["payload"], e["tx"], e["seq"], e["attempts"]] for e in entries[: len(kept)]
    ] == kept
    stops = entries[len(kept) :]
    assert [e["action"] for e in stops] == [STOP, STOP]
    for e, key in zip(stops, sorted(st["transactions"]), strict=True):
        tx = st["transactions"][key]
        p = e["payload"]
        assert p["reason"] == "PowerLoss" and p["transactionId"] == tx["local"] == e["tx"]
        assert p["meterStop"] == int(hal.energy[int(key)])
        assert p["transactionData"][:-1] == tx["data"] and len(tx["data"]) == 16
        assert p["transactionData"][-1]["sampledValue"][0]["context"] == "Transaction.End"
    assert core.queue.id_map == st["id_map"] and core.queue.next_local == st["next_local"]
    assert core.queue.seq > st["seq"]
    for tag, info in st["cache"].items():
        assert core.auth.lookup(tag, False, True) == info, tag
    assert core.auth.version(True) == st["list_version"] and len(core.auth.entries) == len(st["list"])
    for tag, info in st["list"].items():
        assert core.auth.lookup(tag, True, False) == info, tag
    # written in this layout at that boot: pointers instead of snapshots, the old journals emptied, payloads on
    # flash (the queue's RAM is its index)
    for name in ("txqueue", "authcache", "transactions", "locallist"):
        assert json.loads(hal.storage[name])["f"] in (0, 1), name
    for name in ("txqueue", "authcache", "transactions"):
        assert hal.storage[name + journal.SUFFIX] == b"", name
    assert all(isinstance(e[3], int) for e in core.queue._idx)
    # a second restart finds the same queue and stops nothing again
    again = _core(hal).queue.entries
    assert [(e["action"], e["payload"], e["seq"]) for e in again] == [
        (e["action"], e["payload"], e["seq"]) for e in entries
    ]
    # the link comes back: every message is delivered, in order
    central = Central(_core(hal), hal)
    central.core.tick()
    central.connect()
    step(central, 1000, 5)
    sent = [(a, p) for _uid, a, p in central.calls if a in (START, METER, STOP)]
    assert [a for a, _p in sent] == [e["action"] for e in entries]
    assert len(central.core.queue) == 0
    assert central.of(STOP)[-1]["reason"] == "PowerLoss"
