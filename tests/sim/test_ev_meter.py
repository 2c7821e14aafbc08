"""Pure logic of the simulator: EV charging curve, meter integration, SimHal physics on an injected clock."""

from __future__ import annotations

import os
import stat

import pytest

from firmware_sim.clock import ManualTime, SimClock
from firmware_sim.ev import MIN_OFFERED_AMPS, Ev, EvSpec
from firmware_sim.hal import SimHal
from firmware_sim.meter import EnergyMeter
from firmware_sim.storage import DirStorage

SPEC = EvSpec(
    "test",
    capacity_kwh=50.0,
    max_ac_power_w=11000.0,
    phases=3,
    taper_soc=0.8,
    taper_floor=0.1,
    efficiency=1.0,
)


def make_hal(tmp_path, speed=1.0, connectors=1):
    t = ManualTime()
    clock = SimClock(speed, monotonic=t, wall=lambda: 1_700_000_000.0)
    return SimHal("CP1", connectors, tmp_path / "flash", clock), t


# -- EV --------------------------------------------------------------------------------------------------------
def test_pilot_states_follow_plug_offer_and_full():
    ev = Ev(SPEC, soc=0.5)
    assert ev.pilot_state(16) == "A"
    ev.plugged = True
    assert ev.pilot_state(0) == "B"
    assert ev.pilot_state(MIN_OFFERED_AMPS - 0.1) == "B"
    assert ev.pilot_state(MIN_OFFERED_AMPS) == "C"
    ev.soc = 1.0
    assert ev.pilot_state(32) == "B"


def test_target_soc_below_full_counts_as_full():
    ev = Ev(SPEC, soc=0.8, target_soc=0.8)
    ev.plugged = True
    assert ev.full and ev.pilot_state(32) == "B"


def test_acceptance_curve_constant_then_linear_taper():
    ev = Ev(SPEC, soc=0.2)
    assert ev.acceptance_power_w() == 11000.0
    ev.soc = 0.8
    assert ev.acceptance_power_w() == 11000.0
    ev.soc = 0.9  # halfway through the taper: halfway between 100 % and 10 % of max
    assert ev.acceptance_power_w() == pytest.approx(11000.0 * 0.55)
    ev.soc = 0.999
    assert 1100.0 < ev.acceptance_power_w() < 1200.0


def test_draw_obeys_offered_current_and_relay():
    ev = Ev(SPEC, soc=0.2)
    ev.plugged = True
    assert ev.draw_power_w(16, relay_closed=False) == 0.0
    assert ev.draw_power_w(10, relay_closed=True, voltage=230.0) == pytest.approx(10 * 230.0 * 3)
    assert ev.draw_power_w(32, relay_closed=True) == 11000.0  # on-board charger limit
    assert ev.draw_power_w(5, relay_closed=True) == 0.0  # below the IEC minimum: no charging


def test_single_phase_ev_limit():
    ev = Ev(EvSpec("1ph", phases=1, max_ac_power_w=7400.0), soc=0.1)
    ev.plugged = True
    assert ev.draw_power_w(32, True, 230.0) == pytest.approx(7360.0)


def test_absorb_applies_losses_and_caps_at_full():
    ev = Ev(EvSpec("lossy", capacity_kwh=10.0, efficiency=0.9), soc=0.5)
    ev.absorb(1000.0)
    assert ev.soc == pytest.approx(0.5 + 0.09)
    ev.absorb(100000.0)
    assert ev.soc == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"capacity_kwh": 0}, {"phases": 4}, {"taper_soc": 0}, {"efficiency": 1.5}, {"max_ac_power_w": -1}],
)
def test_bad_spec_rejected(kwargs):
    with pytest.raises(ValueError):
        EvSpec("bad", **kwargs)


def test_bad_soc_rejected():
    with pytest.raises(ValueError):
        Ev(SPEC, soc=1.2)
    with pytest.raises(ValueError):
        Ev(SPEC, soc=0.5, target_soc=0)


