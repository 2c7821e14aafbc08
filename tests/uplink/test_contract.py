"""Contract codec: both encodings decode to the same canonical events; compact meter readings; bad input."""

from __future__ import annotations

import json

import cbor2
import pytest

from gateway import events as ev
from gateway.uplink.contract import (
    ContractError,
    OutboxRow,
    Topics,
    canonical_body,
    decode_batch,
    decode_message,
    encode_batch,
    format_ms,
    gateway_of_topic,
    parse_topic_level,
    topic_level,
)

T0 = 1_795_000_000.0
SIGNED = 'OCMF|{"FV":"1.0","RD":[{"TM":"2026-11-21T10:00:00,000+0000 S","RV":12.345}]}|{"SD":"3045022100AB"}'


def row(seq: int, kind: str, body: dict, charger: str | None = "CP1", ts: str | None = "2026-11-21T10:00:00Z",
        dt: float = 0.0) -> OutboxRow:  # fmt: skip
    return OutboxRow(seq, kind, charger, T0 + dt, ts, cbor2.dumps(body))


def meter(seq: int, value: str, **extra: str) -> OutboxRow:
    sample = {"value": value, **extra}
    return row(seq, ev.METER_READING, {"connector_id": 1, "transaction_id": 42, "values": [sample]}, dt=seq)


ROWS = [
    row(1, ev.CHARGER_BOOT, {"vendor": "ACME", "model": "X1"}, ts=None),
    row(
        2, ev.SESSION_STARTED, {"transaction_id": 42, "id_tag": "04A2B3C4D5E6F7", "meter_start": 1000}, dt=0.5
    ),
    meter(3, "1183"),
    meter(4, "1366", measurand="Energy.Active.Import.Register", unit="Wh", context="Sample.Periodic"),
    meter(5, "7.4", measurand="Power.Active.Import", unit="kW", phase="L1"),
    meter(6, SIGNED, format="SignedData", context="Transaction.End"),
    meter(7, "0123"),  # not canonical integer text: must stay text
    row(9, ev.METER_READING, {"connector_id": 1, "values": [{"value": 5}]}),  # not compactable: generic form
    row(10, "vendor.custom", {"x": [1, 2]}, charger="CP/2+#", ts="not a timestamp"),
    # as gateway/csms.py records a MeterValues meterValue
    row(
        12,
        ev.METER_READING,
        {
            "tx": 42,
            "charger": "CP1",
            "connector": 1,
            "ts": "2026-11-21T10:00:00Z",
            "samples": [
                ["Energy.Active.Import.Register", "", "", "Wh", "2000", "", ""],
                ["Current.Import", "L2", "Outlet", "A", "15.8", "Sample.Periodic", ""],
            ],
        },
    ),
    row(
        13,
        ev.METER_READING,
        {"tx": None, "charger": "OTHER", "connector": 1, "ts": "2026-11-21T10:00:00Z", "samples": []},
    ),  # charger differs from the event's: not normalised
    row(11, ev.SESSION_RECORD, {"transaction_id": 42, "signed_data": [{"value": SIGNED}]}, charger=None),
]


@pytest.mark.parametrize("encoding", ["cbor", "json"])
def test_round_trip_gives_canonical_events(encoding: str) -> None:
    events = decode_batch(encode_batch("gw-1", ROWS, encoding))  # type: ignore[arg-type]
    assert [e["seq"] for e in events] == [r.seq for r in ROWS]
    for e, r in zip(events, ROWS, strict=True):
        assert e["gateway_id"] == "gw-1"
        assert e["kind"] == r.kind
        assert e["charger_id"] == r.charger_id
        assert e["gateway_ms"] == round(r.created_at * 1000)
        assert e["body"] == canonical_body(r.kind, cbor2.loads(r.body), r.charger_id, r.charger_ts)
    assert events[0]["charger_ts"] is None
    assert events[1]["charger_ts"] == "2026-11-21T10:00:00.000Z"
    assert events[8]["charger_ts"] == "not a timestamp"


def test_both_encodings_decode_identically() -> None:
    assert decode_batch(encode_batch("gw", ROWS, "cbor")) == decode_batch(encode_batch("gw", ROWS, "json"))


