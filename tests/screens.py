"""A real MQTT client reading the terminals' notice topics, as their screens would."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.services import Broker


class Screens:
    """A paho client on ``{prefix}/term/+/notice``: what each terminal's screen was given, in order."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.live: list[tuple[str, bytes]] = []
        self.retained: list[tuple[str, bytes]] = []
        self.times: list[float] = []
        """Receive time (epoch s) of each ``live`` message."""
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"{prefix}/term/+/notice", qos=1)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            (self.retained if m.retain else self.live).append((m.topic.split("/")[-2], bytes(m.payload)))
            if not m.retain:
                self.times.append(time.time())

    def items(self, tid: str, *, retained: bool = False, until: float | None = None) -> list[list[dict[str, Any]]]:
        """What ``tid``'s screen was given (live, or retained on subscribe), up to ``until``."""
        with self._lock:
            if retained:
                source = self.retained
            else:
                source = [m for m, at in zip(self.live, self.times, strict=True) if until is None or at <= until]
            return [json.loads(p)["items"] if p else [] for t, p in source if t == tid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def screens(broker: Broker, prefix: str) -> Iterator[Screens]:
    s = Screens(broker, prefix)
    try:
        yield s
    finally:
        s.close()
