"""The layer's persistent subscriptions: the hub hands their events straight to the
layer's routers, with no task of their own reading them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import GAP, Event
from ..exceptions import BroadcastUnavailable, SubscriptionClosed
from ..hub import backoff
from .mailboxes import running_loop

if TYPE_CHECKING:
    from ..broadcast import Broadcast
    from ..hub import Hub

__all__ = ["Reader", "Route"]

logger = logging.getLogger("django_broadcast.layers")

#: A router of the layer: takes the events of one broadcast channel, in order, and the
#: event loop it runs on, the reader's (on Python 3.11, ``asyncio.get_running_loop()``
#: makes a ``getpid`` system call: once per event was a tenth of routing it).
Route = Callable[[list[Event], asyncio.AbstractEventLoop], None]


class Reader:
    """One persistent broadcast subscription of the layer: a subscriber of the hub
    (its ``Subscriber`` protocol) whose events go straight to ``route``, in the hub's
    fan-out, without a queue or a task between them.

    The subscription outlives broker outages of any length: the core's reconnect
    policy keeps it, with a gap notice (logged here) once the broker is back. A
    ``strict`` reader's subscription must be made at once (``group_add`` raises when
    the broker cannot be reached, as channels_redis does), the error raised by
    :meth:`subscribed`; the others wait for the broker (``new_channel()`` never needs
    it).
    """

    # Slots: a layer with thousands of groups has a reader for each.
    __slots__ = (
        "_hub",
        "_hubs",
        "_opening",
        "_ready",
        "channels",
        "ended",
        "loop",
        "name",
        "route",
        "strict",
    )

    patterns: tuple[str, ...] = ()
    persistent = True

    def __init__(self, broadcast: Broadcast, name: str, route: Route, strict: bool) -> None:
        self.name = name
        self.channels: tuple[str, ...] = (name,)
        self.route = route
        self.strict = strict
        self.loop = asyncio.get_running_loop()
        #: Done when subscribed (dropped then: one object less per reader), or with
        #: the error that stopped it.
        self._ready: asyncio.Future[None] | None = self.loop.create_future()
        self._ready.add_done_callback(_retrieve)
        self._hubs = broadcast._hubs
        self._hub: Hub | None = None
        #: Stopped, or its subscription failed or was ended by the hub: it routes no
        #: more (the layer makes a new reader for its channel).
        self.ended = False
        #: The task that attaches it to the hub, until it has.
        self._opening: asyncio.Task[None] | None = self.loop.create_task(self._open())

    def __repr__(self) -> str:
        return f"<layer subscription {self.name}>"

    async def subscribed(self) -> None:
        """Wait until it is subscribed; raise what stopped it. Cancelling the wait
        leaves the reader be."""
        if self._ready is not None:
            await asyncio.shield(self._ready)

    @property
    def alive(self) -> bool:
        """Whether it is (or is about to be) subscribed, on a loop still open."""
        return not self.ended and not self.loop.is_closed()

    async def _open(self) -> None:
        """Attach to the running loop's hub; without ``strict``, again and again, with
        the hub's backoff, until the broker answers."""
        delays = backoff()
        try:
            while True:
                hub = self._hubs.current()
                try:
                    await hub.attach(self)
                except BroadcastUnavailable as exc:
                    if self.strict:
                        raise
                    delay = next(delays)
                    logger.debug("%r: %s; again in %.2f s", self, exc, delay)
                    await asyncio.sleep(delay)
                else:
                    self._hub = hub
                    self._opening = None  # done: one object less per subscription
                    ready, self._ready = self._ready, None
                    if ready is not None:
                        ready.set_result(None)
                    return
        except BaseException as exc:
            self.ended = True
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(
                    SubscriptionClosed(f"{self!r} was released")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
            if not isinstance(exc, Exception):
                raise

    # The hub's Subscriber protocol -----------------------------------------------

    def _put(self, event: Event) -> None:
        self._put_many([event])

    def _put_many(self, events: list[Event]) -> None:
        """Route the events of this channel (called by the hub's fan-out)."""
        if self.ended:
            return
        for event in events:
            if event.type == GAP:
                logger.warning("channel layer missed events on %r: %s", self.name, event.data)
                events = [event for event in events if event.type != GAP]
                if not events:
                    return
                break
        try:
            self.route(events, self.loop)
        except Exception:
            logger.exception("could not route an event of %r", self.name)

    def _close(self, exc: BaseException | None) -> None:
        """Ended by the hub: its alias closed (``exc`` None) or its listener failed."""
        if self.ended:
            return
        self.ended = True
        self._hub = None
        if exc is not None:
            logger.error("channel layer subscription of %r ended: %s", self.name, exc)

    # Stopping -------------------------------------------------------------------

    async def stop(self) -> None:
        """Leave the hub (from any thread)."""
        if self.loop is running_loop():
            await self._stop()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_stop_soon, self)

    async def _stop(self) -> None:
        self.ended = True
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await opening
        hub, self._hub = self._hub, None
        if hub is not None:
            try:
                await hub.detach(self)
            except Exception:  # the broker may be away: the hub releases what it can
                logger.debug("releasing %r failed", self, exc_info=True)


#: Stops asked for from another thread, kept until done.
_stopping: set[asyncio.Task[None]] = set()


def _stop_soon(reader: Reader) -> None:
    task = reader.loop.create_task(reader._stop())
    _stopping.add(task)
    task.add_done_callback(_stopping.discard)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a reader's first-subscription error as seen: its waiter may be gone."""
    if not future.cancelled():
        future.exception()
