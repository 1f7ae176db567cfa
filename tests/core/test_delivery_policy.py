"""The webhook retry policy, row by row of docs/notifications.md's "What your answer does" table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fleetwatch.config import NotifySettings
from fleetwatch.core.delivery_policy import Answer, Backoff, Decision, Unreachable, decide, retry_after_s

SETTINGS = NotifySettings(retry_initial_s=1.0, retry_max_s=300.0, give_up_after_s=3600.0)
DUE = 1_000_000.0


@dataclass
class Fixed:
    """A jitter source that always says ``value`` (0: the shortest wait, ~1: the longest)."""

    value: float

    def random(self) -> float:
        return self.value


Case = tuple[str, Answer, str | None, int, float, float, Decision]
CASES: list[Case] = [
    # (what, answer, Retry-After, attempts, now - due, jitter, decision)
    ("200 sent", 200, None, 1, 5.0, 0.0, Decision("sent", DUE + 5, None)),
    ("204 sent", 204, None, 3, 5.0, 0.0, Decision("sent", DUE + 5, None)),
    ("400 failed at once", 400, None, 1, 5.0, 0.0, Decision("failed", DUE + 5, "HTTP 400")),
    ("401 failed even with Retry-After", 401, "5", 1, 5.0, 0.0, Decision("failed", DUE + 5, "HTTP 401")),
    ("404 failed", 404, None, 2, 5.0, 0.0, Decision("failed", DUE + 5, "HTTP 404")),
    ("301 failed: no redirects", 301, None, 1, 5.0, 0.0, Decision("failed", DUE + 5, "HTTP 301")),
    ("500 retried after 1 s (jitter 1)", 500, None, 1, 5.0, 1.0, Decision("retry", DUE + 6, "HTTP 500")),
    ("503 retried after 0.5 s (jitter 0)", 503, None, 1, 5.0, 0.0, Decision("retry", DUE + 5.5, "HTTP 503")),
    ("502 third attempt: 4 s", 502, None, 3, 5.0, 1.0, Decision("retry", DUE + 9, "HTTP 502")),
    ("500 capped at retry_max_s", 500, None, 20, 5.0, 1.0, Decision("retry", DUE + 305, "HTTP 500")),
    ("408 retried", 408, None, 1, 5.0, 1.0, Decision("retry", DUE + 6, "HTTP 408")),
    ("429 after Retry-After", 429, "30", 1, 5.0, 0.0, Decision("retry", DUE + 35, "HTTP 429")),
    ("503 after Retry-After", 503, "120", 1, 5.0, 0.0, Decision("retry", DUE + 125, "HTTP 503")),
    ("unreadable Retry-After: backoff", 429, "soon", 1, 5.0, 1.0, Decision("retry", DUE + 6, "HTTP 429")),
    ("no answer retried", Unreachable("cannot connect to h:1: refused"), None, 1, 5.0, 1.0,
     Decision("retry", DUE + 6, "cannot connect to h:1: refused")),
    ("no answer, no reason", Unreachable(""), None, 1, 5.0, 1.0, Decision("retry", DUE + 6, "no answer")),
    ("a long reason is cut", Unreachable("x" * 500), None, 1, 5.0, 1.0, Decision("retry", DUE + 6, "x" * 200)),
    ("retry inside the horizon", 500, None, 1, 3598.0, 1.0, Decision("retry", DUE + 3599, "HTTP 500")),
    ("retry past the horizon: gave up", 500, None, 1, 3599.5, 1.0,
     Decision("failed", DUE + 3599.5, "gave up: HTTP 500", gave_up=True)),
    ("Retry-After past the horizon: gave up", 429, "7200", 1, 5.0, 0.0,
     Decision("failed", DUE + 5, "gave up: HTTP 429", gave_up=True)),
    ("no answer past the horizon", Unreachable("timeout"), None, 9, 3600.0, 0.0,
     Decision("failed", DUE + 3600, "gave up: timeout", gave_up=True)),
    ("a 2xx past the horizon is still sent", 200, None, 9, 99_999.0, 0.0, Decision("sent", DUE + 99_999, None)),
    ("a 400 past the horizon is refused, not given up", 400, None, 9, 99_999.0, 0.0,
     Decision("failed", DUE + 99_999, "HTTP 400")),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decide(case: Case) -> None:
    _what, answer, retry_after, attempts, since_due, jitter, expected = case
    got = decide(answer, retry_after, attempts=attempts, due_at=DUE, now=DUE + since_due, settings=SETTINGS,
                 rng=Fixed(jitter))
    assert got == expected


@pytest.mark.parametrize(("value", "now", "expected"), [
    ("120", 0.0, 120.0),
    (" 7 ", 0.0, 7.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0, 10.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0, 0.0),  # a date in the past: now
    ("soon", 0.0, None),
    ("-5", 0.0, None),
    ("", 0.0, None),
    (None, 0.0, None),
])
def test_retry_after(value: str | None, now: float, expected: float | None) -> None:
    assert retry_after_s(value, now) == expected


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(1.0, 60.0)
    assert [b.delay(n, Fixed(1.0)) for n in (1, 2, 3, 4, 7, 8, 100)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0, 60.0]
    assert [b.delay(n, Fixed(0.0)) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
