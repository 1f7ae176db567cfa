"""The client reads no more than ``READ_PER_TURN`` bytes per turn of the event loop.

libuv reads a busy socket up to 32 times before it runs anything else; without the budget a
broker's backlog kept timers, the API and our own PUBACKs waiting for up to a second. These
tests drive :class:`fleetwatch.mqtt5.client.Connection` with a recording transport, so the
mechanism is checked exactly, without timing anything.
"""

from __future__ import annotations

import asyncio

from fleetwatch.mqtt5 import Client, ConnectOptions, codec
from fleetwatch.mqtt5.client import READ_PER_TURN, Connection


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


def _connection(received: list[bytes]) -> tuple[Connection, RecordingTransport]:
    client = Client(ConnectOptions("budget-test"), lambda _t, p, _q, _r, _i: received.append(p))
    conn = Connection(client, client.on_message)
    transport = RecordingTransport()
    conn.connection_made(transport)
    return conn, transport


def _frames(total_bytes: int) -> bytes:
    frame = codec.publish("fleet/v1/term/T1/heartbeat", b"x" * 200)
    return frame * (total_bytes // len(frame) + 1)


async def test_past_the_budget_reading_pauses_until_the_loop_has_turned() -> None:
    received: list[bytes] = []
    conn, transport = _connection(received)
    data = _frames(READ_PER_TURN)
    conn.data_received(data)
    assert transport.calls == ["pause"]
    assert len(received) * 200 >= READ_PER_TURN * 0.8  # the read itself was handled whole
    await asyncio.sleep(0)
    assert transport.calls == ["pause", "resume"]


async def test_reads_under_the_budget_do_not_pause_and_the_count_restarts_each_turn() -> None:
    received: list[bytes] = []
    conn, transport = _connection(received)
    small = _frames(READ_PER_TURN // 4)
    for _ in range(3):
        conn.data_received(small)
    assert transport.calls == []
    await asyncio.sleep(0)  # a turn: the budget is whole again
    for _ in range(3):
        conn.data_received(small)
    assert transport.calls == []
    conn.data_received(small)  # the fourth of this turn crosses it
    assert transport.calls == ["pause"]


async def test_a_connection_closed_while_paused_is_not_resumed() -> None:
    conn, transport = _connection([])
    conn.data_received(_frames(READ_PER_TURN))
    transport.closing = True
    await asyncio.sleep(0)
    assert transport.calls == ["pause"]
