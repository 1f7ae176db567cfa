"""One exception tree for the whole daemon.

    FleetwatchError
    ├── ConfigError        a setting is missing, malformed or contradictory (exit 2)
    ├── StoreError         the store cannot be opened or written (unrecoverable: exit 1,
    │                      systemd restarts the daemon)
    └── SourceError        the message source failed in a way reconnecting cannot fix

Lower-level errors (sqlite3, OSError, gmqtt's) are translated once, at the adapter that
sees them, with ``raise ... from exc`` so the cause stays in the traceback.
"""

from __future__ import annotations


class FleetwatchError(Exception):
    """Base of every error fleetwatch raises on purpose."""


class ConfigError(FleetwatchError):
    """The configuration cannot be used."""


class StoreError(FleetwatchError):
    """The store failed; the daemon cannot go on without losing acknowledged data."""


class SourceError(FleetwatchError):
    """The message source failed permanently (bad credentials, bad TLS files)."""
