"""The charger's clock follows the Central System's currentTime; ResetRetries. Run by pytest
(test_clock_reset.py) and under MicroPython (tests/mpy/run.mjs). Common subset only."""

from agentfakes import FakeHal, boot, step

from agent.compat import iso_utc, parse_iso
from agent.core import CLOCK_MIN_CORRECTION_S, RESET_CONFIRM_MS

CSMS_NOW = 1795000000  # what the Central System's clock says when the charger boots


def _no_rtc_hal():
    hal = FakeHal(1)
    hal.wall = 0.0  # no battery-backed RTC: the clock starts at the epoch on every power-up
    return hal


def _ts(payload):
    t = parse_iso(payload["timestamp"])
    assert t is not None
    return t


def test_charger_without_rtc_takes_the_time_from_boot_notification():
    hal = _no_rtc_hal()
    c = boot(hal=hal, connect=False)
    c.clock_skew_s = CSMS_NOW
    c.connect()
    step(c)
    assert c.core.clock_synced
    assert abs(c.core.wall_time() - (hal.wall + CSMS_NOW)) < 1.0
    # every timestamp from now on is on the Central System's clock
    assert abs(_ts(c.last("StatusNotification")) - (hal.wall + CSMS_NOW)) <= 1
    c.hal.cards.append("TAG-OK-1")
    step(c)
    c.hal.pilot[1] = "C"
    step(c, 1000, 3)
    assert abs(_ts(c.last("StartTransaction")) - (hal.wall + CSMS_NOW)) <= 4


def test_messages_queued_before_the_clock_was_set_keep_their_timestamps():
    hal = _no_rtc_hal()
    c = boot(hal=hal, connect=False)
    c.core.cfg.change("AllowOfflineTxForUnknownId", "true")
    c.core.cfg.change("MeterValueSampleInterval", "0")
    c.hal.cards.append("OFFLINE1")
    c.hal.pilot[1] = "C"
    step(c, 1000, 3)  # offline, clock unset: the charger's own (wrong) time
    assert c.core.transaction_id(1) < 0
    c.clock_skew_s = CSMS_NOW
    c.connect()
    step(c, n=3)
    start = c.last("StartTransaction")
    assert _ts(start) < 10  # created before the clock was known: sent as it was recorded, not rewritten
    c.hal.pilot[1] = "A"
    step(c, n=3)
    stop = c.last("StopTransaction")
    assert abs(_ts(stop) - (hal.wall + CSMS_NOW)) <= 1  # created after: Central System time


def test_heartbeat_corrects_drift_and_ignores_jitter():
    c = boot()
    base = c.core.wall_time()
    assert abs(base - c.hal.wall) < 1.0  # clocks agreed at boot: nothing changed
    c.clock_skew_s = CLOCK_MIN_CORRECTION_S - 1  # within resolution + transit noise
    c.result("TriggerMessage", {"requestedMessage": "Heartbeat"})
    step(c)
    assert abs(c.core.wall_time() - c.hal.wall) < 1.0
    c.clock_skew_s = 45  # the charger's clock drifted 45 s behind
    c.result("TriggerMessage", {"requestedMessage": "Heartbeat"})
    step(c)
    assert abs(c.core.wall_time() - (c.hal.wall + 45)) < 1.0
    c.clock_skew_s = -600  # and a correction backwards is followed too
    c.result("TriggerMessage", {"requestedMessage": "Heartbeat"})
    step(c)
    assert abs(c.core.wall_time() - (c.hal.wall - 600)) < 1.0
    c.result("TriggerMessage", {"requestedMessage": "StatusNotification", "connectorId": 1})
    assert abs(_ts(c.last("StatusNotification")) - (c.hal.wall - 600)) <= 1


class RtcHal(FakeHal):
    def __init__(self):
        FakeHal.__init__(self, 1)
        self.wall = 0.0
        self.rtc_sets = []

    def set_wall_time(self, unix):
        self.rtc_sets.append(unix)
        self.wall = float(unix)


def test_a_hal_with_a_settable_rtc_gets_the_time_and_no_offset_is_kept():
    hal = RtcHal()
    c = boot(hal=hal, connect=False)
    c.clock_skew_s = CSMS_NOW
    c.connect()
    step(c)
    assert len(hal.rtc_sets) == 1 and abs(hal.rtc_sets[0] - CSMS_NOW) <= 1
    assert c.core.wall_time() == hal.wall  # the RTC was set: nothing to add
    c.clock_skew_s = 0
    c.result("TriggerMessage", {"requestedMessage": "Heartbeat"})
    step(c)
    assert len(hal.rtc_sets) == 1  # agreeing clocks: the RTC is left alone


