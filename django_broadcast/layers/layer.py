"""``BroadcastChannelLayer``: the Channels layer API over a broadcast alias."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import replace
from typing import Any, ClassVar

from channels.exceptions import ChannelFull
from channels.exceptions import MessageTooLarge as ChannelsMessageTooLarge
from channels.layers import BaseChannelLayer
from django.core.exceptions import ImproperlyConfigured

from ..broadcast import Broadcast
from ..codec import carries_bytes
from ..events import RESERVED_PREFIX, Event
from ..exceptions import BroadcastError, MessageTooLarge, QueueFull
from ..registry import broadcasts
from .groups import Group
from .mailboxes import Entry, Handed, Mailbox, running_loop
from .messages import (
    SEND_TYPE,
    copier,
    decode_bytes,
    encode_bytes,
    member_message,
)
from .readers import Reader, Route

__all__ = ["BroadcastChannelLayer", "LayerMessageTooLarge"]

logger = logging.getLogger("django_broadcast.layers")

#: The broadcast channels of the layer's inboxes and plain channels (reserved).
_LAYER_PREFIX = RESERVED_PREFIX + "layer."
#: Seconds between two sweeps of the expired messages of channels nobody reads.
_SWEEP_INTERVAL = 1.0
#: How many group messages routed at send may wait for their copy from the broker.
_MAX_ECHOES = 10_000


class LayerMessageTooLarge(MessageTooLarge, ChannelsMessageTooLarge):
    """A layer message over the alias's ``max_message_size``: both Channels'
    ``MessageTooLarge`` (what handlers written for other layers catch) and
    django_broadcast's."""


