"""Contract messages for tests, and a paho publisher that waits until the broker has them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def now_ms() -> int:
    return int(time.time() * 1000)


def heartbeat(tid: str, mid: str = "M1", seq: int = 1, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "terminal_id": tid, "merchant_id": mid, "ts": now_ms(), "seq": seq,
        "model": "A920", "serial": "1851234567", "fw": "2.4.1", "app": "pay-3.1.0", "uptime_s": 3600 + seq,
        "power": {"battery_pct": 83, "charging": False},
        "net": {"type": "4g", "rssi_dbm": -71, "host_rtt_ms": 120, "host_reachable": True},
        "printer": "ok", "reader": {"chip": "ok", "msr": "ok", "ctls": "ok"},
        "saf": {"pending": 0, "oldest_ts": None}, "tamper": False,
    }
    body.update(fields)
    return body


def txn(tid: str, txn_id: str, mid: str = "M1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "terminal_id": tid, "merchant_id": mid, "ts": now_ms(), "txn_id": txn_id,
        "stan": "000913", "rrn": "433012345678", "batch_no": 17, "type": "sale", "amount_minor": 12800,
        "currency": "CNY", "entry": "chip", "card_ref": "c9f1e2a4", "outcome": "approved", "rc": "00",
        "error": None, "offline": False,
    }
    body.update(fields)
    return body


def batch(tid: str, mid: str = "M1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "terminal_id": tid, "merchant_id": mid, "ts": now_ms(), "batch_no": 17,
                            "count": 1, "amount_minor": 12800, "currency": "CNY", "result": "confirmed"}
    body.update(fields)
    return body


def state(tid: str, value: str = "online", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "terminal_id": tid, "state": value, "ts": now_ms()}
    body.update(fields)
    return body


def settlement(tid: str, mid: str = "M1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"v": 1, "merchant_id": mid, "terminal_id": tid, "batch_no": 17,
                            "business_date": "2026-11-22", "settled_count": 1, "settled_amount_minor": 12800,
                            "currency": "CNY", "credited_at": now_ms()}
    body.update(fields)
    return body


class Publisher:
    """A connected paho client; ``send`` returns once the broker acknowledged (QoS 1)."""

    def __init__(self, url: str, prefix: str, client_id: str = "") -> None:
        parts = urlsplit(url)
        self.prefix = prefix
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        self._pending: list[mqtt.MQTTMessageInfo] = []

    def send(self, suffix: str, payload: dict[str, Any] | bytes | str, *, qos: int = 1,
             retain: bool = False, wait: bool = True) -> None:
        body = payload if isinstance(payload, bytes | str) else json.dumps(payload, separators=(",", ":"))
        info = self.client.publish(f"{self.prefix}/{suffix}", body, qos=qos, retain=retain)
        self._pending.append(info)
        if wait:
            self.flush()

    def flush(self) -> None:
        for info in self._pending:
            info.wait_for_publish(10)
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def publisher(url: str, prefix: str) -> Iterator[Publisher]:
    p = Publisher(url, prefix)
    try:
        yield p
    finally:
        p.close()
