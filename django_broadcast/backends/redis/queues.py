"""Work queues on Redis, for both Redis backends: one list per queue.

A message is stored as ``b"<expiry>\\n<payload>"`` (``expiry`` a ``time.time()``
value). ``aqueue_put`` runs one script: drop the expired messages at the head, refuse
when the list holds ``capacity``, else ``RPUSH`` and make the key expire with its
newest message. ``aqueue_take`` is ``BLPOP``: Redis hands each message to one client.
A taker cancelled while its ``BLPOP`` is out lets the command finish on its own and
pushes whatever it returns back to the head, so a cancellation loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from redis.commands.core import AsyncScript

from ._client import RedisBase

__all__ = ["RedisQueues"]

logger = logging.getLogger("django_broadcast.hub")

_PUT = """
local now = tonumber(ARGV[1])
while true do
    local head = redis.call('LINDEX', KEYS[1], 0)
    if not head then break end
    local cut = string.find(head, '\\n', 1, true)
    if tonumber(string.sub(head, 1, cut - 1)) >= now then break end
    redis.call('LPOP', KEYS[1])
end
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
"""


class RedisQueues(RedisBase):
    """:class:`~django_broadcast.backends.redis._client.RedisBase` with work queues:
    what both Redis backends derive from."""

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self._put_script: AsyncScript | None = None
        #: The tasks pushing back messages taken for cancelled takers.
        self._giving_back: set[asyncio.Task[None]] = set()

    def queue_key(self, queue: str) -> str:
        """The list that holds ``queue``."""
        return f"{self.prefix}queue:{queue}"

    async def aqueue_put(
        self, queue: str, payload: bytes, *, capacity: int, expires: float
    ) -> bool:
        """Run the put script on the running loop's client."""
        client = self.async_client()
        if self._put_script is None:
            self._put_script = client.register_script(_PUT)
        frame = f"{expires:.6f}\n".encode() + payload
        args: list[bytes | str | int] = [
            repr(time.time()),
            capacity,
            frame,
            int(expires * 1000) + 1,
        ]
        script = self._put_script
        done: Any = await self.acall(script(keys=[self.queue_key(queue)], args=args, client=client))
        return bool(done)

    async def aqueue_take(self, queue: str, *, timeout: float) -> bytes | None:
        """``BLPOP`` the queue's list, skipping expired messages."""
        key = self.queue_key(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            task = loop.create_task(_blpop(self, key, remaining))
            try:
                frame = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(lambda done: _give_back(self, key, done))
                raise
            if frame is None:
                return None
            expiry, _, payload = frame.partition(b"\n")
            if float(expiry) >= time.time():
                return payload

    async def aqueue_clear(self, queue: str) -> None:
        """Delete the queue's list."""
        await self.aexecute("DEL", self.queue_key(queue))


async def _blpop(backend: RedisQueues, key: str, timeout: float) -> bytes | None:
    # Redis answers by ``timeout``; TIMEOUT more is for a server that does not.
    client = backend.async_client()
    reply = await backend.acall(client.blpop([key], timeout=timeout), waits=timeout)
    if reply is None:
        return None
    frame = reply[1]
    assert isinstance(frame, bytes)  # the client does not decode responses
    return frame


def _give_back(backend: RedisQueues, key: str, done: asyncio.Task[bytes | None]) -> None:
    """Push a message taken for a cancelled taker back to the head of its list."""
    if done.cancelled() or done.exception() is not None or done.result() is None:
        return
    frame = done.result()
    assert frame is not None

    async def push() -> None:
        try:
            await backend.aexecute("LPUSH", key, frame)
        except Exception:
            logger.error("a message taken for a cancelled reader of %r was lost", key)

    task = asyncio.get_running_loop().create_task(push())
    backend._giving_back.add(task)
    task.add_done_callback(backend._giving_back.discard)
