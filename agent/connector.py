"""Connector state machine (OCPP 1.6 ChargePointStatus), as a pure function of its inputs.

Inputs come from the HAL (pilot state, fault code), the core (transaction running, authorized-and-waiting,
availability, offered current). `next_status` returns the new status; the core sends a StatusNotification on
every change. TRANSITIONS lists every allowed edge (OCPP 1.6 §4.9 table); `next_status` never leaves it.
"""

AVAILABLE = "Available"
PREPARING = "Preparing"
CHARGING = "Charging"
SUSPENDED_EV = "SuspendedEV"
SUSPENDED_EVSE = "SuspendedEVSE"
FINISHING = "Finishing"
RESERVED = "Reserved"
UNAVAILABLE = "Unavailable"
FAULTED = "Faulted"

STATUSES = (
    AVAILABLE,
    PREPARING,
    CHARGING,
    SUSPENDED_EV,
    SUSPENDED_EVSE,
    FINISHING,
    RESERVED,
    UNAVAILABLE,
    FAULTED,
)
_TX_STATES = (CHARGING, SUSPENDED_EV, SUSPENDED_EVSE)

TRANSITIONS = {
    AVAILABLE: (PREPARING, CHARGING, SUSPENDED_EV, SUSPENDED_EVSE, RESERVED, UNAVAILABLE, FAULTED),
    PREPARING: (AVAILABLE, CHARGING, SUSPENDED_EV, SUSPENDED_EVSE, FINISHING, FAULTED, UNAVAILABLE),
    CHARGING: (AVAILABLE, SUSPENDED_EV, SUSPENDED_EVSE, FINISHING, UNAVAILABLE, FAULTED),
    SUSPENDED_EV: (AVAILABLE, CHARGING, SUSPENDED_EVSE, FINISHING, UNAVAILABLE, FAULTED),
    SUSPENDED_EVSE: (AVAILABLE, CHARGING, SUSPENDED_EV, FINISHING, UNAVAILABLE, FAULTED),
    FINISHING: (AVAILABLE, PREPARING, UNAVAILABLE, FAULTED),
    # Reserved: the reserved id arrives (Preparing), the reservation expires or is cancelled (Available)
    RESERVED: (AVAILABLE, PREPARING, UNAVAILABLE, FAULTED),
    UNAVAILABLE: (AVAILABLE, PREPARING, CHARGING, SUSPENDED_EV, SUSPENDED_EVSE, RESERVED, FAULTED),
    FAULTED: (AVAILABLE, PREPARING, CHARGING, SUSPENDED_EV, SUSPENDED_EVSE, FINISHING, RESERVED, UNAVAILABLE),
}

PLUGGED = ("B", "C", "D")
REQUESTING = ("C", "D")
PILOT_FAULT = ("E", "F")


class ConnectorInputs:
    """Everything the status depends on, sampled once per tick."""

    def __init__(
        self,
        pilot="A",
        fault=None,
        operative=True,
        tx_active=False,
        authorized_waiting=False,
        energy_offered=True,
        reserved=False,
    ):  # type: (str, str | None, bool, bool, bool, bool, bool) -> None
        self.pilot = pilot
        self.fault = fault  # None or an OCPP ChargePointErrorCode reported by the HAL
        self.operative = (
            operative  # availability asked by ChangeAvailability (applies once no transaction runs)
        )
        self.tx_active = tx_active
        self.authorized_waiting = authorized_waiting  # idTag accepted, waiting for the cable
        self.energy_offered = energy_offered  # False: EVSE withholds energy (limit 0, id not accepted)
        self.reserved = reserved  # a reservation (ReserveNow) holds the connector for one idTag


def next_status(current: str, inp: ConnectorInputs) -> str:
    """Status after the inputs `inp`, starting from `current`."""
    if inp.fault is not None or inp.pilot in PILOT_FAULT:
        new = FAULTED
    elif inp.tx_active:
        if inp.pilot in REQUESTING:
            new = CHARGING if inp.energy_offered else SUSPENDED_EVSE
        elif not inp.energy_offered:
            new = SUSPENDED_EVSE
        else:
            # pilot B: connected, not requesting; pilot A with StopTransactionOnEVSideDisconnect=false
            new = SUSPENDED_EV
    elif not inp.operative:
        new = UNAVAILABLE
    elif inp.reserved and not inp.authorized_waiting:
        # an EV plugged in without the reserved id does not take the connector: it stays Reserved
        new = RESERVED
    elif inp.pilot in PLUGGED:
        # a finished transaction leaves the connector in Finishing until the cable goes or a new id arrives
        if (current == FINISHING or current in _TX_STATES) and not inp.authorized_waiting:
            new = FINISHING
        else:
            new = PREPARING
    elif inp.authorized_waiting:
        new = PREPARING
    else:
        new = AVAILABLE
    if new != current and new not in TRANSITIONS[current]:
        # Not an OCPP edge (Finishing -> Charging, Charging -> Preparing): pass through the state in between;
        # the next tick completes the move.
        if new == RESERVED:
            via = AVAILABLE  # Preparing -> Reserved (the reserved id's connection timeout passed)
        else:
            via = PREPARING if new in _TX_STATES else FINISHING
        if via in TRANSITIONS[current]:
            return via
    return new
