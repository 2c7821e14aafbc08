"""`chargegate` command line: run the gateway, send commands to a running one, run the demo and the simulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import gateway.subsystems  # noqa: F401  (registers every subsystem's config section)
from gateway.config import SiteConfig, load_config
from gateway.errors import ChargegateError, ConfigError

# `chargegate cmd CP1 <command> ...` -> (OCPP action, argument names, payload builder)
_COMMANDS_HELP = """commands:
  reset hard|soft                     Reset
  remote-start IDTAG [--connector N]  RemoteStartTransaction
  remote-stop TRANSACTION_ID          RemoteStopTransaction
  unlock CONNECTOR                    UnlockConnector
  availability CONNECTOR operative|inoperative   ChangeAvailability
  get-config [KEY ...]                GetConfiguration
  set-config KEY VALUE                ChangeConfiguration
  clear-cache                         ClearCache
  trigger MESSAGE [--connector N]     TriggerMessage (BootNotification, Heartbeat, MeterValues, StatusNotification, ...)
  raw ACTION JSON                     any OCPP 1.6 CALL with a JSON payload
"""


def build_call(command: str, args: list[str], connector: int | None) -> tuple[str, dict[str, Any]]:
    """Turn `chargegate cmd` words into an OCPP action and payload; raises ValueError with a usage hint."""

    def need(n: int, usage: str) -> None:
        if len(args) != n:
            raise ValueError(f"usage: {usage}")

    if command == "reset":
        need(1, "reset hard|soft")
        if args[0].lower() not in ("hard", "soft"):
            raise ValueError("usage: reset hard|soft")
        return "Reset", {"type": args[0].capitalize()}
    if command == "remote-start":
        need(1, "remote-start IDTAG [--connector N]")
        payload: dict[str, Any] = {"idTag": args[0]}
        if connector is not None:
            payload["connectorId"] = connector
        return "RemoteStartTransaction", payload
    if command == "remote-stop":
        need(1, "remote-stop TRANSACTION_ID")
        return "RemoteStopTransaction", {"transactionId": int(args[0])}
    if command == "unlock":
        need(1, "unlock CONNECTOR")
        return "UnlockConnector", {"connectorId": int(args[0])}
    if command == "availability":
        need(2, "availability CONNECTOR operative|inoperative")
        kind = {"operative": "Operative", "inoperative": "Inoperative"}.get(args[1].lower())
        if kind is None:
            raise ValueError("usage: availability CONNECTOR operative|inoperative")
        return "ChangeAvailability", {"connectorId": int(args[0]), "type": kind}
    if command == "get-config":
        return "GetConfiguration", ({"key": args} if args else {})
    if command == "set-config":
        need(2, "set-config KEY VALUE")
        return "ChangeConfiguration", {"key": args[0], "value": args[1]}
    if command == "clear-cache":
        need(0, "clear-cache")
        return "ClearCache", {}
    if command == "trigger":
        need(1, "trigger MESSAGE [--connector N]")
        payload = {"requestedMessage": args[0]}
        if connector is not None:
            payload["connectorId"] = connector
        return "TriggerMessage", payload
    if command == "raw":
        need(2, "raw ACTION JSON")
        try:
            raw = json.loads(args[1])
        except json.JSONDecodeError as e:
            raise ValueError(f"raw: payload is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("raw: payload must be a JSON object")
        return args[0], raw
    raise ValueError(f"unknown command {command!r}\n{_COMMANDS_HELP}")


def _socket_for(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    cfg: SiteConfig = load_config(args.config)
    return cfg.control_socket


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import run_gateway

    cfg = load_config(args.config)
    level = args.log_level or cfg.site.log_level
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # The websockets library logs HTTP headers (the Basic credentials) and whole frames (full token UIDs) at DEBUG:
    # never below INFO, whatever the site's level. Our own loggers mask tokens and never print secrets.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLevelName(level)))
    return asyncio.run(run_gateway(cfg))


def cmd_cmd(args: argparse.Namespace) -> int:
    from gateway.control import request

    try:
        action, payload = build_call(args.command, args.args, args.connector)
    except ValueError as e:
        print(f"chargegate cmd: {e}", file=sys.stderr)
        return 2
    req = {"op": "call", "charger": args.charger, "action": action, "payload": payload}
    if args.timeout:
        req["timeout"] = args.timeout
    try:
        answer = asyncio.run(request(_socket_for(args), req))
    except (OSError, TimeoutError) as e:
        print(f"chargegate cmd: cannot reach the gateway's control socket: {e}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"chargegate cmd: {answer.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(answer.get("result"), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.control import request

    try:
        answer = asyncio.run(request(_socket_for(args), {"op": "status"}))
    except (OSError, TimeoutError) as e:
        print(f"chargegate status: cannot reach the gateway's control socket: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer.get("result") if answer.get("ok") else answer, indent=2))
    return 0 if answer.get("ok") else 1


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{cfg.path}: ok ({len(cfg.chargers)} chargers, data in {cfg.data_dir})")
    return 0


def _forward(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    result = mod.main(argv)
    return int(result or 0)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chargegate", description="EV charging site gateway")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("--config", required=True, help="site TOML file")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    chk = sub.add_parser("check-config", help="validate a site config file")
    chk.add_argument("--config", required=True)
    chk.set_defaults(func=cmd_check_config)

    cmd = sub.add_parser(
        "cmd",
        help="send an OCPP command to a charger through a running gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_COMMANDS_HELP,
    )
    where = cmd.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="site TOML file (finds the control socket)")
    where.add_argument("--socket", help="control socket path")
    cmd.add_argument("--connector", type=int)
    cmd.add_argument("--timeout", type=float)
    cmd.add_argument("charger")
    cmd.add_argument("command")
    cmd.add_argument("args", nargs="*")
    cmd.set_defaults(func=cmd_cmd)

    st = sub.add_parser("status", help="chargers and connectors as the running gateway sees them")
    where = st.add_mutually_exclusive_group(required=True)
    where.add_argument("--config")
    where.add_argument("--socket")
    st.set_defaults(func=cmd_status)

    from gateway.auth.cli import add_subparser as add_tokens_subparser
    from gateway.meters.cli import add_subparser as add_meters_subparser

    add_tokens_subparser(sub)
    add_meters_subparser(sub)

    # listed for --help; main() hands their arguments to the simulator's own parser before argparse sees them
    sub.add_parser(
        "demo", help="run a simulated site of N chargers against a real gateway (--help for options)"
    )
    sub.add_parser("sim", help="run simulated chargers against a gateway (--help for options)")
    return p


# Subcommands whose whole argument list belongs to another module's own parser (argparse.REMAINDER would refuse
# options such as `--chargers 5`).
_FORWARDED = {"demo": "firmware_sim.demo", "sim": "firmware_sim.fleet"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _FORWARDED:
        return _forward(_FORWARDED[argv[0]], argv[1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"chargegate: config error: {e}", file=sys.stderr)
        return 2
    except ChargegateError as e:
        print(f"chargegate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
