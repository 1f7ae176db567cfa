"""Mosquitto config and ACL, against a real broker: a terminal can publish only as itself."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.deploy.tools import DEPLOY, free_port, require_binary, stop_process, wait_until_ready

CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
ACL = DEPLOY / "mosquitto" / "acl"
USERS = {"fleetwatch": "fw-secret", "acquirer-host": "host-secret", "T1": "t1-secret", "T2": "t2-secret"}
TIMEOUT = 10.0


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


def test_broker_config_keeps_money_events() -> None:
    """The shipped broker config persists, queues up to a million messages for an absent
    daemon with no byte cap, keeps 1000 in flight, and admits no anonymous client."""
    d = _directives(CONF.read_text())
    assert d["persistence"] == ["true"]
    assert int(d["max_queued_messages"][0]) >= 1_000_000
    assert d.get("max_queued_bytes", ["0"]) == ["0"]
    assert d["max_inflight_messages"] == ["1000"]
    assert d["allow_anonymous"] == ["false"]
    assert d["password_file"]
    assert d["acl_file"]


@dataclass
class Broker:
    port: int


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """The shipped mosquitto.conf and ACL file, unchanged except for the listener (a free
    loopback port), the password file (made here with mosquitto_passwd), the persistence
    directory and the log destination."""
    mosquitto = require_binary("mosquitto")
    passwd_tool = require_binary("mosquitto_passwd")
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(
            [passwd_tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    port = free_port()
    log = tmp_path / "mosquitto.log"
    replacements = {
        "listener": f"listener {port} 127.0.0.1",
        "password_file": f"password_file {passwd}",
        "acl_file": f"acl_file {ACL}",
        "persistence_location": f"persistence_location {tmp_path}/",
        "log_dest": f"log_dest file {log}",
        "user": "",
    }
    lines = []
    for line in CONF.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in replacements:
            lines.append(replacements.pop(key))
            if key == "log_dest":
                replacements["log_dest"] = ""  # one destination is enough
        else:
            lines.append(line)
    assert {"listener", "password_file", "acl_file", "persistence_location"}.isdisjoint(replacements), (
        "mosquitto.conf lost a directive the test relies on"
    )
    if os.geteuid() == 0:  # do not drop to the mosquitto user: it cannot read tmp_path
        lines.append("user root")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(proc, log=log, port=port)
        yield Broker(port)
    finally:
        stop_process(proc)


@dataclass
class Client:
    """A paho MQTT 5 client with the callbacks turned into waitable state."""

    client: mqtt.Client
    connected: threading.Event = field(default_factory=threading.Event)
    connect_rc: list[ReasonCode] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    suback: list[ReasonCode] = field(default_factory=list)
    puback: dict[int, ReasonCode] = field(default_factory=dict)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    received: threading.Condition = field(default_factory=threading.Condition)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), topic
        return self.puback[info.mid]

    def wait_message(self, topic: str) -> None:
        with self.received:
            assert self.received.wait_for(lambda: any(t == topic for t, _ in self.messages), TIMEOUT), (
                f"{topic} never arrived; got {[t for t, _ in self.messages]}"
            )


def _connect(broker: Broker, user: str | None, password: str | None) -> Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{user}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    state = Client(c)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None) -> None:
        state.connect_rc.append(rc)
        state.connected.set()

    def on_subscribe(_c: mqtt.Client, _u: object, _m: int, rcs: list[ReasonCode], _p: Properties | None) -> None:
        state.suback.extend(rcs)
        state.subscribed.set()

    def on_publish(_c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None) -> None:
        state.puback[mid] = rc

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with state.received:
            state.messages.append((msg.topic, bytes(msg.payload)))
            state.received.notify_all()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    c.on_message = on_message
    if user is not None:
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    c.loop_start()
    assert state.connected.wait(TIMEOUT), f"{user}: no CONNACK"
    return state


Connect = Callable[..., Client]
"""``connect(user, password=None)``: a connected client; the password defaults to the user's."""


@pytest.fixture
def connect(broker: Broker) -> Iterator[Connect]:
    clients: list[Client] = []

    def make(user: str | None, password: str | None = None) -> Client:
        c = _connect(broker, user, password if password is not None else USERS.get(user or ""))
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.client.disconnect()
        c.client.loop_stop()


def _subscriber(make: Connect, user: str) -> Client:
    c = make(user)
    assert not c.connect_rc[0].is_failure, c.connect_rc
    c.client.subscribe("fleet/v1/#", qos=1)
    assert c.subscribed.wait(TIMEOUT)
    return c


NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87


def test_terminal_publishes_only_under_its_own_id(connect: Connect) -> None:
    """T1 may publish its own heartbeat; its publishes as T2 and as the acquirer host
    are refused (PUBACK 0x87) and never reach the fleetwatch subscriber."""
    daemon = _subscriber(connect, "fleetwatch")
    t1 = connect("T1")
    assert not t1.connect_rc[0].is_failure

    assert t1.publish("fleet/v1/term/T2/heartbeat", b'{"v":1,"terminal_id":"T2"}').value == NOT_AUTHORIZED
    assert t1.publish("fleet/v1/host/settlement", b'{"v":1}').value == NOT_AUTHORIZED
    assert t1.publish("fleet/v1/term/T1/heartbeat", b'{"v":1,"terminal_id":"T1"}').value == 0
    # one publisher's messages arrive in order: once this one is in, so is all of the above
    assert t1.publish("fleet/v1/term/T1/txn", b'{"v":1,"terminal_id":"T1"}').value == 0
    daemon.wait_message("fleet/v1/term/T1/txn")

    topics = [t for t, _ in daemon.messages]
    assert topics == ["fleet/v1/term/T1/heartbeat", "fleet/v1/term/T1/txn"]


