"""The lean MQTT 5 client against a real Mosquitto: login, TLS, sessions, acknowledgement
on demand, redelivery, flow control, keepalive and publishing with resend."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleetwatch.mqtt5 import (
    Client,
    ConnectionLost,
    ConnectOptions,
    ConnectRefused,
    KeepaliveTimeout,
    LoginRefused,
    ServerDisconnected,
)
from fleetwatch.sim.client import WireClient
from tests.pki import make_pki
from tests.services import Broker, free_port, mosquitto_binary, wait_port

pytestmark = pytest.mark.broker


@dataclass
class Inbox:
    """What a client was handed, and the connection each QoS 1 message came on."""

    messages: list[tuple[str, bytes, int, bool, int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int) -> None:
        self.messages.append((topic, payload, qos, retain, packet_id))
        self.arrived.set()

    async def wait_for(self, n: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.messages) < n:
                self.arrived.clear()
                await self.arrived.wait()

    def payloads(self) -> list[bytes]:
        return [m[1] for m in self.messages]


def session(client_id: str, inbox: Inbox, **kw: object) -> Client:
    opts = ConnectOptions(client_id, clean_start=False, session_expiry=300, **kw)  # type: ignore[arg-type]
    return Client(opts, inbox)


async def publish_qos1(port: int, topic: str, payloads: list[bytes], *, retain: bool = False) -> None:
    pub = WireClient("127.0.0.1", port, f"pub-{os.getpid()}-{topic[-12:]}", keepalive=0)
    await pub.connect()
    for p in payloads:
        pub.publish(topic, p, qos=1, retain=retain)
    await pub.wait_outstanding(0, 10)
    await pub.close()


async def retained(port: int, topic: str, within: float = 1.0) -> list[tuple[bytes, bool]]:
    """What a fresh subscriber to ``topic`` is handed in ``within`` seconds (retained copies)."""
    inbox = Inbox()
    client = Client(ConnectOptions(f"peek-{os.getpid()}"), inbox)
    await client.connect("127.0.0.1", port)
    await client.subscribe([(topic, 1)])
    await asyncio.sleep(within)
    await client.disconnect()
    return [(p, r) for _t, p, _q, r, _i in inbox.messages]


class PersistentBroker(Broker):
    """tests.services.Broker that really persists: Mosquitto started as root drops to its own
    user, which cannot write the test's temporary directory, so it would save nothing."""

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {self.workdir}/\nlog_dest none\nuser root\n", encoding="utf-8")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker this test may stop, restart or freeze."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = PersistentBroker(workdir)
    b.start()
    yield b
    if b.proc is not None:
        os.kill(b.proc.pid, signal.SIGCONT)
    b.stop()


@pytest.fixture
def frozen() -> Iterator[list[int]]:
    """Pids this test SIGSTOPped; continued however the test ends."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


# ---- login and TLS ---------------------------------------------------------------------


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[int]:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "fleetwatch", "s3cret pass"], check=True)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                    "log_dest none\nuser root\n", encoding="utf-8")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port
    proc.terminate()
    proc.wait(timeout=5)


async def test_login_with_the_right_password_is_accepted(password_broker: int) -> None:
    client = Client(ConnectOptions("login-ok", username="fleetwatch", password=b"s3cret pass"), Inbox())
    result = await client.connect("127.0.0.1", password_broker)
    assert client.connected
    assert result.session_present is False
    await client.disconnect()
    assert not client.connected


@pytest.mark.parametrize(("username", "password"), [("fleetwatch", b"wrong"), ("nobody", b"x"), (None, None)])
async def test_a_refused_login_is_a_typed_error_naming_the_reason(
        password_broker: int, username: str | None, password: bytes | None) -> None:
    """Mosquitto answers every failed login with "not authorized" (0x87)."""
    client = Client(ConnectOptions("login-bad", username=username, password=password), Inbox())
    with pytest.raises(LoginRefused) as refused:
        await client.connect("127.0.0.1", password_broker)
    assert (refused.value.code, refused.value.reason) == (0x87, "not authorized")
    assert "not authorized" in str(refused.value)
    assert not client.connected


@pytest.mark.parametrize(("code", "error", "reason"), [
    (0x86, LoginRefused, "bad user name or password"),
    (0x8C, LoginRefused, "bad authentication method"),
    (0x88, ConnectRefused, "server unavailable"),
    (0x85, ConnectRefused, "client identifier not valid"),
])
async def test_every_connack_refusal_is_typed_with_its_name(code: int, error: type[ConnectRefused],
                                                            reason: str) -> None:
    """Codes Mosquitto never sends (other brokers do), from a peer that answers CONNECT with them."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(bytes([0x20, 0x03, 0x00, code, 0x00]))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(error) as refused:
            await Client(ConnectOptions("typed"), Inbox()).connect("127.0.0.1", port)
    assert type(refused.value) is error
    assert (refused.value.code, refused.value.reason) == (code, reason)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Mosquitto with a TLS listener that demands a client certificate signed by the test CA."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\n"
                    f"keyfile {pki / 'server.key'}\nrequire_certificate true\nallow_anonymous true\n"
                    "log_dest none\nuser root\n", encoding="utf-8")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port, pki
    proc.terminate()
    proc.wait(timeout=5)


