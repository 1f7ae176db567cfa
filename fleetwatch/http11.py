"""A lean HTTP/1.1 client for the webhook worker (``adapters/webhooks.py``): POST, status and headers back.

Why not a library: the worker's CPU per request decides how many merchant notifications one
core delivers (CONTRACT §6, ``python -m bench notify``), and httpcore/h11 or aiohttp spend
three to nine times what this does on a webhook POST (docs/decisions/0009-lean-webhook-client.md).
The hard parts stay a library's: responses are parsed by ``httptools`` (llhttp, the parser of
Node.js and uvicorn: Content-Length, chunked bodies, keep-alive and ``Connection: close``
semantics), TLS is the standard library's ``ssl`` with verification on.

- One asyncio ``Protocol`` per connection (so it runs on uvloop as on the default loop),
  kept alive and reused per (scheme, host, port); as many connections per origin as
  requests in flight at once.
- A connection reused from the pool that the server closed before any byte of the answer
  (its idle timeout raced our request) is retried once at once on a fresh connection: the
  request never reached the application, and the webhook's ``Idempotency-Key`` makes even
  a duplicate harmless.
- Idle connections are closed after ``idle_s``; :meth:`Client.aclose` closes them all.
- One deadline per request covers connect, TLS handshake, write and the whole answer.
- Every failure below HTTP is one exception type, :class:`TransportError`.
- Redirects are not followed: a 3xx is an answer like any other.
- A private CA is trusted the standard way: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, which
  ``ssl.create_default_context()`` (OpenSSL's default verify paths) honours.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import unquote, urlsplit

import httptools

IDLE_S: Final = 5.0
"""Idle keep-alive connections are closed after this long: shorter than most servers' own idle
timeouts (nginx 75 s, Go 90 s; some gateways 5-15 s), so we close first as often as we can."""
CLOSE_WAIT_S: Final = 1.0
""":meth:`Client.aclose` waits at most this long for the connections to finish closing."""

Headers = Sequence[tuple[bytes, bytes]]


class TransportError(Exception):
    """The request got no complete HTTP answer: refused, unreachable, TLS, timeout, closed, garbled."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    """As received, names lower-cased."""

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL taken apart once: where to connect and the start of every request to it."""

    origin: tuple[str, str, int]
    head: bytes
    """Request line, Host and Authorization (from the URL's user info), ending in CRLF."""


class _Stale(Exception):
    """A reused connection closed before the first byte of the answer."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; at most one request on it at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: tuple[str, str, int]) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = loop.create_future()
        self.waiter: asyncio.Future[Response] | None = None
        self.got_bytes = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.headers_done = False
        self.keep_alive = False
        self.idle_timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return not self.closed.done() and self.transport is not None and not self.transport.is_closing()

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is not a subclass

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is not reusable
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort()
            if not waiter.done():
                waiter.set_exception(TransportError(f"unreadable HTTP answer from {_where(self.origin)}: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done:  # a body read until close (no Content-Length, not chunked), or cut short:
            waiter.set_result(Response(self.status, self.headers))  # the status is what was answered
        elif not self.got_bytes:
            waiter.set_exception(_Stale())
        else:
            waiter.set_exception(TransportError(f"{_where(self.origin)} closed the connection mid-answer"))

    # ---- httptools callbacks ---------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_message_complete(self) -> None:
        if self.status < 200:  # 1xx: an interim answer; the real one follows on the same connection
            self.headers, self.headers_done, self.status = [], False, 0
            return
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.status, self.headers))

    # ---- one exchange ----------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Response]:
        self.waiter = waiter = self.loop.create_future()
        self.got_bytes, self.headers, self.status, self.headers_done, self.keep_alive = False, [], 0, False, False
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _where(origin: tuple[str, str, int]) -> str:
    return f"{origin[1]}:{origin[2]}"


class Client:
    """Keep-alive HTTP/1.1 connections per origin; one request per connection at a time."""

    def __init__(self, *, idle_s: float = IDLE_S, ssl_context: ssl.SSLContext | None = None,
                 user_agent: bytes = b"") -> None:
        self._idle_s = idle_s
        self._ssl = ssl_context
        self._agent = b"User-Agent: " + user_agent + b"\r\n" if user_agent else b""
        self._targets: dict[str, _Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._closing = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def post(self, url: str, headers: Headers, body: bytes, timeout_s: float) -> Response:
        """POST ``body`` to ``url``; the answer's status and headers, or :class:`TransportError`.

        ``headers`` must not hold Host, Content-Length or Connection (the client writes them).
        """
        target = self._targets.get(url) or self._target(url)
        data = b"".join([target.head, self._agent, *[k + b": " + v + b"\r\n" for k, v in headers],
                         b"Content-Length: %d\r\n\r\n" % len(body), body])
        try:
            async with asyncio.timeout(timeout_s):
                conn = self._reuse(target.origin)
                if conn is not None:
                    try:
                        return await self._exchange(conn, data)
                    except _Stale:
                        pass  # the server closed it while idle: at once on a new one
                try:
                    return await self._exchange(await self._connect(target.origin), data)
                except _Stale:
                    raise TransportError(f"{_where(target.origin)} closed the connection without answering") from None
        except TimeoutError:
            raise TransportError(f"no answer from {_where(target.origin)} within {timeout_s:g} s") from None

    async def aclose(self) -> None:
        """Close every connection, idle or in use, and wait (briefly) until they are closed."""
        self._closing = True
        conns = list(self._all)
        for conn in conns:
            conn.close()
        self._idle.clear()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=CLOSE_WAIT_S)
        for conn in conns:
            if not conn.closed.done():
                conn.abort()

    # ---- inside ----------------------------------------------------------------------

    def _target(self, url: str) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"not an http(s) URL with a host: {parts.scheme}://{parts.hostname or ''}")
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            host_header += f":{parts.port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head += b"Authorization: Basic " + base64.b64encode(user_pass) + b"\r\n"
        target = self._targets[url] = _Target((scheme, host, port), head)
        return target

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.usable:
                return conn
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, origin)
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()  # here, not in __init__: SSL_CERT_FILE is read now
            tls = self._ssl
        try:
            await loop.create_connection(lambda: conn, host, port, ssl=tls,
                                         server_hostname=host if tls is not None else None)
        except OSError as exc:  # refused, unreachable, no such host, TLS (ssl.SSLError is an OSError)
            raise TransportError(f"cannot connect to {_where(origin)}: {exc}") from None
        self._all.add(conn)
        conn.closed.add_done_callback(lambda _f: self._all.discard(conn))
        return conn

    async def _exchange(self, conn: _Connection, data: bytes) -> Response:
        waiter = conn.send(data)
        try:
            response = await waiter
        except BaseException:  # stale, garbled, timed out or cancelled: the connection is in no known state
            conn.abort()
            raise
        if conn.keep_alive and conn.usable and not self._closing:
            conn.waiter = None
            self._idle.setdefault(conn.origin, []).append(conn)
            conn.idle_timer = conn.loop.call_later(self._idle_s, self._expire, conn)
        else:
            conn.close()
        return response

    def _expire(self, conn: _Connection) -> None:
        conn.idle_timer = None
        idle = self._idle.get(conn.origin)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(conn)
        conn.close()