class BroadcastChannelLayer(BaseChannelLayer):
    """A Channels channel layer that travels through a broadcast alias.

    ``CONFIG``: ``using`` (the ``BROADCAST`` alias, default ``"default"``),
    ``expiry`` (seconds an unreceived message lives, default 60), ``capacity``
    (messages a local channel holds before ``ChannelFull``, default 100),
    ``channel_capacity`` (per-pattern capacities, as in channels_redis) and
    ``group_expiry`` (seconds a group membership lasts unless renewed by another
    ``group_add``, default 86400, as in channels_redis).

    A message over the alias's ``max_message_size`` raises
    :class:`LayerMessageTooLarge`, a ``channels.exceptions.MessageTooLarge``.

    Any other key (``hosts``, ``prefix``, ``symmetric_encryption_keys``... of a
    channels_redis ``CONFIG``) raises ``ImproperlyConfigured`` saying where it belongs.
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(
        self,
        using: str = "default",
        expiry: int = 60,
        capacity: int = 100,
        channel_capacity: dict[Any, int] | None = None,
        group_expiry: int = 86400,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise ImproperlyConfigured(_unknown_keys(using, kwargs))
        super().__init__(expiry=expiry, capacity=capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.using = using
        self.group_expiry = group_expiry
        #: The part before ``!`` of this layer's process-specific channels.
        self.client_prefix = uuid.uuid4().hex
        # Guards _inboxes, the mailboxes in it and the groups' hold on them.
        self._lock = threading.Lock()
        self._inboxes: dict[str, Mailbox] = {}
        self._next_sweep = 0.0
        self._groups: dict[str, Group] = {}
        #: The part before "!" of our specific channels -> its broadcast channel.
        self._my_inboxes: dict[str, str] = {}
        self._readers: dict[str, Reader] = {}  # broadcast channel -> reader
        # The readers' routers, bound once: not a bound method per reader.
        self._group_router: Route = self._route_group
        self._inbox_router: Route = self._route_inbox
        self._queues: set[str] = set()  # the plain channels this layer used
        #: (group, event id) of the group messages routed here as they were sent.
        self._echoes: dict[tuple[str, str], None] = {}
        self._sending: dict[str, int] = {}  # group -> its sends out (on the reader's loop)
        self._held: dict[str, list[Event]] = {}  # group -> broker events held meanwhile
        self._releasing: set[asyncio.Task[None]] = set()  # readers being stopped
        self._forwarding: set[asyncio.Task[None]] = set()  # group messages being sent on

    @property
    def broadcast(self) -> Broadcast:
        """The broadcast alias this layer travels through."""
        return broadcasts[self.using]

    # Channels ----------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific.") -> str:
        """Make a process-specific channel name, served by this layer's inbox.

        No broker round trip: the inbox is subscribed in the background.
        """
        inbox = f"{prefix}{self.client_prefix}"
        self.require_valid_group_name(inbox)
        reader = self._my_inboxes.get(inbox)
        if reader is None:
            reader = self._my_inboxes[inbox] = self._inbox_channel(inbox)
        self._start_reader(reader, self._inbox_router)
        return f"{inbox}!{uuid.uuid4().hex[:12]}"

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ``ChannelFull`` when the channel
        already holds its capacity of messages (a plain channel, in the broker; a
        process-specific one of this process, locally).

        A plain channel is a queue in the broker: the message waits, at most
        ``expiry`` seconds, until one receiver in any process takes it.
        """
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        expires = time.time() + self.expiry
        if "!" in channel:
            inbox = channel.split("!", 1)[0]
            if inbox in self._my_inboxes:
                self._put(channel, expires, copy.deepcopy(message), running_loop(), strict=True)
                return
            data = {"to": channel, "expires": expires, "message": self._outgoing(message)}
            await self._publish(channel, self._inbox_channel(inbox), data, SEND_TYPE)
            return
        self._queues.add(channel)
        try:
            await self.broadcast.aqueue_put(
                self._queue_name(channel),
                self._outgoing(message),
                capacity=self.get_capacity(channel),
                ttl=self.expiry,
            )
        except QueueFull:
            raise ChannelFull(channel) from None
        except MessageTooLarge as exc:
            raise LayerMessageTooLarge(channel, exc.size, exc.limit) from None

    def _outgoing(self, message: dict[str, Any]) -> Any:
        """``message`` as the alias's codec can carry it: its ``bytes`` tagged as
        base64 where the codec does not carry bytes itself."""
        return message if carries_bytes(self.broadcast.codec) else encode_bytes(message)

    async def _publish(self, name: str, broker_channel: str, data: Any, type: str) -> Event:
        """Publish to ``broker_channel`` what was sent to channel or group ``name``."""
        try:
            return await self.broadcast.apublish(broker_channel, data, type=type)
        except MessageTooLarge as exc:
            raise LayerMessageTooLarge(name, exc.size, exc.limit) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``; each goes to one receiver.

        ``channel`` is a plain name or one made by this layer's :meth:`new_channel`:
        another process's channel raises ``AssertionError``, as in channels_redis.
        """
        if channel not in self._inboxes:  # else the name was checked as its mailbox was made
            self.require_valid_channel_name(channel)
            if "!" not in channel:
                self._queues.add(channel)
                return decode_bytes(await self.broadcast.aqueue_take(self._queue_name(channel)))
            owner = channel.split("!", 1)[0]
            assert owner in self._my_inboxes, f"{channel!r} is not a channel of this layer"
        while True:
            now = time.time()
            if now >= self._next_sweep:
                self._sweep(now)
            lock = self._lock
            lock.acquire()  # not `with`: half the cost, on the path of every message
            try:
                inbox = self._inboxes.get(channel) or self._inbox(channel)
                if inbox.messages:
                    message = self._take(channel, inbox, now)
                    if message is not None:
                        return message
                # Looked up only to wait (on Python 3.11 it makes a system call).
                loop = asyncio.get_running_loop()
                waiter: asyncio.Future[Handed] = loop.create_future()
                inbox.waiters.append(waiter)
            finally:
                lock.release()
            # At first, and after a flush: messages of a specific channel may be local
            # hand-offs, so its receiver waits on the inbox at once. (A reader on the
            # running loop is on an open loop: only whether it ended is left to see.)
            reader = self._readers.get(inbox.reader)
            if reader is None or reader.loop is not loop or reader.ended:
                self._start_reader(inbox.reader, self._inbox_router)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                with self._lock:
                    if waiter.done() and not waiter.cancelled():
                        handed = waiter.result()
                        if handed is not None:  # handed to it: back at the head
                            inbox.queue().appendleft(
                                (now + self.expiry, handed, member_message)
                                if isinstance(handed, Event)
                                else handed
                            )
                        if inbox.messages:
                            inbox.wake_one(waiter.get_loop())  # pass it on
                    self._forget_if_idle(channel, inbox)
                raise
            if handed is not None:  # handed straight to this receiver
                if isinstance(handed, Event):  # a group of one's
                    return member_message(handed)
                _expires, queued, make = handed
                return queued if make is None else make(queued)

    # _inbox, _take and _forget_if_idle are called with self._lock held.

    def _inbox(self, channel: str) -> Mailbox:
        """The mailbox of ``channel``, a channel of this layer (made if need be)."""
        inbox = self._inboxes.get(channel)
        if inbox is None:
            reader = self._my_inboxes[channel.partition("!")[0]]
            inbox = self._inboxes[channel] = Mailbox(self.get_capacity(channel), reader)
        return inbox

    def _take(self, channel: str, inbox: Mailbox, now: float) -> dict[str, Any] | None:
        """The first message of ``inbox`` alive at ``now``, the receiver's own: a
        message a group's members share is copied as it is taken, so that the copies
        live only while a consumer holds them."""
        messages = inbox.messages
        while messages:
            expires, queued, make = messages.popleft()
            if expires >= now:
                if not messages and not inbox.memberships:
                    self._forget_if_idle(channel, inbox)
                return queued if make is None else make(queued)
        return None

    def _forget_if_idle(self, channel: str, inbox: Mailbox) -> None:
        if inbox.idle and self._inboxes.get(channel) is inbox:
            del self._inboxes[channel]

    def _sweep(self, now: float) -> None:
        """Drop the expired messages of every channel, read or not (once a second)."""
        self._next_sweep = now + _SWEEP_INTERVAL
        with self._lock:
            idle = []
            for channel, inbox in self._inboxes.items():
                messages = inbox.messages
                while messages and messages[0][0] < now:
                    messages.popleft()
                if not messages and not inbox.memberships and inbox.idle:
                    idle.append(channel)
            for channel in idle:
                del self._inboxes[channel]

    def _put(
        self,
        channel: str,
        expires: float,
        message: dict[str, Any],
        running: asyncio.AbstractEventLoop | None,
        *,
        strict: bool,
    ) -> bool:
        """Queue ``message`` (the receiver's own) on a local channel, from the running
        loop ``running``; return False where it was full (and the message dropped), or
        raise ``ChannelFull`` if ``strict``."""
        with self._lock:
            if not self._inbox(channel).put([(expires, message, None)], running):
                return True
        if strict:
            raise ChannelFull(channel)
        return False

    @staticmethod
    def _layer_channel(kind: str, name: str) -> str:
        channel = f"{_LAYER_PREFIX}{kind}.{name}"
        if len(channel) > 100:
            channel = f"{_LAYER_PREFIX}{kind}.{hashlib.sha1(name.encode()).hexdigest()}"
        return channel

    @classmethod
    def _queue_name(cls, channel: str) -> str:
        """The broadcast queue of a plain (not process-specific) channel."""
        return cls._layer_channel("queue", channel)

    @classmethod
    def _inbox_channel(cls, inbox: str) -> str:
        """The broadcast channel of an inbox (the part of a channel before ``!``)."""
        return cls._layer_channel("inbox", inbox)

    # Groups ------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; return once the group's events are received."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        members = self._groups.get(group)
        if members is None:
            members = self._groups[group] = Group()
        # Whether the member is a channel of this layer is known from here on: its
        # group's messages are put straight in its mailbox.
        here = "!" in channel and channel.split("!", 1)[0] in self._my_inboxes
        with self._lock:
            members.add(channel, self._inbox(channel) if here else None, time.time())
        try:
            await self._start_reader(group, self._group_router, strict=True).subscribed()
        except BaseException:
            await self.group_discard(group, channel)
            raise

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; the last one out releases the group."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        members = self._groups.get(group)
        if members is None:
            return
        with self._lock:
            box = members.remove(channel)
            if box is not None:
                self._forget_if_idle(channel, box)
        if not members:
            del self._groups[group]
            reader = self._readers.pop(group, None)
            if reader is not None:
                await reader.stop()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` on the broadcast channel ``group``.

        The group's members in this process have it by the time this returns (or
        not, where they are full), as with channels_redis; the copy the broker sends
        back is not delivered again. Members elsewhere get it from the broker.
        """
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        data = self._outgoing({key: value for key, value in message.items() if key != "type"})
        reader = self._readers.get(group)
        if not self._groups.get(group) or reader is None or reader.loop is not running_loop():
            # No member here (or a loop of its own, such as async_to_sync's from sync
            # code): every member gets the broker's copy.
            await self._publish(group, group, data, message["type"])
            return
        # The broker's copies of this group's events wait while this send is out:
        # the copy of this one may come back before its id is known.
        self._sending[group] = self._sending.get(group, 0) + 1
        try:
            event = await self._publish(group, group, data, message["type"])
            echoes = self._echoes
            echoes[(group, event.id)] = None
            if len(echoes) > _MAX_ECHOES:  # copies the broker never sent back
                del echoes[next(iter(echoes))]
            # Through the codec, as members elsewhere receive it.
            codec = self.broadcast.codec
            self._route_group(
                [replace(event, data=codec.decode(codec.encode(data)))], reader.loop, sent=True
            )
        finally:
            self._sending[group] -= 1
            if not self._sending[group]:
                del self._sending[group]
                held = self._held.pop(group, None)
                if held:
                    self._route_group(held, reader.loop)

    # Readers -----------------------------------------------------------------------

    def _start_reader(self, name: str, route: Route, *, strict: bool = False) -> Reader:
        """The reader of broadcast channel ``name``, started if it is not running."""
        reader = self._readers.get(name)
        if reader is None or not reader.alive:
            reader = self._readers[name] = Reader(self.broadcast, name, route, strict)
        return reader

    def _route_group(
        self, events: list[Event], running: asyncio.AbstractEventLoop, *, sent: bool = False
    ) -> None:
        """Hand the events of one group to its members here: each member's mailbox
        gets them (or a receiver waiting on it, at once) under one hold of the lock.
        The message of each event is built once and copied per member as it is
        received; for a group of one, built as it is received. ``running`` is the
        running loop.

        Events from the broker (the reader's) pass :meth:`_unsent` first; ``sent``
        events are those routed here by :meth:`group_send` itself."""
        if not sent and (self._sending or self._echoes):
            events = self._unsent(events)
            if not events:
                return
        name = events[0].channel
        group = self._groups.get(name)
        if group is None:  # a group is dropped with its last member
            return
        now = time.time()
        if group.earliest < now - self.group_expiry:
            with self._lock:
                for member, box in group.expire(now - self.group_expiry):
                    if box is not None:
                        self._forget_if_idle(member, box)
            if not group:
                del self._groups[name]
                self._release(name)
                return
        expires = now + self.expiry
        only = group.only  # changed only under the lock
        if only is not None and len(events) == 1:
            # The usual batch of a group of one: its member's message is built as it
            # takes it. Until then it holds the event (which lives anyway), or the
            # receiver waiting is handed the event itself.
            lock = self._lock
            lock.acquire()  # not `with`: half the cost
            try:
                full = only.put_event(expires, events[0], running)
            finally:
                lock.release()
            if full:
                logger.info("1 of 1 channels over capacity in group %s", name)
            return
        boxes = group.boxes  # changed only under the lock
        entries: list[Entry]
        if len(boxes) > 1 or group.elsewhere:
            # Shared: each message is built once, and copied as each member takes it.
            messages = [member_message(event) for event in events]
            entries = [(expires, message, copier(message)) for message in messages]
        else:
            # One member: its messages are built as it takes them. Until then it holds
            # the events (which live anyway), so nothing made here outlives a read.
            messages = []
            entries = [(expires, event, member_message) for event in events]
        full = 0
        with self._lock:
            for box in boxes.values():
                if box.put(entries, running):
                    full += 1
        if group.elsewhere:
            for member in list(group.elsewhere):  # send() copies the messages
                task = running.create_task(self._forward(member, messages))
                self._forwarding.add(task)
                task.add_done_callback(self._forwarding.discard)
        if full:  # as channels_redis says it
            logger.info("%d of %d channels over capacity in group %s", full, len(group), name)

    def _unsent(self, events: list[Event]) -> list[Event]:
        """The group's events from the broker but those routed here at send; none while
        a send to the group is out (they are held until it is back)."""
        group = events[0].channel
        if group in self._sending:
            self._held.setdefault(group, []).extend(events)
            return []
        echoes = self._echoes
        return [event for event in events if echoes.pop((group, event.id), True) is not None]

    def _release(self, group: str) -> None:
        """Stop the reader of ``group``, whose last membership expired, from its own
        routing (in a task of its own: a reader cannot await its own end)."""
        reader = self._readers.pop(group, None)
        if reader is not None:
            task = asyncio.get_running_loop().create_task(reader.stop())
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _forward(self, channel: str, messages: list[dict[str, Any]]) -> None:
        """Send a group's messages, in order, to a member that is not a channel of this
        layer."""
        for message in messages:
            try:
                await self.send(channel, message)
            except ChannelFull:
                logger.warning("channel %r is full: group message dropped", channel)
            except BroadcastError as exc:  # the broker is away, or it has no queues
                logger.warning("a group message to channel %r was dropped: %s", channel, exc)

    def _route_inbox(self, events: list[Event], running: asyncio.AbstractEventLoop) -> None:
        for event in events:
            if event.type != SEND_TYPE or not isinstance(event.data, dict):
                continue
            data = event.data
            to = data.get("to")
            if (
                not isinstance(to, str)
                or to.partition("!")[0] not in self._my_inboxes
                or "!" not in to
            ):
                # Only channels of this layer get a mailbox (receive() trusts one).
                logger.warning("an inbox message for %r, not a channel here, was dropped", to)
                continue
            if data.get("expires", 0) < time.time():
                continue
            message = decode_bytes(data["message"])
            if not self._put(to, data["expires"], message, running, strict=False):
                logger.warning("channel %r is full: a message sent to it was dropped", to)

    # Flush and close ---------------------------------------------------------------

    async def flush(self) -> None:
        """Drop every queued message (of the plain channels this layer used too),
        group membership and subscription."""
        readers, self._readers = self._readers, {}
        queues, self._queues = self._queues, set()
        with self._lock:  # the groups hold mailboxes: both go at once
            self._groups = {}
            inboxes, self._inboxes = self._inboxes, {}
            for inbox in inboxes.values():
                inbox.wake_all()  # waiting receivers start over on the emptied layer
        await _gather(self.broadcast.aqueue_clear(self._queue_name(name)) for name in queues)
        await _gather(reader.stop() for reader in readers.values())

    async def close(self) -> None:
        """Release this layer's subscriptions (the alias stays open)."""
        readers, self._readers = self._readers, {}
        await _gather(reader.stop() for reader in readers.values())


#: Where the keys of a channels_redis ``CONFIG`` that the layer does not take belong.
_ELSEWHERE = {
    "hosts": "the Redis address is the alias's: set BROADCAST[{using!r}]['URL']",
    "prefix": "set BROADCAST[{using!r}]['OPTIONS']['prefix']",
    "symmetric_encryption_keys": (
        "the layer does not encrypt messages: encrypt the connection to the broker (rediss:// URLs)"
    ),
}


def _unknown_keys(using: str, keys: dict[str, Any]) -> str:
    """The error for ``CONFIG`` keys the layer does not take: where each belongs."""
    said = [
        f"{key!r}: {_ELSEWHERE[key].format(using=using)}" if key in _ELSEWHERE else repr(key)
        for key in sorted(keys)
    ]
    return (
        f"BroadcastChannelLayer does not take the CONFIG key(s) {'; '.join(said)}. It takes "
        f"using, expiry, capacity, channel_capacity, group_expiry (see the docs' "
        f"migrating page)."
    )


async def _gather(awaitables: Iterable[Awaitable[None]]) -> None:
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.debug("releasing a layer subscription failed: %r", result)
