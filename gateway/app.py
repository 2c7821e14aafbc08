"""The composition root: builds the gateway's parts from a SiteConfig and runs them until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
from typing import Any

import gateway.subsystems  # noqa: F401  (config sections and store migrations of every subsystem)
from gateway.auth.charger_lists import ChargerLists
from gateway.auth.service import AuthService
from gateway.config import SiteConfig
from gateway.control import ControlServer
from gateway.csms import Csms, CsmsHooks
from gateway.errors import ChargegateError, CommandError
from gateway.events import StatusBus
from gateway.loadmgmt.config import LoadSection
from gateway.loadmgmt.service import HubMeterSource, LoadManager
from gateway.meters.hub import MeterHub
from gateway.meters.session_energy import SessionMeters
from gateway.server import FrameTrace, OcppServer
from gateway.store import Store
from gateway.uplink import Uplink
from gateway.uplink.cdr import build_session_record
from gateway.uplink.config import UplinkSection

log = logging.getLogger("chargegate")


class Gateway:
    def __init__(self, cfg: SiteConfig, on_frame: FrameTrace | None = None) -> None:
        self.cfg = cfg
        self.store = Store.open(cfg.data_dir)
        self.status_bus = StatusBus()
        self.hooks = CsmsHooks()
        self.auth = AuthService(self.store, cfg.auth)
        self.meters = MeterHub.from_config(cfg)
        self.csms = Csms(
            cfg,
            self.store,
            self.status_bus,
            self.auth,
            self.hooks,
            session_record=build_session_record,
            session_meters=SessionMeters(self.meters) if self.meters.meters else None,
        )
        self.server = OcppServer(cfg, self.csms, on_frame=on_frame)
        self.auth.set_commands(self.server)
        self.hooks.transaction_started.append(self.auth.hook_transaction_started)
        self.hooks.transaction_stopped.append(self.auth.hook_transaction_stopped)
        self.charger_lists: ChargerLists | None = None
        if cfg.auth.sync_charger_lists:
            self.charger_lists = ChargerLists(self.store, self.auth, self.server)
            self.hooks.charger_booted.append(self.charger_lists.on_charger_booted)
        self.control = ControlServer(cfg.control_socket)
        self.control.register("meters.status", self.meters.op_status)
        self.load: LoadManager | None = None
        load_cfg = cfg.sections.get("load")
        if isinstance(load_cfg, LoadSection) and load_cfg.enabled:
            self.load = LoadManager(load_cfg, cfg.chargers, self.server, HubMeterSource(self.meters))
            self.meters.subscribe(self.load.on_meter_reading)
            self.hooks.charger_booted.append(self.load.on_charger_booted)
            self.hooks.transaction_started.append(self.load.on_transaction_started)
            self.hooks.transaction_stopped.append(self.load.on_transaction_stopped)
            self.hooks.current_reported.append(self.load.on_charger_current)
            self.control.register("load.set_site_limit", self.load.op_set_site_limit)
            self.control.register("load.status", self.load.op_status)
        self.uplink: Uplink | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        up_cfg = cfg.sections.get("uplink")
        if isinstance(up_cfg, UplinkSection) and up_cfg.enabled:
            self.uplink = Uplink(
                up_cfg,
                self.store,
                self.status_bus,
                cfg.site.id,
                commands=self.server,
                token_sink=self.auth,
                site_limit_sink=self.load,
                base_dir=cfg.path.parent,
            )
            self.auth.set_emsp(self.uplink.authorizer)
            for name, handler in self.uplink.control_ops().items():
                self.control.register(name, handler)
        self.control.register("call", self._op_call)
        self.control.register("status", self._op_status)
        self.control.register("ping", self._op_ping)
        self._stop = asyncio.Event()

    async def _op_call(self, req: dict[str, Any]) -> Any:
        charger, action, payload = req["charger"], req["action"], req.get("payload", {})
        if not isinstance(payload, dict):
            raise CommandError("payload must be a JSON object")
        timeout = req.get("timeout")
        return await self.server.call(str(charger), str(action), payload, float(timeout) if timeout else None)

    async def _op_ping(self, req: dict[str, Any]) -> Any:
        return {"pong": True}

    async def _op_status(self, req: dict[str, Any]) -> Any:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            out = []
            for c in self.cfg.chargers:
                row = conn.execute("SELECT * FROM chargers WHERE id = ?", (c.id,)).fetchone()
                conns = conn.execute(
                    "SELECT connector_id, status, error_code FROM connector_status WHERE charger_id = ? "
                    "ORDER BY connector_id",
                    (c.id,),
                ).fetchall()
                out.append(
                    {
                        "id": c.id,
                        "connected": c.id in self.server.connected(),
                        "boot_status": row["boot_status"] if row else None,
                        "connectors": [dict(r) for r in conns],
                    }
                )
            return out

        return {"chargers": await self.store.write(read), "ocpp": self.server.stats}

    def stop(self) -> None:
        self._stop.set()

    async def run(self, announce: bool = True) -> None:
        # Nobody is connected to a gateway that has just started, whatever the last process wrote.
        await self.store.write(lambda conn: conn.execute("UPDATE chargers SET connected = 0"))
        await self.auth.start()
        await self.meters.start()
        if self.load is not None:
            # Sessions that were running when the last process stopped keep their share (and their lease).
            active = self.store.read(
                lambda c: c.execute(
                    "SELECT charger_id, connector_id, id FROM transactions WHERE state = 'active'"
                ).fetchall()
            )
            for row in active:
                await self.load.on_transaction_started(row[0], int(row[1]), int(row[2]))
            await self.load.start()
        await self.server.start()
        if self.uplink is not None:
            self._uplink_task = asyncio.create_task(self.uplink.run(), name="uplink")
        await self.control.start()
        info = {"pid": os.getpid(), "ocpp_url": self.server.url, "control_socket": str(self.control.path)}
        if self.server.plain_url:
            info["ocpp_plain_url"] = self.server.plain_url  # ws:// for profile-1 chargers of a TLS site
        state_file = self.cfg.data_dir / "gateway.json"
        tmp = state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, state_file)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass
        log.info("listening on %s (%d chargers configured)", self.server.url, len(self.cfg.chargers))
        if announce:
            print(f"chargegate: ready ocpp={self.server.url} control={self.control.path}", flush=True)
        try:
            await self._stop.wait()
        finally:
            log.info("stopping")
            await self.control.close()
            if self.charger_lists is not None:
                await self.charger_lists.close()
            await self.auth.close()
            if self._uplink_task is not None:
                # publishes "offline" presence, then disconnects
                self._uplink_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._uplink_task
            await self.server.close()
            if self.load is not None:
                await self.load.stop()
            await self.meters.stop()
            self.store.close()


async def run_gateway(cfg: SiteConfig) -> int:
    try:
        gw = Gateway(cfg)
    except ChargegateError as e:
        log.error("%s", e)
        return 2
    await gw.run()
    return 0
