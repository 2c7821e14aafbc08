"""[load] config section."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import register_section


@dataclass(frozen=True)
class LoadSection:
    enabled: bool = False
    # Per-phase limit of the site's grid connection (A). Changeable at run time (LoadManager.set_site_limit).
    site_limit_a: float = 32.0
    # Sent to every charger as its TxDefaultProfile at boot: what it may draw on its own if the gateway is gone.
    # Keep chargers x safe_current_a + building_reserve_a <= site_limit_a.
    safe_current_a: float = 6.0
    # Below this an EV cannot charge (IEC 61851): a session gets at least this or is queued at 0 A.
    min_current_a: float = 6.0
    # Kept free below site_limit_a to absorb meter lag and EV ramp-up.
    margin_a: float = 1.0
    # Building load assumed while the grid meter is stale (the static safe split shares the rest).
    building_reserve_a: float = 16.0
    # Increases smaller than this are not sent; a session's limit is raised at most once per interval.
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
        )
        if any(n < 0 for n in nums):
            return "amps and seconds must be >= 0"
        if self.control_interval_s <= 0 or self.command_timeout_s <= 0:
            return "control_interval_s and command_timeout_s must be > 0"
        if not 10 <= self.profile_lease_s <= 86400:
            return (
                "profile_lease_s must be 10..86400 (60..300 recommended: renewals go out every third of it)"
            )
        if any(not isinstance(v, int) or isinstance(v, bool) for v in self.priorities.values()):
            return "priorities must map charger ids to integers"
        return None


register_section("load", LoadSection)
