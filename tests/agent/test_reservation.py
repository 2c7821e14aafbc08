"""Runs the reservation cases (cases_reservation.py, also run under MicroPython by tests/mpy/run.mjs) on
CPython, with every frame validated against the OCPP 1.6 schemas like test_core.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from cases_reservation import *  # noqa: F403
from test_core import _schema_hook  # noqa: F401  (autouse fixture: schema-check every frame)
