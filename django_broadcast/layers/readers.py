"""The layer's persistent subscriptions: the hub hands their events straight to the
layer's routers, with no task of their own reading them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import GAP, Event
from ..exceptions import SubscriptionClosed
from .mailboxes import running_loop

if TYPE_CHECKING:
    from ..broadcast import Broadcast
    from ..subscription import Subscription

__all__ = ["Reader", "Route"]

logger = logging.getLogger("django_broadcast.layers")

#: A router of the layer: takes the events of one broadcast channel, in order.
Route = Callable[[list[Event]], None]


class Reader:
    """One persistent broadcast subscription of the layer, whose events go straight to
    ``route`` in the hub's fan-out (the subscription pushes them to this reader, its
    sink), without a queue or a task between them.

    The subscription outlives broker outages of any length: the core's reconnect
    policy keeps it, with a gap notice (logged here) once the broker is back. A
    ``strict`` reader's subscription must be made at once (``group_add`` raises when
    the broker cannot be reached, as channels_redis does), with the error in
    ``ready``; the others wait for the broker (``new_channel()`` never needs it).
    """

    def __init__(self, broadcast: Broadcast, name: str, route: Route, strict: bool) -> None:
        self.name = name
        self.route = route
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self._subscription = broadcast.subscribe(name, persistent=True)
        self._subscription.push_to(self)
        self._ended = False
        #: Reads what the subscription queued (it ended), until done.
        self._draining: asyncio.Task[None] | None = None
        #: The task that opens the subscription, until it has.
        self._opening: asyncio.Task[None] | None = self.loop.create_task(self._open(strict))

    def __repr__(self) -> str:
        return f"<layer subscription {self.name}>"

    @property
    def alive(self) -> bool:
        """Whether it is (or is about to be) subscribed, on a loop still open."""
        return not self._ended and not self.loop.is_closed()

    async def _open(self, strict: bool) -> None:
        """Open the subscription; without ``strict``, waiting for the broker."""
        try:
            await self._subscription.open(wait=not strict)
        except BaseException as exc:
            self._ended = True
            if not self.ready.done():
                self.ready.set_exception(
                    SubscriptionClosed(f"{self!r} was released")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
            if not isinstance(exc, Exception):
                raise
        else:
            self._opening = None  # done: one object less per subscription
            self.ready.set_result(None)

    # The subscription's Sink protocol ---------------------------------------------

    def take(self, subscription: Subscription, events: list[Event]) -> int:
        """Route the events of this channel (called in the hub's fan-out)."""
        if self._ended:
            return len(events)
        for event in events:
            if event.type == GAP:
                logger.warning("channel layer missed events on %r: %s", self.name, event.data)
                routed = [event for event in events if event.type != GAP]
                break
        else:
            routed = events
        if routed:
            try:
                self.route(routed)
            except Exception:
                logger.exception("could not route an event of %r", self.name)
        return len(events)

    def wake(self, subscription: Subscription) -> None:
        """The subscription queued events (or ended): read them in a task."""
        if not self._ended and self._draining is None and not self.loop.is_closed():
            self._draining = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        subscription = self._subscription
        try:
            while (event := await subscription.poll()) is not None:
                self.take(subscription, [event])
        except SubscriptionClosed as exc:
            logger.error("channel layer subscription of %r ended: %s", self.name, exc)
        finally:
            self._draining = None
            if subscription.closed:
                self._ended = True

    # Stopping -------------------------------------------------------------------

    async def stop(self) -> None:
        """Leave the channel (from any thread)."""
        if self.loop is running_loop():
            await self._stop()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_stop_soon, self)

    async def _stop(self) -> None:
        self._ended = True
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await opening
        try:
            await self._subscription.aclose()
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
