"""Site configuration: one TOML file, validated completely at start.

Each section is a frozen dataclass. `load_config` walks the TOML tables against those dataclasses: an unknown key, a
wrong type or a missing required value raises ConfigError naming the file, the dotted key and what is expected.
Subsystems own their section's dataclass (gateway/uplink, gateway/meters, ...) and register it in SECTIONS below;
the composition root reads `SiteConfig.sections[name]`.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from gateway.errors import ConfigError


@dataclass(frozen=True)
class SiteSection:
    id: str = "site"
    # Where the SQLite store and the control socket live; relative paths are relative to the config file.
    data_dir: str = "data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class OcppSection:
    host: str = "127.0.0.1"
    port: int = 9000
    # Sent in BootNotification.conf; chargers send Heartbeat at this interval (seconds).
    heartbeat_interval: int = 300
    # Default answer to BootNotification; a charger may override it. Pending chargers are retried after
    # `pending_retry_interval` seconds and get Accepted once `accept_after_pending` is true.
    boot_status: Literal["Accepted", "Pending", "Rejected"] = "Accepted"
    pending_retry_interval: int = 10
    # Cap on one websocket message a charger may send (bytes); larger frames close the connection (1009).
    max_frame_bytes: int = 65536
    # Cap on frames buffered per connection before the socket stops reading (backpressure).
    max_queue: int = 32
    # Dead-peer detection: websocket ping every `ping_interval` s, peer dropped if no pong within `ping_timeout`.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    # How long the gateway waits for a charger's answer to a command (OCPP suggests 30 s).
    call_timeout: float = 30.0
    # Validate every inbound and outbound payload against the official OCPP 1.6 JSON schemas.
    validate_schemas: bool = True
    # TLS server certificate (chain, PEM) and its key: both set => `port` serves wss:// only. Relative paths are
    # relative to the config file.
    tls_cert: str = ""
    tls_key: str = ""
    # OCPP 1.6 security profile of the site's chargers (docs/ocpp.md "Security profiles"): 1 = HTTP Basic over
    # ws://, 2 = HTTP Basic over TLS, 3 = TLS with a client certificate naming the charger (no Basic).
    # Unset: 2 with tls_cert, else 1. [[chargers]] security_profile overrides it per charger.
    security_profile: Literal[1, 2, 3] | None = None
    # CA bundle (PEM) that signs the chargers' client certificates; required when a charger is at profile 3.
    client_ca: str = ""
    # Certificate revocation list(s) of the client_ca CAs (PEM or DER, signed by them): a profile-3 charger whose
    # certificate is on it is refused. Still applied when past its nextUpdate (the status says it is out of date).
    client_crl: str = ""
    # How often the wss:// listener looks for replaced tls_cert / tls_key / client_ca / client_crl files and loads
    # them for new connections (s; 0 = only at start). Connections already up are not touched.
    tls_reload_interval_s: float = 60.0
    # A second, plain ws:// listener next to the wss:// `port`, for the profile-1 chargers of a site that has
    # TLS (0 picks a free port). Chargers at profile 2 or 3 are refused on it.
    plain_port: int | None = None

    @property
    def profile(self) -> int:
        """The site's security profile: as configured, else 2 with a TLS certificate, else 1."""
        if self.security_profile is not None:
            return self.security_profile
        return 2 if self.tls_cert else 1


@dataclass(frozen=True)
class ChargerSection:
    id: str
    # HTTP Basic auth (security profiles 1 and 2), user = charge point id: 16..40 chars as OCPP 1.6 asks.
    # Required at profiles 1 and 2; unused (and optional) at profile 3, where the client certificate is the proof.
    password: str = ""
    connectors: int = 1
    # Overrides [ocpp].boot_status for this charger.
    boot_status: Literal["", "Accepted", "Pending", "Rejected"] = ""
    # Rated maximum current per phase (A); load management never allocates more.
    max_current: float = 32.0
    phases: int = 3
    # Overrides [ocpp].security_profile for this charger: a site with older (profile 1 or 2) and newer chargers.
    security_profile: Literal[1, 2, 3] | None = None

    def profile(self, ocpp: OcppSection) -> int:
        """The security profile this charger must connect with."""
        return self.security_profile if self.security_profile is not None else ocpp.profile