async def test_tls_with_a_client_certificate(tls_broker: tuple[int, Path]) -> None:
    port, pki = tls_broker
    without_cert = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with pytest.raises((ConnectionLost, OSError)):
        await Client(ConnectOptions("tls-nocert"), Inbox()).connect("127.0.0.1", port, ssl=without_cert)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    inbox = Inbox()
    client = Client(ConnectOptions("tls-ok"), inbox)
    await client.connect("127.0.0.1", port, ssl=context)
    await client.subscribe([("tls/#", 1)])
    sender = Client(ConnectOptions("tls-sender"), Inbox())
    await sender.connect("127.0.0.1", port, ssl=context)
    await sender.publish("tls/x", b"over tls")
    await inbox.wait_for(1)
    assert inbox.messages[0][:3] == ("tls/x", b"over tls", 1)
    await sender.disconnect()
    await client.disconnect()


# ---- sessions, acknowledgement on demand, redelivery -------------------------------------


async def test_qos1_unacknowledged_until_told_is_redelivered_with_dup_after_reconnect(broker: Broker) -> None:
    inbox = Inbox()
    client = session("redeliver", inbox)
    await client.connect("127.0.0.1", broker.port)
    await client.subscribe([("rd/#", 1)])
    await publish_qos1(broker.port, "rd/a", [b"1", b"2", b"3"])
    await inbox.wait_for(3)
    first = client.connection
    assert first is not None
    ids = {m[1]: m[4] for m in inbox.messages}
    first.puback(ids[b"1"])  # only the first is "committed"
    await asyncio.sleep(0.2)
    await client.disconnect()
    first.puback(ids[b"2"])  # too late: that connection is gone, so nothing is sent

    inbox.messages.clear()
    result = await client.connect("127.0.0.1", broker.port)
    assert result.session_present
    await inbox.wait_for(2)
    assert inbox.payloads() == [b"2", b"3"]
    assert [m[4] for m in inbox.messages] == [ids[b"2"], ids[b"3"]]  # the same packet ids
    second = client.connection
    assert second is not None
    assert second.reader.duplicates == 2
    second.puback_many(m[4] for m in inbox.messages)
    await asyncio.sleep(0.2)
    await client.disconnect()

    inbox.messages.clear()
    await client.connect("127.0.0.1", broker.port)
    await asyncio.sleep(0.5)
    assert inbox.messages == []  # all acknowledged now: nothing comes back
    await client.disconnect()


async def test_a_persistent_session_gets_what_was_published_while_away(broker: Broker) -> None:
    inbox = Inbox()
    client = session("away", inbox)
    await client.connect("127.0.0.1", broker.port)
    await client.subscribe([("away/#", 1)])
    await client.disconnect()
    await publish_qos1(broker.port, "away/x", [b"%d" % i for i in range(5)])
    result = await client.connect("127.0.0.1", broker.port)
    assert result.session_present
    await inbox.wait_for(5)
    assert inbox.payloads() == [b"0", b"1", b"2", b"3", b"4"]
    assert all(m[2] == 1 and not m[3] for m in inbox.messages)
    assert client.connection is not None
    assert client.connection.reader.duplicates == 0  # queued, never sent before: not duplicates
    client.connection.puback_many(m[4] for m in inbox.messages)
    await client.disconnect()


