"""A merchant-notification receiver on loopback: a small real HTTP/1.1 server (CONTRACT §6).

What an acquirer's SMS gateway does with our webhooks, as far as fleetwatch can tell:
it checks ``X-Fleetwatch-Signature`` over the exact body bytes, answers, and keeps a log
de-duplicated by ``Idempotency-Key``. Tests script its answers (down for the first N
attempts, a 400, a ``Retry-After``); the bench makes it answer in 5 ms.

It runs on its own event loop in a thread (:meth:`Receiver.start`), so a test can use it
beside a daemon in another process, or beside the worker in the test's own loop.
``python -m bench.receiver PORT SECRET DELAY_MS [LOG_FILE]`` runs one alone (answering
``BENCH_RECEIVER_STATUS``, default 200, to every request; with ``LOG_FILE`` it appends each
event it accepted first to that file, one body per line).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Answer = tuple[int, dict[str, str]]
Policy = Callable[["Request", int], Answer]
"""(request, attempt number of this event_id, from 1) -> (status, extra headers)."""

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 408: "Request Timeout", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Request:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def event_id(self) -> str:
        return self.headers.get("idempotency-key", "")


def always_ok(_request: Request, _attempt: int) -> Answer:
    return 200, {}


@dataclass
class Receiver:
    """Records every request; ``log`` is the de-duplicated log a receiver honouring Idempotency-Key keeps."""

    secret: bytes
    policy: Policy = always_ok
    delay_s: float = 0.0
    port: int = 0
    keep: bool = True
    """Keep every request (tests); False for the bench, which only counts."""
    log_file: str | None = None
    """Also append each first accepted event body to this file, one per line (a receiver in its own process)."""
    count: int = 0
    requests: list[Request] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    # ---- the server ------------------------------------------------------------------

    async def serve(self) -> asyncio.Server:
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra = self._answer(headers, body)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                out = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Length: 0\r\n"
                             f"{out}\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, headers: dict[str, str], body: bytes) -> Answer:
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        request = Request(headers, body, hmac.compare_digest(expected, headers.get("x-fleetwatch-signature", "")))
        with self._lock:
            self.count += 1
            if not self.keep:
                return self.policy(request, 1)
            self.requests.append(request)
            attempt = self.attempts[request.event_id] = self.attempts.get(request.event_id, 0) + 1
            status, extra = self.policy(request, attempt)
            if not request.signature_ok:
                status = 401
            if 200 <= status < 300 and request.event_id not in self._seen:
                self._seen.add(request.event_id)
                self.log.append(request)
                if self.log_file is not None:
                    with open(self.log_file, "ab") as f:
                        f.write(body + b"\n")
        return status, extra

    # ---- in a thread -----------------------------------------------------------------

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="webhook-receiver", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            for writer in list(self._writers):
                writer.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:  # closed connections end their readers (IncompleteReadError); no cancel needed
                await asyncio.wait(others, timeout=5)
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def snapshot(self) -> tuple[list[Request], list[Request]]:
        """(every request, the de-duplicated log) as of now."""
        with self._lock:
            return list(self.requests), list(self.log)


async def main(port: int, secret: str, delay_ms: float, log_path: str | None = None) -> None:
    status = int(os.environ.get("BENCH_RECEIVER_STATUS", "200"))
    receiver = Receiver(secret.encode(), policy=lambda _r, _a: (status, {}), delay_s=delay_ms / 1000, port=port,
                        keep=log_path is not None, log_file=log_path)
    server = await receiver.serve()
    print("ready", receiver.port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    from fleetwatch.cli import _loop_factory

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None))
