"""Reservation cases (OCPP 1.6 Reservation profile: ReserveNow / CancelReservation, §5.13, §5.3).
Shared by CPython pytest (test_reservation.py, every frame schema-checked) and the MicroPython runner."""

from agentfakes import FakeHal, boot, reboot, step

from agent import connector, reservation
from agent.compat import iso_utc


def _reserve(c, rid, tag="TAG-OK-1", cid=1, in_s=600, parent=None):
    p = {"connectorId": cid, "expiryDate": iso_utc(c.hal.wall + in_s), "idTag": tag, "reservationId": rid}
    if parent is not None:
        p["parentIdTag"] = parent
    return c.result("ReserveNow", p)["status"]


def _statuses(c, cid=1):
    return [p["status"] for p in c.of("StatusNotification") if p["connectorId"] == cid]


def test_reserve_now_makes_the_connector_reserved_and_cancel_frees_it():
    c = boot()
    c.clear()
    assert _reserve(c, 7) == "Accepted"
    step(c)
    assert c.core.status(1) == "Reserved" and _statuses(c) == ["Reserved"]
    got = c.result("GetConfiguration", {"key": ["ReserveConnectorZeroSupported", "SupportedFeatureProfiles"]})
    values = {}
    for k in got["configurationKey"]:
        values[k["key"]] = k["value"]
    assert values["ReserveConnectorZeroSupported"] == "false"
    assert "Reservation" in values["SupportedFeatureProfiles"].split(",")
    assert c.result("CancelReservation", {"reservationId": 8})["status"] == "Rejected"
    assert c.result("CancelReservation", {"reservationId": 7})["status"] == "Accepted"
    step(c)
    assert c.core.status(1) == "Available" and _statuses(c) == ["Reserved", "Available"]
    assert c.result("CancelReservation", {"reservationId": 7})["status"] == "Rejected"


def test_reserve_now_answers():
    c = boot(connectors=2)
    assert _reserve(c, 1, cid=0) == "Rejected"  # ReserveConnectorZeroSupported is false
    assert _reserve(c, 1, cid=3) == "Rejected"  # no such connector
    assert _reserve(c, 1, cid=-1) == "Rejected"
    assert _reserve(c, 1, in_s=-5) == "Rejected"  # already expired
    bad = {"connectorId": 1, "expiryDate": "soon", "idTag": "TAG-OK-1", "reservationId": 1}
    assert c.call("ReserveNow", bad, False) == ("result", {"status": "Rejected"})
    assert _reserve(c, 1) == "Accepted"
    assert _reserve(c, 2) == "Occupied"  # reserved by another reservation
    assert _reserve(c, 1, tag="TAG-OK-2") == "Accepted"  # the same id replaces it
    assert c.core.connectors[0].reservation[reservation.TAG] == "TAG-OK-2"
    assert _reserve(c, 1, cid=2) == "Accepted"  # the same id again, elsewhere: moved
    step(c)
    assert c.core.connectors[0].reservation is None and c.core.status(1) == "Available"
    assert c.core.status(2) == "Reserved"
    # a connector in use (TAG-OK-1 would go to its reservation on connector 2)
    c.hal.cards.append("TAG-OK-2")
    step(c)
    c.hal.pilot[1] = "C"
    step(c, n=2)
    assert c.core.status(1) == "Charging"
    assert _reserve(c, 3) == "Occupied"
    # faulted, unavailable
    c.hal.faults[2] = "GroundFailure"
    c.result("CancelReservation", {"reservationId": 1})
    step(c)
    assert _reserve(c, 4, cid=2) == "Faulted"
    c.hal.faults[2] = None
    step(c)
    assert c.result("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"})["status"] == "Accepted"
    step(c)
    assert _reserve(c, 4, cid=2) == "Unavailable"
    # malformed requests change nothing
    assert c.call("ReserveNow", {"connectorId": 2, "idTag": "X", "reservationId": 5}, False)[0] == "error"
    long_tag = {
        "connectorId": 2,
        "expiryDate": iso_utc(c.hal.wall + 60),
        "idTag": "X" * 21,
        "reservationId": 5,
    }
    assert c.call("ReserveNow", long_tag, False)[0] == "error"
    assert c.call("CancelReservation", {"reservationId": "1"}, False)[0] == "error"
    assert c.core.connectors[1].reservation is None


