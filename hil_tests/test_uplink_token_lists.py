"""Token lists larger than one MQTT message, end to end: the simulated eMSP sends a 200,000-token full list in parts
(some parts duplicated, all reordered) through a real mosquitto to the real gateway (gateway.app.Gateway in this
process, as `chargegate run` builds it); the gateway stages the parts in its SQLite store, applies the list once
every part is there and acknowledges the version. The store must then hold exactly that list.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import gateway.uplink  # noqa: F401 - registers [uplink] before the config is loaded
from firmware_sim.emsp import token_list_commands
from gateway.auth import tokenstore as ts
from hil_tests.uplink_site import uplink_site

try:
    from hil_tests.mosquitto import mosquitto_binary
except ImportError:
    from mosquitto import mosquitto_binary  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")

SITE = "site-lists"
TOKENS = 200_000
# Small parts on purpose: ~30 parts exercise staging, duplicates and reordering (the default split is 3 MiB).
PART_BYTES = 256 * 1024


def listed(conn: sqlite3.Connection) -> dict[str, tuple[str, str | None]]:
    gen = ts.meta(conn, "active_gen")
    rows = conn.execute("SELECT id, status, parent_id FROM auth_list WHERE gen = ?", (gen,))
    return {r[0]: (r[1], r[2]) for r in rows}


def staged(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM token_list_parts").fetchone()[0])


def test_a_200k_token_list_in_duplicated_reordered_parts_lands_exactly(tmp_path: Path) -> None:
    async def main() -> None:
        async with uplink_site(tmp_path, SITE, [("CP1", "token-lists-charger-secret", 1)]) as site:
            gw, emsp = site.gw, site.emsp
            rng = random.Random(11)
            statuses = ("Accepted", "Accepted", "Accepted", "Blocked", "Expired")
            tokens: list[dict[str, Any]] = [
                {"id": f"RF{i:010X}", "status": rng.choice(statuses), "parent_id": f"FLEET{i % 97}"}
                for i in range(TOKENS)
            ]
            want = {t["id"]: (t["status"], t["parent_id"]) for t in tokens}

            # a full list in parts: every part once, some twice, in shuffled order
            t0 = time.monotonic()
            parts = token_list_commands("full", 41, tokens, max_part_bytes=PART_BYTES)
            assert len(parts) >= 20 and len({p["update_id"] for p in parts}) == 1
            sends = parts + rng.sample(parts, 6)
            rng.shuffle(sends)
            first, rest = sends[0], sends[1:]
            # an inconsistent part (other parts count under the same update id) is refused and changes nothing
            r = await emsp.command(SITE, "token_list", first)
            assert r["ok"] and r["result"]["complete"] is False, r
            bad = await emsp.command(SITE, "token_list", {**first, "parts": first["parts"] + 1})
            assert bad["ok"] is False and bad["error"]["code"] == "invalid_args", bad
            assert gw.store.read(staged) == 1
            final = await emsp.send_token_list_parts(SITE, rest, timeout=120)
            elapsed = time.monotonic() - t0
            assert final["ok"] and final["result"]["version_applied"] == 41, final
            assert final["result"]["parts"] == len(parts)
            assert gw.store.read(listed) == want
            assert gw.store.read(staged) == 0 and gw.auth.list_version() == 41
            dup_results = [r for r in emsp.results.values() if r.get("op") == "token_list" and r.get("ok")]
            assert sum(1 for r in dup_results if r["result"].get("duplicate")) >= 1
            assert sum(1 for r in dup_results if "version_applied" in r["result"]) >= 1

            # the library path splits by size on its own; a newer full list replaces the first one
            small = tokens[:50_000]
            again = await emsp.send_token_list(
                SITE, "full", 42, small, max_part_bytes=PART_BYTES, timeout=120
            )
            assert again["ok"] and again["result"]["version_applied"] == 42, again
            assert gw.store.read(listed) == {t["id"]: (t["status"], t["parent_id"]) for t in small}
            # a single-message list (contract v1 without parts) still works
            one = await emsp.send_token_list(SITE, "differential", 43, [{"id": "RF0000000000", "remove": True}],
                                             base_version=42)  # fmt: skip
            assert (
                one["ok"] and one["result"]["version_applied"] == 43 and "update_id" not in one["result"]
            ), one
            assert "RF0000000000" not in gw.store.read(listed)
            print(json.dumps({"token_list_parts": len(parts), "tokens": TOKENS, "sent_parts": len(sends),
                              "deliver_and_apply_s": round(elapsed, 2)}))  # fmt: skip

    asyncio.run(main())
