"""The Channels bridge: a channel layer whose groups are broadcast channels.

Configure it in place of ``channels_redis``::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "default"},  # the BROADCAST alias to travel through
        }
    }

and existing Channels code keeps working, sharing its events with the rest of the site:

- **Groups are broadcast channels.** ``group_send("chat.lobby", {"type": "chat.message",
  "text": "hi"})`` publishes the event ``type="chat.message"``, ``data={"text": "hi"}``
  on the broadcast channel ``chat.lobby``, so ``broadcast.subscribe("chat.lobby")``
  subscribers and browser clients receive it; and ``broadcast.publish("chat.lobby",
  data, type="chat.message")`` from a sync view reaches every consumer in the group.
  A member receives ``{**data, "type": ..., "channel": group, "id": event id, "data":
  data}``: exactly the keys a ``group_send`` sent, plus ``channel``, ``id`` and ``data``
  (where the sent message has its own ``channel``, ``id`` or ``data`` key, it wins).
- **Membership is local to the process.** ``group_add`` holds one broadcast
  subscription per group per process (however many consumers join) and returns once
  the broker has confirmed it; the last ``group_discard`` releases it. ``group_expiry``
  is accepted for compatibility; memberships end with ``group_discard`` or ``flush``.
- **Process-specific channels** (``new_channel()``, a consumer's ``channel_name``) are
  served by one inbox subscription per layer: ``send()`` to a channel of this process
  is a local hand-off (``ChannelFull`` past ``capacity``); to another process's, it
  is published on that process's inbox channel. ``new_channel()`` needs no broker:
  the inbox is subscribed in the background, again and again while the broker is
  away, so a consumer starts whether or not the broker is up.
- **Other channels** (``send("thumbnails", ...)`` to a worker) travel as in
  channels_redis's pub/sub layer: the message reaches every process that is receiving
  on that name at the time, and is lost if none is.
- The layer's own broadcast channels (the inboxes and the other channels) live in the
  reserved ``broadcast.layer.`` namespace, which browsers can never read or write.
- **Every receiver gets its own copy** of a message, never a dict shared with other
  consumers.
- **Bytes survive the trip.** Channel-layer messages may carry ``bytes`` (WebSocket
  binary frames); the alias's JSON codec cannot, so the layer sends them as
  ``{"__bytes__": "<base64>"}`` and turns them back into ``bytes`` for layer receivers.
  ``broadcast.subscribe()`` subscribers see the tagged form.
- Gap notices of the hub (``broadcast.gap``) are not delivered to consumers, which
  would have no handler for them; they are logged.
- **Outages end nothing for good.** The layer's subscriptions are persistent: when the
  broker stays away for longer than the alias's ``RECONNECT_TIMEOUT``, they wait for
  it (the core keeps reconnecting), and what was published meanwhile is lost, logged.
- ``receive()`` takes a plain name or a channel made by this layer's
  ``new_channel()``; another process's channel is an ``AssertionError``, as in
  channels_redis.
- Messages expire after ``expiry`` seconds (default 60) unreceived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from .broadcast import Broadcast
from .events import GAP, RESERVED_PREFIX, Event
from .exceptions import BroadcastUnavailable, SubscriptionClosed
from .handler import broadcasts

__all__ = ["BroadcastChannelLayer"]

logger = logging.getLogger(__name__)

#: The event type of a ``send()`` to another process's channel.
SEND_TYPE = "channels.send"
_BYTES = "__bytes__"
#: The broadcast channels of the layer's inboxes and plain channels (reserved).
_LAYER_PREFIX = RESERVED_PREFIX + "layer."
#: Seconds between two sweeps of the expired messages of channels nobody reads.
_SWEEP_INTERVAL = 1.0


def encode_bytes(value: Any) -> Any:
    """``value`` with every ``bytes`` inside replaced by a JSON-safe tagged dict."""
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key: encode_bytes(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_bytes(item) for item in value]
    return value


def decode_bytes(value: Any) -> Any:
    """A fresh copy of ``value`` with the tagged dicts of :func:`encode_bytes` turned
    back into ``bytes``: every call builds new containers, so receivers never share."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BYTES), str):
            return base64.b64decode(value[_BYTES])
        return {key: decode_bytes(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_bytes(item) for item in value]
    return value


_ATOMS = frozenset({str, int, float, bool, bytes, type(None)})


def fresh_copy(value: Any) -> Any:
    """A copy of every dict and list in ``value`` (as :func:`decode_bytes` returns
    them), sharing only immutable leaves: cheaper than decoding again per receiver."""
    if type(value) is dict:
        copied = value.copy()
        for key, item in copied.items():
            if type(item) not in _ATOMS:
                copied[key] = fresh_copy(item)  # replaces a value: the size stays
        return copied
    if type(value) is list:
        return [item if type(item) in _ATOMS else fresh_copy(item) for item in value]
    return value


def member_message(event: Event) -> dict[str, Any]:
    """The channel-layer message a group member receives for ``event`` (a new dict)."""
    data = decode_bytes(event.data)
    message: dict[str, Any] = {"channel": event.channel, "id": event.id, "data": data}
    if isinstance(data, dict):
        message.update(data)
    message["type"] = event.type
    return message


class _Inbox:
    """The local queue of one channel: messages with their expiry, and waiters."""

    __slots__ = ("capacity", "messages", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: (expires, message, shared): a shared message is copied as it is taken.
        self.messages: deque[tuple[float, dict[str, Any], bool]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def idle(self) -> bool:
        """No message queued and no receiver waiting: nothing to keep it for."""
        return not self.messages and (
            not self.waiters or all(waiter.done() for waiter in self.waiters)
        )

    def wake_all(self) -> None:
        while self.waiters:
            self.wake_one()

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            loop = waiter.get_loop()
            if _running_loop() is loop:
                waiter.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, waiter)
            return


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Reader:
    """One persistent broadcast subscription of the layer, and the task that routes its
    events.

    The subscription outlives broker outages of any length: the core's reconnect
    policy keeps it, with a gap notice (logged here) once the broker is back. A
    ``strict`` reader's subscription must be made at once (``group_add`` raises when
    the broker cannot be reached, as channels_redis does), with the error in
    ``ready``; the others wait for the broker (``new_channel()`` never needs it).
    """

    def __init__(
        self, layer: BroadcastChannelLayer, name: str, route: Callable[[Event], None], strict: bool
    ) -> None:
        self.layer = layer
        self.name = name
        self.route = route
        self.strict = strict
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self.task = self.loop.create_task(self._run())

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.loop.is_closed()

    async def _run(self) -> None:
        subscription = self.layer.broadcast.subscribe(self.name, persistent=True)
        try:
            await subscription.open(wait=not self.strict)
        except BroadcastUnavailable as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        try:
            async for event in subscription:
                if event.type == GAP:
                    logger.warning("channel layer missed events on %r: %s", self.name, event.data)
                    continue
                try:
                    self.route(event)
                except Exception:
                    logger.exception("could not route an event of %r", self.name)
        except SubscriptionClosed as exc:  # the listener itself failed: logged by the hub
            logger.error("channel layer subscription of %r ended: %s", self.name, exc)
        finally:
            await subscription.aclose()

    async def stop(self) -> None:
        if self.loop is _running_loop():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a reader's first-subscription error as seen: its waiter may be gone."""
    if not future.cancelled():
        future.exception()


class BroadcastChannelLayer(BaseChannelLayer):
    """A Channels channel layer that travels through a broadcast alias.

    ``CONFIG``: ``using`` (the ``BROADCAST`` alias, default ``"default"``),
    ``expiry`` (seconds an unreceived message lives, default 60), ``capacity``
    (messages a local channel holds before ``ChannelFull``, default 100),
    ``channel_capacity`` (per-pattern capacities, as in channels_redis) and
    ``group_expiry`` (accepted for compatibility).
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
        super().__init__(expiry=expiry, capacity=capacity)
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.using = using
        self.group_expiry = group_expiry
        #: The part before ``!`` of this layer's process-specific channels.
        self.client_prefix = uuid.uuid4().hex
        self._lock = threading.Lock()  # guards _inboxes and the queues in it
        self._inboxes: dict[str, _Inbox] = {}
        self._next_sweep = 0.0
        self._groups: dict[str, dict[str, float]] = {}
        self._my_inboxes: set[str] = set()  # the part before "!" of our specific channels
        self._readers: dict[str, _Reader] = {}  # broadcast channel -> reader

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
        self._my_inboxes.add(inbox)
        self._start_reader(self._inbox_channel(inbox), self._route_inbox)
        return f"{inbox}!{uuid.uuid4().hex[:12]}"

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to ``channel``; raise ``ChannelFull`` when a local channel
        already holds ``capacity`` messages."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        expires = time.time() + self.expiry
        if "!" in channel:
            inbox = channel.split("!", 1)[0]
            if inbox in self._my_inboxes:
                self._put(channel, expires, copy.deepcopy(message), strict=True)
                return
            data = {"to": channel, "expires": expires, "message": encode_bytes(message)}
            await self.broadcast.apublish(self._inbox_channel(inbox), data, type=SEND_TYPE)
            return
        data = {"to": channel, "expires": expires, "message": encode_bytes(message)}
        await self.broadcast.apublish(self._broker_channel(channel), data, type=SEND_TYPE)

    async def receive(self, channel: str) -> dict[str, Any]:
        """Wait for the next message on ``channel``; each goes to one receiver.

        ``channel`` is a plain name or one made by this layer's :meth:`new_channel`:
        another process's channel raises ``AssertionError``, as in channels_redis.
        """
        self.require_valid_channel_name(channel)
        if "!" in channel:
            owner = channel.split("!", 1)[0]
            assert owner in self._my_inboxes, f"{channel!r} is not a channel of this layer"
            reader, local = self._inbox_channel(owner), True
        else:
            reader, local = self._broker_channel(channel), False
        self._sweep()
        loop = asyncio.get_running_loop()
        while True:
            # At first, and after a flush. Messages of a specific channel may be local
            # hand-offs, so its receiver waits on the inbox at once; a plain channel's
            # come only from the broker, so it waits for the subscription first.
            current = self._start_reader(reader, self._route_inbox)
            if not local:
                await asyncio.shield(current.ready)
            with self._lock:
                inbox = self._inbox(channel)
                taken = self._take(channel, inbox)
                if taken is None:
                    waiter = loop.create_future()
                    inbox.waiters.append(waiter)
            if taken is not None:
                message, shared = taken
                return fresh_copy(message) if shared else message
            try:
                await waiter
            except asyncio.CancelledError:
                with self._lock:
                    if waiter.done() and not waiter.cancelled() and inbox.messages:
                        inbox.wake_one()  # pass the wake-up on to another receiver
                    self._forget_if_idle(channel, inbox)
                raise

    # _inbox, _take and _forget_if_idle are called with self._lock held.

    def _inbox(self, channel: str) -> _Inbox:
        inbox = self._inboxes.get(channel)
        if inbox is None:
            inbox = self._inboxes[channel] = _Inbox(self.get_capacity(channel))
        return inbox

    def _take(self, channel: str, inbox: _Inbox) -> tuple[dict[str, Any], bool] | None:
        now = time.time()
        while inbox.messages:
            expires, message, shared = inbox.messages.popleft()
            if expires >= now:
                self._forget_if_idle(channel, inbox)
                return message, shared
            self._expired(channel)
        return None

    def _forget_if_idle(self, channel: str, inbox: _Inbox) -> None:
        if inbox.idle and self._inboxes.get(channel) is inbox:
            del self._inboxes[channel]

    def _sweep(self) -> None:
        """Drop the expired messages of every channel, read or not, once a second."""
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        with self._lock:
            for channel, inbox in list(self._inboxes.items()):
                while inbox.messages and inbox.messages[0][0] < now:
                    inbox.messages.popleft()
                    self._expired(channel)
                self._forget_if_idle(channel, inbox)

    def _put(
        self,
        channel: str,
        expires: float,
        message: dict[str, Any],
        *,
        strict: bool,
        shared: bool = False,
    ) -> None:
        """Queue ``message`` on a local channel. A ``shared`` message (one a group's
        members all receive) is copied when taken, so that each receiver has its own
        and the copies live only while a consumer holds them."""
        with self._lock:
            inbox = self._inbox(channel)
            if len(inbox.messages) < inbox.capacity:
                inbox.messages.append((expires, message, shared))
                inbox.wake_one()
                return
        if strict:
            raise ChannelFull(channel)
        logger.warning("channel %r is full (capacity %d): message dropped", channel, inbox.capacity)

    def _expired(self, channel: str) -> None:
        for members in list(self._groups.values()):
            members.pop(channel, None)

    @staticmethod
    def _layer_channel(kind: str, name: str) -> str:
        channel = f"{_LAYER_PREFIX}{kind}.{name}"
        if len(channel) > 100:
            channel = f"{_LAYER_PREFIX}{kind}.{hashlib.sha1(name.encode()).hexdigest()}"
        return channel

    @classmethod
    def _broker_channel(cls, channel: str) -> str:
        """The broadcast channel of a plain (not process-specific) channel."""
        return cls._layer_channel("channel", channel)

    @classmethod
    def _inbox_channel(cls, inbox: str) -> str:
        """The broadcast channel of an inbox (the part of a channel before ``!``)."""
        return cls._layer_channel("inbox", inbox)

    # Groups ------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; return once the group's events are received."""
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        self._groups.setdefault(group, {})[channel] = time.time()
        try:
            await asyncio.shield(self._start_reader(group, self._route_group, strict=True).ready)
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
        members.pop(channel, None)
        if not members:
            del self._groups[group]
            reader = self._readers.pop(group, None)
            if reader is not None:
                await reader.stop()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Publish ``message`` on the broadcast channel ``group``."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        data = {key: value for key, value in message.items() if key != "type"}
        await self.broadcast.apublish(group, encode_bytes(data), type=message["type"])

    # Readers -----------------------------------------------------------------------

    def _start_reader(
        self, name: str, route: Callable[[Event], None], *, strict: bool = False
    ) -> _Reader:
        """The reader of broadcast channel ``name``, started if it is not running."""
        reader = self._readers.get(name)
        if reader is None or not reader.alive:
            reader = self._readers[name] = _Reader(self, name, route, strict)
        return reader

    def _route_group(self, event: Event) -> None:
        members = list(self._groups.get(event.channel, ()))
        if not members:
            return
        message = member_message(event)
        expires = time.time() + self.expiry
        for member in members:
            if "!" in member and member.split("!", 1)[0] in self._my_inboxes:
                self._put(member, expires, message, strict=False, shared=True)
            else:  # send() copies it
                asyncio.get_running_loop().create_task(self._forward(member, message))

    async def _forward(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self.send(channel, message)
        except ChannelFull:
            logger.warning("channel %r is full: group message dropped", channel)

    def _route_inbox(self, event: Event) -> None:
        if event.type != SEND_TYPE or not isinstance(event.data, dict):
            return
        data = event.data
        if data.get("expires", 0) < time.time():
            return
        self._put(data["to"], data["expires"], decode_bytes(data["message"]), strict=False)

    # Flush and close ---------------------------------------------------------------

    async def flush(self) -> None:
        """Drop every queued message, group membership and subscription."""
        readers, self._readers = self._readers, {}
        self._groups = {}
        with self._lock:
            inboxes, self._inboxes = self._inboxes, {}
            for inbox in inboxes.values():
                inbox.wake_all()  # waiting receivers start over on the emptied layer
        await _gather(reader.stop() for reader in readers.values())

    async def close(self) -> None:
        """Release this layer's subscriptions (the alias stays open)."""
        readers, self._readers = self._readers, {}
        await _gather(reader.stop() for reader in readers.values())


async def _gather(awaitables: Iterable[Awaitable[None]]) -> None:
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.debug("releasing a layer subscription failed: %r", result)
