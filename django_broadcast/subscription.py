"""``Subscription``: one subscriber's bounded view of one or more channels.

The hub hands it live events; it keeps them in a queue of at most ``QUEUE_SIZE``
events and applies the alias's ``OVERFLOW`` policy when the subscriber falls behind.
A subscription opened with ``since`` first replays history, one page at a time as the
subscriber reads, so that memory stays bounded however far back it starts, then goes
live without losing or repeating an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .backends.base import Message
from .events import GAP, Event, gap_event
from .exceptions import BroadcastUnavailable, SubscriptionClosed, SubscriptionOverflow
from .hub import backoff

if TYPE_CHECKING:
    from .hub import Hub, Hubs

__all__ = ["Sink", "Subscription"]

logger = logging.getLogger("django_broadcast.hub")


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _NoEvents(deque[Event]):
    """The queue of every subscription that has queued nothing yet: one shared empty
    deque (an empty deque is most of a kilobyte, and a subscription whose sink takes
    its events never queues). Whatever would add to it makes the subscription's own."""

    def append(self, event: Event) -> None:
        raise RuntimeError("the shared empty queue was written to")

    def appendleft(self, event: Event) -> None:
        raise RuntimeError("the shared empty queue was written to")

    def extend(self, events: Iterable[Event]) -> None:
        raise RuntimeError("the shared empty queue was written to")


_NO_EVENTS = _NoEvents()


class Sink(Protocol):
    """Where a subscription pushes its events as the hub fans them out (see
    :meth:`Subscription.push_to`)."""

    def take(self, subscription: Subscription, events: list[Event]) -> int:
        """Deliver ``events`` (of one channel, in order) at once, in the fan-out's
        pass, as many as can be; return how many. The subscription queues the rest
        (its ``QUEUE_SIZE`` and ``OVERFLOW`` apply) and calls :meth:`wake`."""

    def wake(self, subscription: Subscription) -> None:
        """``subscription`` has events queued, or has ended: read them with
        :meth:`Subscription.poll` until :attr:`Subscription.pending` is false."""


class _Replay:
    """Where the replay of one channel stands.

    ``cursor`` is the id of the last event read from history; the replay is over
    once it reaches ``target``, the channel's position when the subscription opened
    (every later event reaches the subscription live and is ``held`` meanwhile).
    """

    __slots__ = ("cursor", "held", "target")

    def __init__(self, cursor: str, target: Any) -> None:
        self.cursor = cursor
        self.target = target
        self.held: list[Event] = []


