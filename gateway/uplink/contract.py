"""The uplink contract, version 1: topic names and payload encodings (sans-I/O; docs/uplink.md is the reference).

Event batches are the hot path: CBOR arrays with a base seq, a base gateway timestamp and per-event deltas, and
meter readings as compact arrays with code tables. Everything here is pure: bytes and dicts in, bytes and dicts out.
Both encodings decode to the same canonical event dicts (`decode_batch`), which is what the eMSP stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

import cbor2

from gateway import events as ev

CONTRACT_VERSION = 1
TOPIC_ROOT = "chargegate/v1"
Encoding = Literal["cbor", "json"]

# Caps on what a peer can make us decode (a downlink payload or a batch read by the eMSP).
MAX_EVENTS_PER_BATCH = 100_000


class ContractError(ValueError):
    """A payload does not follow the contract."""


# -- topics -----------------------------------------------------------------------------------------------------
# Characters that must not appear raw in a topic level: wildcards, the level separator, NUL, and '%' (escape).
_TOPIC_SAFE = "-_.~!$&'()*,;=:@"


def topic_level(value: str) -> str:
    """A charger id as one topic level: percent-encoded so '+', '#', '/' and '%' cannot change the topic's meaning."""
    return quote(value, safe=_TOPIC_SAFE)


def parse_topic_level(level: str) -> str:
    return unquote(level)


@dataclass(frozen=True)
class Topics:
    gateway_id: str

    @property
    def prefix(self) -> str:
        return f"{TOPIC_ROOT}/{topic_level(self.gateway_id)}"

    # gateway -> eMSP
    @property
    def presence(self) -> str:  # retained, last will
        return f"{self.prefix}/presence"

    def charger(self, charger_id: str) -> str:  # retained charger online/offline
        return f"{self.prefix}/charger/{topic_level(charger_id)}"

    def status(self, charger_id: str, connector_id: int) -> str:  # retained, coalesced
        return f"{self.prefix}/status/{topic_level(charger_id)}/{connector_id}"

    @property
    def events(self) -> str:  # ordered event batches, QoS 1
        return f"{self.prefix}/events"

    @property
    def auth_request(self) -> str:
        return f"{self.prefix}/auth/request"

    @property
    def result(self) -> str:  # command results and token list acknowledgements
        return f"{self.prefix}/result"

    # eMSP -> gateway
    @property
    def command(self) -> str:
        return f"{self.prefix}/command"

    @property
    def auth_response(self) -> str:
        return f"{self.prefix}/auth/response"


def subscription_for_all_gateways(suffix: str, share_group: str | None = None) -> str:
    """Topic filter an eMSP consumer uses, e.g. suffix 'events'; with a share group: '$share/<group>/...'."""
    flt = f"{TOPIC_ROOT}/+/{suffix}"
    return f"$share/{share_group}/{flt}" if share_group else flt


def gateway_of_topic(topic: str) -> str:
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise ContractError(f"not a chargegate v1 topic: {topic!r}")
    return parse_topic_level(parts[2])


# -- small messages (presence, status, auth, commands, results) ----------------------------------------------------
def encode_message(msg: dict[str, Any], encoding: Encoding) -> bytes:
    if encoding == "json":
        return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
    return bytes(cbor2.dumps(msg))


def decode_message(payload: bytes, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """Decode a CBOR or JSON map (told apart by the first byte: '{' is JSON, a CBOR map starts at 0xa0..0xbf)."""
    if len(payload) > max_bytes:
        raise ContractError(f"payload of {len(payload)} bytes exceeds the cap of {max_bytes}")
    if not payload:
        raise ContractError("empty payload")
    try:
        if payload[:1] == b"{":
            value = json.loads(payload)
        else:
            value = cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError, RecursionError, UnicodeDecodeError, MemoryError) as e:
        raise ContractError(f"undecodable payload: {e}") from None
    if not isinstance(value, dict):
        raise ContractError("payload is not a map")
    return value


