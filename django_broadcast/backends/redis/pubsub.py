"""Redis pub/sub (``redis://``, ``rediss://``): at-most-once, no history."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio.connection import async_timeout as _deadline  # asyncio's or async-timeout's

from ..base import ConnectionLost, Features, Message, Receiver
from ._client import MAX_PAYLOAD, REDIS_ERRORS, Connection, RedisBase

__all__ = ["RedisBackend"]


class RedisBackend(RedisBase):
    """Redis pub/sub: at-most-once delivery, no history (``redis://``, ``rediss://``)."""

    features = Features(id_order="publisher", max_payload=MAX_PAYLOAD)

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self._token = secrets.token_hex(4)
        self._seq = itertools.count(1)  # next() is atomic under the GIL: thread-safe

    def _frame(self, payload: bytes) -> tuple[str, bytes]:
        event_id = f"{self._token}-{next(self._seq)}"
        return event_id, event_id.encode() + b"\n" + payload

    def publish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on the process's pooled sync connection."""
        event_id, frame = self._frame(payload)
        self.execute("PUBLISH", self.prefix + channel, frame)
        return event_id

    async def apublish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on the running loop's asyncio client."""
        event_id, frame = self._frame(payload)
        await self.aexecute("PUBLISH", self.prefix + channel, frame)
        return event_id

    def receiver(self) -> Receiver:
        """A receiver holding one ``SUBSCRIBE`` connection for the running loop."""
        return _PubSubReceiver(self)


class _PubSubReceiver(Receiver):
    """One SUBSCRIBE connection; :meth:`read` is its only reader.

    ``subscribe`` sends the command and waits for the confirmation, which the
    listener's ``read`` hands over through a future. A SUBSCRIBE not confirmed within
    TIMEOUT is followed by an UNSUBSCRIBE, so that the channel is not left subscribed
    at the broker when the SUBSCRIBE runs late; as its confirmation may still come,
    the confirmations of each channel are counted, and a later subscribe waits for
    its own.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.link = Connection(backend, "pubsub")
        self.channels: set[str] = set()
        self.unconfirmed: dict[bytes, int] = {}  # key -> SUBSCRIBEs not yet confirmed
        self.pending: dict[bytes, tuple[list[int], asyncio.Future[None]]] = {}

    async def open(self) -> None:
        await self.link.connect()

    async def subscribe(self, channel: str) -> None:
        key = self.backend.key(channel).encode()
        future = asyncio.get_running_loop().create_future()
        try:
            conn = self.link.require()
            ahead = self.unconfirmed[key] = self.unconfirmed.get(key, 0) + 1
            self.pending[key] = ([ahead], future)  # confirmations to wait for
            async with _deadline(self.backend.timeout):
                await conn.send_command("SUBSCRIBE", key)
                await future
        except BaseException as exc:
            await self._abandon(key)
            if isinstance(exc, (*REDIS_ERRORS, asyncio.TimeoutError, ConnectionLost)):
                raise self.backend.unavailable(exc) from exc
            raise
        finally:
            self.pending.pop(key, None)
        self.channels.add(channel)

    async def _abandon(self, key: bytes) -> None:
        """UNSUBSCRIBE, best effort, a channel whose SUBSCRIBE may yet run."""
        conn = self.link.conn
        if conn is None or not conn.is_connected:
            return  # the broker drops the subscriptions of a closed connection
        with contextlib.suppress(Exception):
            async with _deadline(self.backend.timeout):
                await conn.send_command("UNSUBSCRIBE", key)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        conn = self.link.conn
        if conn is not None:
            async with _deadline(self.backend.timeout):
                await conn.send_command("UNSUBSCRIBE", self.backend.key(channel))

    async def read(self) -> Sequence[Message]:
        conn = self.link.require()
        prefix_length = len(self.backend.prefix)
        messages: list[Message] = []
        while not messages:
            try:
                reply = await conn.read_response(timeout=math.inf)
                while True:
                    self._handle(reply, prefix_length, messages)
                    if not await conn.can_read():
                        break
                    reply = await conn.read_response(timeout=math.inf)
            except (*REDIS_ERRORS, AttributeError) as exc:
                # redis-py may drop its reader on disconnect (AttributeError).
                self._fail_pending(exc)
                raise ConnectionLost(str(exc)) from exc
        return messages

    def _handle(self, reply: Any, prefix_length: int, messages: list[Message]) -> None:
        kind = reply[0]
        if kind == b"message":
            frame: bytes = reply[2]
            event_id, _, payload = frame.partition(b"\n")
            channel = reply[1][prefix_length:].decode()
            messages.append(Message(channel, event_id.decode(), payload))
        elif kind == b"subscribe":
            key = reply[1]
            left = self.unconfirmed.get(key, 0) - 1
            if left > 0:
                self.unconfirmed[key] = left
            else:
                self.unconfirmed.pop(key, None)
            pending = self.pending.get(key)
            if pending is not None:
                ahead, future = pending
                ahead[0] -= 1
                if ahead[0] == 0 and not future.done():
                    future.set_result(None)

    def _fail_pending(self, exc: BaseException) -> None:
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(str(exc)))

    async def reconnect(self) -> set[str]:
        await self.link.close()
        self.unconfirmed.clear()  # counted per connection
        conn = await self.link.connect()
        if self.channels:
            keys = [self.backend.key(c) for c in sorted(self.channels)]
            try:
                async with _deadline(self.backend.timeout):
                    await conn.send_command("SUBSCRIBE", *keys)
                    for _ in keys:  # one confirmation per channel, before any message
                        await conn.read_response()
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                await self.link.close()
                raise self.backend.unavailable(exc) from exc
        # Pub/sub keeps nothing: whatever was published meanwhile is gone.
        return set(self.channels)

    async def close(self) -> None:
        self._fail_pending(ConnectionLost("closed"))
        await self.link.close()
