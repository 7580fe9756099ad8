"""Ending the event streams of a process when its server shuts down.

A Server-Sent Events response never ends by itself, and uvicorn's graceful shutdown
waits for every open response to end before it sends the application the lifespan
shutdown: one open ``EventSource`` would keep it waiting for ever (or until
``--timeout-graceful-shutdown`` cancels everything). So the streams end themselves:

- on ``lifespan.shutdown``, for servers that send it first (the lifespan handler of
  :func:`django_broadcast.routing.application` calls :func:`shut_down`);
- on uvicorn, by watching its ``should_exit`` flag, which its signal handler sets on
  SIGTERM or SIGINT: a task of the process's event loop looks at it twice a second
  while streams are open.

daphne needs neither: it ends its applications itself. A stream that ends this way
tells its browser to come back (``EventSource`` reconnects by itself, to whichever
server is up, and resumes from its ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from typing import Any, Protocol

__all__ = ["Stoppable", "register", "shut_down"]

logger = logging.getLogger("django_broadcast.consumers")

#: Seconds between two looks at uvicorn's ``should_exit``.
WATCH_INTERVAL = 0.5


class Stoppable(Protocol):
    """What a stream offers the watcher."""

    def stop(self) -> None:
        """End the stream soon, cleanly; called on the stream's event loop."""


_streams: weakref.WeakSet[Any] = weakref.WeakSet()
_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def register(stream: Stoppable) -> None:
    """Have ``stream`` stopped when the server shuts down (it is held weakly)."""
    _streams.add(stream)
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(loop)
    if (watcher is None or watcher.done()) and _uvicorn_server() is not None:
        _watchers[loop] = loop.create_task(_watch())


def shut_down() -> None:
    """Stop every registered stream: the server is going down."""
    streams = list(_streams)
    if streams:
        logger.info("the server is shutting down: ending %d event stream(s)", len(streams))
    for stream in streams:
        stream.stop()


def _uvicorn_server() -> Any:
    """The running uvicorn ``Server``, found through the signal handler it installed."""
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except ValueError:  # pragma: no cover - not on the main thread's interpreter
        return None
    server = getattr(handler, "__self__", None)
    if server is not None and hasattr(server, "should_exit"):
        return server
    return None


async def _watch() -> None:
    while _streams:
        server = _uvicorn_server()
        if server is None:
            return
        if server.should_exit:
            shut_down()
            return
        await asyncio.sleep(WATCH_INTERVAL)
