"""Redis Streams (``redis+streams://``, ``rediss+streams://``): history, resume and
reconnects that lose nothing within the window ``OPTIONS["history"]`` keeps."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import redis
import redis.asyncio

from ...exceptions import BroadcastUnavailable
from .._ids import MAX_PART, parse_pair
from ..base import ConnectionLost, Features, HistoryPage, Message, Receiver
from ._client import MAX_PAYLOAD, REDIS_ERRORS, Connection
from ._topology import Address
from .queues import RedisQueues

__all__ = ["RedisStreamsBackend"]

_XREAD_COUNT = 1000
_ORIGIN = "0-0"  # the stream position before any entry


def _parse_id(event_id: str) -> tuple[int, int]:
    """``(milliseconds, sequence)`` of a stream id; ``ValueError`` for anything else."""
    return parse_pair(
        event_id, backend="Redis Streams", parts="milliseconds and a sequence number",
        example="1700000000000-0",
    )  # fmt: skip


def _successor(event_id: str) -> str | None:
    """The smallest stream id after ``event_id``; None after the largest one."""
    ms, seq = _parse_id(event_id)
    if seq < MAX_PART:
        return f"{ms}-{seq + 1}"
    if ms < MAX_PART:
        return f"{ms + 1}-0"
    return None


def _payload(fields: Any) -> bytes:
    """The payload of a stream entry: raw ``[b"m", payload]`` or redis-py's dict."""
    payload: bytes = fields[b"m"] if isinstance(fields, dict) else fields[1]
    return payload


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamsBackend(RedisQueues):
    """Redis Streams: history, resume and loss-free reconnects (``redis+streams://``)."""

    features = Features(
        history=True, origin=_ORIGIN, id_order="channel", max_payload=MAX_PAYLOAD, queues=True
    )
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "prefix": str,
        "history": int,
    }

    coalesces = True

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self.history_size: int = self.options.get("history", 1000)

    def _xadd(self, channel: str, payload: bytes) -> tuple[Any, ...]:
        return ("XADD", self.prefix + channel, "MAXLEN", "~", self.history_size, "*", "m", payload)

    def publish(self, channel: str, payload: bytes) -> str:
        """``XADD`` on one of the process's sync connections; return the stream id."""
        return _text(self.execute(*self._xadd(channel, payload)))

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        """``XADD`` each, pipelined: one round trip (per node of a cluster)."""
        replies = self.execute_many([self._xadd(channel, payload) for channel, payload in items])
        return [reply if isinstance(reply, Exception) else _text(reply) for reply in replies]

    async def apublish(self, channel: str, payload: bytes) -> str:
        """``XADD`` on the running loop's asyncio client; return the stream id."""
        return _text(await self.aexecute(*self._xadd(channel, payload)))

    def id_key(self, event_id: str) -> tuple[int, int]:
        """Stream ids sort as ``(milliseconds, sequence)``, each an unsigned 64-bit
        number of ASCII digits."""
        return _parse_id(event_id)

    # History ---------------------------------------------------------------------

    def _history_commands(
        self, channel: str, limit: int | None, since: str | None
    ) -> list[tuple[Any, ...]]:
        key = self.key(channel)
        count = () if limit is None else ("COUNT", limit)
        if since is None:
            return [("XREVRANGE", key, "+", "-", *count)]
        start = _successor(since)
        read = [] if start is None else [("XRANGE", key, start, "+", *count)]
        return [*_continuity_commands(key, since), *read]  # nothing after the largest id

    def _page(self, channel: str, since: str | None, replies: list[Any]) -> HistoryPage:
        # Replies: XREVRANGE; or the entry at since, XINFO, then XRANGE after it (if any).
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception) and (since is None or index != 1):
                raise reply  # (XINFO's error says the stream is missing)
        # (No XRANGE after the largest id: nothing follows it.)
        entries = replies[0] if since is None else next(iter(replies[2:]), [])
        messages = [
            Message(channel, _text(entry_id), _payload(fields)) for entry_id, fields in entries
        ]
        if since is None:
            messages.reverse()
            return HistoryPage(messages)
        return HistoryPage(messages, gap=_gap(since, replies[0], replies[1]) is not None)

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read the stream with ``XREVRANGE``, or ``XRANGE`` after ``since``."""
        commands = self._history_commands(channel, limit, since)

        def run() -> list[Any]:
            client = self.topology.sync_for(self.key(channel))
            with client.pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return pipe.execute(raise_on_error=False)

        return self._page(channel, since, self.call(run))

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """:meth:`history` from async code."""
        commands = self._history_commands(channel, limit, since)
        client = await self.acall(self.topology.async_for(self.key(channel)))
        async with client.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = await self.acall(pipe.execute(raise_on_error=False))
        return self._page(channel, since, replies)

    def receiver(self) -> Receiver:
        """A receiver holding one blocking ``XREAD`` connection for the running loop."""
        return _StreamsReceiver(self)


def _info(reply: Any) -> dict[str, Any] | None:
    """``XINFO STREAM`` as a dict, or None where the stream does not exist."""
    if isinstance(reply, Exception) or reply is None:
        return None
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def _continuity_commands(key: str, position: str) -> list[tuple[Any, ...]]:
    """The commands whose replies :func:`_gap` reads: the entry at ``position`` and
    ``XINFO STREAM``."""
    return [("XRANGE", key, position, position), ("XINFO", "STREAM", key)]


def _gap(position: str, entry: Any, info_reply: Any) -> str | None:
    """Why the stream's continuity after ``position`` cannot be proven, or None.

    ``entry`` is the reply of ``XRANGE key position position`` and ``info_reply``
    that of ``XINFO STREAM`` (Redis 7 or later). From a position other than the
    origin, continuity is proven only while the entry at the position still exists
    (so this is the stream it was read from) and nothing after it was deleted
    (``max-deleted-entry-id``); from the origin, only while the stream has never
    lost an entry (``entries-added`` equals ``length``), or does not exist. Redis does
    not record which entries were trimmed, so nothing finer can be proven.

    The reason is ``"trimmed"`` where the stream is the same but has lost its oldest
    entries up to and past ``position`` (a slow reader, a long disconnection), and
    ``"reset"`` otherwise: the stream was deleted (a restart without persistence, a
    DEL, an eviction) and perhaps made anew, or entries after ``position`` were
    deleted.
    """
    info = _info(info_reply)
    at = _parse_id(position)
    if info is None:
        return None if position == _ORIGIN else "reset"
    deleted = _parse_id(_text(info.get("max-deleted-entry-id", _ORIGIN)))
    if position == _ORIGIN:
        if info.get("entries-added") == info.get("length"):
            return None
    elif entry and deleted <= at:
        return None
    if deleted >= at and deleted != (0, 0):
        return "reset"  # entries at or after the position were deleted
    if _parse_id(_text(info["last-generated-id"])) < at:
        return "reset"  # made anew: every id is older than the position
    first = info.get("first-entry")
    added, length = info.get("entries-added"), info.get("length")
    if added != length and (not first or _parse_id(_text(first[0])) > at):
        return "trimmed"
    return "reset"


class _StreamsReceiver(Receiver):
    """One connection blocked in ``XREAD`` over every subscribed stream.

    Subscribing records the stream's last id as the position (so whatever is
    published after ``subscribe`` returns is read) and, with ``CLIENT UNBLOCK`` from
    a second, control connection, makes the reader issue its ``XREAD`` again with the
    new set. After each batch, one round trip on the control connection proves that
    the previous position of every channel in the batch still exists (see
    :func:`_gap`); a channel where it does not gets a gap message before its messages.
    """

    def __init__(self, backend: RedisStreamsBackend, node: Address | None = None) -> None:
        self.backend = backend
        self.link = Connection(backend, "streams", node)
        self.control = Connection(backend, "control", node)  # connects on its first command
        self.positions: dict[str, str] = {}  # channel -> last id read
        self.reported: set[str] = set()  # channels whose gap reconnect() reported
        self.reader_id: int | None = None
        self.generation = 0  # bumped on every change of the channel set
        self.sent_generation = 0  # generation of the XREAD in flight
        self.blocked = False
        self.changed = asyncio.Event()

    async def open(self) -> None:
        await self.link.connect()
        self.reader_id = await self.link.command("CLIENT", "ID")

    async def _xinfo(self, channel: str) -> Any:
        """``XINFO STREAM`` of ``channel``, or None where the stream does not exist."""
        try:
            return await self.control.command("XINFO", "STREAM", self.backend.key(channel))
        except redis.ResponseError:
            return None

    async def subscribe(self, channel: str) -> str:
        info = _info(await self._xinfo(channel))
        position = _ORIGIN if info is None else _text(info["last-generated-id"])
        self.positions[channel] = position
        self.reported.discard(channel)
        try:
            await self._wake()
        except BaseException:
            if self.positions.get(channel) == position:
                del self.positions[channel]  # leave nothing behind: the hub holds no channel
            raise
        return position

    async def unsubscribe(self, channel: str) -> None:
        if self.positions.pop(channel, None) is not None:
            await self._wake(wait=False)

    async def _wake(self, *, wait: bool = True) -> None:
        """Make the reader pick up the new channel set."""
        self.generation += 1
        self.changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.backend.timeout
        # The XREAD may be on its way to the server; unblock until it has been
        # replaced by one that covers the new set.
        while self.blocked and self.sent_generation < self.generation:
            unblocked = await self.control.command("CLIENT", "UNBLOCK", self.reader_id)
            if unblocked or not wait:
                return
            if loop.time() > deadline:
                raise self.backend.unavailable(TimeoutError("CLIENT UNBLOCK did not take"))
            await asyncio.sleep(0.001)

    async def read(self) -> Sequence[Message]:
        conn = self.link.require()
        while True:
            while not self.positions:
                self.changed.clear()
                await self.changed.wait()
            channels = list(self.positions)
            keys = [self.backend.key(c) for c in channels]
            ids = [self.positions[c] for c in channels]
            self.sent_generation = self.generation
            self.blocked = True
            try:
                await conn.send_command(
                    "XREAD", "COUNT", _XREAD_COUNT, "BLOCK", 0, "STREAMS", *keys, *ids
                )
                reply = await conn.read_response(timeout=math.inf)
            except (*REDIS_ERRORS, AttributeError) as exc:
                raise ConnectionLost(str(exc)) from exc
            finally:
                self.blocked = False
            if not reply:  # unblocked: the channel set changed
                continue
            batch = self._batch(reply)
            try:
                gaps = await self._gaps(batch)
            except BroadcastUnavailable as exc:
                # The positions have not moved: reconnect() resumes from them.
                raise ConnectionLost(str(exc)) from exc
            messages = self._messages(batch, gaps)
            if messages:
                return messages

    def _batch(self, reply: Any) -> list[tuple[str, str, Any]]:
        """``(channel, previous position, entries)`` of each subscribed channel."""
        batch = []
        for key, entries in reply:
            channel = self.backend.channel_of(key)
            position = self.positions.get(channel)
            if position is not None and entries:  # else unsubscribed meanwhile
                batch.append((channel, position, entries))
        return batch

    async def _gaps(self, batch: list[tuple[str, str, Any]]) -> dict[str, str]:
        """The gap reason of each channel of ``batch`` whose continuity after its
        previous position cannot be proven: one round trip, and one more for the
        channels whose previous entry is gone, to say why."""
        checked = [(c, p) for c, p, _ in batch if c not in self.reported]
        if not checked:
            return {}
        key = self.backend.key
        replies = await self.control.pipeline(
            [
                ("XINFO", "STREAM", key(c)) if p == _ORIGIN else ("XRANGE", key(c), p, p)
                for c, p in checked
            ]
        )
        gaps: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for (channel, position), reply in zip(checked, replies, strict=True):
            if position != _ORIGIN:
                if not reply:
                    missing.append((channel, position))
            elif reason := _gap(position, None, reply):
                gaps[channel] = reason
        if missing:
            infos = await self.control.pipeline([("XINFO", "STREAM", key(c)) for c, _ in missing])
            for (channel, position), info in zip(missing, infos, strict=True):
                gaps[channel] = _gap(position, None, info) or "reset"
        return gaps

    def _messages(self, batch: list[tuple[str, str, Any]], gaps: dict[str, str]) -> list[Message]:
        messages: list[Message] = []
        for channel, previous, entries in batch:
            if self.positions.get(channel) != previous:
                continue  # unsubscribed (or subscribed anew) while the batch was checked
            self.reported.discard(channel)
            reason = gaps.get(channel)
            if reason is not None:
                messages.append(Message(channel, "", b"", gap=reason))
            for entry_id, fields in entries:
                messages.append(Message(channel, entry_id.decode(), fields[1]))
            self.positions[channel] = entries[-1][0].decode()
        return messages

    async def reconnect(self) -> set[str]:
        await self.close()
        await self.open()
        self.reported.clear()
        positions = list(self.positions.items())
        if not positions:
            return set()
        key = self.backend.key
        replies = await self.control.pipeline(
            [command for c, p in positions for command in _continuity_commands(key(c), p)]
        )
        lost: set[str] = set()
        for (channel, position), entry, info_reply in zip(
            positions, replies[0::2], replies[1::2], strict=True
        ):
            if self.positions.get(channel) != position or _gap(position, entry, info_reply) is None:
                continue
            lost.add(channel)
            self.reported.add(channel)  # the hub reports it: not again at the next batch
            info = _info(info_reply)
            if info is None or _parse_id(_text(info["last-generated-id"])) < _parse_id(position):
                self.positions[channel] = _ORIGIN  # a new stream: read all of it
        return lost

    async def close(self) -> None:
        await self.link.close()
        await self.control.close()
