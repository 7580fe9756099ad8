"""The ceiling of the end-to-end benchmark: a minimal ``websockets`` server.

    python -m benchmarks.e2e.ceiling PORT

No Django, no ASGI: one Redis pub/sub subscription to the case's channel, and each
message written to every connected client with ``websockets.broadcast`` (the
library's own fan-out). What Python and a WebSocket library can do at all on this
machine; the event loop is uvloop's where it is installed, as uvicorn's is.
"""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio
from websockets.asyncio.server import ServerConnection, broadcast, serve

#: The Redis channel the ceiling's publisher sends to (under the run's prefix).
CHANNEL = "ceiling"


async def main(port: int) -> None:
    clients: set[ServerConnection] = set()

    async def handler(connection: ServerConnection) -> None:
        clients.add(connection)
        try:
            await connection.wait_closed()
        finally:
            clients.discard(connection)

    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub()
    await pubsub.subscribe(os.environ["E2E_PREFIX"] + CHANNEL)
    async with serve(handler, "127.0.0.1", port, max_queue=None):
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(clients, message["data"].decode())


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the test extras
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
