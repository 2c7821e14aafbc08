"""Card reader cases (debounce, UID formats) in the CPython/MicroPython common subset: pytest runs them
(test_auth_cardreader.py) and so does real MicroPython (tests/mpy/run.mjs --case)."""

from agent.cardreader import CardReader, Debouncer, format_uid

UID7 = b"\x04\xa2\xb3\xc4\xd5\xe6\xf7"


def _raises(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return True
    return False


class _Clock:
    def __init__(self):
        self.t = 1000

    def __call__(self):
        return self.t


class _Scripted(CardReader):
    """A backend whose field content the case sets."""

    def __init__(self, clock, **kw):
        CardReader.__init__(self, clock, **kw)
        self.field = None

    def poll_uid(self):
        return self.field


def test_formats():
    assert format_uid(UID7) == "04A2B3C4D5E6F7"
    assert format_uid(UID7, "hex", True) == "F7E6D5C4B3A204"
    assert format_uid(b"\x01\x02\x03\x04", "decimal") == "16909060"
    assert format_uid(b"\x01\x02\x03\x04", "decimal", True) == "67305985"
    assert format_uid(bytearray(b"\xff" * 8), "decimal") == "18446744073709551615"  # 20 digits: fits
    assert _raises(format_uid, b"\xff" * 9, "decimal")  # 22 digits: longer than an idTag
    assert _raises(format_uid, b"\xff" * 11)
    assert _raises(format_uid, b"")
    assert _raises(format_uid, UID7, "octal")


def test_resting_card_is_one_tap():
    clock = _Clock()
    r = _Scripted(clock)
    assert r.read() is None
    r.field = UID7
    assert r.read() == "04A2B3C4D5E6F7"
    for _ in range(50):  # resting for 5 s, polled every 100 ms
        clock.t += 100
        assert r.read() is None


def test_missed_reads_do_not_make_a_new_tap_but_removal_does():
    clock = _Clock()
    d = Debouncer(release_ms=800)
    assert d.observe(UID7, clock.t) == UID7
    clock.t += 1500
    assert d.observe(None, clock.t) is None  # one missed (slow) read
    clock.t += 100
    assert d.observe(UID7, clock.t) is None  # still the same resting card
    clock.t += 5000
    assert d.observe(UID7, clock.t) is None  # a long pause between polls is not a removal
    clock.t += 100
    assert d.observe(None, clock.t) is None
    clock.t += 800
    assert d.observe(None, clock.t) is None  # two empty polls over 900 ms: taken off
    clock.t += 100
    assert d.observe(UID7, clock.t) == UID7  # tapped again


def test_other_card_is_a_new_tap_at_once():
    clock = _Clock()
    r = _Scripted(clock, fmt="hex", reverse=True)
    r.field = UID7
    assert r.read() == "F7E6D5C4B3A204"
    clock.t += 50
    r.field = b"\x01\x02\x03\x04"
    assert r.read() == "04030201"


def test_bad_uid_is_counted_not_tapped():
    clock = _Clock()
    r = _Scripted(clock, fmt="decimal")
    r.field = b"\xff" * 10
    assert r.read() is None
    assert r.bad_reads == 1
