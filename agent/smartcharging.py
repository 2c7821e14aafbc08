"""Smart Charging profile (OCPP 1.6 §3.13): SetChargingProfile / ClearChargingProfile / GetCompositeSchedule.

Installed profiles persist in HAL storage. The effective limit of a connector at a time is the minimum of
  - the TxProfile of its running transaction (else its TxDefaultProfile, else the charge point's
    TxDefaultProfile on connector 0), highest valid stackLevel whose schedule covers that time, and
  - the ChargePointMaxProfile (connector 0), applied to each connector (no sharing between connectors).
Power limits (W) are converted to current with the connector's voltage and phase count. A limit below 6 A
cannot be signalled on the pilot (IEC 61851-1) and pauses charging (0 A).
"""

import json

from agent.compat import const, is_int, is_number, iso_utc, parse_iso

try:
    from typing import Any
except ImportError:
    pass

STORAGE_NAME = "chargingprofiles"

CP_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX = "TxProfile"
PURPOSES = (CP_MAX, TX_DEFAULT, TX)
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY = {"Daily": 86400, "Weekly": 604800}

# Highest stackLevel accepted (reported as ChargeProfileMaxStackLevel).
MAX_STACK_LEVEL = const(8)
# Most periods in one schedule (reported as ChargingScheduleMaxPeriods).
MAX_PERIODS = const(24)
# Most profiles installed at once (reported as MaxChargingProfilesInstalled).
MAX_PROFILES = const(10)
# IEC 61851-1: the lowest current a PWM duty cycle can offer; anything lower means "pause".
MIN_PWM_AMPS = const(6)
# Evaluation steps in one GetCompositeSchedule (bounds the work whatever profiles are installed).
MAX_COMPOSITE_STEPS = const(500)
# Longest GetCompositeSchedule duration answered (one week).
MAX_COMPOSITE_S = const(604800)


def _valid_schedule(s: "Any") -> bool:
    if not isinstance(s, dict) or s.get("chargingRateUnit") not in ("A", "W"):
        return False
    periods = s.get("chargingSchedulePeriod")
    if not isinstance(periods, list) or not periods or len(periods) > MAX_PERIODS:
        return False
    last = -1
    for p in periods:
        if not isinstance(p, dict) or not is_int(p.get("startPeriod")) or not is_number(p.get("limit")):
            return False
        if p["startPeriod"] <= last or (last < 0 and p["startPeriod"] != 0) or p["limit"] < 0:
            return False
        n = p.get("numberPhases")
        if n is not None and (not is_int(n) or n < 1 or n > 3):
            return False
        last = p["startPeriod"]
    d = s.get("duration")
    if d is not None and (not is_int(d) or d < 0):
        return False
    st = s.get("startSchedule")
    if st is not None and parse_iso(st) is None:
        return False
    m = s.get("minChargingRate")
    return m is None or is_number(m)


def validate_profile(p: "Any") -> "str | None":
    """None when `p` is a well-formed csChargingProfiles object, else the reason."""
    if not isinstance(p, dict):
        return "not an object"
    if not is_int(p.get("chargingProfileId")):
        return "chargingProfileId"
    lvl = p.get("stackLevel", -1)
    if not is_int(lvl) or lvl < 0 or lvl > MAX_STACK_LEVEL:
        return "stackLevel"
    if p.get("chargingProfilePurpose") not in PURPOSES:
        return "chargingProfilePurpose"
    kind = p.get("chargingProfileKind")
    if kind not in KINDS:
        return "chargingProfileKind"
    if kind == "Recurring":
        if p.get("recurrencyKind") not in RECURRENCY:
            return "recurrencyKind"
        if (
            not isinstance(p.get("chargingSchedule"), dict)
            or p["chargingSchedule"].get("startSchedule") is None
        ):
            return "a recurring schedule needs startSchedule"
    tx = p.get("transactionId")
    if tx is not None and (not is_int(tx) or p["chargingProfilePurpose"] != TX):
        return "transactionId"
    for k in ("validFrom", "validTo"):
        if p.get(k) is not None and parse_iso(p[k]) is None:
            return k
    if not _valid_schedule(p.get("chargingSchedule")):
        return "chargingSchedule"
    return None


