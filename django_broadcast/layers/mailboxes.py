"""The local queue of one channel: its messages with their expiry, and the receivers
waiting for them, on whatever event loop they wait."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["Mailbox", "running_loop"]


class Mailbox:
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
            if running_loop() is loop:
                waiter.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, waiter)
            return


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
