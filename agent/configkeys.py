"""OCPP 1.6 configuration keys (Core, LocalAuthListManagement, Reservation, SmartCharging): definitions, validation and
persistence through HAL storage. Values are kept typed (int, bool, str, list of str for CSL keys) and rendered
as OCPP strings for GetConfiguration.
"""

import json

from agent.compat import const

try:
    from typing import Any
except ImportError:
    pass

STORAGE_NAME = "config"

# Measurands this charge point can sample (MeterValuesSampledData & co. accept only these).
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Offered")
FEATURE_PROFILES = "Core,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger"
# Longest CSL a MeasurandsSampledData key accepts (reported as *MaxLength keys).
MAX_MEASURANDS = const(3)
# Cap on one ChangeConfiguration value (OCPP 1.6 CiString500 for value).
MAX_VALUE_LEN = const(500)

INT = "int"
BOOL = "bool"
CSL = "csl"
STR = "str"

# name: (kind, readonly, default, reboot_required, minimum for ints)
DEFINITIONS = {
    "AllowOfflineTxForUnknownId": (BOOL, False, False, False, 0),
    "AuthorizationCacheEnabled": (BOOL, False, True, False, 0),
    "AuthorizeRemoteTxRequests": (BOOL, False, False, False, 0),
    "ClockAlignedDataInterval": (INT, False, 0, False, 0),
    "ConnectionTimeOut": (INT, False, 60, False, 1),
    "ConnectorPhaseRotation": (STR, False, "NotApplicable", False, 0),
    "GetConfigurationMaxKeys": (INT, True, 50, False, 0),
    "HeartbeatInterval": (INT, False, 300, False, 0),
    "LocalAuthorizeOffline": (BOOL, False, True, False, 0),
    "LocalPreAuthorize": (BOOL, False, False, False, 0),
    "MeterValuesAlignedData": (CSL, False, ["Energy.Active.Import.Register"], False, 0),
    "MeterValuesAlignedDataMaxLength": (INT, True, MAX_MEASURANDS, False, 0),
    "MeterValuesSampledData": (
        CSL,
        False,
        ["Energy.Active.Import.Register", "Power.Active.Import"],
        False,
        0,
    ),
    "MeterValuesSampledDataMaxLength": (INT, True, MAX_MEASURANDS, False, 0),
    "MeterValueSampleInterval": (INT, False, 60, False, 0),
    "NumberOfConnectors": (INT, True, 1, False, 0),
    "ResetRetries": (INT, False, 1, False, 0),
    "StopTransactionOnEVSideDisconnect": (BOOL, False, True, False, 0),
    "StopTransactionOnInvalidId": (BOOL, False, True, False, 0),
    "StopTxnAlignedData": (CSL, False, [], False, 0),
    "StopTxnAlignedDataMaxLength": (INT, True, MAX_MEASURANDS, False, 0),
    "StopTxnSampledData": (CSL, False, ["Energy.Active.Import.Register"], False, 0),
    "StopTxnSampledDataMaxLength": (INT, True, MAX_MEASURANDS, False, 0),
    "SupportedFeatureProfiles": (STR, True, FEATURE_PROFILES, False, 0),
    "TransactionMessageAttempts": (INT, False, 3, False, 1),
    "TransactionMessageRetryInterval": (INT, False, 20, False, 0),
    "UnlockConnectorOnEVSideDisconnect": (BOOL, False, True, False, 0),
    # The port applies the ping interval when it opens the connection: a change needs a restart.
    "WebSocketPingInterval": (INT, False, 30, True, 0),
    # LocalAuthListManagement profile
    "LocalAuthListEnabled": (BOOL, False, True, False, 0),
    "LocalAuthListMaxLength": (INT, True, 1000, False, 0),
    "SendLocalListMaxLength": (INT, True, 200, False, 0),
    # Reservation profile: a reservation names one connector (connectorId 0, "any connector", is not offered)
    "ReserveConnectorZeroSupported": (BOOL, True, False, False, 0),
    # SmartCharging profile
    "ChargeProfileMaxStackLevel": (INT, True, 8, False, 0),
    "ChargingScheduleAllowedChargingRateUnit": (STR, True, "Current,Power", False, 0),
    "ChargingScheduleMaxPeriods": (INT, True, 24, False, 0),
    "MaxChargingProfilesInstalled": (INT, True, 10, False, 0),
}

