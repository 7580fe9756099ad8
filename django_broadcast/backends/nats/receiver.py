"""The receiving side of the NATS backend: one connection per event loop, one
ephemeral JetStream push consumer per channel and per pattern."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..._timeouts import within
from ..base import ConnectionLost, Message, Receiver
from . import _client, _names
from ._client import NATS_ERRORS, StreamState
from ._names import ORIGIN

if TYPE_CHECKING:
    from .backend import NatsBackend

__all__ = ["NatsReceiver"]


@dataclass
class _Consumer:
    name: str
    sub: Any


class NatsReceiver(Receiver):
    """A connection of its own, with a consumer per channel (and per pattern) that
    delivers from the position after which everything is received.

    A channel's consumer starts at the sequence after the channel's position, not
    "from now": nothing published between reading the position and the consumer's
    creation is missed. Each delivered message carries its stream sequence, which
    becomes the channel's position. When the connection drops, :meth:`read` raises
    ``ConnectionLost``; :meth:`reconnect` connects anew (to any server of the list),
    proves each channel's continuity after its position (see ``_client.gap``) and
    makes its consumer again from there, so nothing is lost within the window the
    stream keeps. A pattern's consumer resumes likewise from the last sequence it
    delivered; as the stream does not say which of the many channels behind a
    pattern lost messages, a pattern is reported lost unless the stream lost none.
    """

    def __init__(self, backend: NatsBackend) -> None:
        self.backend = backend
        self.client: Client | None = None
        self.epoch = 0
        self.channels: dict[str, _Consumer] = {}
        self.patterns: dict[str, _Consumer] = {}
        #: Channel (or pattern) -> the position everything after which is received.
        self.positions: dict[str, str] = {}
        self.pattern_positions: dict[str, str] = {}
        self.inbox: list[tuple[str, Msg]] = []  # (consumer name, message), as delivered
        self.owners: dict[str, tuple[str, str]] = {}  # consumer name -> (kind, key)
        self.seen: dict[str, float] = {}  # consumer name -> when it last delivered
        self.wake = asyncio.Event()
        self.lost: str | None = None
        self.generation = 0  # of the connection, so that an old one's callbacks are ignored
        self.next_check = 0.0  # when read() next looks for silent consumers

    async def open(self) -> None:
        self.generation += 1
        generation = self.generation

        async def dropped() -> None:
            if generation == self.generation:  # not a connection since replaced
                self.lost = self.lost or "the connection to the server dropped"
                self.wake.set()

        async def failed(exc: Exception) -> None:
            await _client.log_error(exc)
            if isinstance(exc, nats.errors.SlowConsumerError):  # nats-py dropped messages
                await dropped()

        client = await _client.connect(self.backend, "receive", on_lost=dropped, on_error=failed)
        self.lost = None
        try:
            info = await self.backend.within(_client.ensure_stream(self.backend, client))
        except BaseException as exc:
            await _client.close(client)
            if isinstance(exc, NATS_ERRORS):
                raise self.backend.unavailable(exc) from exc
            raise
        self.client, self.epoch = client, _names.epoch_of(info)

    def _require(self) -> Client:
        client = self.client
        if client is None or self.lost is not None or not client.is_connected:
            raise ConnectionLost(self.lost or "not connected")
        return client

    async def _consume(self, kind: str, key: str, subject: str, start: int) -> _Consumer:
        client = self._require()
        name = _client.consumer_name("live", self.backend.token)
        loop = asyncio.get_running_loop()

        async def handle(msg: Msg) -> None:
            self.seen[name] = loop.time()
            if not _client.is_heartbeat(msg):
                self.inbox.append((name, msg))
                self.wake.set()

        # Known before it is made: the listener may read its first messages before
        # the server has answered.
        self.owners[name] = (kind, key)
        self.seen[name] = loop.time()
        try:
            sub, _ = await _client.consume(
                self.backend, client, name=name, subject=subject, start=start, handle=handle,
                heartbeat=self.backend.heartbeat,
            )  # fmt: skip
        except BaseException as exc:
            self.owners.pop(name, None)
            self.seen.pop(name, None)
            if isinstance(exc, ConnectionLost):
                raise self.backend.unavailable(exc) from exc
            raise
        return _Consumer(name, sub)

    async def _position(self, subject: str | None) -> tuple[str, bool]:
        """The stream's position for ``subject``: its last message's sequence, or the
        stream's last sequence where it has none or for a pattern (None): ids are the
        stream's sequences; and whether the subject has no message."""
        backend, client = self.backend, self._require()
        try:
            info = await backend.within(_client.stream_info(backend, client, subject))
            if info is None:
                info = await backend.within(_client.ensure_stream(backend, client))
            state = StreamState.of(info, subject or "")
            seq = state.last
            if subject is not None and state.count:
                last = await backend.within(
                    client.jetstream().get_msg(backend.stream, subject=subject)
                )
                seq = last.seq or seq
        except NATS_ERRORS as exc:
            raise backend.unavailable(exc) from exc
        self.epoch = state.epoch
        return _names.make_id(state.epoch, seq), not state.count

    async def subscribe(self, channel: str) -> str:
        """Return the channel's last id, or the origin where it has none (and then
        keep the stream's last sequence as its position: resuming from there proves
        continuity with fewer conditions than from the origin)."""
        subject = self.backend.subject(channel)
        position, empty = await self._position(subject)
        previous = self.positions.get(channel)
        self.positions[channel] = position  # before any message of the consumer is read
        try:
            consumer = await self._consume("channel", channel, subject, _next(position))
        except BaseException:
            _restore(self.positions, channel, previous)
            raise
        await self._drop(self.channels.pop(channel, None))
        self.channels[channel] = consumer
        return ORIGIN if empty else position

    async def unsubscribe(self, channel: str) -> None:
        self.positions.pop(channel, None)
        await self._drop(self.channels.pop(channel, None))

    async def psubscribe(self, pattern: str) -> None:
        subject = _names.pattern_filter(self.backend.prefix, pattern)
        position, _ = await self._position(None)
        previous = self.pattern_positions.get(pattern)
        self.pattern_positions[pattern] = position
        try:
            consumer = await self._consume("pattern", pattern, subject, _next(position))
        except BaseException:
            _restore(self.pattern_positions, pattern, previous)
            raise
        await self._drop(self.patterns.pop(pattern, None))
        self.patterns[pattern] = consumer

    async def punsubscribe(self, pattern: str) -> None:
        self.pattern_positions.pop(pattern, None)
        await self._drop(self.patterns.pop(pattern, None))

    async def _drop(self, consumer: _Consumer | None) -> None:
        if consumer is None:
            return
        self.owners.pop(consumer.name, None)
        self.seen.pop(consumer.name, None)
        if consumer.sub is not None and self.client is not None:
            await _client.release(self.backend, self.client, consumer.sub, consumer.name)

    async def read(self) -> Sequence[Message]:
        heartbeat = self.backend.heartbeat
        loop = asyncio.get_running_loop()
        while True:
            self._require()
            if loop.time() >= self.next_check:  # busy channels must not hide a quiet one
                self._check_heartbeats(loop.time(), 3 * heartbeat)
                self.next_check = loop.time() + heartbeat
                self._require()
            if self.inbox:
                batch, self.inbox = self.inbox, []
                messages = self._messages(batch)
                if messages:
                    return messages
            self.wake.clear()
            if not self.inbox and self.lost is None:
                with contextlib.suppress(TimeoutError):
                    await within(self.wake.wait(), max(0.0, self.next_check - loop.time()))

    def _check_heartbeats(self, now: float, limit: float) -> None:
        """Call the connection lost where a consumer has been silent past ``limit``."""
        if self.seen and now - min(self.seen.values()) > limit:
            self.lost = f"a consumer sent no heartbeat for {limit:g} s"

    def _messages(self, batch: list[tuple[str, Msg]]) -> list[Message]:
        prefix, epoch = self.backend.prefix, self.epoch
        messages: list[Message] = []
        for name, msg in batch:
            owner = self.owners.get(name)
            if owner is None:
                continue  # from a consumer since dropped
            kind, key = owner
            seq = msg.metadata.sequence.stream
            if kind == "channel":
                self.positions[key] = _names.make_id(epoch, seq)
                messages.append(_client.message_of(key, msg, epoch=epoch))
                continue
            self.pattern_positions[key] = _names.make_id(epoch, seq)
            channel = _names.subject_channel(prefix, msg.subject)
            if _names.matches(channel, key):
                messages.append(_client.message_of(channel, msg, epoch=epoch, pattern=key))
        return messages

    async def reconnect(self) -> set[str]:
        await self.close()
        await self.open()
        backend, client = self.backend, self._require()
        lost: set[str] = set()
        try:
            for channel, position in list(self.positions.items()):
                subject = backend.subject(channel)
                info = await backend.within(_client.stream_info(backend, client, subject))
                state = None if info is None else StreamState.of(info, subject)
                reason = await backend.within(
                    _client.gap(backend, client, subject, position, state)
                )
                position = self._resume(position, reason)
                if reason is not None:
                    lost.add(channel)
                self.positions[channel] = position
                self.channels[channel] = await self._consume(
                    "channel", channel, subject, _next(position)
                )
            if self.patterns:
                info = await backend.within(_client.stream_info(backend, client))
                for pattern, position in list(self.pattern_positions.items()):
                    reason = _pattern_gap(position, info)
                    position = self._resume(position, reason)
                    if reason is not None:
                        lost.add(pattern)
                    self.pattern_positions[pattern] = position
                    subject = _names.pattern_filter(backend.prefix, pattern)
                    self.patterns[pattern] = await self._consume(
                        "pattern", pattern, subject, _next(position)
                    )
        except NATS_ERRORS as exc:
            raise backend.unavailable(exc) from exc
        return lost

    def _resume(self, position: str, reason: str | None) -> str:
        """Where to resume: after ``position``, or from the start of a stream made anew."""
        if reason == "reset" and _names.parse_id(position)[0] != self.epoch:
            return _names.make_id(self.epoch, 0)
        return position

    async def close(self) -> None:
        self.generation += 1
        client, self.client = self.client, None
        self.inbox.clear()
        self.owners.clear()
        self.seen.clear()
        self.channels = dict.fromkeys(self.channels, _Consumer("", None))
        self.patterns = dict.fromkeys(self.patterns, _Consumer("", None))
        await _client.close(client)


def _pattern_gap(position: str, info: Any) -> str | None:
    """Whether a pattern lost messages after ``position``: proven only while the stream
    has lost none since (nothing trimmed at its start, nothing deleted inside)."""
    epoch, seq = _names.parse_id(position)
    if info is None:
        return None if position == ORIGIN else "reset"
    if epoch != _names.epoch_of(info):
        return "reset"
    state = info.state
    if state.first_seq <= seq + 1 and not state.num_deleted:
        return None
    return "trimmed"


def _next(position: str) -> int:
    """The sequence after ``position``, where its consumer starts."""
    return _names.parse_id(position)[1] + 1


def _restore(positions: dict[str, str], key: str, previous: str | None) -> None:
    if previous is None:
        positions.pop(key, None)
    else:
        positions[key] = previous