async def test_the_retain_flag_of_a_retained_message_reaches_the_callback(broker: Broker) -> None:
    await publish_qos1(broker.port, "ret/state", [b"online"], retain=True)
    inbox = Inbox()
    client = Client(ConnectOptions("ret-reader"), inbox)
    await client.connect("127.0.0.1", broker.port)
    await client.subscribe([("ret/#", 1)])
    await inbox.wait_for(1)
    assert inbox.messages[0][1:4] == (b"online", 1, True)
    await client.disconnect()
    await publish_qos1(broker.port, "ret/state", [b""], retain=True)


async def test_a_broker_restart_ends_the_connection_and_the_session_resumes(own_broker: Broker) -> None:
    inbox = Inbox()
    client = session("restart", inbox)
    await client.connect("127.0.0.1", own_broker.port)
    await client.subscribe([("rs/#", 1)])
    await asyncio.to_thread(own_broker.stop)
    cause = await asyncio.wait_for(client.wait_closed(), 10)
    assert isinstance(cause, ConnectionLost)
    assert not client.connected
    await asyncio.to_thread(own_broker.start)
    result = await client.connect("127.0.0.1", own_broker.port)
    assert result.session_present  # the broker persisted our session and subscription
    await publish_qos1(own_broker.port, "rs/x", [b"after"])
    await inbox.wait_for(1)
    assert inbox.payloads() == [b"after"]
    await client.disconnect()


async def test_the_broker_respects_our_receive_maximum(broker: Broker) -> None:
    """Mosquitto holds back what exceeds our Receive Maximum until we acknowledge. (Mosquitto
    2.0.11 then hands over a whole window per acknowledgement, more than the maximum: the
    client accepts that rather than dropping the connection, so only the first window is
    asserted.)"""
    inbox = Inbox()
    client = session("recvmax", inbox, receive_maximum=5)
    await client.connect("127.0.0.1", broker.port)
    await client.subscribe([("rm/#", 1)])
    await publish_qos1(broker.port, "rm/x", [b"%d" % i for i in range(12)])
    await inbox.wait_for(5)
    await asyncio.sleep(0.5)
    assert len(inbox.messages) == 5  # no more until we acknowledge
    conn = client.connection
    assert conn is not None
    acked = 0
    while acked < 12:
        await inbox.wait_for(acked + 1)
        conn.puback_many(m[4] for m in inbox.messages[acked:])
        acked = len(inbox.messages)
    assert inbox.payloads() == [b"%d" % i for i in range(12)]
    assert client.connected
    await client.disconnect()


async def test_a_second_client_with_our_id_takes_the_session_over(broker: Broker) -> None:
    """Why a standby must not connect with the active's client id: the broker drops the active."""
    first = session("takeover", Inbox())
    await first.connect("127.0.0.1", broker.port)
    second = session("takeover", Inbox())
    await second.connect("127.0.0.1", broker.port)
    cause = await asyncio.wait_for(first.wait_closed(), 5)
    assert isinstance(cause, ConnectionLost)
    assert not first.connected
    assert second.connected
    await second.disconnect()


