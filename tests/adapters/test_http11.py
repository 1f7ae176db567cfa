"""The webhook worker's HTTP/1.1 client against real HTTP servers on loopback.

The servers are the standard library's ``http.server`` (an HTTP/1.1 implementation that is not
ours) in a thread, and a raw socket for the one that never answers; the TLS server has a
certificate from a throw-away CA (``tests/pki.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fleetwatch.http11 import Client, TransportError
from tests.pki import make_pki

HEADERS = [(b"Content-Type", b"application/json"), (b"Idempotency-Key", b"E1")]


@dataclass
class Seen:
    """What the server saw: connections opened and closed, requests (path, headers, body)."""

    opened: int = 0
    closed: int = 0
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


Reply = Callable[[BaseHTTPRequestHandler, int], None]
"""(handler, number of this request on its connection, from 1) -> writes the answer (or nothing)."""


def plain(status: int = 200, **headers: str) -> Reply:
    def reply(h: BaseHTTPRequestHandler, _n: int) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        body = b"" if status == 204 else b"ok"  # a 204 has no body, whatever a Content-Length says
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return reply


def chunked(h: BaseHTTPRequestHandler, _n: int) -> None:
    h.send_response(202)
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("Retry-After", "7")
    h.end_headers()
    for part in (b"hello, ", b"chunked ", b"world" * 1000):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
    h.wfile.write(b"0\r\n\r\n")


def until_close(h: BaseHTTPRequestHandler, _n: int) -> None:
    """An HTTP/1.0-style answer: no length, the body ends when the connection does."""
    h.close_connection = True
    h.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\nbusy, busy, busy")


def close_the_second(h: BaseHTTPRequestHandler, n: int) -> None:
    """Answers the first request of each connection and closes on the second without a byte: what a
    server's idle timeout racing the client's next request looks like."""
    if n >= 2:
        h.close_connection = True
        return
    plain()(h, n)


def close_without_answer(h: BaseHTTPRequestHandler, _n: int) -> None:
    h.close_connection = True


@contextlib.contextmanager
def http_server(reply: Reply, *, tls: ssl.SSLContext | None = None, idle_s: float = 30.0,
                host: str = "127.0.0.1") -> Iterator[tuple[str, Seen]]:
    """A real HTTP/1.1 server on loopback in a thread; yields (base URL, what it saw)."""
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_s  # an idle keep-alive connection is closed by the server after this

        def setup(self) -> None:
            super().setup()
            self.n = 0
            with seen.lock:
                seen.opened += 1

        def finish(self) -> None:
            with contextlib.suppress(OSError):
                super().finish()
            with seen.lock:
                seen.closed += 1

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.n += 1
            with seen.lock:
                seen.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply(self, self.n)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_one_connection_carries_many_requests() -> None:
    with http_server(plain(204)) as (url, seen):
        async with Client(user_agent=b"fleetwatch/test") as client:
            statuses = [(await client.post(f"{url}/hook?x=1", HEADERS, b'{"n":%d}' % i, 5.0)).status
                        for i in range(20)]
        assert statuses == [204] * 20
        assert seen.opened == 1
        path, headers, body = seen.requests[-1]
        assert (path, body) == ("/hook?x=1", b'{"n":19}')
        assert headers["host"] == url.removeprefix("http://")
        assert (headers["user-agent"], headers["idempotency-key"], headers["content-length"]) == \
            ("fleetwatch/test", "E1", "8")


async def test_concurrent_requests_get_a_connection_each_and_reuse_them() -> None:
    with http_server(plain()) as (url, seen):
        async with Client() as client:
            for _ in range(5):
                answers = await asyncio.gather(*(client.post(url, HEADERS, b"{}", 5.0) for _ in range(4)))
                assert [a.status for a in answers] == [200] * 4
        assert seen.opened == 4
        assert len(seen.requests) == 20


async def test_a_chunked_answer_is_read_to_its_end_and_the_connection_reused() -> None:
    with http_server(chunked) as (url, seen):
        async with Client() as client:
            first = await client.post(url, HEADERS, b"{}", 5.0)
            second = await client.post(url, HEADERS, b"{}", 5.0)
        assert (first.status, first.header(b"retry-after"), second.status) == (202, "7", 202)
        assert first.header(b"transfer-encoding") == "chunked"
        assert seen.opened == 1


async def test_an_answer_read_until_close_and_connection_close_are_not_reused() -> None:
    with http_server(until_close) as (url, seen):
        async with Client() as client:
            statuses = [(await client.post(url, HEADERS, b"{}", 5.0)).status for _ in range(3)]
        assert statuses == [503] * 3
        assert seen.opened == 3
    with http_server(plain(200, Connection="close")) as (url, seen):
        async with Client() as client:
            assert [(await client.post(url, HEADERS, b"{}", 5.0)).status for _ in range(2)] == [200, 200]
        assert seen.opened == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    with http_server(plain(), idle_s=0.2) as (url, seen):
        async with Client() as client:
            assert (await client.post(url, HEADERS, b"{}", 5.0)).status == 200
            while seen.closed < 1:  # noqa: ASYNC110 - the server's thread closes it
                await asyncio.sleep(0.05)
            assert (await client.post(url, HEADERS, b"{}", 5.0)).status == 200
        assert (seen.opened, len(seen.requests)) == (2, 2)


async def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one() -> None:
    with http_server(close_the_second) as (url, seen):
        async with Client() as client:
            statuses = [(await client.post(url, HEADERS, b"{}", 5.0)).status for _ in range(3)]
        assert statuses == [200] * 3
        # 1: answered; 2: closed unanswered, again at once on connection 2 and answered; 3: the same on 3
        assert (seen.opened, len(seen.requests)) == (3, 5)


async def test_a_fresh_connection_closed_before_answering_is_a_transport_error_not_a_loop() -> None:
    with http_server(close_without_answer) as (url, seen):
        async with Client() as client:
            with pytest.raises(TransportError, match="closed the connection without answering"):
                await client.post(url, HEADERS, b"{}", 5.0)
        assert seen.opened == 1


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel's backlog), never reads
        port = silent.getsockname()[1]
        async with Client() as client:
            with pytest.raises(TransportError, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.3 s"):
                await client.post(f"http://127.0.0.1:{port}/", HEADERS, b"{}", 0.3)


async def test_connection_refused_is_a_transport_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    async with Client() as client:
        with pytest.raises(TransportError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{port}/", HEADERS, b"{}", 5.0)


async def test_close_closes_every_connection_and_idle_ones_expire() -> None:
    with http_server(plain()) as (url, seen):
        client = Client(idle_s=0.1)
        await asyncio.gather(*(client.post(url, HEADERS, b"{}", 5.0) for _ in range(3)))
        while seen.closed < 3:  # noqa: ASYNC110 - closed by the client's idle timer, seen by the server's thread
            await asyncio.sleep(0.05)
        await asyncio.gather(*(client.post(url, HEADERS, b"{}", 5.0) for _ in range(2)))
        await client.aclose()
        while seen.closed < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert seen.opened == 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


def server_tls(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    return ctx


async def test_https_is_verified_against_the_trusted_cas(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with http_server(plain(201), tls=server_tls(pki)) as (url, seen):
        monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.crt"))  # how an operator trusts a private CA
        async with Client() as client:
            assert [(await client.post(url, HEADERS, b"{}", 5.0)).status for _ in range(3)] == [201] * 3
        assert seen.opened == 1
        monkeypatch.delenv("SSL_CERT_FILE")
        async with Client() as client:  # the system's CAs only: the test CA is not among them
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(url, HEADERS, b"{}", 5.0)
        assert len(seen.requests) == 3


async def test_https_checks_the_name_not_only_the_ca(pki: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with http_server(plain(), tls=server_tls(pki)) as (url, _seen):
        async with Client(ssl_context=trusting) as client:  # the certificate is for 127.0.0.1 and localhost
            assert (await client.post(url.replace("127.0.0.1", "localhost"), HEADERS, b"{}", 5.0)).status == 200
    with http_server(plain(), tls=server_tls(pki), host="127.0.0.2") as (url, seen):  # not in the certificate
        async with Client(ssl_context=trusting) as client:
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.post(url, HEADERS, b"{}", 5.0)
        assert seen.requests == []


def test_the_same_on_uvloop_the_daemons_loop(pki: Path) -> None:
    async def run(url: str) -> list[int]:
        async with Client(ssl_context=ssl.create_default_context(cafile=str(pki / "ca.crt"))) as client:
            return [(await client.post(url, HEADERS, b"{}", 5.0)).status for _ in range(5)]

    with http_server(chunked, tls=server_tls(pki)) as (url, seen), \
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(run(url)) == [202] * 5
        assert seen.opened == 1