def test_another_card_is_refused_and_the_reserved_card_starts_with_the_reservation_id():
    c = boot()
    assert _reserve(c, 42, tag="TAG-OK-1") == "Accepted"
    step(c)
    c.clear()
    c.hal.pilot[1] = "B"  # an EV plugs in: still Reserved
    step(c, n=2)
    assert c.core.status(1) == "Reserved"
    c.hal.cards.append("TAG-OK-2")  # accepted by the Central System, but not the reserved card
    step(c, n=3)
    assert "Authorize" not in c.actions() and "StartTransaction" not in c.actions()
    assert c.core.status(1) == "Reserved"
    c.hal.cards.append("TAG-OK-1")
    step(c, n=3)
    start = c.last("StartTransaction")
    assert start["idTag"] == "TAG-OK-1" and start["reservationId"] == 42
    assert c.core.connectors[0].reservation is None
    assert _statuses(c) == ["Preparing", "SuspendedEV"]
    # the reservation is consumed: cancelling it now is Rejected, and it does not come back after a restart
    assert c.result("CancelReservation", {"reservationId": 42})["status"] == "Rejected"
    c.hal.pilot[1] = "A"
    step(c, n=3)
    reboot(c)
    assert c.core.connectors[0].reservation is None


def test_remote_start_respects_the_reservation():
    c = boot()
    assert _reserve(c, 5, tag="TAG-OK-1") == "Accepted"
    step(c)
    assert c.result("RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG-OK-2"})["status"] == "Rejected"
    assert c.result("RemoteStartTransaction", {"idTag": "TAG-OK-2"})["status"] == "Rejected"
    assert c.result("RemoteStartTransaction", {"idTag": "TAG-OK-1"})["status"] == "Accepted"
    c.hal.pilot[1] = "C"
    step(c, n=3)
    assert c.last("StartTransaction")["reservationId"] == 5


def test_a_card_of_the_reserved_group_may_start_and_its_group_can_come_from_authorize():
    c = boot()
    parents = {"TAG-OK-2": "FLEET-A", "TAG-OK-3": "FLEET-B"}
    c.accepted_tags.append("TAG-OK-3")

    def authorize(p):
        info = {"status": c.tag_status(p["idTag"])}
        if p["idTag"] in parents:
            info["parentIdTag"] = parents[p["idTag"]]
        return {"idTagInfo": info}

    c.handlers["Authorize"] = authorize
    c.result("ChangeConfiguration", {"key": "AuthorizationCacheEnabled", "value": "false"})
    assert _reserve(c, 9, tag="TAG-OK-1", parent="FLEET-A") == "Accepted"
    step(c)
    c.hal.pilot[1] = "B"
    c.hal.cards.append("TAG-OK-3")  # another group: Authorize says FLEET-B, refused
    step(c, n=3)
    assert c.of("Authorize")[-1]["idTag"] == "TAG-OK-3" and "StartTransaction" not in c.actions()
    assert c.core.status(1) == "Reserved"
    c.hal.cards.append("TAG-OK-2")  # the reserved group: the Authorize answer names FLEET-A
    step(c, n=3)
    start = c.last("StartTransaction")
    assert start["idTag"] == "TAG-OK-2" and start["reservationId"] == 9


def test_on_two_connectors_another_card_goes_to_the_free_one():
    c = boot(connectors=2)
    assert _reserve(c, 11, cid=1, tag="TAG-OK-1") == "Accepted"
    step(c)
    c.hal.cards.append("TAG-OK-2")
    step(c)
    c.hal.pilot[1] = "C"  # plugged into the reserved connector: not taken
    step(c, n=3)
    assert "StartTransaction" not in c.actions() and c.core.status(1) == "Reserved"
    c.hal.pilot[2] = "C"
    step(c, n=3)
    start = c.last("StartTransaction")
    assert start["connectorId"] == 2 and "reservationId" not in start


def test_the_reservation_expires_on_the_agent_clock():
    c = boot()
    assert _reserve(c, 3, in_s=120) == "Accepted"
    step(c)
    c.clear()
    step(c, 1000, 110)
    assert c.core.status(1) == "Reserved" and _statuses(c) == []
    step(c, 1000, 11)
    assert c.core.status(1) == "Available" and _statuses(c) == ["Available"]
    assert c.core.connectors[0].reservation is None
    c.hal.cards.append("TAG-OK-2")  # anyone may charge again
    c.hal.pilot[1] = "C"
    step(c, n=3)
    assert c.last("StartTransaction")["idTag"] == "TAG-OK-2"


