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
ends with :class:`~django_broadcast.exceptions.SubscriptionClosed`, nobody hangs,
except the persistent ones: those stay, the hub keeps trying, and they get a gap
notice once the broker is back. This is the one reconnect policy of the package.

The hub knows its alias only through :class:`Hubs`: the backend, the decoder, the
alias's settings and counters, and one hub per event loop. It never sees the
:class:`~django_broadcast.broadcast.Broadcast` that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from ._timeouts import honour_cancellation, within
from .backends.base import READ_BATCH, Backend, ConnectionLost, Message, Receiver
from .conf import AliasConfig
from .events import SERVERS_CHANNEL, Event, gap_event
from .exceptions import BroadcastUnavailable, SubscriptionClosed
from .stats import Counters

__all__ = ["Hub", "Hubs", "Subscriber", "backoff"]

logger = logging.getLogger("django_broadcast.hub")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


def backoff() -> Iterator[float]:
    """The delays between attempts to reach a broker: exponential from 50 ms to 5 s,
    each taken at random between half and all of it (so that processes do not come
    back in step)."""
    delay = _BACKOFF_FIRST
    while True:
        yield delay * (0.5 + random.random())
        delay = min(delay * 2, _BACKOFF_MAX)


class Subscriber(Protocol):
    """What the hub needs of a subscriber (a
    :class:`~django_broadcast.subscription.Subscription`): its channels, whether it
    outlives outages, and where to put its events."""

    channels: tuple[str, ...]
    patterns: tuple[str, ...]
    persistent: bool

    def _put(self, event: Event) -> None: ...

    def _put_many(self, events: list[Event]) -> None:
        """Take the events of one channel, in order."""

    def _close(self, exc: BaseException | None) -> None:
        """End: normally (None) or with ``exc``."""


class Hubs:
    """What the subscriptions of one alias read from: its backend, its decoder, its
    settings and counters, and the hub of each event loop."""

    def __init__(
        self,
        backend: Backend,
        decode: Callable[[Message], Event],
        config: AliasConfig,
        counters: Counters,
    ) -> None:
        self.backend = backend
        self.decode = decode
        self.config = config
        self.counters = counters
        self._hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def current(self) -> Hub:
        """The running event loop's hub, made on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            hub = self._hubs.get(loop)
            if hub is None or hub.closed:
                hub = self._hubs[loop] = Hub(self, loop)
            return hub

    def census(self) -> tuple[dict[str, int], dict[str, int], int, int]:
        """Over every event loop: subscribers per channel, per pattern, subscribers
        in all, and broker subscriptions (channels and patterns) in all."""
        with self._lock:
            hubs = list(self._hubs.values())
        channels: dict[str, int] = {}
        patterns: dict[str, int] = {}
        everyone = 0
        held = 0
        for hub in hubs:
            # Copies taken at once: another loop may change them meanwhile.
            for name, subs in list(hub._subscribers.items()):
                channels[name] = channels.get(name, 0) + len(subs)
            for name, subs in list(hub._pattern_subscribers.items()):
                patterns[name] = patterns.get(name, 0) + len(subs)
            everyone += len(hub._everyone())
            held += len(hub._broker_channels) + len(hub._broker_patterns)
        return channels, patterns, everyone, held

    def close(self) -> None:
        """End every subscription, on every event loop; the hubs are made anew."""
        with self._lock:
            hubs = list(self._hubs.values())
            self._hubs.clear()
        for hub in hubs:
            hub.close_threadsafe()

    async def aclose(self) -> None:
        """:meth:`close`, waiting for the running loop's broker connection to close."""
        loop = asyncio.get_running_loop()
        with self._lock:
            hubs = list(self._hubs.items())
            self._hubs.clear()
        for hub_loop, hub in hubs:
            if hub_loop is loop:
                await hub.aclose()
            else:
                hub.close_threadsafe()