def test_unusable_current_time_is_ignored_not_fatal():
    c = boot(connect=False)
    c.check_answers = False
    c.handlers["BootNotification"] = lambda p: {"status": "Accepted", "currentTime": "soon", "interval": 300}
    c.connect()
    step(c)
    assert c.core.registration_status == "Accepted"
    assert not c.core.clock_synced and c.core.wall_time() == c.hal.wall


def test_clock_aligned_sampling_follows_a_backward_correction():
    c = boot()
    c.result("ChangeConfiguration", {"key": "ClockAlignedDataInterval", "value": "900"})
    c.result("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "0"})
    step(c)
    c.clock_skew_s = -10 * 86400  # the charger was 10 days ahead
    c.result("TriggerMessage", {"requestedMessage": "Heartbeat"})
    step(c)
    c.clear()
    c.hal.cards.append("TAG-OK-1")
    step(c)
    c.hal.pilot[1] = "C"
    step(c, 60000, 16)
    clock = [
        p for p in c.of("MeterValues") if p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    ]
    assert len(clock) == 1  # the next quarter hour of the corrected clock, not one 10 days away
    assert (
        parse_iso(clock[0]["meterValue"][0]["timestamp"]) % 900 < 60
    )  # taken on the first 60 s tick after it


def test_time_helpers_roundtrip_for_the_fake_central():
    assert parse_iso(iso_utc(CSMS_NOW)) == CSMS_NOW


# ---------------------------------------------------------------------------------------------------------
# ResetRetries: the charger asked the HAL to reboot and is still running (FakeHal.reboot only records)
# ---------------------------------------------------------------------------------------------------------
def _until_reboots(c, n, limit_s=120):
    for _ in range(limit_s * 2):
        if len(c.hal.reboots) >= n:
            return
        step(c, 500)
    raise AssertionError("reboots: " + repr(c.hal.reboots))


def test_soft_reset_that_does_not_happen_is_retried_then_made_hard():
    c = boot()
    assert c.core.cfg.get("ResetRetries") == 1
    assert c.result("Reset", {"type": "Soft"})["status"] == "Accepted"
    step(c, 500, 3)
    assert c.hal.reboots == [False] and c.core.reboot_requested is False
    step(c, RESET_CONFIRM_MS - 2000)
    assert c.hal.reboots == [False]  # not yet: a port restarts within moments
    _until_reboots(c, 2)
    assert c.hal.reboots == [False, False]  # ResetRetries = 1 retry
    _until_reboots(c, 3)
    assert c.hal.reboots == [False, False, True] and c.core.reboot_requested is True
    _until_reboots(c, 4)
    assert c.hal.reboots == [False, False, True, True]
    step(c, RESET_CONFIRM_MS + 1000)
    assert c.hal.reboots == [False, False, True, True]  # given up
    assert c.core.reboot_requested is None
    # and the charger carries on
    c.hal.cards.append("TAG-OK-1")
    step(c)
    c.hal.pilot[1] = "C"
    step(c, n=2)
    assert c.core.status(1) == "Charging"


def test_reset_retries_zero_means_one_attempt_of_each_kind():
    c = boot()
    assert c.result("ChangeConfiguration", {"key": "ResetRetries", "value": "0"})["status"] == "Accepted"
    c.result("Reset", {"type": "Hard"})
    _until_reboots(c, 1)
    step(c, RESET_CONFIRM_MS * 3)
    assert c.hal.reboots == [True] and c.core.reboot_requested is None


def test_no_new_transaction_between_reset_and_reboot():
    c = boot()
    c.result("Reset", {"type": "Soft"})
    c.hal.cards.append("TAG-OK-1")
    step(c)
    c.hal.pilot[1] = "C"
    step(c, 100, 3)
    assert c.of("StartTransaction") == [] and c.core.transaction_id(1) is None
    assert c.result("RemoteStartTransaction", {"idTag": "TAG-OK-1", "connectorId": 1})["status"] == "Rejected"
    assert c.result("RemoteStartTransaction", {"idTag": "TAG-OK-1"})["status"] == "Rejected"
    step(c, 500, 3)
    assert c.hal.reboots == [False]
