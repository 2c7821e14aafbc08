"""Phase-2 agent cases: local authorization list + cache (OCPP 1.6 §3.5) and Smart Charging (§3.13).
Shared by CPython pytest and the MicroPython runner (common subset only)."""

import sys

from agentfakes import FakeHal, boot, reboot, step

from agent.compat import iso_utc
from agent.localauth import LocalAuth


def _entry(tag, status="Accepted", expiry=None):
    info = {"status": status}
    if expiry is not None:
        info["expiryDate"] = expiry
    return {"idTag": tag, "idTagInfo": info}


def _send_list(c, version, update_type, entries):
    return c.result(
        "SendLocalList",
        {"listVersion": version, "updateType": update_type, "localAuthorizationList": entries},
    )["status"]


def _profile(
    pid, purpose, limit, stack=0, unit="A", periods=None, kind="Absolute", start=None, duration=None, tx=None
):
    sched = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": periods or [{"startPeriod": 0, "limit": limit}],
    }
    if start is not None:
        sched["startSchedule"] = start
    if duration is not None:
        sched["duration"] = duration
    p = {
        "chargingProfileId": pid,
        "stackLevel": stack,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": sched,
    }
    if tx is not None:
        p["transactionId"] = tx
    return p


def _set(c, cid, profile):
    return c.result("SetChargingProfile", {"connectorId": cid, "csChargingProfiles": profile})["status"]


def _charge(c, cid=1, tag="TAG-OK-1"):
    c.hal.cards.append(tag)
    step(c)
    c.hal.pilot[cid] = "C"
    step(c, n=2)


# ---------------------------------------------------------------------------------------------------------
# local authorization list
# ---------------------------------------------------------------------------------------------------------
def test_capacities_come_from_the_agent_config():
    c = boot(cfg_kw={"queue_cap": 20, "cache_cap": 2, "list_max": 5, "send_list_max": 3})
    assert c.core.queue.cap == 20 and c.core.auth.cache_cap == 2
    got = c.result("GetConfiguration", {"key": ["LocalAuthListMaxLength", "SendLocalListMaxLength"]})
    assert sorted([(k["key"], k["value"], k["readonly"]) for k in got["configurationKey"]]) == [
        ("LocalAuthListMaxLength", "5", True),
        ("SendLocalListMaxLength", "3", True),
    ]
    assert _send_list(c, 1, "Full", [_entry("A"), _entry("B"), _entry("C"), _entry("D")]) == "Failed"
    assert _send_list(c, 1, "Full", [_entry("A"), _entry("B"), _entry("C")]) == "Accepted"
    assert _send_list(c, 2, "Differential", [_entry("D"), _entry("E"), _entry("F")]) == "Failed"  # 6 > 5
    assert _send_list(c, 2, "Differential", [_entry("D"), _entry("E")]) == "Accepted"
    assert len(c.core.auth.entries) == 5
    for tag in ("TAG-OK-1", "TAG-OK-2", "UNKNOWN-3"):
        c.hal.cards.append(tag)
        step(c)
        step(c, 1000, 61)  # the authorized id's ConnectionTimeOut passes
    assert sorted(c.core.auth.cache.keys()) == ["TAG-OK-2", "UNKNOWN-3"]  # 2 cached, the oldest went
    # the platform's defaults: small under MicroPython (its heap), larger on CPython
    from agent.core import DEFAULT_CACHE_CAP, DEFAULT_SEND_LIST_MAX

    small = sys.implementation.name == "micropython"
    assert (DEFAULT_CACHE_CAP, DEFAULT_SEND_LIST_MAX) == ((200, 20) if small else (1000, 200))
    d = boot()
    assert d.core.auth.cache_cap == DEFAULT_CACHE_CAP and d.core.queue.cap == 100
    assert d.core.cfg.get("SendLocalListMaxLength") == DEFAULT_SEND_LIST_MAX
    assert d.core.cfg.get("LocalAuthListMaxLength") == 1000


