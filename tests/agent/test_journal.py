"""Runs the journal cases (cases_journal.py, also run under MicroPython by tests/mpy/run.mjs) on CPython."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from cases_journal import *  # noqa: F403