async def test_a_disconnect_from_the_broker_is_reported_with_its_reason() -> None:
    """Mosquitto 2.0 closes without DISCONNECT; other brokers say why (from a scripted peer)."""

    async def accept_then_disconnect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK success
        await asyncio.sleep(0.1)
        writer.write(b"\xe0\x0a\x8e\x08\x1f\x00\x05other")  # DISCONNECT 0x8E, reason string "other"
        await writer.drain()
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(accept_then_disconnect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = Client(ConnectOptions("told"), Inbox())
        await client.connect("127.0.0.1", port)
        cause = await asyncio.wait_for(client.wait_closed(), 5)
    assert isinstance(cause, ServerDisconnected)
    assert (cause.code, cause.reason, cause.reason_string) == (0x8E, "session taken over", "other")
    assert "session taken over (other)" in str(cause)


# ---- keepalive ---------------------------------------------------------------------------


async def test_pings_keep_an_idle_connection_open(broker: Broker) -> None:
    client = Client(ConnectOptions("idle", keepalive=1), Inbox())
    await client.connect("127.0.0.1", broker.port)
    await asyncio.sleep(3.5)  # the broker drops a silent client after 1.5 keepalives
    assert client.connected
    await client.disconnect()


async def test_a_broker_that_stops_answering_is_detected_by_keepalive(own_broker: Broker,
                                                                      frozen: list[int]) -> None:
    client = Client(ConnectOptions("frozen", keepalive=1), Inbox())
    await client.connect("127.0.0.1", own_broker.port)
    assert own_broker.proc is not None
    os.kill(own_broker.proc.pid, signal.SIGSTOP)
    frozen.append(own_broker.proc.pid)
    cause = await asyncio.wait_for(client.wait_closed(), 10)
    assert isinstance(cause, KeepaliveTimeout)
    assert not client.connected


# ---- publishing ---------------------------------------------------------------------------


async def test_retained_qos1_publish_is_confirmed_and_a_zero_length_one_clears_it(broker: Broker) -> None:
    client = Client(ConnectOptions("notice-pub"), Inbox())
    await client.connect("127.0.0.1", broker.port)
    await asyncio.wait_for(client.publish("nt/term/T1/notice", b'{"items":[1]}', retain=True), 5)
    assert await retained(broker.port, "nt/term/T1/notice") == [(b'{"items":[1]}', True)]
    await asyncio.wait_for(client.publish("nt/term/T1/notice", b"", retain=True), 5)
    assert await retained(broker.port, "nt/term/T1/notice") == []
    assert client.outbound_pending == 0
    await client.disconnect()


async def test_publishes_made_before_connecting_go_out_on_the_first_connection(broker: Broker) -> None:
    client = Client(ConnectOptions("standby-pub"), Inbox())
    futures = [client.publish("sb/notice", b"%d" % i, retain=True) for i in range(3)]
    await asyncio.sleep(0.2)
    assert client.outbound_pending == 3  # it never connects by itself
    assert not any(f.done() for f in futures)
    await client.connect("127.0.0.1", broker.port)
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert await retained(broker.port, "sb/notice") == [(b"2", True)]
    await client.disconnect()


async def test_in_flight_limit_and_resend_after_reconnect(own_broker: Broker, frozen: list[int]) -> None:
    """With the broker frozen, only ``outbound_inflight`` publishes are written; the connection
    then dies with them unconfirmed, and the next connection resends them (DUP) and the rest."""
    watcher_inbox = Inbox()
    watcher = session("watcher", watcher_inbox)
    await watcher.connect("127.0.0.1", own_broker.port)
    await watcher.subscribe([("fl/#", 1)])

    client = session("inflight", Inbox(), keepalive=1)
    client.outbound_inflight = 2
    await client.connect("127.0.0.1", own_broker.port)
    assert own_broker.proc is not None
    os.kill(own_broker.proc.pid, signal.SIGSTOP)
    frozen.append(own_broker.proc.pid)
    futures = [client.publish(f"fl/{i}", b"%d" % i) for i in range(6)]
    await asyncio.sleep(0.2)
    assert client.inflight == 2
    assert client.outbound_pending == 6
    cause = await asyncio.wait_for(client.wait_closed(), 10)  # keepalive gives up on the frozen broker
    assert isinstance(cause, KeepaliveTimeout)
    os.kill(own_broker.proc.pid, signal.SIGCONT)
    frozen.clear()
    assert not any(f.done() for f in futures)

    await asyncio.sleep(0.5)
    await client.connect("127.0.0.1", own_broker.port)
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert client.outbound_pending == 0
    await watcher_inbox.wait_for(6)
    got = {m[0]: m[1] for m in watcher_inbox.messages}
    assert got == {f"fl/{i}": b"%d" % i for i in range(6)}  # every one arrived (the first two maybe twice)
    await client.disconnect()
    await watcher.disconnect()