def content_type(encoding: Encoding) -> str:
    return "application/json" if encoding == "json" else "application/cbor"


# -- event batches ------------------------------------------------------------------------------------------------
KIND_CODES: dict[str, int] = {
    ev.CHARGER_BOOT: 1,
    ev.CHARGER_FAULT: 2,
    ev.CHARGER_CONNECTION: 3,
    ev.SESSION_STARTED: 4,
    ev.SESSION_UPDATE: 5,
    ev.SESSION_STOPPED: 6,
    ev.SESSION_RECORD: 7,
    ev.AUTH_DECISION: 8,
    ev.METER_READING: 9,
    "uplink.dropped": 10,
}
KIND_NAMES: dict[int, str] = {v: k for k, v in KIND_CODES.items()}
UPLINK_DROPPED = "uplink.dropped"

# Sampled-value code tables (OCPP 1.6 enums). Index 0 is the OCPP default and is never sent explicitly.
MEASURANDS = (
    "Energy.Active.Import.Register", "Current.Export", "Current.Import", "Current.Offered",
    "Energy.Active.Export.Register", "Energy.Reactive.Export.Register", "Energy.Reactive.Import.Register",
    "Energy.Active.Export.Interval", "Energy.Active.Import.Interval", "Energy.Reactive.Export.Interval",
    "Energy.Reactive.Import.Interval", "Frequency", "Power.Active.Export", "Power.Active.Import", "Power.Factor",
    "Power.Offered", "Power.Reactive.Export", "Power.Reactive.Import", "RPM", "SoC", "Temperature", "Voltage",
)  # fmt: skip
UNITS = (
    "Wh", "kWh", "varh", "kvarh", "W", "kW", "VA", "kVA", "var", "kvar", "A", "V", "Celsius", "Fahrenheit", "K",
    "Percent",
)  # fmt: skip
PHASES = ("", "L1", "L2", "L3", "N", "L1-N", "L2-N", "L3-N", "L1-L2", "L2-L3", "L3-L1")
LOCATIONS = ("Outlet", "Body", "Cable", "EV", "Inlet")
CONTEXTS = (
    "Sample.Periodic", "Interruption.Begin", "Interruption.End", "Other", "Sample.Clock", "Transaction.Begin",
    "Transaction.End", "Trigger",
)  # fmt: skip
FORMATS = ("Raw", "SignedData")
# Order of the optional slots in a compact sampled value: [value, measurand, unit, phase, location, context, format]
SAMPLE_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("measurand", MEASURANDS),
    ("unit", UNITS),
    ("phase", PHASES),
    ("location", LOCATIONS),
    ("context", CONTEXTS),
    ("format", FORMATS),
)
_SAMPLE_INDEX = {name: {v: i for i, v in enumerate(table)} for name, table in SAMPLE_FIELDS}


@dataclass(frozen=True)
class OutboxRow:
    """One outbox row as the drainer reads it (body still CBOR)."""

    seq: int
    kind: str
    charger_id: str | None
    created_at: float
    charger_ts: str | None
    body: bytes


def charger_ts_ms(ts: str) -> int | None:
    """Epoch ms of an ISO 8601 timestamp with a zone; None when it is not one."""
    try:
        dt = datetime.fromisoformat(ts)
        if dt.tzinfo is None:
            return None
        ms = round(dt.timestamp() * 1000)
        if not -62_135_596_800_000 < ms < 253_402_300_800_000:  # years 1..9999: format_ms can print it
            return None
        return ms
    except (ValueError, OverflowError, OSError):
        return None


def canonical_charger_ts(ts: str | None) -> tuple[str | None, int | None]:
    """(canonical text, epoch ms) of a charger timestamp. Parseable ISO 8601 becomes UTC with milliseconds
    ('2026-11-21T14:31:55.123Z'); anything else passes through unchanged with no ms value."""
    if ts is None:
        return None, None
    ms = charger_ts_ms(ts)
    return (ts, None) if ms is None else (format_ms(ms), ms)


