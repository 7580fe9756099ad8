"""The per-process, per-event-loop subscription hub.

However many local subscribers a channel has, the hub holds one broker subscription
for it (reference-counted: the last subscriber to leave unsubscribes), reads every
message once in a single listener task, decodes it once and hands the same
:class:`~django_broadcast.events.Event` to each subscriber's bounded queue. Publishing
never waits on subscribers: a full queue drops its oldest events (leaving a gap
notice) or closes that subscription, as the alias's ``OVERFLOW`` says.

When the broker connection drops, the listener reconnects with backoff; subscribers
of channels whose continuity could not be kept get a ``broadcast.gap`` notice, and
if the broker stays away for longer than ``RECONNECT_TIMEOUT`` every subscription
ends with :class:`~django_broadcast.exceptions.SubscriptionClosed`: nobody hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .backends.base import ConnectionLost, Message, Receiver
from .events import GAP, Event, utcnow
from .exceptions import SubscriptionClosed, SubscriptionOverflow

if TYPE_CHECKING:
    from .broadcast import Broadcast

__all__ = ["Hub", "Subscription"]

logger = logging.getLogger("django_broadcast.hub")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class Hub:
    """Holds one event loop's broker subscriptions for one alias."""

    def __init__(self, broadcast: Broadcast, loop: asyncio.AbstractEventLoop) -> None:
        self._broadcast = broadcast
        # Weak: the broadcast keys its hubs by loop in a WeakKeyDictionary.
        self._loop_ref = weakref.ref(loop)
        self._lock = asyncio.Lock()
        self._subscribers: dict[str, dict[Subscription, None]] = {}
        self._broker_channels: set[str] = set()
        self._receiver: Receiver | None = None
        self._listener: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def channels(self) -> set[str]:
        """The channels this hub holds a broker subscription for."""
        return set(self._broker_channels)

    async def attach(self, sub: Subscription) -> None:
        """Add ``sub`` to its channels, subscribing the broker where it is the first."""
        async with self._lock:
            if self.closed:
                raise SubscriptionClosed(f"broadcast alias {self._broadcast.alias!r} is closed")
            try:
                if self._receiver is None:
                    receiver = self._broadcast.backend.receiver()
                    await receiver.open()
                    self._receiver = receiver
                    self._listener = asyncio.get_running_loop().create_task(self._listen(receiver))
                for channel in sub.channels:
                    if channel not in self._broker_channels:
                        await self._receiver.subscribe(channel)
                        self._broker_channels.add(channel)
                    self._subscribers.setdefault(channel, {})[sub] = None
            except BaseException:
                self._remove(sub)
                await self._release_unused()
                raise

    async def detach(self, sub: Subscription) -> None:
        """Remove ``sub``; unsubscribe the broker from channels nobody wants any more.

        The local removal is immediate; the broker clean-up runs in its own task, so it
        completes even when the caller is being cancelled (a client went away).
        """
        self._remove(sub)
        if all(channel in self._subscribers for channel in sub.channels):
            return  # others still listen on every channel: nothing to release
        await asyncio.shield(asyncio.get_running_loop().create_task(self._locked_release()))

    def _remove(self, sub: Subscription) -> None:
        for channel in sub.channels:
            subs = self._subscribers.get(channel)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self._subscribers[channel]

    async def _locked_release(self) -> None:
        async with self._lock:
            await self._release_unused()

    async def _release_unused(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        for channel in [c for c in self._broker_channels if c not in self._subscribers]:
            self._broker_channels.discard(channel)
            try:
                await receiver.unsubscribe(channel)
            except Exception:  # the connection may be down: closing it below suffices
                logger.debug("unsubscribe from %r failed", channel, exc_info=True)
        if not self._subscribers:
            await self._stop_receiver()

    async def _stop_receiver(self) -> None:
        receiver, listener = self._receiver, self._listener
        self._receiver = self._listener = None
        self._broker_channels.clear()
        if listener is not None and listener is not asyncio.current_task():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if receiver is not None:
            try:
                await receiver.close()
            except Exception:
                logger.debug("closing the receiver failed", exc_info=True)

    # The listener --------------------------------------------------------------------

    async def _listen(self, receiver: Receiver) -> None:
        try:
            while True:
                try:
                    batch = await receiver.read()
                except ConnectionLost as exc:
                    for channel in await self._reconnect(receiver, exc):
                        self._fan_out_gap(channel, "reconnect")
                    continue
                self._fan_out(batch)
        except asyncio.CancelledError:
            raise
        except SubscriptionClosed as exc:
            await self._fail(exc)
        except Exception as exc:
            logger.exception("the broadcast listener of alias %r failed", self._broadcast.alias)
            await self._fail(SubscriptionClosed(f"the broadcast listener failed: {exc!r}"))

    async def _reconnect(self, receiver: Receiver, exc: Exception) -> set[str]:
        alias = self._broadcast.alias
        limit = self._broadcast.config.reconnect_timeout
        logger.warning("alias %r lost its broker connection (%s); reconnecting", alias, exc)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        delay = _BACKOFF_FIRST
        while True:
            try:
                lost = await receiver.reconnect()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if deadline is not None and loop.time() + delay > deadline:
                    raise SubscriptionClosed(
                        f"the broker of alias {alias!r} stayed unreachable for "
                        f"{limit} s (RECONNECT_TIMEOUT): {error}"
                    ) from error
                logger.debug("reconnect failed (%s); next try in %.2f s", error, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _BACKOFF_MAX)
            else:
                logger.info("alias %r reconnected; gap on %d channel(s)", alias, len(lost))
                return lost

    def _fan_out(self, batch: Sequence[Message]) -> None:
        # Decode each message once and hand every subscriber of a channel that
        # channel's events in one call: with many local subscribers the cost per
        # delivery is a list extend, and each subscriber wakes once per batch.
        decode = self._broadcast._decode
        subscribers = self._subscribers
        by_channel: dict[str, list[Event]] = {}
        for message in batch:
            if message.channel not in subscribers:
                continue
            try:
                event = decode(message)
            except Exception:
                logger.warning(
                    "skipped an undecodable message on channel %r (id %r)",
                    message.channel,
                    message.id,
                    exc_info=True,
                )
                continue
            events = by_channel.get(message.channel)
            if events is None:
                by_channel[message.channel] = [event]
            else:
                events.append(event)
        for channel, events in by_channel.items():
            for sub in subscribers.get(channel, ()):
                sub._put_many(events)

    def _fan_out_gap(self, channel: str, reason: str) -> None:
        event = gap_event(channel, reason)
        for sub in self._subscribers.get(channel, ()):
            sub._put(event)

    async def _fail(self, exc: SubscriptionClosed) -> None:
        async with self._lock:
            for subs in list(self._subscribers.values()):
                for sub in list(subs):
                    sub._close(exc)
            self._subscribers.clear()
            await self._stop_receiver()

    # Closing -------------------------------------------------------------------------

    def close_nowait(self) -> None:
        """End every subscription and release the broker; call on the hub's loop."""
        if self.closed:
            return
        self.closed = True
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                sub._close(None)
        self._subscribers.clear()
        if self._receiver is not None:
            asyncio.get_running_loop().create_task(self._locked_release())

    def close_threadsafe(self) -> None:
        """:meth:`close_nowait` from any thread."""
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.close_nowait()
        else:
            loop.call_soon_threadsafe(self.close_nowait)

    async def aclose(self) -> None:
        """End every subscription and wait until the broker connection is closed."""
        self.close_nowait()
        await self._locked_release()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def gap_event(channel: str, reason: str, **data: Any) -> Event:
    """The notice that events of ``channel`` may have been lost."""
    return Event(channel, GAP, {"reason": reason, **data}, "", utcnow())


class Subscription:
    """A subscriber's view of one or more channels: use as an async context manager.

    ``async for event in sub`` ends when the subscription or its alias is closed, and
    raises :class:`SubscriptionClosed` (or :class:`SubscriptionOverflow`) when it ended
    because the broker stayed away or the subscriber fell behind with
    ``OVERFLOW = "disconnect"``.
    """

    def __init__(
        self,
        broadcast: Broadcast,
        channels: tuple[str, ...],
        since: Mapping[str, str] | None = None,
    ) -> None:
        self.channels = channels
        #: Events this subscription dropped because its queue was full.
        self.dropped = 0
        #: With ``since``: whether every event after it was replayed (no gap notice),
        #: known once the subscription is open. None without ``since``.
        self.recovered: bool | None = None
        self._broadcast = broadcast
        self._since = dict(since or {})
        self._maxsize = broadcast.config.queue_size
        self._disconnect = broadcast.config.overflow == "disconnect"
        self._queue: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._hub: Hub | None = None
        self._held: list[Event] | None = None  # live events that arrive during replay
        self._ended: BaseException | None = None
        self._ended_normally = False

    def __repr__(self) -> str:
        return f"<Subscription {self._broadcast.alias}:{','.join(self.channels)}>"

    async def __aenter__(self) -> Subscription:
        if self._hub is not None:
            raise RuntimeError("this subscription is already open")
        hub = self._broadcast._hub()
        if self._since:
            self._held = []
        await hub.attach(self)
        self._hub = hub
        if self._since:
            try:
                await self._replay()
            except BaseException:
                await self.aclose()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Leave every channel; iteration ends. Called by ``async with`` on exit."""
        self._close(None)
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.detach(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._queue:
            return self._queue.popleft()
        try:
            return await self.get()
        except SubscriptionClosed:
            if self._ended_normally and not self._queue:
                raise StopAsyncIteration from None
            raise

    async def get(self, timeout: float | None = None) -> Event:
        """Return the next event, waiting at most ``timeout`` seconds.

        Raise ``TimeoutError`` when none came in time and :class:`SubscriptionClosed`
        once the subscription has ended and its queue is drained.
        """
        if self._queue:
            return self._queue.popleft()
        if self._ended is not None:
            raise self._ended
        if self._hub is None:
            raise RuntimeError("open the subscription first: async with broadcast.subscribe(...)")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # call_later rather than wait_for: no extra task or future per call on this
        # hot path (a subscriber waits once per event).
        expiry = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if expiry is not None:
                expiry.cancel()
        if self._queue:
            return self._queue.popleft()
        assert self._ended is not None
        raise self._ended

    # Fed by the hub --------------------------------------------------------------------

    def _put(self, event: Event) -> None:
        if self._held is not None:
            self._held.append(event)
        else:
            self._enqueue(event)

    def _put_many(self, events: list[Event]) -> None:
        if self._held is not None:
            self._held.extend(events)
            return
        queue = self._queue
        if self._ended is not None or len(queue) + len(events) > self._maxsize:
            for event in events:  # the slow path: overflow handling, one at a time
                self._enqueue(event)
            return
        queue.extend(events)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _enqueue(self, event: Event) -> None:
        if self._ended is not None:
            return
        queue = self._queue
        if len(queue) >= self._maxsize:
            self._overflow(event)
            return
        queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _overflow(self, event: Event) -> None:
        alias = self._broadcast.alias
        if self.recovered:
            self.recovered = False  # the replay itself overflowed the queue
        self.dropped += 1
        self._broadcast.dropped += 1
        if self._disconnect:
            logger.warning(
                "%r fell behind (%d queued, QUEUE_SIZE of alias %r): disconnected",
                self,
                len(self._queue),
                alias,
            )
            self._close(
                SubscriptionOverflow(
                    f"subscriber of {', '.join(self.channels)} fell behind: more than "
                    f"{self._maxsize} events queued (QUEUE_SIZE of alias {alias!r})"
                )
            )
            return
        # drop-oldest: the head of the queue becomes one notice counting what was lost.
        queue = self._queue
        head = queue[0] if queue else event
        gap_channel = head.channel
        if head.type == GAP and head.data.get("reason") == "overflow":
            queue.popleft()
            dropped = head.data["dropped"]
        else:
            dropped = 0
            logger.warning(
                "%r fell behind (QUEUE_SIZE %d of alias %r): dropping its oldest events",
                self,
                self._maxsize,
                alias,
            )
        if queue:
            queue.popleft()
            queue.append(event)
        dropped += 1  # the oldest event, or with no room at all the new one
        logger.debug("%r dropped an event (%d in this gap)", self, dropped)
        queue.appendleft(gap_event(gap_channel, "overflow", dropped=dropped))

    def _close(self, exc: BaseException | None) -> None:
        if self._ended is not None:
            return
        self._ended_normally = exc is None
        self._ended = exc or SubscriptionClosed(f"{self!r} is closed")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # Replay ---------------------------------------------------------------------------

    async def _replay(self) -> None:
        broadcast = self._broadcast
        backend = broadcast.backend
        newest: dict[str, Any] = {}
        self.recovered = True
        for channel, since in self._since.items():
            if not backend.supports_history:
                self.recovered = False
                self._enqueue(gap_event(channel, "history", since=since))
                continue
            page = await backend.ahistory(channel, limit=None, since=since)
            if page.gap:
                self.recovered = False
                self._enqueue(gap_event(channel, "history", since=since))
            newest[channel] = backend.id_key(since)
            for message in page.messages:
                self._enqueue(broadcast._decode(message))
                newest[channel] = backend.id_key(message.id)
        held, self._held = self._held or [], None
        for event in held:
            last = newest.get(event.channel)
            if last is None or event.type == GAP or backend.id_key(event.id) > last:
                self._enqueue(event)