class SmartCharging:
    def __init__(self, hal: "Any", config: "Any"):
        self._hal = hal
        self.voltage = config.voltage_v
        self.phases = config.phases
        self.entries = []  # type: list[dict[str, Any]]
        self._load()

    # -- persistence ------------------------------------------------------------------------------------
    def _load(self) -> None:
        raw = self._hal.storage_read(STORAGE_NAME)
        if not raw:
            return
        try:
            entries = json.loads(raw)
        except ValueError:
            return
        if isinstance(entries, list):
            self.entries = [
                e for e in entries if isinstance(e, dict) and validate_profile(e.get("p")) is None
            ]

    def _save(self) -> None:
        self._hal.storage_write(STORAGE_NAME, json.dumps(self.entries).encode())

    # -- commands ---------------------------------------------------------------------------------------
    def valid_remote_profile(self, p: "Any") -> bool:
        """RemoteStartTransaction.chargingProfile: must be a valid TxProfile (§5.11)."""
        return validate_profile(p) is None and p["chargingProfilePurpose"] == TX

    def _install(self, cid: int, p: "dict[str, Any]", now: "float", tx_local: "int | None") -> str:
        kept = []
        for e in self.entries:
            q = e["p"]
            same_id = q["chargingProfileId"] == p["chargingProfileId"]
            same_slot = (
                e["cid"] == cid
                and q["stackLevel"] == p["stackLevel"]
                and q["chargingProfilePurpose"] == p["chargingProfilePurpose"]
            )
            if not (same_id or same_slot):
                kept.append(e)
        if len(kept) >= MAX_PROFILES:
            return "Rejected"
        sched = p["chargingSchedule"]
        start = parse_iso(sched.get("startSchedule")) if sched.get("startSchedule") is not None else None
        if start is None and p["chargingProfileKind"] == "Absolute":
            start = int(now)  # an absolute schedule without a start begins when it is installed
        entry = {
            "cid": cid,
            "p": p,
            "start": start,
            "from": parse_iso(p.get("validFrom")) if p.get("validFrom") is not None else None,
            "to": parse_iso(p.get("validTo")) if p.get("validTo") is not None else None,
            "tx": tx_local,
        }
        kept.append(entry)
        self.entries = kept
        self._save()
        return "Accepted"

    def set_profile(self, cid: int, p: "Any", tx: "dict[str, Any] | None", now: "float") -> str:
        """SetChargingProfile: Accepted / Rejected. `tx` is the connector's running transaction record."""
        if validate_profile(p) is not None:
            return "Rejected"
        purpose = p["chargingProfilePurpose"]
        if purpose == CP_MAX and cid != 0:
            return "Rejected"
        if purpose == TX:
            if cid == 0 or tx is None:
                return "Rejected"  # §5.16: a TxProfile without a running transaction is discarded
            want = p.get("transactionId")
            if want is not None and want != tx.get("id"):
                return "Rejected"
            return self._install(cid, p, now, tx["local"])
        return self._install(cid, p, now, None)

    def bind_remote_profile(self, cid: int, p: "dict[str, Any]", tx_local: int, now: "float") -> None:
        self._install(cid, p, now, tx_local)

    def transaction_ended(self, cid: int, tx_local: int) -> None:
        """TxProfiles live as long as their transaction."""
        kept = [
            e for e in self.entries if not (e["p"]["chargingProfilePurpose"] == TX and e["tx"] == tx_local)
        ]
        if len(kept) != len(self.entries):
            self.entries = kept
            self._save()

    def clear(self, q: "dict[str, Any]") -> str:
        """ClearChargingProfile: Accepted when at least one profile matched, else Unknown."""
        pid = q.get("id")
        kept = []
        for e in self.entries:
            p = e["p"]
            if pid is not None:
                match = p["chargingProfileId"] == pid
            else:
                match = (
                    (q.get("connectorId") is None or q["connectorId"] == e["cid"])
                    and (
                        q.get("chargingProfilePurpose") is None
                        or q["chargingProfilePurpose"] == p["chargingProfilePurpose"]
                    )
                    and (q.get("stackLevel") is None or q["stackLevel"] == p["stackLevel"])
                )
            if not match:
                kept.append(e)
        if len(kept) == len(self.entries):
            return "Unknown"
        self.entries = kept
        self._save()
        return "Accepted"

    # -- evaluation -------------------------------------------------------------------------------------
    def _amps(self, limit: "float", unit: str, phases: "Any") -> float:
        if unit == "A":
            return float(limit)
        n = phases if is_int(phases) else self.phases
        return float(limit) / float(self.voltage * n)

    def _eval(
        self, e: "dict[str, Any]", t: "float", tx: "dict[str, Any] | None"
    ) -> "tuple[float, float] | None":
        """(amps, seconds until the value may change) of profile entry `e` at time t, or None when inactive."""
        if (e["from"] is not None and t < e["from"]) or (e["to"] is not None and t >= e["to"]):
            return None
        p = e["p"]
        sched = p["chargingSchedule"]
        kind = p["chargingProfileKind"]
        if kind == "Relative":
            start = tx["start_wall"] if tx is not None and "start_wall" in tx else t
        elif kind == "Recurring":
            period = RECURRENCY[p["recurrencyKind"]]
            start = e["start"]
            if t >= start:
                start += ((int(t) - start) // period) * period
        else:
            start = e["start"]
        elapsed = t - start
        if elapsed < 0:
            return None
        duration = sched.get("duration")
        if duration is not None and elapsed >= duration:
            return None
        current = None
        change = None  # type: float | None
        for period in sched["chargingSchedulePeriod"]:
            if period["startPeriod"] <= elapsed:
                current = period
            else:
                change = period["startPeriod"] - elapsed
                break
        if current is None:
            return None
        if duration is not None:
            left = duration - elapsed
            change = left if change is None or left < change else change
        if kind == "Recurring":
            left = RECURRENCY[p["recurrencyKind"]] - elapsed
            change = left if change is None or left < change else change
        amps = self._amps(current["limit"], sched["chargingRateUnit"], current.get("numberPhases"))
        return amps, (change if change is not None else 1e12)

    def _stack(
        self, candidates: "list[Any]", t: "float", tx: "dict[str, Any] | None"
    ) -> "tuple[float, float] | None":
        """Highest stackLevel profile active at t among `candidates`."""
        best = None
        best_level = -1
        for e in candidates:
            lvl = e["p"]["stackLevel"]
            if lvl <= best_level:
                continue
            r = self._eval(e, t, tx)
            if r is not None:
                best, best_level = r, lvl
        return best

    def _limit_at(self, cid: int, t: "float", tx: "dict[str, Any] | None") -> "tuple[float | None, float]":
        """(amps or None = unlimited, seconds until it may change) for connector cid at time t."""
        limit = None  # type: float | None
        horizon = 1e12
        found = None
        if tx is not None:
            found = self._stack(
                [
                    e
                    for e in self.entries
                    if e["cid"] == cid and e["p"]["chargingProfilePurpose"] == TX and e["tx"] == tx["local"]
                ],
                t,
                tx,
            )
        if found is None:
            found = self._stack(
                [
                    e
                    for e in self.entries
                    if e["cid"] == cid and e["p"]["chargingProfilePurpose"] == TX_DEFAULT
                ],
                t,
                tx,
            )
        if found is None:
            found = self._stack(
                [e for e in self.entries if e["cid"] == 0 and e["p"]["chargingProfilePurpose"] == TX_DEFAULT],
                t,
                tx,
            )
        if found is not None:
            limit, horizon = found
        cap = self._stack([e for e in self.entries if e["p"]["chargingProfilePurpose"] == CP_MAX], t, tx)
        if cap is not None:
            if limit is None or cap[0] < limit:
                limit = cap[0]
            if cap[1] < horizon:
                horizon = cap[1]
        return limit, horizon

    def limit_amps(self, cid: int, now: "float", tx: "dict[str, Any] | None") -> "float | None":
        """The current limit to apply now, or None when no profile limits the connector."""
        if not self.entries:
            return None
        limit = self._limit_at(cid, now, tx)[0]
        if limit is None:
            return None
        return limit if limit >= MIN_PWM_AMPS else 0.0

    def composite(
        self,
        cid: int,
        duration: int,
        unit: "str | None",
        now: "float",
        tx: "dict[str, Any] | None",
        max_amps: "float",
    ) -> "dict[str, Any]":
        """GetCompositeSchedule: the limits from now for `duration` seconds, as one schedule."""
        duration = min(duration, MAX_COMPOSITE_S)
        unit = unit or "A"
        periods = []  # type: list[dict[str, Any]]
        t = float(int(now))
        end = t + duration
        steps = 0
        while t < end and len(periods) < MAX_PERIODS * 4 and steps < MAX_COMPOSITE_STEPS:
            steps += 1
            limit, horizon = self._limit_at(cid, t, tx) if cid > 0 else self._cp_limit_at(t)
            amps = max_amps if limit is None or limit > max_amps else limit
            value = amps if unit == "A" else amps * self.voltage * self.phases
            value = float(int(value * 10 + 0.5)) / 10
            if not periods or periods[-1]["limit"] != value:
                periods.append({"startPeriod": int(t - int(now)), "limit": value})
            step = horizon if horizon >= 1 else 1
            t = t + step
        return {
            "duration": duration,
            "startSchedule": iso_utc(now),
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": periods,
        }

    def _cp_limit_at(self, t: "float") -> "tuple[float | None, float]":
        cap = self._stack([e for e in self.entries if e["p"]["chargingProfilePurpose"] == CP_MAX], t, None)
        if cap is None:
            return None, 1e12
        return cap[0], cap[1]
