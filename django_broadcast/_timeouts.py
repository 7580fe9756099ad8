"""Waiting with a timeout without losing a cancellation.

``asyncio.wait_for`` on Python 3.10 and 3.11 returns the inner result when the waiting
task is cancelled at the moment the inner awaitable completes, swallowing the
cancellation (CPython issue gh-86296): a task being stopped then runs on. ``within``
keeps the cancellation: ``asyncio.timeout`` where there is one (3.11+), else a task
waited for with ``asyncio.wait``, which never swallows it. Libraries we call use
``wait_for`` themselves (redis-py, to write a command), so :func:`honour_cancellation`
re-raises, on 3.11, a cancellation that was swallowed below us.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["honour_cancellation", "within"]

T = TypeVar("T")

if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[T], timeout: float) -> T:
        """Await ``awaitable``; raise ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def within(awaitable: Awaitable[T], timeout: float) -> T:
        """Await ``awaitable``; raise ``TimeoutError`` after ``timeout`` seconds."""
        task = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            raise TimeoutError()
        return task.result()


def honour_cancellation() -> None:
    """Raise ``CancelledError`` if the current task was cancelled and the
    cancellation got lost on the way (Python 3.11+; a no-op before)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError()
