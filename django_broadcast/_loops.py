"""Per-event-loop resources, and releasing them when their loop closes.

Connections and hubs are kept per event loop. Some loops are short-lived: asgiref's
``async_to_sync``, called from a thread without a running loop (a WSGI view, a
management command, a Celery task), runs each call on a loop of its own that it
closes afterwards. Their resources must be released as the loop closes: they hold the
loop, so it would never be collected, and each call would leave a connection open.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable

from asgiref.sync import AsyncToSync

__all__ = ["at_close", "is_throwaway"]

logger = logging.getLogger("django_broadcast.hub")

_lock = threading.Lock()
_cleanups: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[Callable[[], Awaitable[None]]]
] = weakref.WeakKeyDictionary()


def at_close(loop: asyncio.AbstractEventLoop, cleanup: Callable[[], Awaitable[None]]) -> None:
    """Run ``cleanup()`` on ``loop`` just before ``loop.close()`` closes it.

    A loop whose ``close`` cannot be wrapped (a compiled loop class without instance
    attributes) keeps its resources until they are closed explicitly.
    """
    with _lock:
        pending = _cleanups.get(loop)
        if pending is not None:
            pending.append(cleanup)
            return
        try:
            loop.close = _closing(loop)  # type: ignore[method-assign]
        except AttributeError:
            return
        _cleanups[loop] = [cleanup]


def _closing(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    def close() -> None:
        with _lock:
            cleanups = _cleanups.pop(loop, [])
        del loop.close  # the class's own close again
        if cleanups and not loop.is_running() and not loop.is_closed():
            loop.run_until_complete(_run(cleanups))
        loop.close()

    return close


async def _run(cleanups: list[Callable[[], Awaitable[None]]]) -> None:
    for cleanup in cleanups:
        try:
            await cleanup()
        except Exception:
            logger.debug("releasing a closing event loop's resource failed", exc_info=True)


def is_throwaway(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` was made by ``async_to_sync`` for one call from sync code: it
    runs nothing else, so that call may block it (and take the sync path)."""
    return loop in getattr(AsyncToSync, "loop_thread_executors", {})