def test_acquirer_host_writes_settlement_only(connect: Connect) -> None:
    """acquirer-host can publish fleet/v1/host/settlement and nothing on terminal topics."""
    daemon = _subscriber(connect, "fleetwatch")
    host = connect("acquirer-host")
    assert host.publish("fleet/v1/term/T1/txn", b"{}").value == NOT_AUTHORIZED
    assert host.publish("fleet/v1/host/settlement", b'{"v":1}').value == 0
    daemon.wait_message("fleet/v1/host/settlement")
    assert [t for t, _ in daemon.messages] == ["fleet/v1/host/settlement"]


def test_terminal_writes_only_its_four_topics(connect: Connect) -> None:
    """T1 may publish its heartbeat, txn, batch and state, but not a notice (not even its own),
    nor anything else under its id."""
    daemon = _subscriber(connect, "fleetwatch")
    t1 = connect("T1")
    for suffix in ("notice", "debug", "heartbeat/extra"):
        assert t1.publish(f"fleet/v1/term/T1/{suffix}", b"{}").value == NOT_AUTHORIZED, suffix
    for suffix in ("heartbeat", "txn", "batch", "state"):
        assert t1.publish(f"fleet/v1/term/T1/{suffix}", b'{"v":1}').value == 0, suffix
    daemon.wait_message("fleet/v1/term/T1/state")
    assert [t for t, _ in daemon.messages] == [f"fleet/v1/term/T1/{s}" for s in ("heartbeat", "txn", "batch", "state")]


def test_daemon_writes_notices_and_each_terminal_reads_only_its_own(connect: Connect) -> None:
    """The daemon may publish every terminal's notice (and nothing as a terminal); a terminal
    subscribed to the whole fleet receives its own notice and nothing else: not another
    terminal's notice, not another terminal's transactions (Mosquitto grants a wildcard
    subscription and filters each delivery by the read ACL)."""
    daemon = _subscriber(connect, "fleetwatch")
    t1 = connect("T1")
    t1.client.subscribe("fleet/v1/#", qos=1)
    assert t1.subscribed.wait(TIMEOUT)
    snoop = connect("T2")
    snoop.client.subscribe("fleet/v1/#", qos=1)
    assert snoop.subscribed.wait(TIMEOUT)

    assert daemon.publish("fleet/v1/term/T1/heartbeat", b"{}").value == NOT_AUTHORIZED
    assert daemon.publish("fleet/v1/host/settlement", b"{}").value == NOT_AUTHORIZED
    assert daemon.publish("fleet/v1/term/T1/notice", b'{"v":1,"terminal_id":"T1","items":[]}').value == 0
    assert t1.publish("fleet/v1/term/T1/txn", b'{"v":1}').value == 0
    daemon.wait_message("fleet/v1/term/T1/txn")
    t1.wait_message("fleet/v1/term/T1/notice")
    assert [t for t, _ in t1.messages] == ["fleet/v1/term/T1/notice"]
    assert snoop.messages == []


def test_a_retained_notice_reaches_its_terminal_when_it_connects(connect: Connect) -> None:
    """The daemon's retained notice is there for a terminal that subscribes later; a zero-length
    retained publish clears it."""
    daemon = _subscriber(connect, "fleetwatch")
    info = daemon.client.publish("fleet/v1/term/T2/notice", b'{"v":1,"items":[1]}', qos=1, retain=True)
    info.wait_for_publish(timeout=TIMEOUT)
    t2 = connect("T2")
    t2.client.subscribe("fleet/v1/term/T2/notice", qos=1)
    t2.wait_message("fleet/v1/term/T2/notice")
    assert t2.messages == [("fleet/v1/term/T2/notice", b'{"v":1,"items":[1]}')]
    info = daemon.client.publish("fleet/v1/term/T2/notice", b"", qos=1, retain=True)
    info.wait_for_publish(timeout=TIMEOUT)
    late = connect("T2")
    late.client.subscribe("fleet/v1/term/T2/notice", qos=1)
    assert late.subscribed.wait(TIMEOUT)
    late.client.subscribe("fleet/v1/term/T2/heartbeat", qos=1)  # a second SUBACK: the first one's retained are in
    assert late.publish("fleet/v1/term/T2/heartbeat", b"{}").value == 0
    assert not [m for m in late.messages if m[0].endswith("/notice")]


@pytest.mark.parametrize(("user", "password"), [(None, None), ("T1", "wrong"), ("T9", "t1-secret")])
def test_unknown_or_anonymous_clients_are_refused(connect: Connect, user: str | None, password: str | None) -> None:
    """No anonymous access, no wrong password, no unknown terminal."""
    c = connect(user, password)
    assert c.connect_rc[0].is_failure, c.connect_rc


def test_acl_grants_as_documented() -> None:
    """The ACL file grants exactly: fleetwatch reads fleet/v1/# and writes every notice,
    acquirer-host writes fleet/v1/host/settlement, every user writes its own heartbeat, txn,
    batch and state under fleet/v1/term/<own username>/ and reads its own notice."""
    rules = [
        re.sub(r"\s+", " ", line.strip())
        for line in ACL.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules == [
        "user fleetwatch",
        "topic read fleet/v1/#",
        "topic write fleet/v1/term/+/notice",
        "user acquirer-host",
        "topic write fleet/v1/host/settlement",
        "pattern write fleet/v1/term/%u/heartbeat",
        "pattern write fleet/v1/term/%u/txn",
        "pattern write fleet/v1/term/%u/batch",
        "pattern write fleet/v1/term/%u/state",
        "pattern read fleet/v1/term/%u/notice",
    ]