class Subscription:
    """A subscriber's view of one or more channels: ``async with`` it, or :meth:`open`
    it and :meth:`aclose` it.

    ``async for event in sub`` ends when the subscription or its alias is closed, and
    raises :class:`SubscriptionClosed` (or :class:`SubscriptionOverflow`) when it ended
    because the broker stayed away or the subscriber fell behind with
    ``OVERFLOW = "disconnect"``. A ``persistent`` subscription outlives broker outages
    of any length: instead of ending after ``RECONNECT_TIMEOUT`` it waits, and gets a
    gap notice once the broker is back.
    """

    def __init__(
        self,
        hubs: Hubs,
        channels: tuple[str, ...],
        since: Mapping[str, str] | None = None,
        *,
        patterns: tuple[str, ...] = (),
        persistent: bool = False,
    ) -> None:
        self.channels = channels
        #: Patterns whose matching channels it receives (``chat.*``).
        self.patterns = patterns
        #: Whether it outlives outages longer than ``RECONNECT_TIMEOUT``.
        self.persistent = persistent
        #: Events this subscription lost because it fell behind (``OVERFLOW``).
        self.dropped = 0
        #: With ``since``: whether every event after it was replayed (no gap notice),
        #: known once the subscription is open. None without ``since``.
        self.recovered: bool | None = None
        #: On backends with history, each channel's position: the id after which
        #: every event reaches this subscription. Known once it is open (the newest
        #: id then, or ``since``), it moves on as events are read: a subscriber that
        #: reconnects resumes with ``since=sub.positions``. Empty on other backends.
        self.positions: dict[str, str] = {}
        self._hubs = hubs
        self._backend = hubs.backend
        self._decode = hubs.decode
        self._alias = hubs.config.alias
        self._since = dict(since or {})
        self._maxsize = hubs.config.queue_size
        self._disconnect = hubs.config.overflow == "disconnect"
        self._track = hubs.backend.features.history
        self._queue: deque[Event] = _NO_EVENTS
        # channel -> events dropped since its overflow notice was last read. Those
        # notices come before every queued event.
        self._gaps: dict[str, int] = {}
        # Replayed history, read before the queue: at most one page. Made when a
        # replay starts (an empty deque is most of a kilobyte; most never replay).
        self._replayed: deque[Event] | None = None
        self._replays: dict[str, _Replay] = {}
        # Whether anything but the queue must be looked at: the fast path's one test.
        self._special = False
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._hub: Hub | None = None
        self._ended: BaseException | None = None
        self._ended_normally = False
        self._overflowed = False

    def __repr__(self) -> str:
        return f"<Subscription {self._alias}:{','.join((*self.channels, *self.patterns))}>"

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (closed, fallen behind with ``OVERFLOW =
        "disconnect"``, or given up on the broker); queued events may remain."""
        return self._ended is not None

    @property
    def queued(self) -> int:
        """How many events this subscription holds in memory, waiting to be read."""
        held = sum(len(replay.held) for replay in self._replays.values())
        return len(self._queue) + len(self._replayed or ()) + len(self._gaps) + held

    @property
    def pending(self) -> bool:
        """Whether :meth:`poll` has something to hand out at once: queued events,
        history still to replay, or the end of a subscription that failed."""
        return bool(
            self._queue or self._special or (self._ended is not None and not self._ended_normally)
        )

    def push_to(self, sink: Sink | None) -> None:
        """Hand events to ``sink`` as the hub fans them out, instead of waking a
        reader: while nothing is queued, each batch goes to :meth:`Sink.take` in the
        fan-out's own pass; what the sink cannot take is queued as usual, and the
        sink is woken to read it with :meth:`poll`. None goes back to reading."""
        self._sink = sink
        if sink is not None and self.pending:
            sink.wake(self)

    # Opening and closing -------------------------------------------------------------

    async def open(self, *, wait: bool = False) -> Subscription:
        """Start receiving: once this returns, every event published afterwards is
        received, and with ``since`` the replay has begun (``recovered`` is known).

        Raise :class:`BroadcastUnavailable` when the broker cannot be reached within
        the alias's ``TIMEOUT``; with ``wait``, keep trying instead, with the backoff
        the hub reconnects with, until it can (or the caller is cancelled).
        """
        if self._hub is not None or self._ended is not None:
            raise RuntimeError("this subscription was opened already")
        delays = backoff()
        while True:
            try:
                await self._open()
            except BroadcastUnavailable as exc:
                if not wait:
                    raise
                delay = next(delays)
                logger.debug(
                    "%r: the broker is unavailable (%s); again in %.2f s", self, exc, delay
                )
                await asyncio.sleep(delay)
            else:
                return self

    async def _open(self) -> None:
        hub = self._hubs.current()
        backend = self._backend
        if self._track:
            # Live events of a resumed channel are held until its replay is over.
            for channel, since in self._since.items():
                self._replays[channel] = _Replay(since, None)
        self._special = bool(self._replays)
        self._hub = hub
        try:
            positions = await hub.attach(self)
            if self._track:
                self.positions = {c: p for c, p in positions.items() if p is not None}
                origin = backend.features.origin or ""
                for channel, replay in self._replays.items():
                    self.positions[channel] = replay.cursor
                    key = backend.id_key(positions[channel] or origin)
                    replay.target = key if replay.target is None else max(replay.target, key)
            if self._since:
                await self._start_replay()
        except BaseException:
            await self._detach()
            self._reset()
            raise

    def _reset(self) -> None:
        """Forget a failed attempt to open, so that it can be made again."""
        self._replays.clear()
        self._replayed = None
        self._queue.clear()
        self._gaps.clear()
        self._special = False
        self.positions = {}
        self.recovered = None

    async def __aenter__(self) -> Subscription:
        return await self.open()

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
        if self._overflowed and self._queue:
            self._count_dropped(len(self._queue))  # fell behind: these are never read
            self._queue.clear()
        await self._detach()

    async def _detach(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            await hub.detach(self)

    # Reading -------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._queue and not self._special:
            event = self._queue.popleft()
            if self._track and event.id:
                self.positions[event.channel] = event.id
            return event
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
        while True:
            event = await self.poll()
            if event is not None:
                return event
            if self._ended is not None:
                raise self._ended
            if self._hub is None:
                raise RuntimeError("open the subscription first: async with broadcast.subscribe()")
            if not await self._wait(timeout):
                raise TimeoutError()

    async def poll(self) -> Event | None:
        """The next event that needs no waiting for a publish (history pages are
        read meanwhile), or None when there is none.

        Raise :class:`SubscriptionClosed` once a subscription that failed (fell
        behind with ``OVERFLOW = "disconnect"``, or lost its broker) is drained; one
        closed normally just has nothing more.
        """
        while True:
            if self._replays and not self._replayed and self._ended is None:
                await self._replay_page()
                continue
            event = self._next()
            if event is not None:
                if self._track and event.id:
                    self.positions[event.channel] = event.id
                return event
            if self._ended is not None and not self._ended_normally:
                raise self._ended
            return None

    def _next(self) -> Event | None:
        if self._special:
            if self._gaps:
                channel = next(iter(self._gaps))
                dropped = self._gaps.pop(channel)
                self._refresh_special()
                self._hubs.counters.gaps += 1
                return gap_event(channel, "overflow", dropped=dropped)
            if self._replayed:
                event = self._replayed.popleft()
                self._refresh_special()
                return event
        if self._queue:
            return self._queue.popleft()
        return None

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for an event or the end; False when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # call_later rather than wait_for: no extra task per call on this hot path.
        expiry = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            return False
        finally:
            self._waiter = None
            if expiry is not None:
                expiry.cancel()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._sink is not None:
            self._sink.wake(self)

    def _refresh_special(self) -> None:
        self._special = bool(self._gaps or self._replayed or self._replays)

    # Fed by the hub ------------------------------------------------------------------

    def _put(self, event: Event) -> None:
        self._put_many([event])

    def _put_many(self, events: list[Event]) -> None:
        """Take the events of one channel, in order."""
        if self._replays:
            replay = self._replays.get(events[0].channel)
            if replay is not None:
                self._hold(replay, events)
                return
        queue = self._queue
        sink = self._sink
        if sink is not None and not queue and not self._special and self._ended is None:
            taken = sink.take(self, events)
            if taken:
                if self._track:
                    for event in reversed(events[:taken]):
                        if event.id:
                            self.positions[event.channel] = event.id
                            break
                if taken == len(events):
                    return
                events = events[taken:]
        if self._ended is not None or len(queue) + len(events) > self._maxsize:
            for event in events:  # the slow path: overflow handling, one at a time
                self._enqueue(event)
            return
        if queue is _NO_EVENTS:
            queue = self._queue = deque()
        queue.extend(events)
        self._wake()

    def _enqueue(self, event: Event) -> None:
        if self._ended is not None:
            if self._overflowed:
                self._count_dropped(1)  # disconnected for falling behind: lost
            return
        if len(self._queue) >= self._maxsize:
            self._overflow(event)
            return
        if self._queue is _NO_EVENTS:
            self._queue = deque()
        self._queue.append(event)
        self._wake()

    def _count_dropped(self, count: int) -> None:
        self.dropped += count
        self._hubs.counters.dropped += count

    def _overflow(self, event: Event) -> None:
        alias = self._alias
        if self.recovered:
            self.recovered = False
        if self._disconnect:
            self._overflowed = True
            self._count_dropped(1)
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
        # drop-oldest: the oldest event goes, counted in its channel's notice, which
        # is read before anything queued. A notice at the head stays there.
        queue = self._queue
        oldest = queue.popleft()
        if oldest.type == GAP and queue:
            oldest, notice = queue.popleft(), oldest
            queue.appendleft(notice)
        queue.append(event)
        if not self._gaps:
            logger.warning(
                "%r fell behind (QUEUE_SIZE %d of alias %r): dropping its oldest events",
                self,
                self._maxsize,
                alias,
            )
        if oldest.type == GAP:  # only notices were queued: keep saying so
            self._gaps.setdefault(oldest.channel, 0)
        else:
            self._gaps[oldest.channel] = self._gaps.get(oldest.channel, 0) + 1
            self._count_dropped(1)
        self._special = True
        self._wake()

    def _close(self, exc: BaseException | None) -> None:
        if self._ended is not None:
            return
        self._ended_normally = exc is None
        self._ended = exc or SubscriptionClosed(f"{self!r} is closed")
        self._wake()

    # Replay --------------------------------------------------------------------------

    def _hold(self, replay: _Replay, events: list[Event]) -> None:
        held = replay.held
        held.extend(events)
        if len(held) > self._maxsize:
            # Too many live events to hold while the replay catches up: forget them
            # and read them from history instead, up to the newest one forgotten.
            newest = next((e for e in reversed(held) if e.id), None)
            if newest is not None:
                key = self._backend.id_key(newest.id)
                replay.target = key if replay.target is None else max(replay.target, key)
            replay.held = [e for e in held if not e.id]  # keep the gap notices

    async def _start_replay(self) -> None:
        backend = self._backend
        self.recovered = True
        if not self._track:
            for channel, since in self._since.items():
                self.recovered = False
                self._hubs.counters.gaps += 1
                self._enqueue(gap_event(channel, "history", since=since))
            return
        # One page per channel for now, small enough that all of them together fit
        # in one QUEUE_SIZE; the rest is read as the subscriber catches up.
        limit = max(1, self._maxsize // len(self._replays))
        for channel in list(self._replays):
            since = self._replays[channel].cursor
            page = await backend.ahistory(channel, limit=limit, since=since)
            if page.gap:
                self._replay_gap(channel, since)
            self._take_page(channel, page.messages, limit)
        self._refresh_special()

    async def _replay_page(self) -> None:
        """Read the next page of the first channel still replaying."""
        channel, replay = next(iter(self._replays.items()))
        try:
            page = await self._backend.ahistory(channel, limit=self._maxsize, since=replay.cursor)
        except BroadcastUnavailable as exc:
            logger.warning("%r could not read the history of %r: %s", self, channel, exc)
            self._replay_gap(channel, replay.cursor)
            self._finish_replay(channel)
            return
        if page.gap:
            self._replay_gap(channel, replay.cursor)
        self._take_page(channel, page.messages, self._maxsize)
        self._refresh_special()

    def _replay_queue(self) -> deque[Event]:
        if self._replayed is None:
            self._replayed = deque()
        return self._replayed

    def _replay_gap(self, channel: str, since: str) -> None:
        self.recovered = False
        self._hubs.counters.gaps += 1
        self._replay_queue().append(gap_event(channel, "history", since=since))

    def _take_page(self, channel: str, messages: Sequence[Message], limit: int) -> None:
        """Queue a page of history, up to the replay's target: every later event
        reaches the subscription live (held meanwhile), so it is not taken twice."""
        id_key = self._backend.id_key
        replay = self._replays[channel]
        done = len(messages) < limit
        for message in messages:
            key = id_key(message.id)
            if key > replay.target:
                done = True
                break
            self._replay_queue().append(self._decode(message))
            replay.cursor = message.id
            if key == replay.target:
                done = True
                break
        if done:
            self._finish_replay(channel)

    def _finish_replay(self, channel: str) -> None:
        """Go live: the held events the replay did not already deliver are queued."""
        replay = self._replays.pop(channel)
        id_key = self._backend.id_key
        cursor = id_key(replay.cursor)
        for event in replay.held:
            if not event.id or id_key(event.id) > cursor:
                self._enqueue(event)
        self._refresh_special()
