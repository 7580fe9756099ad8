"""Redis pub/sub (``redis://``, ``rediss://``): at-most-once, no history."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import async_timeout as _deadline  # asyncio's or async-timeout's

from ..base import READ_BATCH, ConnectionLost, Features, Message, Receiver
from ._client import MAX_PAYLOAD, REDIS_ERRORS, Connection
from ._topology import Address
from .queues import RedisQueues

__all__ = ["RedisBackend"]


class RedisBackend(RedisQueues):
    """Redis pub/sub: at-most-once delivery, no history (``redis://``, ``rediss://``)."""

    features = Features(patterns=True, id_order="publisher", max_payload=MAX_PAYLOAD, queues=True)
    coalesces = True
    #: The command that publishes (a cluster's is sharded).
    command: ClassVar[str] = "PUBLISH"

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self._token = secrets.token_hex(4)
        self._seq = itertools.count(1)  # next() is atomic under the GIL: thread-safe

    def _frame(self, payload: bytes) -> tuple[str, bytes]:
        event_id = f"{self._token}-{next(self._seq)}"
        return event_id, event_id.encode() + b"\n" + payload

    def publish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on one of the process's sync connections."""
        event_id, frame = self._frame(payload)
        self.execute(self.command, self.prefix + channel, frame)
        return event_id

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        """``PUBLISH`` each, pipelined: one round trip (per node of a cluster)."""
        framed = [(channel, *self._frame(payload)) for channel, payload in items]
        replies = self.execute_many(
            [(self.command, self.prefix + channel, frame) for channel, _, frame in framed]
        )
        return [
            reply if isinstance(reply, Exception) else event_id
            for (_, event_id, _), reply in zip(framed, replies, strict=True)
        ]

    async def apublish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on the running loop's asyncio client."""
        event_id, frame = self._frame(payload)
        await self.aexecute(self.command, self.prefix + channel, frame)
        return event_id

    def pattern_key(self, pattern: str) -> str:
        """The Redis glob of ``pattern``: the prefix, its own glob characters escaped."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + pattern

    def receiver(self) -> Receiver:
        """A receiver holding one ``SUBSCRIBE`` connection for the running loop."""
        return _PubSubReceiver(self)


#: Per kind of subscription: its command, its confirmation and its undoing.
_KINDS = {
    "channel": ("SUBSCRIBE", b"subscribe", "UNSUBSCRIBE"),
    "pattern": ("PSUBSCRIBE", b"psubscribe", "PUNSUBSCRIBE"),
}


class _PubSubReceiver(Receiver):
    """One SUBSCRIBE connection, for channels and patterns; :meth:`read` is its only
    reader.

    ``subscribe`` sends the command and waits for the confirmation, which the
    listener's ``read`` hands over through a future. A SUBSCRIBE not confirmed within
    TIMEOUT is followed by an UNSUBSCRIBE, so that the channel is not left subscribed
    at the broker when the SUBSCRIBE runs late; as its confirmation may still come,
    the confirmations of each channel are counted, and a later subscribe waits for
    its own. Patterns alike, with PSUBSCRIBE.
    """

    #: Per kind of subscription: its command, its confirmation and its undoing.
    kinds: ClassVar[Mapping[str, tuple[str, bytes, str]]] = _KINDS
    #: The kind of reply that carries a message of a channel.
    message_kind: ClassVar[bytes] = b"message"
    #: Whether one command may subscribe many channels (not across a cluster's slots).
    many_per_command: ClassVar[bool] = True

    def __init__(self, backend: RedisBackend, node: Address | None = None) -> None:
        self.backend = backend
        self.link = Connection(backend, "pubsub", node)
        self.confirmations = {confirm: kind for kind, (_, confirm, _) in self.kinds.items()}
        self.channels: set[str] = set()
        #: Redis channel -> the subscribed channel's name, the very string the hub
        #: keys it by: each message carries it (no slice and decode per message, and
        #: every dictionary lookup on the way finds it by identity).
        self.names: dict[bytes, str] = {}
        self.patterns: dict[bytes, str] = {}  # Redis glob -> pattern
        # (kind, key) -> SUBSCRIBEs not yet confirmed; and who waits for which.
        self.unconfirmed: dict[tuple[str, bytes], int] = {}
        self.pending: dict[tuple[str, bytes], tuple[list[int], asyncio.Future[None]]] = {}

    async def open(self) -> None:
        await self.link.connect()

    async def subscribe(self, channel: str) -> None:
        key = self.backend.key(channel).encode()
        await self._subscribe("channel", key)
        self.channels.add(channel)
        self.names[key] = channel

    async def psubscribe(self, pattern: str) -> None:
        key = self.backend.pattern_key(pattern).encode()
        await self._subscribe("pattern", key)
        self.patterns[key] = pattern

    async def _subscribe(self, kind: str, key: bytes) -> None:
        command, _, undo = self.kinds[kind]
        future = asyncio.get_running_loop().create_future()
        token = (kind, key)
        try:
            conn = self.link.require()
            ahead = self.unconfirmed[token] = self.unconfirmed.get(token, 0) + 1
            self.pending[token] = ([ahead], future)  # confirmations to wait for
            async with _deadline(self.backend.timeout):
                await conn.send_command(command, key)
                await future
        except BaseException as exc:
            await self._abandon(undo, key)
            if isinstance(exc, (*REDIS_ERRORS, asyncio.TimeoutError, ConnectionLost)):
                raise self.backend.unavailable(exc) from exc
            raise
        finally:
            self.pending.pop(token, None)

    async def _abandon(self, undo: str, key: bytes) -> None:
        """UNSUBSCRIBE, best effort, what a SUBSCRIBE that may yet run subscribed."""
        conn = self.link.conn
        if conn is None or not conn.is_connected:
            return  # the broker drops the subscriptions of a closed connection
        with contextlib.suppress(Exception):
            async with _deadline(self.backend.timeout):
                await conn.send_command(undo, key)

    async def unsubscribe(self, channel: str) -> None:
        key = self.backend.key(channel)
        self.channels.discard(channel)
        self.names.pop(key.encode(), None)
        await self._undo(self.kinds["channel"][2], key)

    async def punsubscribe(self, pattern: str) -> None:
        key = self.backend.pattern_key(pattern)
        self.patterns.pop(key.encode(), None)
        await self._undo("PUNSUBSCRIBE", key)

    async def _undo(self, command: str, key: str) -> None:
        conn = self.link.conn
        if conn is not None:
            async with _deadline(self.backend.timeout):
                await conn.send_command(command, key)

    async def read(self) -> Sequence[Message]:
        conn = self.link.require()
        prefix_length = len(self.backend.prefix)
        messages: list[Message] = []
        parser = getattr(conn, "_parser", None)
        try:
            if isinstance(parser, _AsyncHiredisParser) and parser._reader is not None:
                await self._read_hiredis(parser, prefix_length, messages)
                return messages
            while not messages:
                reply = await conn.read_response(timeout=math.inf)
                while True:
                    self._handle(reply, prefix_length, messages)
                    if len(messages) >= READ_BATCH or not await conn.can_read():
                        break
                    reply = await conn.read_response(timeout=math.inf)
        except (*REDIS_ERRORS, AttributeError) as exc:
            # redis-py may drop its reader on disconnect (AttributeError).
            self._fail_pending(exc)
            raise ConnectionLost(str(exc)) from exc
        return messages

    async def _read_hiredis(self, parser: Any, prefix_length: int, messages: list[Message]) -> None:
        """:meth:`read` where redis-py parses with hiredis: take every whole reply its
        reader holds, and read the socket only when it holds none. redis-py's own
        ``read_response`` (the other path) costs a few coroutines per reply, which
        with thousands of channels is most of the cost of receiving."""
        reader = parser._reader
        handle = self._handle
        while True:
            reply = reader.gets()
            while reply is not _NOT_ENOUGH_DATA:
                if isinstance(reply, Exception):  # an error reply, raised as redis-py does
                    raise reply
                handle(reply, prefix_length, messages)
                if len(messages) >= READ_BATCH:
                    return
                reply = reader.gets()
            if messages:
                return
            if not parser._connected:  # redis-py disconnected it
                raise redis.ConnectionError("the pub/sub connection was closed")
            await parser.read_from_socket()

    def _handle(self, reply: Any, prefix_length: int, messages: list[Message]) -> None:
        kind = reply[0]
        if kind == self.message_kind:
            frame: bytes = reply[2]
            event_id, _, payload = frame.partition(b"\n")
            channel = self.names.get(reply[1])
            if channel is None:  # unsubscribed while it was on its way
                channel = reply[1][prefix_length:].decode()
            messages.append(Message(channel, event_id.decode(), payload))
        elif kind == b"pmessage":
            pattern = self.patterns.get(reply[1])
            if pattern is None:
                return  # punsubscribed while it was on its way
            event_id, _, payload = reply[3].partition(b"\n")
            channel = reply[2][prefix_length:].decode()
            messages.append(Message(channel, event_id.decode(), payload, pattern=pattern))
        elif kind in self.confirmations:
            self._confirmed((self.confirmations[kind], reply[1]))

    def _confirmed(self, token: tuple[str, bytes]) -> None:
        left = self.unconfirmed.get(token, 0) - 1
        if left > 0:
            self.unconfirmed[token] = left
        else:
            self.unconfirmed.pop(token, None)
        pending = self.pending.get(token)
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
        for kind, keys in (
            ("channel", [self.backend.key(c) for c in sorted(self.channels)]),
            ("pattern", sorted(self.patterns)),
        ):
            if not keys:
                continue
            command = self.kinds[kind][0]
            groups = [keys] if self.many_per_command else [[key] for key in keys]
            try:
                async with _deadline(self.backend.timeout):
                    await conn.send_packed_command(
                        conn.pack_commands([(command, *group) for group in groups])
                    )
                    for _ in keys:  # one confirmation each, before any message
                        await conn.read_response()
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                await self.link.close()
                raise self.backend.unavailable(exc) from exc
        # Pub/sub keeps nothing: whatever was published meanwhile is gone.
        return set(self.channels) | set(self.patterns.values())

    async def close(self) -> None:
        self._fail_pending(ConnectionLost("closed"))
        await self.link.close()