def test_send_local_list_full_and_differential_with_versions():
    c = boot()
    assert c.result("GetLocalListVersion", {})["listVersion"] == 0
    assert _send_list(c, 1, "Full", [_entry("LIST-A"), _entry("LIST-B", "Blocked")]) == "Accepted"
    assert c.result("GetLocalListVersion", {})["listVersion"] == 1
    assert _send_list(c, 1, "Differential", [_entry("LIST-C")]) == "VersionMismatch"
    assert _send_list(c, 2, "Differential", [{"idTag": "LIST-B"}, _entry("LIST-C")]) == "Accepted"
    assert sorted(c.core.auth.entries.keys()) == ["LIST-A", "LIST-C"]
    assert _send_list(c, 3, "Full", [{"idTag": "LIST-X"}]) == "Failed"  # full entries need idTagInfo
    assert _send_list(c, 3, "Full", [_entry("T" + str(i)) for i in range(201)]) == "Failed"
    assert sorted(c.core.auth.entries.keys()) == ["LIST-A", "LIST-C"]  # failures change nothing
    assert c.call("SendLocalList", {"listVersion": 4, "updateType": "Sideways"}, False)[0] == "error"
    reboot(c)
    assert c.result("GetLocalListVersion", {})["listVersion"] == 2
    assert sorted(c.core.auth.entries.keys()) == ["LIST-A", "LIST-C"]
    assert _send_list(c, 5, "Full", []) == "Accepted"
    assert len(c.core.auth.entries) == 0 and c.core.auth.entries.keys() == []
    c.result("ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "false"})
    assert c.result("GetLocalListVersion", {})["listVersion"] == -1
    assert _send_list(c, 6, "Full", [_entry("LIST-A")]) == "NotSupported"


def test_local_list_authorizes_offline_and_blocks():
    c = boot()
    future = iso_utc(c.hal.wall + 86400)
    past = iso_utc(c.hal.wall - 60)
    entries = [
        _entry("LIST-OK", expiry=future),
        _entry("LIST-BLOCKED", "Blocked"),
        _entry("LIST-OLD", expiry=past),
    ]
    assert _send_list(c, 1, "Full", entries) == "Accepted"
    c.disconnect()
    c.hal.pilot[1] = "B"
    step(c)
    for tag in ("LIST-BLOCKED", "LIST-OLD"):
        c.hal.cards.append(tag)
        step(c, n=2)
        assert c.core.transaction_id(1) is None, tag
    c.hal.cards.append("LIST-OK")
    step(c, n=2)
    assert c.core.transaction_id(1) is not None


def test_local_pre_authorize_skips_authorize_request():
    c = boot()
    _send_list(c, 1, "Full", [_entry("LIST-PRE")])
    c.result("ChangeConfiguration", {"key": "LocalPreAuthorize", "value": "true"})
    _charge(c, tag="LIST-PRE")
    assert c.of("Authorize") == []
    assert c.last("StartTransaction")["idTag"] == "LIST-PRE"


def test_local_authorize_offline_disabled_rejects_known_ids():
    c = boot()
    _send_list(c, 1, "Full", [_entry("LIST-OK")])
    c.result("ChangeConfiguration", {"key": "LocalAuthorizeOffline", "value": "false"})
    c.disconnect()
    _charge(c, tag="LIST-OK")
    assert c.core.transaction_id(1) is None


def test_authorization_cache_is_bounded_dropping_invalid_first_then_oldest():
    hal = FakeHal(1)
    auth = LocalAuth(hal, cache_cap=3)
    auth.remember("A", {"status": "Accepted"}, True)
    auth.remember("B", {"status": "Invalid"}, True)
    auth.remember("C", {"status": "Accepted"}, True)
    auth.remember("D", {"status": "Accepted"}, True)  # evicts B (invalid)
    assert sorted(auth.cache.keys()) == ["A", "C", "D"]
    auth.remember("A", {"status": "Accepted"}, True)  # refresh A: C is now the oldest
    auth.remember("E", {"status": "Accepted"}, True)
    assert sorted(auth.cache.keys()) == ["A", "D", "E"]
    auth.remember("F", {"status": "Nonsense"}, True)  # bad answers are not cached
    auth.remember("G", {"status": "Accepted"}, False)  # cache disabled
    assert sorted(auth.cache.keys()) == ["A", "D", "E"]
    again = LocalAuth(hal, cache_cap=3)  # persisted
    assert sorted(again.cache.keys()) == ["A", "D", "E"]
    assert len(LocalAuth(FakeHal(1)).cache) == 0 and LocalAuth(FakeHal(1)).cache_cap == 1000


def test_cache_not_used_when_disabled_and_list_wins_over_cache():
    c = boot()
    _charge(c)  # TAG-OK-1 cached Accepted
    c.hal.pilot[1] = "A"
    step(c)
    assert _send_list(c, 1, "Full", [_entry("TAG-OK-1", "Blocked")]) == "Accepted"
    assert "TAG-OK-1" not in c.core.auth.cache
    c.result("ChangeConfiguration", {"key": "AuthorizationCacheEnabled", "value": "false"})
    c.disconnect()
    _charge(c)
    assert c.core.transaction_id(1) is None


# ---------------------------------------------------------------------------------------------------------
# smart charging
# ---------------------------------------------------------------------------------------------------------
def test_tx_default_profile_limits_current_and_follows_schedule():
    c = boot()
    start = iso_utc(c.hal.wall)
    periods = [
        {"startPeriod": 0, "limit": 16},
        {"startPeriod": 60, "limit": 10},
        {"startPeriod": 120, "limit": 3},
    ]
    assert _set(c, 0, _profile(1, "TxDefaultProfile", 0, periods=periods, start=start)) == "Accepted"
    _charge(c)
    assert c.hal.limit[1] == 16 and c.core.status(1) == "Charging"
    step(c, 1000, 61)
    assert c.hal.limit[1] == 10
    step(c, 1000, 60)
    assert c.hal.limit[1] == 0  # 3 A cannot be signalled: pause
    assert c.core.status(1) == "SuspendedEVSE" and c.hal.relay[1] is False


def test_stack_level_and_power_units():
    c = boot()
    assert _set(c, 0, _profile(1, "TxDefaultProfile", 20, stack=0)) == "Accepted"
    assert (
        _set(c, 1, _profile(2, "TxDefaultProfile", 6900, stack=2, unit="W")) == "Accepted"
    )  # 6900/(230*3)=10 A
    _charge(c)
    assert c.hal.limit[1] == 10
    assert c.result("ClearChargingProfile", {"id": 2})["status"] == "Accepted"
    step(c)
    assert c.hal.limit[1] == 20
    assert c.result("ClearChargingProfile", {"id": 99})["status"] == "Unknown"
    assert (
        c.result("ClearChargingProfile", {"chargingProfilePurpose": "TxDefaultProfile"})["status"]
        == "Accepted"
    )
    step(c)
    assert c.hal.limit[1] == 32


def test_tx_profile_needs_transaction_and_ends_with_it():
    c = boot()
    assert _set(c, 1, _profile(5, "TxProfile", 12)) == "Rejected"  # no transaction running
    _charge(c)
    txid = c.core.transaction_id(1)
    assert _set(c, 1, _profile(5, "TxProfile", 12, tx=txid + 1)) == "Rejected"
    assert _set(c, 0, _profile(5, "TxProfile", 12)) == "Rejected"
    assert _set(c, 1, _profile(5, "TxProfile", 12, tx=txid)) == "Accepted"
    step(c)
    assert c.hal.limit[1] == 12
    c.hal.pilot[1] = "A"
    step(c)
    assert c.core.smart.entries == []
    step(c)
    assert c.hal.limit[1] == 32


def test_remote_start_with_tx_profile():
    c = boot()
    prof = _profile(7, "TxProfile", 8, kind="Relative")
    assert (
        c.result("RemoteStartTransaction", {"idTag": "TAG-OK-1", "connectorId": 1, "chargingProfile": prof})[
            "status"
        ]
        == "Accepted"
    )
    c.hal.pilot[1] = "C"
    step(c, n=3)
    assert c.core.transaction_id(1) is not None
    assert c.hal.limit[1] == 8
    bad = _profile(8, "TxDefaultProfile", 8)
    assert (
        c.result("RemoteStartTransaction", {"idTag": "TAG-OK-2", "chargingProfile": bad})["status"]
        == "Rejected"
    )


def test_charge_point_max_profile_caps_every_connector():
    c = boot(connectors=2)
    assert _set(c, 1, _profile(1, "ChargePointMaxProfile", 10)) == "Rejected"  # only on connector 0
    assert _set(c, 0, _profile(1, "ChargePointMaxProfile", 10)) == "Accepted"
    assert _set(c, 0, _profile(2, "TxDefaultProfile", 20)) == "Accepted"
    step(c)
    assert c.hal.limit[1] == 10 and c.hal.limit[2] == 10


def test_invalid_profiles_rejected_and_profiles_persist():
    c = boot()
    bad = _profile(1, "TxDefaultProfile", 10, periods=[{"startPeriod": 5, "limit": 10}])
    assert _set(c, 0, bad) == "Rejected"  # first period must start at 0
    assert _set(c, 0, _profile(1, "TxDefaultProfile", 10, stack=99)) == "Rejected"
    assert _set(c, 0, _profile(1, "TxDefaultProfile", 10, kind="Recurring")) == "Rejected"
    assert _set(c, 5, _profile(1, "TxDefaultProfile", 10)) == "Rejected"
    assert c.call("SetChargingProfile", {"connectorId": 0}, False) == (
        "error",
        "OccurenceConstraintViolation",
    )
    for i in range(10):
        assert (
            _set(
                c,
                0,
                _profile(10 + i, "TxDefaultProfile", 10 + i, stack=i % 9)
                if i < 9
                else _profile(30, "ChargePointMaxProfile", 30),
            )
            == "Accepted"
        )
    assert _set(c, 1, _profile(40, "TxDefaultProfile", 10)) == "Rejected"  # MaxChargingProfilesInstalled
    reboot(c)
    assert len(c.core.smart.entries) == 10
    step(c)
    assert c.hal.limit[1] == 18  # highest stack level (8) on connector 0 wins


def test_get_composite_schedule():
    c = boot()
    start = iso_utc(c.hal.wall)
    periods = [{"startPeriod": 0, "limit": 16}, {"startPeriod": 600, "limit": 10}]
    _set(c, 0, _profile(1, "TxDefaultProfile", 0, periods=periods, start=start, duration=1200))
    r = c.result("GetCompositeSchedule", {"connectorId": 1, "duration": 1800})
    assert r["status"] == "Accepted" and r["connectorId"] == 1
    sched = r["chargingSchedule"]
    assert sched["chargingRateUnit"] == "A" and sched["duration"] == 1800
    got = [(p["startPeriod"], p["limit"]) for p in sched["chargingSchedulePeriod"]]
    assert got == [(0, 16.0), (600, 10.0), (1200, 32.0)], got
    w = c.result("GetCompositeSchedule", {"connectorId": 1, "duration": 60, "chargingRateUnit": "W"})
    assert w["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 16 * 230 * 3
    assert c.result("GetCompositeSchedule", {"connectorId": 4, "duration": 60})["status"] == "Rejected"


def test_card_of_same_group_stops_transaction():
    c = boot(connectors=1)
    group = {"status": "Accepted", "parentIdTag": "FLEET-1"}
    entries = [{"idTag": "FLEET-A", "idTagInfo": group}, {"idTag": "FLEET-B", "idTagInfo": group}]
    entries.append({"idTag": "OTHER", "idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET-2"}})
    assert _send_list(c, 1, "Full", entries) == "Accepted"
    c.handlers["Authorize"] = lambda p: {"idTagInfo": group}
    c.handlers["StartTransaction"] = lambda p: {"transactionId": 9, "idTagInfo": group}
    _charge(c, tag="FLEET-A")
    assert c.core.transaction_id(1) == 9
    c.hal.cards.append("OTHER")
    step(c)
    assert c.core.transaction_id(1) == 9  # another group: ignored
    c.hal.cards.append("FLEET-B")
    step(c)
    stop = c.last("StopTransaction")
    assert stop["idTag"] == "FLEET-B" and stop["reason"] == "Local"


def test_recurring_daily_and_relative_profiles():
    c = boot()
    day_start = int(c.hal.wall) - int(c.hal.wall) % 86400 - 7 * 86400  # midnight a week ago
    now_in_day = int(c.hal.wall) % 86400
    periods = [{"startPeriod": 0, "limit": 10}, {"startPeriod": now_in_day + 120, "limit": 20}]
    daily = _profile(1, "TxDefaultProfile", 0, periods=periods, kind="Recurring", start=iso_utc(day_start))
    daily["recurrencyKind"] = "Daily"
    assert _set(c, 0, daily) == "Accepted"
    _charge(c)
    assert c.hal.limit[1] == 10
    step(c, 1000, 121)
    assert c.hal.limit[1] == 20
    # a Relative TxProfile counts from the transaction's start
    txid = c.core.transaction_id(1)
    rel = _profile(
        2,
        "TxProfile",
        0,
        kind="Relative",
        periods=[{"startPeriod": 0, "limit": 16}, {"startPeriod": 60, "limit": 8}],
    )
    rel["transactionId"] = txid
    assert _set(c, 1, rel) == "Accepted"
    step(c)
    assert c.hal.limit[1] == 8  # the transaction started more than 60 s ago
