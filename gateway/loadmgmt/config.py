"""[load] config section, and how each charger is wired to the site's phases."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ChargerSection, SiteConfig, register_check, register_section
from gateway.errors import ConfigError

SITE_PHASES = ("L1", "L2", "L3")
# OCPP 1.6 ConnectorPhaseRotation / OCPP 2.0.1 PhaseRotation: the letter at position i is the site phase (R = L1,
# S = L2, T = L3) the charger's own L(i+1) is connected to. Reversed rotations ("RTS", ...) matter to motors, not to
# current accounting, but are accepted so the value the installer measured can be copied as is.
ROTATIONS = ("RST", "RTS", "SRT", "STR", "TRS", "TSR")
METER_ORDERS = ("charger", "site")
_LETTER = {"R": 0, "S": 1, "T": 2}
_SINGLE_HINT = 'give its site phase: "L1", "L2" or "L3"'
_THREE_HINT = f"give one of {', '.join(ROTATIONS)} (RST = charger L1 on site L1, L2 on L2, L3 on L3)"

Wiring = tuple[
    int, ...
]  # the site phase (0 = L1 .. 2 = L3) of each of the charger's phases, in its own order
THREE_PHASE: Wiring = (0, 1, 2)


def phase_names(wiring: Wiring) -> str:
    return ",".join(SITE_PHASES[p] for p in wiring)


@dataclass(frozen=True)
class LoadSection:
    enabled: bool = False
    # Per-phase limit of the site's grid connection (A). Changeable at run time (LoadManager.set_site_limit).
    site_limit_a: float = 32.0
    # Sent to every charger as its TxDefaultProfile at boot: what it may draw on its own if the gateway is gone.
    # Keep, on every phase, (connectors on it) x safe_current_a + building_reserve_a <= site_limit_a.
    safe_current_a: float = 6.0
    # Below this an EV cannot charge (IEC 61851): a session gets at least this or is queued at 0 A.
    min_current_a: float = 6.0
    # Kept free below site_limit_a to absorb meter lag and EV ramp-up.
    margin_a: float = 1.0
    # Building load assumed while the grid meter is stale (the static safe split shares the rest).
    building_reserve_a: float = 16.0
    # Increases smaller than this are not sent; a session's limit is raised at most once per interval. A decrease
    # smaller than this is not sent either while the limits in force still fit the budget on every phase.
    hysteresis_a: float = 1.0
    min_change_interval_s: float = 10.0
    # The building-load estimate used is the highest of the last this-many seconds (>= one bus poll cycle): the grid
    # and charger meters are read one after the other, and a momentary underestimate must not release current.
    building_load_hold_s: float = 3.0
    # Allocation runs on every meter reading and at least this often.
    control_interval_s: float = 2.0
    # A TxProfile lasts this long unless renewed (renewed every third of it): if the gateway dies the chargers fall
    # back to their TxDefaultProfile within this time.
    profile_lease_s: int = 120
    # A session drawing more than its limit + tolerance for longer than the grace period is flagged.
    overdraw_tolerance_a: float = 2.0
    overdraw_grace_s: float = 15.0
    # How long SetChargingProfile may take before we give up on that charger for this round.
    command_timeout_s: float = 10.0
    # charger id -> priority (higher charges first when there is not enough for everyone); default 0.
    priorities: dict[str, int] = field(default_factory=dict)
    # Wiring. Keys: a charger id ("CP3") or one connector of it ("CP3/2"; overrides the charger's entry).
    # phases: 1 or 3 (default: the charger's [[chargers]] phases, 3). A single-phase one needs its site phase in
    # phase_rotation ("L1" | "L2" | "L3"); a three-phase one may give its rotation (default "RST").
    phases: dict[str, int] = field(default_factory=dict)
    phase_rotation: dict[str, str] = field(default_factory=dict)
    # Where a rotated three-phase charger's own meter reads: "charger" (its L1..L3 are the charger's: built in, or
    # wired after the rotation) or "site" (the site's: before the rotation). Not given: unknown, so of an uneven draw
    # (single-phase EV) only what both readings agree on is subtracted from the building-load estimate (safe).
    meter_phase_order: dict[str, str] = field(default_factory=dict)
    # Queue rotation: when not everyone can charge, a session that has charged this long while another of the same
    # priority has waited this long pauses and the one first in line charges. 0 = never rotate.
    rotation_interval_s: float = 900.0
    # A session whose meter shows at most idle_current_a (EV full or paused by the car; standby draw is well below
    # 1 A, the least a charging EV draws is 6 A) for idle_yield_s gives its place to a waiting session at once.
    # 0 = never.
    idle_current_a: float = 1.0
    idle_yield_s: float = 120.0

    def validate(self) -> str | None:
        nums = (
            self.site_limit_a,
            self.safe_current_a,
            self.min_current_a,
            self.margin_a,
            self.building_reserve_a,
            self.hysteresis_a,
            self.min_change_interval_s,
            self.overdraw_tolerance_a,
            self.overdraw_grace_s,
            self.building_load_hold_s,
            self.rotation_interval_s,
            self.idle_current_a,
            self.idle_yield_s,
        )
        if any(not math.isfinite(n) or n < 0 for n in nums):
            return "amps and seconds must be finite and >= 0"
        if self.control_interval_s <= 0 or self.command_timeout_s <= 0:
            return "control_interval_s and command_timeout_s must be > 0"
        if not 10 <= self.profile_lease_s <= 86400:
            return (
                "profile_lease_s must be 10..86400 (60..300 recommended: renewals go out every third of it)"
            )
        if any(not isinstance(v, int) or isinstance(v, bool) for v in self.priorities.values()):
            return "priorities must map charger ids to integers"
        if 0 < self.rotation_interval_s < 60:
            return (
                "rotation_interval_s must be 0 (off) or >= 60: every rotation pauses an EV and starts another"
            )
        if self.idle_yield_s > 0 and self.idle_current_a >= self.min_current_a:
            return "idle_current_a must be below min_current_a (an EV charging at the minimum is not idle)"
        return self._check_wiring_keys()

    def _check_wiring_keys(self) -> str | None:
        """What can be checked without the [[chargers]] list (see check_wiring for the rest)."""
        for name, table in self._wiring_tables():
            for key in table:
                if _parse_key(key) is None:
                    return f'{name}: key {key!r} is not a charger id ("CP3") or charger/connector ("CP3/2")'
        for key, n in self.phases.items():
            if isinstance(n, bool) or n not in (1, 3):
                return (
                    f"phases.{key} = {n!r}: expected 1 (single-phase) or 3 (three-phase); "
                    "two-phase wiring is not supported, declare it as 3"
                )
        for key, order in self.meter_phase_order.items():
            if order not in METER_ORDERS:
                return (
                    f'meter_phase_order.{key} = {order!r}: expected "charger" (the meter reads the charger\'s '
                    'L1..L3) or "site" (the site\'s, i.e. it sits before the rotation)'
                )
        for key, rot in self.phase_rotation.items():
            if not isinstance(rot, str):
                return f"phase_rotation.{key} = {rot!r}: expected a string: {_SINGLE_HINT}, or {_THREE_HINT}"
        for key in set(self.phases) | set(self.phase_rotation):
            cid, conn = _parse_key(key) or (key, None)
            if not self._phases_given(cid, conn):
                # single- or three-phase is up to [[chargers]] phases: check_wiring checks the value against it
                value = self.phase_rotation[key].strip().upper()
                if value not in SITE_PHASES + ROTATIONS:
                    return (
                        f"phase_rotation.{key} = {self.phase_rotation[key]!r}: for a single-phase charger "
                        f"{_SINGLE_HINT}, for a three-phase one {_THREE_HINT}"
                    )
                continue
            n = self._phases_of(cid, conn, None)
            has_connector_rotations = conn is None and any(
                k.startswith(cid + "/") for k in self.phase_rotation
            )
            if n == 1 and self._rotation_of(cid, conn) is None and has_connector_rotations:
                continue  # each connector has its own site phase: check_wiring checks them all
            problem = self._resolve_problem(cid, conn, n, owner=None)
            if problem is not None:
                return problem
        return None

    # ---- wiring resolution -----------------------------------------------------------------------------------
    def _wiring_tables(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return (
            ("phases", self.phases),
            ("phase_rotation", self.phase_rotation),
            ("meter_phase_order", self.meter_phase_order),
        )

    def _phases_given(self, cid: str, conn: int | None) -> bool:
        return cid in self.phases or (conn is not None and f"{cid}/{conn}" in self.phases)

    def _phases_of(self, cid: str, conn: int | None, charger: ChargerSection | None) -> int:
        if conn is not None and f"{cid}/{conn}" in self.phases:
            return self.phases[f"{cid}/{conn}"]
        if cid in self.phases:
            return self.phases[cid]
        return charger.phases if charger is not None else 3

    def _rotation_of(self, cid: str, conn: int | None) -> tuple[str, str] | None:
        """(key it was given under, value) or None."""
        for key in ([f"{cid}/{conn}"] if conn is not None else []) + [cid]:
            if key in self.phase_rotation:
                return key, self.phase_rotation[key].strip().upper()
        return None

    def _resolve_problem(self, cid: str, conn: int | None, n: int, owner: str | None) -> str | None:
        rot = self._rotation_of(cid, conn)
        # the key the installer used (or would use): the connector's own only where the config has one
        where = rot[0] if rot is not None else self._phases_key(cid, conn)
        if n == 1:
            if rot is None:
                src = owner or f"phases.{self._phases_key(cid, conn)} = 1"
                if conn is not None and any(k.startswith(cid + "/") for k in self.phase_rotation):
                    where = f"{cid}/{conn}"  # its other connectors have theirs
                return (
                    f"{src}: a single-phase charger needs the site phase it is connected to: "
                    f'phase_rotation = {{ {where} = "L1" }} (or "L2", "L3")'
                )
            key, value = rot
            if value not in SITE_PHASES:
                return (
                    f"phase_rotation.{key} = {self.phase_rotation[key]!r}: {where} is single-phase, so "
                    f"{_SINGLE_HINT} (a three-phase rotation such as RST is for three-phase chargers)"
                )
            return None
        if rot is not None:
            key, value = rot
            if value in SITE_PHASES:
                return (
                    f"phase_rotation.{key} = {self.phase_rotation[key]!r} names one site phase, but {where} is "
                    f"three-phase: if it is a single-phase charger also set phases = {{ {where} = 1 }}, "
                    f"otherwise {_THREE_HINT}"
                )
            if value not in ROTATIONS:
                return (
                    f"phase_rotation.{key} = {self.phase_rotation[key]!r}: {where} is three-phase, so "
                    f"{_THREE_HINT}; for a single-phase charger set phases = {{ {where} = 1 }} and {_SINGLE_HINT}"
                )
        return None

    def _phases_key(self, cid: str, conn: int | None) -> str:
        return f"{cid}/{conn}" if conn is not None and f"{cid}/{conn}" in self.phases else cid

    def wiring(self, charger: ChargerSection | None, charger_id: str, connector_id: int) -> Wiring:
        """The site phase of each of this connector's phases. Call check_wiring first (unchecked wiring is read
        as three-phase RST)."""
        n = self._phases_of(charger_id, connector_id, charger)
        rot = self._rotation_of(charger_id, connector_id)
        if n == 1 and rot is not None and rot[1] in SITE_PHASES:
            return (SITE_PHASES.index(rot[1]),)
        if rot is not None and rot[1] in ROTATIONS:
            return tuple(_LETTER[c] for c in rot[1])
        return THREE_PHASE

    def meter_mappings(
        self, charger: ChargerSection | None, charger_id: str, connector_id: int
    ) -> tuple[Wiring, ...]:
        """Where the phases of this connector's own meter may be on the site: one mapping when known, both
        candidates for a rotated three-phase charger whose meter_phase_order is not given."""
        wiring = self.wiring(charger, charger_id, connector_id)
        if len(wiring) == 1 or wiring == THREE_PHASE:
            return (wiring,)
        order = self.meter_phase_order.get(
            f"{charger_id}/{connector_id}", self.meter_phase_order.get(charger_id)
        )
        if order == "charger":
            return (wiring,)
        if order == "site":
            return (THREE_PHASE,)
        return (wiring, THREE_PHASE)

    def check_wiring(self, chargers: Iterable[ChargerSection]) -> tuple[str, str] | None:
        """Cross-check the wiring keys with the [[chargers]] list: (key, problem) or None."""
        by_id = {c.id: c for c in chargers}
        for name, table in self._wiring_tables():
            for key in table:
                cid, conn = _parse_key(key) or (key, None)
                c = by_id.get(cid)
                if c is None:
                    known = ", ".join(sorted(by_id)) or "none"
                    return (
                        f"load.{name}.{key}",
                        f"no [[chargers]] entry has id {cid!r} (known: {known}); fix the id or remove the entry",
                    )
                if conn is not None and not 1 <= conn <= c.connectors:
                    return (
                        f"load.{name}.{key}",
                        f"charger {cid} has connectors 1..{c.connectors}; fix the connector number",
                    )
        for i, c in enumerate(by_id.values()):
            if c.phases not in (1, 3):
                return (f"chargers[{i}].phases", f"{c.id}: expected 1 or 3, got {c.phases!r}")
            if c.phases == 1 and self.phases.get(c.id, 1) != 1:
                return (
                    f"load.phases.{c.id}",
                    f"{c.id} is single-phase in [[chargers]] (phases = 1) but three-phase here; make them agree",
                )
            for conn in range(1, c.connectors + 1):
                n = self._phases_of(c.id, conn, c)
                owner = None
                if n == 1 and c.id not in self.phases and f"{c.id}/{conn}" not in self.phases:
                    owner = f"[[chargers]] {c.id} has phases = 1"
                problem = self._resolve_problem(c.id, conn, n, owner)
                if problem is not None:
                    return ("load", problem)
        return None


def _parse_key(key: str) -> tuple[str, int | None] | None:
    if not isinstance(key, str) or not key or key != key.strip():
        return None
    cid, sep, conn = key.partition("/")
    if not sep:
        return cid, None
    if not cid or not conn.isdigit() or int(conn) < 1:
        return None
    return cid, int(conn)


def check_load(cfg: SiteConfig) -> None:
    """Raise ConfigError (naming the file) when [load] names chargers or connectors that do not exist or leaves a
    single-phase charger without its site phase. LoadManager runs the same check."""
    section = cfg.sections.get("load")
    if not isinstance(section, LoadSection):
        return
    problem = section.check_wiring(cfg.chargers)
    if problem is not None:
        raise ConfigError(str(cfg.path), problem[0], problem[1])


register_section("load", LoadSection)
register_check(check_load)
