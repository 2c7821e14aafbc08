"""Test doubles for the auth tests: an eMSP authorizer and a charger with an OCPP local list (pure fakes), and the
`chargegate tokens` CLI run in process."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.auth.emsp import EmspAuthAnswer
from gateway.errors import ChargerNotConnected


class EmspDouble:
    def __init__(self, reachable: bool = True, delay: float = 0.0) -> None:
        self.online = reachable
        self.delay = delay
        self.answers: dict[str, EmspAuthAnswer] = {}
        self.asked: list[tuple[str, str, float]] = []

    def reachable(self) -> bool:
        return self.online

    async def authorize(self, token_id: str, charger_id: str, timeout: float) -> EmspAuthAnswer | None:
        self.asked.append((token_id, charger_id, timeout))
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.answers.get(token_id, EmspAuthAnswer("Invalid"))


class FakeCharger:
    """OCPP 1.6 local list semantics of one charge point (what SendLocalList does to it)."""

    def __init__(
        self, max_length: int = 100, send_max: int = 10, profiles: str = "Core,LocalAuthListManagement"
    ):
        self.max_length = max_length
        self.send_max = send_max
        self.profiles = profiles
        self.version = 0
        self.entries: dict[str, dict[str, Any]] = {}
        self.force_status: list[str] = []  # statuses to answer to the next SendLocalLists

    def handle(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        if action == "GetConfiguration":
            return {
                "configurationKey": [
                    {"key": "LocalAuthListEnabled", "readonly": False, "value": "true"},
                    {"key": "LocalAuthListMaxLength", "readonly": True, "value": str(self.max_length)},
                    {"key": "SendLocalListMaxLength", "readonly": True, "value": str(self.send_max)},
                    {"key": "SupportedFeatureProfiles", "readonly": True, "value": self.profiles},
                ]
            }
        if action == "GetLocalListVersion":
            return {"listVersion": self.version}
        if action == "SendLocalList":
            if self.force_status:
                return {"status": self.force_status.pop(0)}
            items = payload.get("localAuthorizationList", [])
            if len(items) > self.send_max:
                return {"status": "Failed"}
            if payload["updateType"] == "Differential" and payload["listVersion"] <= self.version:
                return {"status": "VersionMismatch"}
            new = {} if payload["updateType"] == "Full" else dict(self.entries)
            for it in items:
                if "idTagInfo" in it:
                    new[it["idTag"]] = it["idTagInfo"]
                else:
                    new.pop(it["idTag"], None)
            if len(new) > self.max_length:
                return {"status": "Failed"}
            self.entries = new
            self.version = payload["listVersion"]
            return {"status": "Accepted"}
        if action == "RemoteStopTransaction":
            return {"status": "Accepted"}
        raise AssertionError(f"unexpected action {action}")


class FakeCommands:
    def __init__(self) -> None:
        self.chargers: dict[str, FakeCharger] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def connected(self) -> list[str]:
        return list(self.chargers)

    async def call(
        self, charger_id: str, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        self.calls.append((charger_id, action, payload))
        await asyncio.sleep(0)
        if charger_id not in self.chargers:
            raise ChargerNotConnected(charger_id)
        return self.chargers[charger_id].handle(action, payload)

    def actions(self, action: str) -> list[tuple[str, dict[str, Any]]]:
        return [(c, p) for c, a, p in self.calls if a == action]


def insert_transaction(
    conn: sqlite3.Connection,
    charger_id: str,
    id_tag: str,
    *,
    parent: str | None = None,
    started_at: float = 0.0,
    connector_id: int = 1,
    meter_start: int = 0,
    auth_method: str = "WHITELIST",
) -> int:
    """A row of the core transactions table, as the lead's StartTransaction handler writes it."""
    cur = conn.execute(
        "INSERT INTO transactions (charger_id, connector_id, id_tag, parent_id_tag, auth_status, auth_method, "
        "meter_start, start_ts, started_at, start_key) VALUES (?, ?, ?, ?, 'Accepted', ?, ?, '2026-01-01T00:00:00Z', ?, "
        "hex(randomblob(8)))",
        (charger_id, connector_id, id_tag, parent, auth_method, meter_start, started_at),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def cli(site: Path, *args: str) -> int:
    """`chargegate tokens ARGS --config SITE` in this process; its exit code."""
    from gateway.auth.cli import main

    return main(["tokens", *args, "--config", str(site)])
