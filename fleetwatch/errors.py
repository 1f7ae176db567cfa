"""One exception tree for the whole daemon.

    FleetwatchError
    ├── ConfigError          a setting is missing, malformed or contradictory      (exit 2)
    ├── StoreError           the store cannot be opened, locked or written         (exit 3)
    │   └── LeaseLost        another instance holds the active lease: stepped down (exit 6)
    ├── CredentialFileError  a TLS or credential file cannot be read or written    (exit 4)
    ├── ListenError          the HTTP listen address cannot be bound               (exit 5)
    └── RequestError         an API request cannot be served as asked (never fatal)
        ├── BadRequest       a malformed query (an invalid cursor)                 (HTTP 400)
        ├── NotFound         what the request names does not exist                 (HTTP 404)
        │   ├── UnknownIncident
        │   ├── UnknownTerminal
        │   └── UnknownMerchant
        └── Conflict         the action does not fit the current state             (HTTP 409)
            └── IncidentNotOpen

The fatal ones are mapped to one log line and an exit code once, at the top of the CLI
(``fleetwatch.cli.EXIT_CODES``); anything else that escapes is a bug: exit 1, logged
with its traceback. The request errors are mapped to HTTP answers once, in the HTTP
adapter. A refused broker login is none of these: the source retries it with backoff
and says why in the log, a metric and ``/readyz``.

Lower-level errors (sqlite3, OSError, ssl's) are translated once, at the module that
sees them, with ``raise ... from exc`` so the cause stays in the traceback.
"""

from __future__ import annotations


class FleetwatchError(Exception):
    """Base of every error fleetwatch raises on purpose."""


class ConfigError(FleetwatchError):
    """The configuration cannot be used."""


class StoreError(FleetwatchError):
    """The store failed; the daemon cannot go on without losing acknowledged data."""


class LeaseLost(StoreError):
    """This instance was active and no longer holds the lease (CONTRACT.md §9): it could not
    renew it in time, or another instance took it over and the fencing token refused a write.
    The daemon stops acknowledging and exits; its supervisor starts it again as a standby."""


class CredentialFileError(FleetwatchError):
    """A TLS certificate, key or CA file, or the API token file, cannot be used."""


class ListenError(FleetwatchError):
    """The HTTP listen address cannot be bound (in use, not local, not permitted)."""


class RequestError(FleetwatchError):
    """An API request names something that is not there or asks what cannot be done."""


class BadRequest(RequestError, ValueError):
    """The request itself is malformed (an invalid cursor, an out-of-range limit)."""


class NotFound(RequestError):
    """The incident, terminal or other thing a request names does not exist."""

    what = "object"

    def __init__(self, key: str) -> None:
        super().__init__(f"no such {self.what}: {key}")
        self.key = key


class UnknownIncident(NotFound):
    what = "incident"


class UnknownTerminal(NotFound):
    what = "terminal"


class UnknownMerchant(NotFound):
    """A merchant no terminal the daemon knows belongs to."""

    what = "merchant"


class Conflict(RequestError):
    """The action is valid in general but not in the current state of its target."""


class IncidentNotOpen(Conflict):
    """An ack or resolve of an incident that this daemon does not hold open."""

    def __init__(self, incident_id: str) -> None:
        super().__init__(f"incident is not open in this daemon: {incident_id}")
        self.incident_id = incident_id
