"""`chargegate meters scan|read`. The lead hooks add_subparser() into gateway/cli.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.errors import ChargegateError
from gateway.meters.catalog import load_catalog
from gateway.meters.poller import BusPoller, PolledMeter
from gateway.meters.reading import MeterReading
from gateway.meters.scan import parse_units, scan_bus
from gateway.meters.scheduler import PollPolicy
from gateway.meters.transport import RtuSerialTransport, Transport

DEFAULT_BAUDS = "9600,19200,38400,115200,2400,4800"


def add_subparser(subparsers: Any) -> None:
    p = subparsers.add_parser("meters", help="Modbus meters: scan a bus, read live values")
    sub = p.add_subparsers(dest="meters_cmd", required=True)

    s = sub.add_parser(
        "scan", help="probe baud rates and unit ids on a serial port and identify catalog models"
    )
    s.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    s.add_argument(
        "--bauds", default=DEFAULT_BAUDS, help=f"comma-separated baud rates (default {DEFAULT_BAUDS})"
    )
    s.add_argument("--units", default="1-32", help="unit ids to probe, e.g. 1-247 or 1,2,33 (default 1-32)")
    s.add_argument("--parity", choices=["N", "E", "O"], default="N")
    s.add_argument(
        "--timeout", type=float, default=0.15, help="response timeout per request in s (default 0.15)"
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_scan)

    r = sub.add_parser("read", help="print live readings (from the config's meters, or one meter given here)")
    r.add_argument("--config", type=Path, help="site config; reads every [[meters]] entry (or --meter)")
    r.add_argument("--meter", help="only this meter id from the config")
    r.add_argument("--port", help="ad hoc: serial device")
    r.add_argument("--unit", type=int, default=1, help="ad hoc: unit id (default 1)")
    r.add_argument("--model", help="ad hoc: catalog model id")
    r.add_argument("--baudrate", type=int, default=9600)
    r.add_argument("--parity", choices=["N", "E", "O"], default="N")
    r.add_argument("--count", type=int, default=1, help="readings per meter (0 = until interrupted)")
    r.add_argument("--interval", type=float, default=1.0)
    r.add_argument("--json", action="store_true", help="one JSON object per reading")
    r.set_defaults(func=cmd_read)


def cmd_scan(args: argparse.Namespace) -> int:
    try:
        units = parse_units(args.units)
        bauds = [int(b) for b in args.bauds.split(",") if b.strip()]
    except ValueError as e:
        print(f"chargegate meters scan: {e}", file=sys.stderr)
        return 2
    catalog = load_catalog()

    def make(baud: int) -> Transport:
        return RtuSerialTransport(args.port, baud, args.parity, 1, args.timeout)

    def progress(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    try:
        found = asyncio.run(scan_bus(make, bauds, units, catalog, progress))
    except ChargegateError as e:
        print(f"chargegate meters scan: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found))
    elif not found:
        print("no device answered")
    return 0


def _print(reading: MeterReading, stale: bool, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "meter": reading.meter_id,
                    "wall": reading.wall,
                    "monotonic": reading.monotonic,
                    "stale": stale,
                    "values": dict(reading.values),
                }
            ),
            flush=True,
        )
    else:
        vals = "  ".join(f"{k}={v:.3f}" for k, v in reading.values.items())
        print(f"{reading.meter_id}: {vals}", flush=True)


def cmd_read(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    targets: list[tuple[Transport, list[PolledMeter]]] = []
    if args.port:
        if not args.model or args.model not in catalog:
            print(
                f"chargegate meters read: --model must be one of {', '.join(sorted(catalog))}",
                file=sys.stderr,
            )
            return 2
        t = RtuSerialTransport(args.port, args.baudrate, args.parity)
        targets.append((t, [PolledMeter(f"unit{args.unit}", args.unit, catalog[args.model])]))
    elif args.config:
        from gateway.config import load_config
        from gateway.meters.config import check_meters
        from gateway.meters.hub import transport_of

        try:
            cfg = load_config(args.config)
            check_meters(cfg, catalog)
        except ChargegateError as e:
            print(f"chargegate meters read: {e}", file=sys.stderr)
            return 2
        for bus in cfg.sections.get("buses", ()):
            ms = [
                PolledMeter(m.id, m.unit_id, catalog[m.model])
                for m in cfg.sections.get("meters", ())
                if m.bus == bus.id and (args.meter is None or m.id == args.meter)
            ]
            if ms:
                targets.append((transport_of(bus), ms))
        if not targets:
            print("chargegate meters read: no matching [[meters]] in the config", file=sys.stderr)
            return 2
    else:
        print("chargegate meters read: give --config FILE or --port/--model", file=sys.stderr)
        return 2

    async def main() -> int:
        failures = 0
        for t, _ in targets:
            await t.open()
        try:
            n = 0
            while args.count == 0 or n < args.count:
                for t, ms in targets:
                    poller = BusPoller("cli", t, ms, PollPolicy(), lambda _r: None)
                    for m in ms:
                        r = await poller.poll_once(m.id)
                        if r is None:
                            failures += 1
                            print(f"{m.id}: no valid answer (line: {t.stats.as_dict()})", file=sys.stderr)
                        else:
                            _print(r, False, args.json)
                n += 1
                if args.count == 0 or n < args.count:
                    await asyncio.sleep(args.interval)
        finally:
            for t, _ in targets:
                await t.close()
        return 1 if failures else 0

    try:
        return asyncio.run(main())
    except ChargegateError as e:
        print(f"chargegate meters read: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