def test_meter_defaults_dropped_and_signed_data_byte_for_byte() -> None:
    events = {e["seq"]: e for e in decode_batch(encode_batch("gw", ROWS, "cbor"))}
    assert events[4]["body"] == {"connector_id": 1, "transaction_id": 42, "values": [{"value": "1366"}]}
    assert events[5]["body"]["values"] == [
        {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW", "phase": "L1"}
    ]
    signed = events[6]["body"]["values"][0]
    assert signed["value"].encode() == SIGNED.encode()
    assert signed["format"] == "SignedData" and signed["context"] == "Transaction.End"
    assert events[7]["body"]["values"][0]["value"] == "0123"
    assert events[9]["body"] == {"connector_id": 1, "values": [{"value": 5}]}
    assert events[11]["body"]["signed_data"][0]["value"] == SIGNED


def test_csms_meter_shape_becomes_the_contract_shape() -> None:
    events = {e["seq"]: e for e in decode_batch(encode_batch("gw", ROWS, "cbor"))}
    assert events[12]["body"] == {
        "connector_id": 1,
        "transaction_id": 42,
        "values": [
            {"value": "2000"},
            {"value": "15.8", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        ],
    }
    assert events[13]["body"]["charger"] == "OTHER"  # passed through unchanged
    compact = cbor2.loads(encode_batch("gw", [ROWS[-3]], "cbor"))[5][0][5]
    assert compact == [1, 42, 2000, ["15.8", 2, 10, 2]]


def test_compact_meter_reading_is_small() -> None:
    # periodic readings a minute apart, charger clock 0.3 s behind the gateway's
    rows = [
        OutboxRow(100 + i, ev.METER_READING, f"CP{i % 8}", T0 + 60 * i, format_ms(round((T0 + 60 * i - 0.3) * 1000)),
                  cbor2.dumps({"connector_id": 1, "transaction_id": 420 + i % 8,
                               "values": [{"value": str(123456 + 183 * i), "unit": "Wh"}]}))
        for i in range(500)
    ]  # fmt: skip
    payload = encode_batch("site-1", rows, "cbor")
    per_event = len(payload) / len(rows)
    assert per_event <= 21, per_event
    naive = sum(len(json.dumps({"seq": r.seq, "body": cbor2.loads(r.body)})) for r in rows) / len(rows)
    assert per_event * 4 < naive


def test_unknown_sample_codes_travel_as_text() -> None:
    r = meter(1, "3", measurand="Vendor.Thing", unit="furlong")
    (e,) = decode_batch(encode_batch("gw", [r], "cbor"))
    assert e["body"]["values"] == [{"value": "3", "measurand": "Vendor.Thing", "unit": "furlong"}]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xff",
        cbor2.dumps([2, "gw", 1, 0, [], []]),  # other contract version
        cbor2.dumps([1, "gw", 1, 0, [], [[1, 0, 9, 5, None, [1, None, 1]]]]),  # charger index out of range
        cbor2.dumps([1, "gw", 1, 0, [], [[1, 0, 99, None, None, {}]]]),  # unknown kind code
        cbor2.dumps([1, "gw", 1, 0, [], [[1, 0, 9, None, None, [1, None, [1, 999]]]]]),  # bad measurand code
        cbor2.dumps([1, "gw", 1, 0, [], [[1, 0, 9, None, 10**30, [1, None, 1]]]]),  # absurd timestamp
        b'{"v": 1, "events": [{"kind": "x"}]}',
        b"[1,2",
    ],
)
def test_bad_batches_raise_contract_error(payload: bytes) -> None:
    with pytest.raises(ContractError):
        decode_batch(payload)


def test_decode_message_caps_and_types() -> None:
    assert decode_message(cbor2.dumps({"a": 1})) == {"a": 1}
    assert decode_message(b'{"a": 1}') == {"a": 1}
    for bad in (b"", cbor2.dumps([1]), b"{nope", b"\x1f"):
        with pytest.raises(ContractError):
            decode_message(bad)
    with pytest.raises(ContractError):
        decode_message(b"{" + b" " * 100 + b"}", max_bytes=50)


def test_topic_levels_cannot_inject_wildcards() -> None:
    for cid in ("CP1", "CP+1", "a#b", "x/y", "50%", "ä"):
        level = topic_level(cid)
        assert not set(level) & {"+", "#", "/"}
        assert parse_topic_level(level) == cid
    t = Topics("site-1")
    assert t.events == "chargegate/v1/site-1/events"
    assert t.status("CP+1", 2) == "chargegate/v1/site-1/status/CP%2B1/2"
    assert gateway_of_topic(t.presence) == "site-1"
    with pytest.raises(ContractError):
        gateway_of_topic("other/v1/x/events")