def test_reserved_id_timeout_returns_to_reserved_through_available():
    c = boot()
    assert _reserve(c, 4, in_s=3600) == "Accepted"
    step(c)
    c.clear()
    c.hal.cards.append("TAG-OK-1")
    step(c)
    assert c.core.status(1) == "Preparing"
    step(c, 1000, 62)  # ConnectionTimeOut (60 s) passes without an EV
    step(c, n=2)
    assert _statuses(c) == ["Preparing", "Available", "Reserved"]


def test_the_reservation_survives_a_restart():
    hal = FakeHal(1)
    c = boot(hal=hal)
    assert _reserve(c, 21, tag="TAG-OK-1", parent="P", in_s=300) == "Accepted"
    step(c)
    reboot(c)
    assert c.core.connectors[0].reservation == [21, "TAG-OK-1", "P", int(hal.wall) + 300]
    step(c)
    assert c.core.status(1) == "Reserved" and c.last("StatusNotification")["status"] == "Reserved"
    hal.storage[reservation.STORAGE_NAME] = b"{not json"
    reboot(c)
    assert c.core.connectors[0].reservation is None and c.core.status(1) == "Available"


def test_pure_reservation_decisions():
    args = (2, False, "Available", False, None, 1, 2000, 1000.0)
    assert reservation.reserve_status(1, *args) == "Accepted"
    assert reservation.reserve_status(0, *args) == "Rejected"
    assert reservation.reserve_status(0, 2, True, "Available", False, None, 1, 2000, 1000.0) == "Accepted"
    assert reservation.reserve_status(1, 2, False, "Available", False, None, 1, 1000, 1000.0) == "Rejected"
    assert reservation.reserve_status(1, 2, False, "Available", False, None, 1, None, 1000.0) == "Rejected"
    assert reservation.reserve_status(1, 2, False, "Preparing", False, None, 1, 2000, 1000.0) == "Occupied"
    assert reservation.reserve_status(1, 2, False, "Available", True, None, 1, 2000, 1000.0) == "Occupied"
    assert reservation.reserve_status(1, 2, False, "Reserved", False, 5, 1, 2000, 1000.0) == "Occupied"
    assert reservation.reserve_status(1, 2, False, "Reserved", False, 5, 5, 2000, 1000.0) == "Accepted"
    assert reservation.reserve_status(1, 2, False, "Faulted", False, None, 1, 2000, 1000.0) == "Faulted"
    assert (
        reservation.reserve_status(1, 2, False, "Unavailable", False, None, 1, 2000, 1000.0) == "Unavailable"
    )
    res = reservation.make(1, "A", "G", 2000)
    assert reservation.admits(None, "X", None) and reservation.admits(res, "A", None)
    assert reservation.admits(res, "B", "G") and not reservation.admits(res, "B", "H")
    assert not reservation.admits(res, "B", None) and not reservation.admits(res, None, "G")
    assert not reservation.admits(reservation.make(1, "A", None, 2000), "B", None)
    assert reservation.expired(res, 2000) and not reservation.expired(res, 1999.5)
    held = {"1": res, "2": [2, "B", None, 3000]}
    assert reservation.decode(reservation.encode(held), 2) == held
    assert reservation.decode(reservation.encode(held), 1) == {"1": res}
    assert reservation.decode(b'{"1": [1, 2, null, 3], "x": [], "2": "no"}', 2) == {}
    assert reservation.decode(None, 2) == {} and reservation.decode(b"[]", 2) == {}


def test_connector_state_machine_with_reservations_takes_only_ocpp_edges():
    seen = []
    for cur in connector.STATUSES:
        for pilot in ("A", "B", "C", "E"):
            for fault in (None, "GroundFailure"):
                for operative in (True, False):
                    for tx in (True, False):
                        for waiting in (True, False):
                            for reserved in (True, False):
                                inp = connector.ConnectorInputs(
                                    pilot, fault, operative, tx, waiting, True, reserved
                                )
                                new = connector.next_status(cur, inp)
                                assert new == cur or new in connector.TRANSITIONS[cur], (cur, new)
                                if new == "Reserved" and new not in seen:
                                    seen.append(new)
    assert seen == ["Reserved"]
    reserved_plugged = connector.ConnectorInputs("B", None, True, False, False, True, True)
    assert connector.next_status("Available", reserved_plugged) == "Reserved"
    assert connector.next_status("Preparing", reserved_plugged) == "Available"  # then Reserved
    assert (
        connector.next_status("Reserved", connector.ConnectorInputs("B", None, True, False, True))
        == "Preparing"
    )
    assert (
        connector.next_status("Reserved", connector.ConnectorInputs("A", None, False, reserved=True))
        == "Unavailable"
    )
