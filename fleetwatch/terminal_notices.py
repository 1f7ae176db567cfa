"""Publishes each terminal's notice to its screen (CONTRACT §5), between the core and the broker.

The pure :class:`~fleetwatch.core.screens.TerminalScreens` decides what each screen
shows and when it changed; this glue feeds it the committed effects, ticks it on every
sweep, publishes its updates (retained, QoS 1) through the MQTT port, and once the broker
acknowledged one, writes it to the store as the terminal's last published notice, so a
restart republishes only what differs. With ``notice.publish_to_terminals = false`` it
only clears, once, every retained notice the store says was published.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

from fleetwatch.core.model import Effect, TerminalNoticeWrite
from fleetwatch.core.screens import ScreenUpdate, TerminalScreens
from fleetwatch.ports import MessagePublisher

Submit = Callable[[Sequence[Effect]], object]


def notice_topic(prefix: str, terminal_id: str) -> str:
    return f"{prefix}/term/{terminal_id}/notice"


class TerminalNotices:
    """Committed effects in, retained notices out."""

    def __init__(
        self, screens: TerminalScreens, publisher: MessagePublisher, prefix: str, submit: Submit,
        clock: Callable[[], float], *, on_published: Callable[[], None] = lambda: None,
        on_acked: Callable[[], None] = lambda: None,
    ) -> None:
        self._screens = screens
        self._publisher = publisher
        self._prefix = prefix
        self._submit = submit
        self._clock = clock
        self._on_published = on_published
        self._on_acked = on_acked

    def on_commit(self, effects: Sequence[Effect]) -> None:
        """A pipeline commit listener."""
        self._screens.observe(effects, self._clock())

    def on_sweep(self, now: float) -> None:
        """A pipeline sweep listener: publish what changed."""
        for update in self._screens.tick(now):
            self.publish(update, now)

    def publish(self, update: ScreenUpdate, now: float) -> None:
        text = json.dumps(update.payload(int(now * 1000)), ensure_ascii=False, separators=(",", ":"))
        tid, mid = update.terminal_id, update.merchant_id

        def acked() -> None:
            self._on_acked()
            self._submit([TerminalNoticeWrite(tid, mid, text, self._clock())])

        self._publisher.publish(notice_topic(self._prefix, tid), text.encode(), on_acked=acked)
        self._on_published()


def clear_published(
    published: Iterable[TerminalNoticeWrite], publisher: MessagePublisher, prefix: str, submit: Submit,
    clock: Callable[[], float],
) -> int:
    """Clear every retained notice the store says is there (a zero-length retained publish)."""
    count = 0
    for row in published:
        if row.payload is None:
            continue
        tid, mid = row.terminal_id, row.merchant_id

        def acked(tid: str = tid, mid: str | None = mid) -> None:
            submit([TerminalNoticeWrite(tid, mid, None, clock())])

        publisher.publish(notice_topic(prefix, tid), b"", on_acked=acked)
        count += 1
    return count
