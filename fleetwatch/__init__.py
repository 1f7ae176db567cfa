"""fleetwatch: watches a fleet of card-payment terminals and says what is broken and whose fault it is."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# First: decides whether the mypyc-compiled hot path may be used (fleetwatch/_compiled.py).
from fleetwatch._compiled import COMPILED as COMPILED

try:
    __version__ = version("fleetwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