# -- meter -----------------------------------------------------------------------------------------------------
def test_meter_integrates_and_register_truncates():
    m = EnergyMeter(start_wh=100.0)
    assert m.integrate(3600.0, 1.5) == pytest.approx(1.5)
    assert m.energy_wh == pytest.approx(101.5)
    assert m.register_wh == 101
    m.integrate(-500.0, 10.0)  # export is not imported energy
    assert m.energy_wh == pytest.approx(101.5)
    with pytest.raises(ValueError):
        m.integrate(100.0, -1.0)


def test_meter_snapshot_roundtrip():
    m = EnergyMeter(42.5)
    assert EnergyMeter.restore(m.snapshot()).energy_wh == 42.5


# -- clock -----------------------------------------------------------------------------------------------------
def test_clock_speed_scales_sim_time_only():
    t = ManualTime(50.0)
    clock = SimClock(120.0, monotonic=t)
    t.advance(2.0)
    assert clock.sim() == pytest.approx(240.0)
    assert clock.real() == pytest.approx(52.0)
    assert clock.sim_to_real(600.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        SimClock(0)


# -- SimHal physics --------------------------------------------------------------------------------------------
def test_energy_is_power_times_dt_times_speed(tmp_path):
    hal, t = make_hal(tmp_path, speed=60.0)
    hal.plug_in(1, Ev(SPEC, soc=0.2))
    assert hal.pilot_state(1) == "B"  # no PWM yet
    hal.set_current_limit(1, 10)
    assert hal.pilot_state(1) == "C"
    assert hal.meter_power_w(1) == 0.0  # contactor still open
    hal.set_relay(1, True)
    power = 10 * 230.0 * 3
    assert hal.meter_power_w(1) == pytest.approx(power)
    t.advance(10.0)  # 10 real s x 60 = 600 sim s
    assert hal.energy_wh(1) == pytest.approx(power * 600 / 3600)
    assert hal.meter_wh(1) == int(power * 600 / 3600)


def test_current_limit_zero_pauses(tmp_path):
    hal, t = make_hal(tmp_path)
    hal.plug_in(1, Ev(SPEC, soc=0.2))
    hal.set_current_limit(1, 32)
    hal.set_relay(1, True)
    t.advance(360.0)
    e1 = hal.energy_wh(1)
    assert e1 == pytest.approx(1100.0)
    hal.set_current_limit(1, 0)
    assert hal.pilot_state(1) == "B"
    t.advance(360.0)
    assert hal.energy_wh(1) == e1


def test_charges_to_full_then_suspends_and_meter_stops(tmp_path):
    hal, t = make_hal(tmp_path, speed=100.0)
    ev = Ev(SPEC, soc=0.7)
    hal.plug_in(1, ev)
    hal.set_current_limit(1, 32)
    hal.set_relay(1, True)
    readings = []
    for _ in range(200):  # 200 x 10 s x 100 = 55 sim hours: far beyond full
        t.advance(10.0)
        readings.append(hal.meter_wh(1))
    assert readings == sorted(readings)  # monotonic
    assert ev.soc == 1.0 and ev.full
    assert hal.pilot_state(1) == "B"  # full: the EV stops requesting (SuspendedEV)
    assert hal.meter_power_w(1) == 0.0
    # efficiency 1.0: exactly the missing 30 % of 50 kWh went through the meter
    assert hal.energy_wh(1) == pytest.approx(15000.0, abs=0.01)
    final = hal.meter_wh(1)
    t.advance(100.0)
    assert hal.meter_wh(1) == final


def test_taper_slows_charging_near_full(tmp_path):
    hal, t = make_hal(tmp_path, speed=1.0)
    ev = Ev(SPEC, soc=0.5)
    hal.plug_in(1, ev)
    hal.set_current_limit(1, 32)
    hal.set_relay(1, True)
    t.advance(600.0)
    bulk = hal.energy_wh(1)
    ev.soc = 0.95
    e0 = hal.energy_wh(1)
    t.advance(600.0)
    tapered = hal.energy_wh(1) - e0
    assert tapered < bulk * 0.4
    assert tapered > 0


def test_unplug_stops_power_and_register_survives_reboot(tmp_path):
    hal, t = make_hal(tmp_path)
    hal.plug_in(1, Ev(SPEC, soc=0.2))
    hal.set_current_limit(1, 16)
    hal.set_relay(1, True)
    t.advance(3600.0)
    before = hal.meter_wh(1)
    assert before > 10000
    hal.power_cut()
    assert hal.reboot_pending is True
    hal.power_on()
    assert hal.reboot_pending is None and hal.reboots == 1
    assert hal.connector(1).relay_closed is False and hal.connector(1).offered_amps == 0.0
    assert hal.meter_wh(1) == before  # the register survives; nothing flows with the contactor open
    t.advance(100.0)
    assert hal.meter_wh(1) == before
    ev = hal.unplug(1)
    assert ev is not None and not ev.plugged
    assert hal.pilot_state(1) == "A"


def test_connectors_are_independent(tmp_path):
    hal, t = make_hal(tmp_path, connectors=2)
    hal.plug_in(2, Ev(SPEC, soc=0.1))
    hal.set_current_limit(2, 16)
    hal.set_relay(2, True)
    t.advance(60.0)
    assert hal.meter_wh(1) == 0
    assert hal.meter_wh(2) > 0
    assert hal.pilot_state(1) == "A"
    with pytest.raises(ValueError):
        hal.pilot_state(3)
    with pytest.raises(ValueError):
        hal.plug_in(2, Ev(SPEC, soc=0.5))  # already occupied


def test_card_taps_returned_once_each_in_order(tmp_path):
    hal, _ = make_hal(tmp_path)
    assert hal.read_card() is None
    hal.tap("AA11")
    hal.tap("BB22")
    assert hal.read_card() == "AA11"
    assert hal.read_card() == "BB22"
    assert hal.read_card() is None
    for i in range(20):
        hal.tap(f"T{i}")
    assert hal.taps_dropped > 0


def test_reboot_request_reaches_runner(tmp_path):
    seen = []
    hal, _ = make_hal(tmp_path)
    hal.on_reboot = seen.append
    hal.reboot(False)
    assert hal.reboot_pending is False and seen == [False]
    hal.reboot(True)
    assert hal.reboot_pending is True and seen == [False, True]


def test_ticks_are_real_time_not_sim_time(tmp_path):
    hal, t = make_hal(tmp_path, speed=1000.0)
    a = hal.ticks_ms()
    t.advance(1.5)
    assert hal.ticks_ms() - a == 1500
    assert hal.wall_time() == 1_700_000_000.0


# -- storage ---------------------------------------------------------------------------------------------------
def test_storage_atomic_private_files(tmp_path):
    st = DirStorage(tmp_path / "flash")
    assert st.read("queue") is None
    st.write("queue", b"one")
    st.write("queue", b"two")
    assert st.read("queue") == b"two"
    mode = stat.S_IMODE(os.stat(tmp_path / "flash" / "queue").st_mode)
    assert mode == 0o600
    assert st.names() == ["queue"]
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path / "flash"))
    # a second storage on the same directory (the charger after a restart) sees the same blobs
    assert DirStorage(tmp_path / "flash").read("queue") == b"two"


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x.tmp", "a" * 100])
def test_storage_rejects_bad_names(tmp_path, name):
    st = DirStorage(tmp_path)
    with pytest.raises(ValueError):
        st.write(name, b"x")


def test_storage_rejects_non_bytes(tmp_path):
    st = DirStorage(tmp_path)
    with pytest.raises(TypeError):
        st.write("x", 123)  # type: ignore[arg-type]
    st.write("s", "text")  # type: ignore[arg-type]  # MicroPython code may hand over str
    assert st.read("s") == b"text"


def test_power_cut_drops_contactor_at_once_and_dead_charger_switches_nothing(tmp_path):
    hal, t = make_hal(tmp_path, speed=60.0)
    hal.plug_in(1, Ev(SPEC, soc=0.2))
    hal.set_current_limit(1, 16)
    hal.set_relay(1, True)
    t.advance(1.0)
    at_cut = hal.energy_wh(1)
    hal.power_cut()
    hal.set_relay(1, True)  # the old core, still running for a moment, cannot close it again
    t.advance(5.0)
    assert hal.energy_wh(1) == at_cut
    hal.power_on()
    hal.set_current_limit(1, 16)
    hal.set_relay(1, True)
    t.advance(1.0)
    assert hal.energy_wh(1) > at_cut
