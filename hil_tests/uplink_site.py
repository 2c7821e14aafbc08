"""A site with its uplink for system tests: a real mosquitto, the gateway as `chargegate run` builds it
(gateway.app.Gateway with `[uplink] enabled`, run in the test's process so the test can reach its parts) and the
simulated eMSP, up and connected. Chargers are the test's own (a Fleet of real agents, raw charge points, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import gateway.uplink  # noqa: F401 - registers [uplink] before the config is loaded
from firmware_sim.emsp import SimEmsp
from gateway.app import Gateway
from gateway.config import SiteConfig, load_config
from gateway.uplink import Uplink
from hil_tests.mosquitto import Mosquitto

# Bound on the gateway listening and its uplink connected to the local broker (normally well under a second).
UP_TIMEOUT_S = 20.0


@dataclass
class UplinkSite:
    cfg: SiteConfig
    gw: Gateway
    uplink: Uplink
    emsp: SimEmsp
    broker: Mosquitto


@asynccontextmanager
async def uplink_site(
    tmp_path: Path,
    site_id: str,
    chargers: Sequence[tuple[str, str, int]],
    allow: Sequence[str] = (),
    emsp_tokens: dict[str, str] | None = None,
) -> AsyncIterator[UplinkSite]:
    """`chargers`: (id, password, connectors). Stops the gateway, the eMSP and the broker on the way out."""
    broker = Mosquitto(tmp_path).start()
    charger_tables = "".join(
        f'[[chargers]]\nid = "{cid}"\npassword = "{pw}"\nconnectors = {n}\n' for cid, pw, n in chargers
    )
    allowed = ", ".join(f'"{t}"' for t in allow)
    conf = tmp_path / "site.toml"
    conf.write_text(
        f'[site]\nid = "{site_id}"\ndata_dir = "data"\n[ocpp]\nport = 0\n[auth]\nallow = [{allowed}]\n'
        f'[control]\nsocket = "{tmp_path}/ctl.sock"\n{charger_tables}'
        f"[uplink]\nenabled = true\nport = {broker.port}\nreconnect_max = 1\n"
    )
    cfg = load_config(conf)
    gw = Gateway(cfg)
    assert gw.uplink is not None, "[uplink] enabled must give the gateway an uplink"
    uplink = gw.uplink
    emsp = SimEmsp("127.0.0.1", broker.port, tokens=emsp_tokens)
    emsp.start()
    gw_task = asyncio.create_task(gw.run(announce=False))
    try:
        await emsp.wait_connected()
        # gateway.json is written once the OCPP server and the control socket listen
        await emsp.wait_for(
            lambda: (cfg.data_dir / "gateway.json").exists() and uplink.connected,
            UP_TIMEOUT_S,
            "gateway listening and connected to the broker",
        )
        yield UplinkSite(cfg, gw, uplink, emsp, broker)
    finally:
        gw.stop()
        await gw_task
        await emsp.stop()
        broker.stop()