from gateway.auth.settings import AuthSection  # noqa: E402  (the [auth] section is owned by gateway/auth)


@dataclass(frozen=True)
class ControlSection:
    # Unix socket for `chargegate cmd` against a running gateway; relative to data_dir.
    socket: str = "control.sock"


# name -> (dataclass, is_array_of_tables)
SECTIONS: dict[str, tuple[type[Any], bool]] = {
    "site": (SiteSection, False),
    "ocpp": (OcppSection, False),
    "auth": (AuthSection, False),
    "control": (ControlSection, False),
    "chargers": (ChargerSection, True),
}


def register_section(name: str, cls: type[Any], array: bool = False) -> None:
    """Let a subsystem add its own section (its dataclass lives in its own module)."""
    SECTIONS[name] = (cls, array)


# Checks across sections (e.g. [load] naming chargers of [[chargers]]), run on every parsed config; each raises
# ConfigError naming the file, key and fix.
CHECKS: list[Callable[[SiteConfig], None]] = []


def register_check(check: Callable[[SiteConfig], None]) -> None:
    """Let a subsystem check its section against the others once the whole file is parsed."""
    if check not in CHECKS:
        CHECKS.append(check)


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    site: SiteSection
    ocpp: OcppSection
    auth: AuthSection
    control: ControlSection
    chargers: tuple[ChargerSection, ...]
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        p = Path(self.site.data_dir)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    @property
    def control_socket(self) -> Path:
        p = Path(self.control.socket)
        return p if p.is_absolute() else self.data_dir / p

    def charger(self, charger_id: str) -> ChargerSection | None:
        for c in self.chargers:
            if c.id == charger_id:
                return c
        return None


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp))
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        type(None): "absent",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(file: str, key: str, tp: Any, value: Any) -> Any:
    origin = get_origin(tp)
    bad = ConfigError(file, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise bad
        inner = get_args(tp)[0]
        return tuple(_coerce(file, f"{key}[{i}]", inner, v) for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        for alt in get_args(tp):
            try:
                return _coerce(file, key, alt, value)
            except ConfigError:
                continue
        raise bad
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected a table, got {value!r}")
        return _build(file, key, tp, value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise bad
        return value
    if tp is dict or get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    raise ConfigError(file, key, f"unsupported type {tp!r} in schema")


def _build(file: str, prefix: str, cls: type[Any], table: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in table:
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(file, f"{prefix}.{k}", f"unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name in table:
            kwargs[name] = _coerce(file, key, hints[name], table[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(file, key, f"required, expected {_type_name(hints[name])}")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        problem = check()
        if problem:
            raise ConfigError(file, prefix, problem)
    return obj


_PASSWORD_HINT = "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


def _check_chargers(file: str, chargers: tuple[ChargerSection, ...], ocpp: OcppSection) -> None:
    seen: set[str] = set()
    for i, c in enumerate(chargers):
        key = f"chargers[{i}]"
        if not c.id or len(c.id) > 48 or "/" in c.id:
            raise ConfigError(file, f"{key}.id", "expected a charge point id of 1..48 characters without '/'")
        if c.id in seen:
            raise ConfigError(file, f"{key}.id", f"duplicate charger id {c.id!r}; ids must be unique")
        seen.add(c.id)
        profile = c.profile(ocpp)
        if not c.password and profile < 3:
            raise ConfigError(
                file,
                f"{key}.password",
                f"required at security profile {profile} (the HTTP Basic AuthorizationKey, 16..40 characters); "
                + _PASSWORD_HINT,
            )
        if c.password and not 16 <= len(c.password) <= 40:
            raise ConfigError(
                file,
                f"{key}.password",
                "expected 16..40 characters (OCPP 1.6 security profile 1 AuthorizationKey); "
                + _PASSWORD_HINT,
            )
        if not 1 <= c.connectors <= 16:
            raise ConfigError(file, f"{key}.connectors", "expected 1..16")


def _check_security(file: str, base: Path, ocpp: OcppSection, chargers: tuple[ChargerSection, ...]) -> None:
    """[ocpp] TLS and security profile settings against each other and against the chargers' profiles."""
    if bool(ocpp.tls_cert) != bool(ocpp.tls_key):
        raise ConfigError(file, "ocpp.tls_cert", "tls_cert and tls_key must be set together")
    # The key that asked for each profile: [ocpp] or the first charger overriding it.
    wants: dict[int, str] = {}
    if ocpp.security_profile is not None:
        wants[ocpp.security_profile] = "ocpp.security_profile"
    for i, c in enumerate(chargers):
        if c.security_profile is not None:
            wants.setdefault(c.security_profile, f"chargers[{i}].security_profile")
    for profile in (2, 3):
        if profile in wants and not ocpp.tls_cert:
            raise ConfigError(
                file,
                wants[profile],
                f"security profile {profile} needs TLS: set [ocpp] tls_cert and tls_key (the gateway's "
                'certificate and key, see docs/ocpp.md "Security profiles"), or use profile 1',
            )
    if not ocpp.client_ca and any(c.profile(ocpp) == 3 for c in chargers):
        raise ConfigError(
            file,
            wants.get(3, "ocpp.security_profile"),
            "security profile 3 checks the chargers' client certificates: set [ocpp] client_ca to the CA "
            "bundle (PEM) that signs them",
        )
    if ocpp.client_ca and not ocpp.tls_cert:
        raise ConfigError(
            file, "ocpp.client_ca", "client certificates need TLS: set [ocpp] tls_cert and tls_key too"
        )
    if ocpp.client_crl and not ocpp.client_ca:
        raise ConfigError(
            file,
            "ocpp.client_crl",
            "a CRL revokes client certificates: set [ocpp] client_ca (the CA that signs it)",
        )
    if ocpp.tls_reload_interval_s < 0:
        raise ConfigError(
            file, "ocpp.tls_reload_interval_s", "expected seconds >= 0 (0: read the files only at start)"
        )
    if ocpp.plain_port is not None:
        if not ocpp.tls_cert:
            raise ConfigError(
                file,
                "ocpp.plain_port",
                "without tls_cert the main port already serves ws://: remove plain_port",
            )
        if not 0 <= ocpp.plain_port <= 65535:
            raise ConfigError(file, "ocpp.plain_port", "expected 0..65535 (0 picks a free port)")
        if ocpp.plain_port and ocpp.plain_port == ocpp.port:
            raise ConfigError(file, "ocpp.plain_port", "must differ from ocpp.port (the wss:// listener)")
    for name in ("tls_cert", "tls_key", "client_ca", "client_crl"):
        value = getattr(ocpp, name)
        if value and not (base / value).is_file():
            raise ConfigError(
                file,
                f"ocpp.{name}",
                f"no such file: {base / value} (relative paths start at the config file)",
            )


def parse_config(path: Path, data: dict[str, Any]) -> SiteConfig:
    file = str(path)
    for k in data:
        if k not in SECTIONS:
            raise ConfigError(file, k, f"unknown section (known sections: {', '.join(sorted(SECTIONS))})")
    built: dict[str, Any] = {}
    for name, (cls, array) in SECTIONS.items():
        raw = data.get(name, [] if array else {})
        if array:
            if not isinstance(raw, list):
                raise ConfigError(file, name, f"expected an array of tables ([[{name}]])")
            built[name] = tuple(_build(file, f"{name}[{i}]", cls, t) for i, t in enumerate(raw))
        else:
            if not isinstance(raw, dict):
                raise ConfigError(file, name, f"expected a table ([{name}])")
            built[name] = _build(file, name, cls, raw)
    ocpp: OcppSection = built["ocpp"]
    _check_chargers(file, built["chargers"], ocpp)
    if not 0 <= ocpp.port <= 65535:
        raise ConfigError(file, "ocpp.port", "expected 0..65535 (0 picks a free port)")
    _check_security(file, path.resolve().parent, ocpp, built["chargers"])
    cfg = SiteConfig(
        path=path.resolve(),
        site=built["site"],
        ocpp=ocpp,
        auth=built["auth"],
        control=built["control"],
        chargers=built["chargers"],
        sections=built,
    )
    for check in CHECKS:
        check(cfg)
    return cfg


def load_config(path: str | Path) -> SiteConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(p), "-", f"cannot read the file ({e.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(str(p), "-", f"not valid TOML: {e}") from None
    return parse_config(p, data)
