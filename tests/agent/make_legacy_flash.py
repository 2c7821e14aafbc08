"""Writes tests/agent/legacy_flash.json.gz: a charger's flash as the agent before the RAM work left it (the JSON
snapshots + journals layout), produced by THAT code, for test_legacy_flash.py (a firmware update must not lose
the offline queue, the cache, the local list or the running transactions).

    .venv/bin/python tests/agent/make_legacy_flash.py [--rev de87bc7]

It extracts agent/ and tests/agent/agentfakes.py at the git revision `--rev` (the last one with the older layout)
into a temporary directory and runs the scenario below in a subprocess that imports them instead of the working
tree's: boot, a local list, cached cards, two online sessions, then offline: two transactions charging long
enough for the queue to reach its cap, compact and journal again; then the power goes. The JSON holds every blob
(base64) and what that core held at the cut, for the test to compare with.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "legacy_flash.json.gz"

SCENARIO = r"""
import base64, json, sys
from agentfakes import Central, FakeHal, step
from agent.core import AgentConfig, ChargePointCore

class AppendHal(FakeHal):
    def storage_append(self, name, data):
        self.storage[name] = self.storage.get(name, b"") + bytes(data)

hal = AppendHal(2)
core = ChargePointCore(AgentConfig("CP1", connectors=2, serial="SN1"), hal)
c = Central(core, hal, accepted_tags=("TAG-OK-1", "TAG-OK-2", "CACHED-1", "CACHED-2", "CACHED-3"))
core.tick()
c.connect()
step(c)
c.result("ChangeConfiguration", {"key": "AllowOfflineTxForUnknownId", "value": "true"})
c.result("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "10"})
lst = [
    {"idTag": "LIST-A", "idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET1"}},
    {"idTag": "LIST-B", "idTagInfo": {"status": "Blocked"}},
    {"idTag": "LIST-C", "idTagInfo": {"status": "Accepted", "expiryDate": "2030-01-01T00:00:00Z"}},
]
assert c.result("SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": lst})["status"] == "Accepted"
for tag in ("CACHED-1", "CACHED-2", "CACHED-3", "UNKNOWN-9"):
    hal.cards.append(tag)
    step(c)
    step(c, 1000, 61)  # ConnectionTimeOut passes
for cid, tag in ((1, "TAG-OK-1"), (2, "TAG-OK-2")):
    hal.cards.append(tag)
    step(c)
    hal.pilot[cid] = "C"
    step(c, 1000, 40)
    hal.pilot[cid] = "A"
    step(c, 1000, 2)
c.disconnect()
hal.cards.append("OFFLINE-1")
step(c)
hal.pilot[1] = "C"
step(c, 1000, 30)
hal.cards.append("LIST-A")
step(c)
hal.pilot[2] = "C"
step(c, 1000, 1500)  # both charge: the queue passes its cap and compacts; the journals fill again
q = core.queue
state = {
    "queue": [[e["action"], e["payload"], e["tx"], e["seq"], e["attempts"]] for e in q.entries],
    "id_map": q.id_map,
    "next_local": q.next_local,
    "seq": q.seq,
    "cache": {k: core.auth.cache[k]["info"] for k in core.auth.cache},
    "list_version": core.auth.list_version,
    "list": core.auth.entries,
    "transactions": {str(x.cid): x.tx for x in core.connectors if x.tx is not None},
    "energy": {str(i): hal.energy[i] for i in hal.energy},
    "wall": hal.wall,
    "now": hal.now,
}
blobs = {k: base64.b64encode(v).decode() for k, v in sorted(hal.storage.items())}
print(json.dumps({"blobs": blobs, "state": state}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="de87bc7", help="git revision with the older storage layout")
    args = ap.parse_args()
    rev = subprocess.run(
        ["git", "rev-parse", args.rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="legacy-agent-") as tmp:
        dest = Path(tmp)
        (dest / "agent").mkdir()
        files = subprocess.run(
            ["git", "ls-tree", "--name-only", rev, "agent/"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for f in [*files, "tests/agent/agentfakes.py"]:
            data = subprocess.run(
                ["git", "show", f"{rev}:{f}"], cwd=ROOT, capture_output=True, check=True
            ).stdout
            (dest / ("agentfakes.py" if f.endswith("agentfakes.py") else f)).write_bytes(data)
        proc = subprocess.run(
            [sys.executable, "-c", SCENARIO],
            cwd=dest,
            env={"PYTHONPATH": str(dest)},
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(proc.stderr)
    out = json.loads(proc.stdout)
    out["made_by"] = f"tests/agent/make_legacy_flash.py at git revision {rev}"
    kinds = sorted(out["blobs"])
    OUT.write_bytes(gzip.compress(json.dumps(out, sort_keys=True, indent=1).encode(), mtime=0))
    print(f"wrote {OUT} ({', '.join(kinds)}; {len(out['state']['queue'])} queued)")


if __name__ == "__main__":
    main()