def format_ms(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def canonical_sample(sample: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"value": sample["value"]}
    for name, table in SAMPLE_FIELDS:
        v = sample.get(name)
        if v is not None and v != "" and v != table[0]:
            out[name] = v
    return out


def _meter_compactable(body: dict[str, Any]) -> bool:
    return _compact_meter(body) is not None


_CSMS_METER_KEYS = frozenset({"tx", "charger", "connector", "ts", "samples"})
_CSMS_SAMPLE_ORDER = ("measurand", "phase", "location", "unit", "value", "context", "format")


def normalize_meter_body(
    body: dict[str, Any], charger_id: str | None, charger_ts: str | None
) -> dict[str, Any]:
    """The OCPP server records a reading as {"tx", "charger", "connector", "ts", "samples": [[measurand, phase,
    location, unit, value, context, format], ...]} (gateway/csms.py). When charger and ts repeat the event's own
    charger_id and charger_ts (so nothing is lost), that becomes the contract's meter.reading body; any other
    body is returned unchanged."""
    if body.keys() != _CSMS_METER_KEYS or body["charger"] != charger_id or body["ts"] != charger_ts:
        return body
    samples = body["samples"]
    if not isinstance(samples, list):
        return body
    values = []
    for s in samples:
        if not isinstance(s, list) or len(s) != len(_CSMS_SAMPLE_ORDER):
            return body
        values.append({k: v for k, v in zip(_CSMS_SAMPLE_ORDER, s, strict=True) if v is not None and v != ""})
    out: dict[str, Any] = {"connector_id": body["connector"], "values": values}
    if body["tx"] is not None:
        out["transaction_id"] = body["tx"]
    return out


def canonical_body(
    kind: str, body: dict[str, Any], charger_id: str | None = None, charger_ts: str | None = None
) -> dict[str, Any]:
    """The body as the eMSP sees it: meter readings in the contract's form without OCPP-default sample fields;
    other kinds unchanged."""
    if kind == ev.METER_READING:
        body = normalize_meter_body(body, charger_id, charger_ts)
        if _meter_compactable(body):
            out: dict[str, Any] = {"connector_id": body["connector_id"]}
            if body.get("transaction_id") is not None:
                out["transaction_id"] = body["transaction_id"]
            out["values"] = [canonical_sample(s) for s in body["values"]]
            return out
    return body


def _compact_value(v: str) -> int | str:
    # An integer in its canonical decimal text travels as a CBOR integer; anything else as the exact text.
    if v.isdigit() and (v == "0" or v[0] != "0") and len(v) < 19:
        return int(v)
    return v


_SLOT_POS = {name: i for i, (name, _) in enumerate(SAMPLE_FIELDS)}


def _compact_sample(s: Any) -> Any:
    """The compact form of one sampled value, or None when it does not fit the compact form."""
    if not isinstance(s, dict):
        return None
    value = s.get("value")
    if not isinstance(value, str):
        return None
    slots: list[Any] | None = None
    signed = False
    for k, v in s.items():
        if k == "value" or v is None or v == "":
            continue
        pos = _SLOT_POS.get(k)
        if pos is None or not isinstance(v, str):
            return None
        if k == "format" and v == "SignedData":
            signed = True
        code = _SAMPLE_INDEX[k].get(v, v)
        if code == 0:
            continue
        if slots is None:
            slots = [0, 0, 0, 0, 0, 0]
        slots[pos] = code
    compact_value = value if signed else _compact_value(value)
    if slots is None:
        return compact_value
    while slots[-1] == 0:
        slots.pop()
    return [compact_value, *slots]


def _compact_meter(body: dict[str, Any]) -> list[Any] | None:
    """[connector_id, transaction_id, sample...] or None when the body does not fit the compact form."""
    if len(body) > 3:
        return None
    connector = body.get("connector_id")
    tx = body.get("transaction_id")
    values = body.get("values")
    if type(connector) is not int or (tx is not None and type(tx) is not int) or not isinstance(values, list):
        return None
    if len(body) == 3 and "transaction_id" not in body:
        return None
    out: list[Any] = [connector, tx]
    for sample in values:
        c = _compact_sample(sample)
        if c is None:
            return None
        out.append(c)
    return out


def _expand_sample(c: Any) -> dict[str, Any]:
    if isinstance(c, list):
        if not c:
            raise ContractError("empty compact sampled value")
        value, slots = c[0], c[1:]
    else:
        value, slots = c, []
    if type(value) is int:
        value = str(value)
    elif not isinstance(value, str):
        raise ContractError("sampled value is neither an integer nor text")
    out: dict[str, Any] = {"value": value}
    if len(slots) > len(SAMPLE_FIELDS):
        raise ContractError("too many slots in a compact sampled value")
    for (name, table), code in zip(SAMPLE_FIELDS, slots, strict=False):
        if isinstance(code, str):
            if code:
                out[name] = code
        elif type(code) is int and 0 <= code < len(table):
            if code:
                out[name] = table[code]
        else:
            raise ContractError(f"bad {name} code {code!r}")
    return canonical_sample(out)


def _compact_body(kind: str, body: dict[str, Any], charger_id: str | None, charger_ts: str | None) -> Any:
    if kind == ev.METER_READING:
        body = normalize_meter_body(body, charger_id, charger_ts)
        compact = _compact_meter(body)
        if compact is not None:
            return compact
    return body


def _expand_body(kind: str, c: Any) -> dict[str, Any]:
    if isinstance(c, dict):
        return c
    if kind == ev.METER_READING and isinstance(c, list) and len(c) >= 2:
        connector, tx = c[0], c[1]
        if type(connector) is not int or (tx is not None and type(tx) is not int):
            raise ContractError("bad compact meter reading header")
        out: dict[str, Any] = {"connector_id": connector}
        if tx is not None:
            out["transaction_id"] = tx
        out["values"] = [_expand_sample(s) for s in c[2:]]
        return out
    raise ContractError(f"bad body for {kind!r}")


def encode_batch(gateway_id: str, rows: list[OutboxRow], encoding: Encoding) -> bytes:
    """Encode consecutive outbox rows as one event batch payload."""
    if not rows:
        raise ValueError("empty batch")
    if encoding == "json":
        return _encode_batch_json(gateway_id, rows)
    chargers: list[str] = []
    charger_index: dict[str, int] = {}
    base_seq = rows[0].seq
    base_ms = round(rows[0].created_at * 1000)
    prev_seq, prev_ms = base_seq, base_ms
    out_events: list[list[Any]] = []
    loads = cbor2.loads
    for r in rows:
        ms = round(r.created_at * 1000)
        cidx: int | None = None
        if r.charger_id is not None:
            cidx = charger_index.get(r.charger_id)
            if cidx is None:
                cidx = charger_index[r.charger_id] = len(chargers)
                chargers.append(r.charger_id)
        cts: int | str | None = None
        if r.charger_ts is not None:
            cms = charger_ts_ms(r.charger_ts)
            cts = (cms - ms) if cms is not None else r.charger_ts
        kind: int | str = KIND_CODES.get(r.kind, r.kind)
        body = loads(r.body)
        out_events.append(
            [
                r.seq - prev_seq,
                ms - prev_ms,
                kind,
                cidx,
                cts,
                _compact_body(r.kind, body, r.charger_id, r.charger_ts),
            ]
        )
        prev_seq, prev_ms = r.seq, ms
    return bytes(cbor2.dumps([CONTRACT_VERSION, gateway_id, base_seq, base_ms, chargers, out_events]))


def _encode_batch_json(gateway_id: str, rows: list[OutboxRow]) -> bytes:
    items = []
    for r in rows:
        text, _ = canonical_charger_ts(r.charger_ts)
        items.append(
            {
                "seq": r.seq,
                "kind": r.kind,
                "charger_id": r.charger_id,
                "gateway_ms": round(r.created_at * 1000),
                "charger_ts": text,
                "body": canonical_body(r.kind, ev.decode_body(r.body), r.charger_id, r.charger_ts),
            }
        )
    doc = {"v": CONTRACT_VERSION, "gateway_id": gateway_id, "events": items}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return {"$bytes": o.hex()}
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def decode_batch(payload: bytes, max_bytes: int = 16 << 20) -> list[dict[str, Any]]:
    """Decode an event batch (either encoding) into canonical event dicts:
    {gateway_id, seq, kind, charger_id, gateway_ms, charger_ts, body}."""
    if len(payload) > max_bytes:
        raise ContractError(f"batch of {len(payload)} bytes exceeds the cap of {max_bytes}")
    if payload[:1] == b"{":
        doc = decode_message(payload, max_bytes)
        if doc.get("v") != CONTRACT_VERSION or not isinstance(doc.get("events"), list):
            raise ContractError("not a v1 JSON event batch")
        gw = doc.get("gateway_id")
        out = []
        for e in doc["events"]:
            if not isinstance(e, dict) or type(e.get("seq")) is not int or not isinstance(e.get("kind"), str):
                raise ContractError("bad event in JSON batch")
            out.append(
                {
                    "gateway_id": gw,
                    "seq": e["seq"],
                    "kind": e["kind"],
                    "charger_id": e.get("charger_id"),
                    "gateway_ms": e.get("gateway_ms"),
                    "charger_ts": e.get("charger_ts"),
                    "body": e.get("body"),
                }
            )
        return out
    try:
        doc2 = cbor2.loads(payload)
    except (ValueError, cbor2.CBORDecodeError, RecursionError, MemoryError) as e:
        raise ContractError(f"undecodable CBOR batch: {e}") from None
    if not isinstance(doc2, list) or len(doc2) != 6 or doc2[0] != CONTRACT_VERSION:
        raise ContractError("not a v1 CBOR event batch")
    _, gw2, seq, ms, chargers, items = doc2
    if (
        type(seq) is not int
        or type(ms) is not int
        or not isinstance(chargers, list)
        or not isinstance(items, list)
    ):
        raise ContractError("bad CBOR batch header")
    if len(items) > MAX_EVENTS_PER_BATCH:
        raise ContractError("too many events in one batch")
    result = []
    for item in items:
        if not isinstance(item, list) or len(item) != 6:
            raise ContractError("bad event in CBOR batch")
        dseq, dms, kind, cidx, cts, body = item
        if type(dseq) is not int or type(dms) is not int:
            raise ContractError("bad seq/timestamp delta")
        seq += dseq
        ms += dms
        kind_name = KIND_NAMES.get(kind) if type(kind) is int else kind
        if not isinstance(kind_name, str):
            raise ContractError(f"unknown kind code {kind!r}")
        charger = None
        if cidx is not None:
            if type(cidx) is not int or not 0 <= cidx < len(chargers):
                raise ContractError("bad charger index")
            charger = chargers[cidx]
        if type(cts) is int:
            try:
                charger_ts: str | None = format_ms(ms + cts)
            except (OverflowError, ValueError, OSError):
                raise ContractError("charger timestamp out of range") from None
        elif cts is None or isinstance(cts, str):
            charger_ts = cts
        else:
            raise ContractError("bad charger timestamp")
        result.append(
            {
                "gateway_id": gw2,
                "seq": seq,
                "kind": kind_name,
                "charger_id": charger,
                "gateway_ms": ms,
                "charger_ts": charger_ts,
                "body": _expand_body(kind_name, body),
            }
        )
    return result


def naive_event_json(gateway_id: str, row: OutboxRow) -> bytes:
    """The benchmark's baseline: one self-describing JSON message per event."""
    return json.dumps(
        {
            "gateway_id": gateway_id,
            "seq": row.seq,
            "kind": row.kind,
            "charger_id": row.charger_id,
            "gateway_ts": row.created_at,
            "charger_ts": row.charger_ts,
            "body": ev.decode_body(row.body),
        },
        default=_json_default,
    ).encode()