class Hub:
    """Holds one event loop's broker subscriptions for one alias."""

    def __init__(self, hubs: Hubs, loop: asyncio.AbstractEventLoop) -> None:
        self._hubs = hubs
        self._alias = hubs.config.alias
        # Weak: the hubs are keyed by loop in a WeakKeyDictionary.
        self._loop_ref = weakref.ref(loop)
        self._lock = asyncio.Lock()
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        self._broker_channels: set[str] = set()
        self._pattern_subscribers: dict[str, dict[Subscriber, None]] = {}
        self._broker_patterns: set[str] = set()
        # On backends with history: channel -> id of the last event handed out (or
        # the position the broker subscription started from).
        self._positions: dict[str, str] = {}
        self._track = hubs.backend.features.history
        self._receiver: Receiver | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()  # clear while the listener reconnects
        self.closed = False

    @property
    def channels(self) -> set[str]:
        """The channels this hub holds a broker subscription for."""
        return set(self._broker_channels)

    @property
    def patterns(self) -> set[str]:
        """The patterns this hub holds a broker subscription for."""
        return set(self._broker_patterns)

    def _everyone(self) -> list[Subscriber]:
        """Every subscriber, once."""
        found: dict[Subscriber, None] = {}
        for subs in (*self._subscribers.values(), *self._pattern_subscribers.values()):
            found.update(subs)
        return list(found)

    async def attach(self, sub: Subscriber) -> dict[str, str | None]:
        """Add ``sub`` to its channels, subscribing the broker where it is the first.

        Return each channel's position for ``sub`` (None without history): every
        event after it reaches ``sub``. Raise :class:`BroadcastUnavailable` when the
        broker cannot be reached within the alias's ``TIMEOUT``, reconnection
        included.
        """
        async with self._lock:
            if self.closed:
                raise SubscriptionClosed(f"broadcast alias {self._alias!r} is closed")
            positions: dict[str, str | None] = {}
            try:
                receiver = await self._ready_receiver()
                for channel in sub.channels:
                    # Registered before the broker confirms, so that nothing the
                    # listener reads meanwhile passes it by.
                    self._subscribers.setdefault(channel, {})[sub] = None
                    if channel in self._broker_channels:
                        positions[channel] = self._positions.get(channel)
                        continue
                    start = await receiver.subscribe(channel)
                    self._broker_channels.add(channel)
                    if start is not None:
                        self._positions.setdefault(channel, start)
                    positions[channel] = start
                for pattern in sub.patterns:
                    self._pattern_subscribers.setdefault(pattern, {})[sub] = None
                    if pattern not in self._broker_patterns:
                        await receiver.psubscribe(pattern)
                        self._broker_patterns.add(pattern)
                honour_cancellation()
            except BaseException as exc:
                self._remove(sub)
                await self._release_unused()
                if isinstance(exc, ConnectionLost):
                    raise self._unavailable(exc) from exc
                raise
            return positions

    async def _ready_receiver(self) -> Receiver:
        """The receiver, connected: opened if there is none, waited for (at most
        ``TIMEOUT``) while the listener reconnects it."""
        receiver = self._receiver
        if receiver is None:
            receiver = self._hubs.backend.receiver()
            await receiver.open()
            self._receiver = receiver
            self._connected.set()
            self._listener = asyncio.get_running_loop().create_task(self._listen(receiver))
            return receiver
        if not self._connected.is_set():
            try:
                await within(self._connected.wait(), self._hubs.config.timeout)
            except TimeoutError:
                raise self._unavailable(TimeoutError("still reconnecting")) from None
            if self._receiver is not receiver:  # the listener gave up meanwhile
                raise self._unavailable(ConnectionLost("the broker stayed away"))
        return receiver

    def _unavailable(self, exc: BaseException) -> BroadcastUnavailable:
        config = self._hubs.config
        return BroadcastUnavailable(
            f"alias {config.alias!r} is reconnecting to its broker and did not get "
            f"through within {config.timeout} s (TIMEOUT): {exc}"
        )

    async def detach(self, sub: Subscriber) -> None:
        """Remove ``sub``; unsubscribe the broker from channels nobody wants any more.

        The local removal is immediate; the broker clean-up runs in its own task, so it
        completes even when the caller is being cancelled (a client went away).
        """
        self._remove(sub)
        if all(channel in self._subscribers for channel in sub.channels) and all(
            pattern in self._pattern_subscribers for pattern in sub.patterns
        ):
            return  # others still listen on every channel: nothing to release
        await asyncio.shield(asyncio.get_running_loop().create_task(self._locked_release()))

    def _remove(self, sub: Subscriber) -> None:
        for names, registry in (
            (sub.channels, self._subscribers),
            (sub.patterns, self._pattern_subscribers),
        ):
            for name in names:
                subs = registry.get(name)
                if subs is not None:
                    subs.pop(sub, None)
                    if not subs:
                        del registry[name]

    async def _locked_release(self) -> None:
        async with self._lock:
            await self._release_unused()

    async def _release_unused(self) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        for channel in [c for c in self._broker_channels if c not in self._subscribers]:
            self._broker_channels.discard(channel)
            self._positions.pop(channel, None)
            try:
                await receiver.unsubscribe(channel)
            except Exception:  # the connection may be down: closing it below suffices
                logger.debug("unsubscribe from %r failed", channel, exc_info=True)
        for pattern in [p for p in self._broker_patterns if p not in self._pattern_subscribers]:
            self._broker_patterns.discard(pattern)
            try:
                await receiver.punsubscribe(pattern)
            except Exception:
                logger.debug("unsubscribe from pattern %r failed", pattern, exc_info=True)
        if not self._subscribers and not self._pattern_subscribers:
            await self._stop_receiver()

    async def _stop_receiver(self) -> None:
        receiver, listener = self._receiver, self._listener
        self._receiver = self._listener = None
        self._broker_channels.clear()
        self._broker_patterns.clear()
        self._positions.clear()
        self._connected.clear()
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
        unyielded = 0
        try:
            while True:
                try:
                    batch = await receiver.read()
                except ConnectionLost as exc:
                    self._connected.clear()
                    lost = await self._reconnect(receiver, exc)
                    self._connected.set()
                    self._hubs.counters.reconnects += 1
                    for channel in lost:
                        self._fan_out_gap(channel, "reconnect")
                    continue
                self._fan_out(batch)
                # A receiver with more at hand returns at once, without letting the
                # loop run: the subscribers woken run now (see READ_BATCH).
                unyielded += len(batch)
                if unyielded >= READ_BATCH:
                    unyielded = 0
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except SubscriptionClosed as exc:
            await self._fail(exc)
        except Exception as exc:
            logger.exception("the broadcast listener of alias %r failed", self._alias)
            await self._fail(SubscriptionClosed(f"the broadcast listener failed: {exc!r}"))

    async def _reconnect(self, receiver: Receiver, exc: Exception) -> set[str]:
        """Connect again, with backoff; after ``RECONNECT_TIMEOUT``, end the
        subscriptions that are not persistent and, if persistent ones remain, keep
        trying for them."""
        alias = self._alias
        limit = self._hubs.config.reconnect_timeout
        logger.warning("alias %r lost its broker connection (%s); reconnecting", alias, exc)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        delays = backoff()
        while True:
            try:
                lost = await receiver.reconnect()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = next(delays)
                if deadline is not None and loop.time() + delay > deadline:
                    closed = SubscriptionClosed(
                        f"the broker of alias {alias!r} stayed unreachable for "
                        f"{limit} s (RECONNECT_TIMEOUT): {error}"
                    )
                    if not self._end_transient(closed):
                        raise closed from error
                    deadline = None  # only persistent subscriptions remain: for ever
                logger.debug("reconnect failed (%s); next try in %.2f s", error, delay)
                await asyncio.sleep(delay)
            else:
                logger.info("alias %r reconnected; gap on %d channel(s)", alias, len(lost))
                return lost

    def _end_transient(self, exc: SubscriptionClosed) -> bool:
        """End the subscriptions that are not persistent; whether others remain."""
        remain = False
        for sub in self._everyone():
            if sub.persistent:
                remain = True
            else:
                sub._close(exc)
        if remain:
            logger.warning(
                "alias %r: the broker stayed away longer than RECONNECT_TIMEOUT; "
                "persistent subscriptions keep waiting for it",
                self._alias,
            )
        return remain

    def _fan_out(self, batch: Sequence[Message]) -> None:
        # Decode each message once and hand every subscriber of a channel that
        # channel's events in one call: with many local subscribers the cost per
        # delivery is a list extend, and each subscriber wakes once per batch.
        decode = self._hubs.decode
        subscribers = self._subscribers
        by_channel: dict[str, list[Event]] = {}
        by_pattern: dict[tuple[str, str], list[Event]] | None = None
        for message in batch:
            channel = message.channel
            pattern = message.pattern
            if pattern is None:
                if channel not in subscribers:
                    continue
            elif pattern not in self._pattern_subscribers:
                continue
            if message.gap is not None:
                event = gap_event(channel, message.gap)
                self._hubs.counters.gaps += len(subscribers.get(channel, ()))
            else:
                try:
                    event = decode(message)
                except Exception:
                    logger.warning(
                        "skipped an undecodable message on channel %r (id %r)",
                        channel,
                        message.id,
                        exc_info=True,
                    )
                    continue
            if pattern is not None:
                if by_pattern is None:
                    by_pattern = {}
                by_pattern.setdefault((pattern, channel), []).append(event)
                continue
            events = by_channel.get(channel)
            if events is None:
                by_channel[channel] = [event]
            else:
                events.append(event)
        positions = self._positions if self._track else None
        delivered = 0
        for channel, events in by_channel.items():
            if positions is not None:
                for event in reversed(events):
                    if event.id:
                        positions[channel] = event.id
                        break
            subs = subscribers.get(channel, ())
            for sub in subs:
                sub._put_many(events)
            if channel != SERVERS_CHANNEL:  # the heartbeat is not the site's traffic
                delivered += len(events) * len(subs)
        if by_pattern:
            for (pattern, channel), events in by_pattern.items():
                for sub in self._pattern_subscribers.get(pattern, ()):
                    if channel not in sub.channels:  # else it has them by name
                        sub._put_many(events)
                        delivered += len(events)
        self._hubs.counters.delivered += delivered

    def _fan_out_gap(self, name: str, reason: str) -> None:
        """A gap notice to the subscribers of channel (or pattern) ``name``."""
        event = gap_event(name, reason)
        subs = {**self._subscribers.get(name, {}), **self._pattern_subscribers.get(name, {})}
        for sub in subs:
            sub._put(event)
        self._hubs.counters.gaps += len(subs)

    async def _fail(self, exc: SubscriptionClosed) -> None:
        async with self._lock:
            for sub in self._everyone():
                sub._close(exc)
            self._subscribers.clear()
            self._pattern_subscribers.clear()
            await self._stop_receiver()

    # Closing -------------------------------------------------------------------------

    def close_nowait(self) -> None:
        """End every subscription and release the broker; call on the hub's loop."""
        if self.closed:
            return
        self.closed = True
        for sub in self._everyone():
            sub._close(None)
        self._subscribers.clear()
        self._pattern_subscribers.clear()
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
