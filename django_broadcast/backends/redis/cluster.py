"""Redis Cluster: sharded pub/sub (``redis+cluster://``) and Streams with hash-tagged
keys (``redis+cluster+streams://``).

Publishing goes to the master of the key's slot (:class:`~._topology.Cluster`).
Receiving holds one receiver of the single-server kind per group of channels that
one connection can carry: per node for sharded pub/sub (``SSUBSCRIBE`` one channel at
a time, as the channels of one command must share a slot), per slot for Streams (an
``XREAD`` over keys of different slots is refused by the cluster). A node that fails
breaks only its own groups: they are reconnected where the refreshed slot map says
their channels now live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import redis

from ..base import ConnectionLost, Features, Message, Receiver
from ._client import MAX_PAYLOAD, RedisBase
from ._topology import Address, Cluster
from .pubsub import RedisBackend, _PubSubReceiver
from .streams import _ORIGIN, RedisStreamsBackend, _StreamsReceiver

__all__ = ["RedisClusterBackend", "RedisClusterStreamsBackend"]


def _braces(options: Mapping[str, Any]) -> list[str]:
    prefix = options.get("prefix")
    if isinstance(prefix, str) and ("{" in prefix or "}" in prefix):
        return [
            f"option 'prefix' {prefix!r} has a brace: on a cluster, keys are hash-tagged "
            f"with braces around the prefix and channel; leave them out"
        ]
    return []


class RedisClusterBackend(RedisBackend):
    """Sharded pub/sub on a Redis Cluster (``redis+cluster://``): at-most-once, no
    history, no patterns (the cluster has no sharded ``PSUBSCRIBE``)."""

    features = Features(patterns=False, id_order="publisher", max_payload=MAX_PAYLOAD, queues=True)
    #: Sharded: sent to the master of the channel's slot.
    command = "SPUBLISH"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        return [*super().validate_options(options), *_braces(options)]

    def receiver(self) -> Receiver:
        """One ``SSUBSCRIBE`` connection per node that holds subscribed channels."""
        return _Sharded(self, _ShardReceiver, by_slot=False)


class RedisClusterStreamsBackend(RedisStreamsBackend):
    """Redis Streams on a Redis Cluster (``redis+cluster+streams://``): each channel's
    stream key is hash-tagged (``{prefix + channel}``), so that everything of one
    channel lives in one slot."""

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        return [*super().validate_options(options), *_braces(options)]

    def key(self, channel: str) -> str:
        """``{prefix + channel}``: the whole key is its hash tag."""
        return "{" + self.prefix + channel + "}"

    def channel_of(self, key: bytes) -> str:
        return key[len(self.prefix) + 1 : -1].decode()

    def _xadd(self, channel: str, payload: bytes) -> tuple[Any, ...]:
        return ("XADD", self.key(channel), "MAXLEN", "~", self.history_size, "*", "m", payload)

    def receiver(self) -> Receiver:
        """One blocking ``XREAD`` connection (and a control one) per slot that holds
        subscribed channels."""
        return _Sharded(self, _StreamsReceiver, by_slot=True)


class _ShardReceiver(_PubSubReceiver):
    """The sharded pub/sub of one node: ``SSUBSCRIBE``, ``smessage``. The node may
    drop a channel whose slot it no longer serves (``sunsubscribe`` unasked) or refuse
    one (``MOVED``): the connection counts as lost, so that the channels are placed
    again with a fresh slot map."""

    kinds: ClassVar[Mapping[str, tuple[str, bytes, str]]] = {
        "channel": ("SSUBSCRIBE", b"ssubscribe", "SUNSUBSCRIBE")
    }
    message_kind = b"smessage"
    many_per_command = False

    async def read(self) -> Sequence[Message]:
        try:
            return await super().read()
        except redis.ResponseError as exc:  # MOVED: the slot is elsewhere now
            self._fail_pending(exc)
            raise ConnectionLost(str(exc)) from exc

    def _handle(self, reply: Any, prefix_length: int, messages: list[Message]) -> None:
        if reply[0] == b"sunsubscribe" and reply[1][prefix_length:].decode() in self.channels:
            self._fail_pending(ConnectionLost("moved"))
            raise ConnectionLost(f"the cluster moved the slot of {reply[1]!r}")
        super()._handle(reply, prefix_length, messages)


@dataclass(eq=False)
class _Part:
    """One single-server receiver of :class:`_Sharded` and its read in flight."""

    receiver: Any  # _ShardReceiver or _StreamsReceiver
    node: Address
    channels: set[str] = field(default_factory=set)
    reading: asyncio.Task[Sequence[Message]] | None = None


class _Sharded(Receiver):
    """Channels grouped by the node (or slot) that holds them, one receiver each.

    :meth:`read` waits on every part's ``read`` at once and returns what the first
    ones brought; a part whose connection is lost is marked broken, and
    :meth:`reconnect` rebuilds the broken parts only, where the refreshed slot map
    places their channels.
    """

    def __init__(self, backend: RedisBase, kind: Any, *, by_slot: bool) -> None:
        self.backend = backend
        self.kind = kind
        self.by_slot = by_slot
        self.parts: dict[Hashable, _Part] = {}
        self.where: dict[str, Hashable] = {}  # channel -> its part's group
        self.broken: set[Hashable] = set()  # parts whose connection is lost
        self.lost: set[str] = set()  # channels reported by reconnects not yet returned
        self.pending: list[Message] = []  # read while another part broke
        self.changed = asyncio.Event()

    @property
    def topology(self) -> Cluster:
        topology = self.backend.topology
        assert isinstance(topology, Cluster)
        return topology

    async def _locate(self, channel: str) -> tuple[Hashable, Address]:
        key = self.backend.key(channel)
        node = await self.backend.acall(self.topology.locate(key))
        return (Cluster.slot(key) if self.by_slot else node), node

    async def _part(self, group: Hashable, node: Address) -> _Part:
        part = self.parts.get(group)
        if part is None:
            receiver = self.kind(self.backend, node)
            await receiver.open()
            part = self.parts[group] = _Part(receiver, node)
            self.changed.set()  # read() starts reading it
        return part

    async def open(self) -> None:
        await self.backend.acall(self.topology.locate(self.backend.key("")))  # the slot map

    async def subscribe(self, channel: str) -> str | None:
        group, node = await self._locate(channel)
        part = await self._part(group, node)
        try:
            position: str | None = await part.receiver.subscribe(channel)
        except BaseException:
            if not part.channels:
                await self._drop(group)
            raise
        part.channels.add(channel)
        self.where[channel] = group
        return position

    async def unsubscribe(self, channel: str) -> None:
        group = self.where.pop(channel, None)
        part = self.parts.get(group) if group is not None else None
        if part is None:
            return
        part.channels.discard(channel)
        if part.channels:
            await part.receiver.unsubscribe(channel)
        else:
            await self._drop(group)  # the broker forgets what a closed connection held

    async def _drop(self, group: Hashable) -> None:
        part = self.parts.pop(group, None)
        self.broken.discard(group)
        if part is not None:
            await self._stop(part)

    async def _stop(self, part: _Part) -> None:
        """Stop reading ``part`` and close it, keeping what its last read brought."""
        task, part.reading = part.reading, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                self.pending.extend(task.result())
        await part.receiver.close()

    async def read(self) -> Sequence[Message]:
        if self.pending:
            kept, self.pending = self.pending, []
            return kept
        loop = asyncio.get_running_loop()
        while True:
            for group, part in self.parts.items():
                if part.reading is None and group not in self.broken:
                    part.reading = loop.create_task(part.receiver.read())
            self.changed.clear()
            changed = loop.create_task(self.changed.wait())
            reading = [p.reading for p in self.parts.values() if p.reading is not None]
            try:
                await asyncio.wait([changed, *reading], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            messages: list[Message] = []
            lost: ConnectionLost | None = None
            for group, part in self.parts.items():
                task = part.reading
                if task is None or not task.done():
                    continue
                part.reading = None
                try:
                    messages.extend(task.result())
                except (ConnectionLost, redis.ResponseError) as exc:  # (CLUSTERDOWN, MOVED)
                    self.broken.add(group)
                    lost = exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc))
            if lost is not None:
                # What the healthy parts brought is kept for the next read.
                self.pending = messages
                raise lost
            if messages:
                return messages

    async def reconnect(self) -> set[str]:
        """Rebuild the broken parts where the refreshed slot map places their
        channels; return the channels whose continuity could not be kept (over failed
        attempts too). A part that a broken one's channels join is reconnected with
        them."""
        await self.backend.acall(self.topology.arefresh())
        for group in sorted(self.broken, key=repr):
            part = self.parts[group]
            placed = {c: await self._locate(c) for c in sorted(part.channels)}
            if all(where == (group, part.node) for where in placed.values()):
                continue  # reconnected where it is, below
            del self.parts[group]
            self.broken.discard(group)
            await self._stop(part)
            state = self._state(part)
            for channel, (new_group, node) in placed.items():
                target = self.parts.get(new_group)
                if target is None:
                    target = self.parts[new_group] = _Part(self.kind(self.backend, node), node)
                self.broken.add(new_group)
                self._place(target, channel, state[channel])
                self.where[channel] = new_group
        for group in sorted(self.broken, key=repr):
            part = self.parts[group]
            await self._stop(part)  # (a healthy part that gets channels: its reads are kept)
            self.lost |= await part.receiver.reconnect()
            self.broken.discard(group)
        self.changed.set()
        lost, self.lost = self.lost, set()
        return lost

    def _state(self, part: _Part) -> dict[str, str | None]:
        receiver = part.receiver
        if isinstance(receiver, _StreamsReceiver):
            return dict(receiver.positions)
        return dict.fromkeys(part.channels)

    @staticmethod
    def _place(part: _Part, channel: str, position: str | None) -> None:
        part.channels.add(channel)
        if isinstance(part.receiver, _StreamsReceiver):
            part.receiver.positions[channel] = position or _ORIGIN
        else:
            part.receiver.channels.add(channel)

    async def close(self) -> None:
        parts, self.parts = self.parts, {}
        for part in parts.values():
            await self._stop(part)