# ChangeConfiguration answers
ACCEPTED = "Accepted"
REJECTED = "Rejected"
REBOOT_REQUIRED = "RebootRequired"
NOT_SUPPORTED = "NotSupported"


def render(value: "Any") -> str:
    """Typed value -> OCPP configuration string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def parse(name: str, text: "Any") -> "Any":
    """OCPP string -> typed value for key `name`; raises ValueError when the value is not acceptable."""
    kind, _ro, _default, _reboot, minimum = DEFINITIONS[name]
    if not isinstance(text, str) or len(text) > MAX_VALUE_LEN:
        raise ValueError("value must be a string of at most 500 characters")
    t = text.strip()
    if kind == BOOL:
        low = t.lower()
        if low == "true":
            return True
        if low == "false":
            return False
        raise ValueError("expected true or false")
    if kind == INT:
        if not t or not (t.isdigit() or (t[0] == "-" and t[1:].isdigit())):
            raise ValueError("expected an integer")
        v = int(t)
        if v < minimum or v > 2147483647:
            raise ValueError("integer out of range")
        return v
    if kind == CSL:
        items = [x.strip() for x in t.split(",") if x.strip()]
        if len(items) > MAX_MEASURANDS:
            raise ValueError("too many items")
        for item in items:
            if item not in MEASURANDS:
                raise ValueError("unsupported measurand")
        return items
    if name == "ConnectorPhaseRotation":
        return t
    raise ValueError("not settable")


class Configuration:
    """The charge point's configuration keys. Writable values persist in HAL storage (one JSON blob)."""

    def __init__(self, hal: "Any", number_of_connectors: int, fixed: "dict[str, Any] | None" = None):
        """`fixed`: values of read-only keys this charger sets itself (capacities from AgentConfig)."""
        self._hal = hal
        self._values = {}  # type: dict[str, Any]
        for name in DEFINITIONS:
            default = DEFINITIONS[name][2]
            self._values[name] = list(default) if isinstance(default, list) else default
        self._values["NumberOfConnectors"] = number_of_connectors
        if fixed is not None:
            for name in fixed:
                if name in DEFINITIONS and DEFINITIONS[name][1] and fixed[name] is not None:
                    self._values[name] = fixed[name]
        self._load()

    def _load(self) -> None:
        raw = self._hal.storage_read(STORAGE_NAME)
        if not raw:
            return
        try:
            stored = json.loads(raw)
        except ValueError:
            return  # corrupt blob: keep defaults rather than fail to boot
        if not isinstance(stored, dict):
            return
        for name in stored:
            d = DEFINITIONS.get(name)
            if d is None or d[1]:
                continue
            try:
                self._values[name] = parse(name, render(stored[name]))
            except ValueError:
                pass

    def _save(self) -> None:
        out = {}
        for name in self._values:
            if not DEFINITIONS[name][1]:
                out[name] = self._values[name]
        self._hal.storage_write(STORAGE_NAME, json.dumps(out).encode())

    def get(self, name: str) -> "Any":
        return self._values[name]

    def set(self, name: str, value: "Any") -> None:
        """Internal update (e.g. HeartbeatInterval from BootNotification.conf); persisted."""
        self._values[name] = value
        self._save()

    def change(self, name: "Any", text: "Any") -> str:
        """ChangeConfiguration semantics: Accepted, Rejected, RebootRequired or NotSupported."""
        if not isinstance(name, str) or name not in DEFINITIONS:
            return NOT_SUPPORTED
        _kind, readonly, _default, reboot, _minimum = DEFINITIONS[name]
        if readonly:
            return REJECTED
        try:
            value = parse(name, text)
        except ValueError:
            return REJECTED
        self._values[name] = value
        self._save()
        return REBOOT_REQUIRED if reboot else ACCEPTED

    def describe(self, keys: "Any" = None) -> "tuple[list[dict[str, Any]], list[str]]":
        """GetConfiguration: (configurationKey list, unknownKey list). keys None/empty = every key."""
        known = []
        unknown = []
        names = keys if keys else sorted(DEFINITIONS.keys())
        for name in names:
            if isinstance(name, str) and name in DEFINITIONS:
                known.append(
                    {"key": name, "readonly": DEFINITIONS[name][1], "value": render(self._values[name])}
                )
            else:
                unknown.append(str(name)[:50])
        return known, unknown
