"""Small helpers that CPython and MicroPython both lack or spell differently.

Everything here stays in the common subset: no typing at run time, no datetime (MicroPython has none), no
f-string `=`. Timestamps are computed from UNIX seconds with the civil-from-days algorithm.
"""

try:
    from micropython import const as const  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # CPython

    def const(x):  # type: ignore[misc,no-redef,no-untyped-def,unused-ignore]
        return x


try:
    from typing import Any
except ImportError:  # MicroPython: annotations are never evaluated
    pass


def is_int(v: "Any") -> bool:
    """True for an int that is not a bool (MicroPython's bool is not an int subclass; CPython's is)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: "Any") -> bool:
    return is_int(v) or isinstance(v, float)


def _days_from_civil(y: int, m: int, d: int) -> int:
    y = y - 1 if m <= 2 else y
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> "tuple[int, int, int]":
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y, m, d)


def iso_utc(secs: "float") -> str:
    """UNIX seconds -> '2026-11-21T14:31:01Z' (whole seconds; OCPP 1.6 dateTime)."""
    s = int(secs)
    days = s // 86400
    rem = s - days * 86400
    y, m, d = _civil_from_days(days)
    hh, mm, ss = rem // 3600, (rem // 60) % 60, rem % 60
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"


def parse_iso(text: "Any") -> "int | None":
    """ISO 8601 date-time -> UNIX seconds (int), or None when it does not parse.

    Accepts 'YYYY-MM-DDTHH:MM:SS', optional fraction, and 'Z' or '+HH:MM'/'-HH:MM' (no offset = UTC)."""
    if not isinstance(text, str) or len(text) < 19 or len(text) > 40:
        return None
    try:
        if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":" or text[16] != ":":
            return None
        y = int(text[0:4])
        mo = int(text[5:7])
        d = int(text[8:10])
        h = int(text[11:13])
        mi = int(text[14:16])
        s = int(text[17:19])
        rest = text[19:]
        if rest.startswith("."):
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            rest = rest[i:]
        off = 0
        if rest in ("", "Z", "z"):
            off = 0
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            off = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            if rest[0] == "-":
                off = -off
        else:
            return None
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
            return None
        return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off
    except ValueError:
        return None


def mask_token(id_tag: "Any") -> str:
    """Token UIDs are masked in logs: '04A2B3C4D5E6F7' -> '04A2****F7'."""
    t = str(id_tag)
    if len(t) <= 6:
        return "****"
    return t[:4] + "****" + t[-2:]
