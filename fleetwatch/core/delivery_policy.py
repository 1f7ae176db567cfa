"""What one webhook delivery attempt's answer means for its event (CONTRACT §6): sent, failed, or retried when.

Pure: the delivery worker (``adapters/webhooks.py``) does the I/O and hands the answer here
with the clock's reading and a source of jitter, so every rule of docs/notifications.md's
"What your answer does" table is one row of ``tests/core/test_delivery_policy.py``.

- 2xx: ``sent``.
- 408, 429, 5xx and no HTTP answer at all (refused, timeout, TLS, a closed connection):
  retried after ``Retry-After`` when the receiver sends one, else after an exponential
  backoff with jitter (``notify.retry_initial_s`` doubling up to ``retry_max_s``).
- Any other status (1xx left over, 3xx: redirects are not followed, other 4xx): ``failed``
  at once.
- A retry that would come later than ``notify.give_up_after_s`` after the event was due:
  ``failed`` now ("gave up").
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final, Literal, Protocol

from fleetwatch.config import NotifySettings

RETRIED_STATUSES: Final = frozenset({408, 429})
"""Besides every 5xx: the 4xx answers that mean "not now" rather than "never"."""
ERROR_CHARS: Final = 200
"""``last_error`` is cut to this many characters (a transport error can quote a long reason)."""
RECEIVER_GONE: Final = "receiver no longer configured"

Outcome = Literal["sent", "failed", "retry"]


class Jitter(Protocol):
    """Where the backoff's jitter comes from: ``random.Random`` in the daemon, a fixed value in tests."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No HTTP answer: why, as the transport put it."""

    error: str


Answer = int | Unreachable
"""An HTTP status, or no answer."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits ``initial * 2**(n-1)``, capped, times 0.5..1."""

    initial_s: float
    max_s: float

    @classmethod
    def of(cls, settings: NotifySettings) -> Backoff:
        """The backoff ``notify.retry_initial_s`` / ``retry_max_s`` configure."""
        return cls(settings.retry_initial_s, settings.retry_max_s)

    def delay(self, attempts: int, rng: Jitter) -> float:
        base = min(self.max_s, self.initial_s * 2 ** min(attempts - 1, 30))
        return float(base * (0.5 + rng.random() / 2))


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    next_at: float
    """When to try again (``retry``); ``now`` otherwise."""
    error: str | None
    """The row's ``last_error``: None when sent."""
    gave_up: bool = False
    """``failed`` because the give-up horizon was reached (not because the receiver refused)."""


def retry_after_s(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def is_retried(status: int) -> bool:
    return status >= 500 or status in RETRIED_STATUSES


def decide(answer: Answer, retry_after: str | None, *, attempts: int, due_at: float, now: float,
           settings: NotifySettings, rng: Jitter) -> Decision:
    """The outcome of attempt number ``attempts`` (from 1) of an event due at ``due_at``.

    ``retry_after`` is the answer's ``Retry-After`` header, if any; ``now`` the clock once the
    answer (or its absence) is known.
    """
    if isinstance(answer, Unreachable):
        error = answer.error[:ERROR_CHARS] or "no answer"
    elif 200 <= answer < 300:
        return Decision("sent", now, None)
    elif not is_retried(answer):
        return Decision("failed", now, f"HTTP {answer}")
    else:
        error = f"HTTP {answer}"
    wait = retry_after_s(retry_after, now) if not isinstance(answer, Unreachable) else None
    if wait is None:
        wait = Backoff.of(settings).delay(attempts, rng)
    if now + wait - due_at > settings.give_up_after_s:
        return Decision("failed", now, f"gave up: {error}", gave_up=True)
    return Decision("retry", now + wait, error)
