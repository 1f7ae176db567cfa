"""A null MQTT sink: accepts CONNECT, then swallows bytes. ``python -m bench.sink PORT``.

It runs in its own process so that measuring the publisher alone does not share an
event loop (or a GIL) with the thing it writes to.
"""

from __future__ import annotations

import asyncio
import sys

CONNACK = b"\x20\x02\x00\x00"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    first = True
    while await reader.read(1 << 20):
        if first:
            writer.write(CONNACK)
            first = False
    writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
