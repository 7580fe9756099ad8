"""The layer's persistent subscriptions, each with the task that routes its events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..events import GAP, Event
from ..exceptions import BroadcastUnavailable, SubscriptionClosed
from .mailboxes import running_loop

if TYPE_CHECKING:
    from .layer import BroadcastChannelLayer

__all__ = ["Reader"]

logger = logging.getLogger("django_broadcast.layers")


class Reader:
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
        if self.loop is running_loop():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a reader's first-subscription error as seen: its waiter may be gone."""
    if not future.cancelled():
        future.exception()
