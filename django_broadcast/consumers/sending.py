"""Sending one connection's frames: at once where the server takes them, in order.

An ASGI ``send`` is a coroutine function, but daphne's (which hands the message to
Twisted) and uvicorn's (unless the client's socket buffer is full) finish without
ever waiting. :class:`Sender` runs a send's coroutine on the spot, in the caller's
pass, and only when the server does wait does it hand the rest of that send to a
task; until that task is done the connection is not :attr:`~Sender.free`, so its
frames keep their order. This lets the hub's fan-out write an event's frame to every
local client in one pass, without a task woken per client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from .outlet import Outlet

__all__ = ["Sender"]

logger = logging.getLogger("django_broadcast.consumers")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Yielded:
    """Awaits what a coroutine run by hand yielded (a future, or None for a bare
    ``sleep(0)``), the way a task would, whatever its outcome."""

    __slots__ = ("_yielded",)

    def __init__(self, yielded: Any) -> None:
        self._yielded = yielded

    def __await__(self) -> Generator[Any, None, None]:
        yielded = self._yielded
        if yielded is None:
            yield None
            return
        # The future's own outcome is the suspended coroutine's to read.
        while not yielded.done():
            yielded._asyncio_future_blocking = True  # as a future's own __await__ does
            yield yielded


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive ``coro``, suspended on ``yielded``, to its end."""
    while True:
        try:
            try:
                await _Yielded(yielded)
            except asyncio.CancelledError as exc:
                yielded = coro.throw(exc)
                continue
            yielded = coro.send(None)
        except StopIteration:
            return


class Sender:
    """Sends a connection's frames in order: at once where the server takes them.

    ``send`` is the server's own (event frames need no middleware); control frames
    may pass another (``via``). After a failed send the connection is :attr:`failed`
    and ``on_failure`` was called once.
    """

    __slots__ = ("_inflight", "_on_failure", "_outlet", "_send", "failed")

    def __init__(self, send: Send, outlet: Outlet, on_failure: Callable[[], None]) -> None:
        self._send = send
        self._outlet = outlet
        self._on_failure = on_failure
        self._inflight: asyncio.Task[None] | None = None
        #: Whether a send failed (the client is gone): nothing more is sent.
        self.failed = False

    @property
    def free(self) -> bool:
        """Whether a frame can go now: nothing in flight, nothing failed, and the
        server holds no more than ``MAX_BUFFER`` unsent (where that is known)."""
        return self._inflight is None and not self.failed and not self._outlet.behind()

    def send_now(self, message: dict[str, Any], via: Send | None = None) -> None:
        """Start sending ``message``: finished on return where the server did not
        wait, else in flight (the sender is not :attr:`free` until it is sent)."""
        coro = (via or self._send)(message)
        try:
            yielded = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        except Exception:
            self._fail()
            return
        self._inflight = asyncio.get_running_loop().create_task(self._complete(coro, yielded))

    async def _complete(self, coro: Any, yielded: Any) -> None:
        try:
            await _finish(coro, yielded)
        except Exception:
            self._fail()
        finally:
            self._inflight = None

    def _fail(self) -> None:
        if not self.failed:
            self.failed = True
            logger.debug("a WebSocket send failed: the client is gone", exc_info=True)
            self._on_failure()

    async def sent(self) -> bool:
        """Wait until no frame is in flight; False when a send failed."""
        while self._inflight is not None:
            await asyncio.wait([self._inflight])
        return not self.failed

    async def send(self, message: dict[str, Any], via: Send | None = None) -> None:
        """Send ``message`` after every frame before it; return once it is sent."""
        if await self.sent():
            self.send_now(message, via)
            await self.sent()
