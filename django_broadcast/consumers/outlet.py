"""How much a server holds, unsent, for one client: the consumers' flow control.

ASGI gives an application no way to learn whether its client reads what it is sent.
uvicorn (and hypercorn) make ``await send()`` wait while the client's socket buffer is
full, so a client that stops reading stalls its own forwarding and its subscriptions'
``OVERFLOW`` policy applies. daphne does not: every ``send()`` is appended to the
Twisted transport's buffer at once, so a client that stops reading would grow the
server's memory without limit while its queue never fills.

:class:`Outlet` closes that gap. Where the server is daphne, it reads the size of the
transport's unsent buffer; the consumers stop taking events for a client that holds
more than ``BROADCAST_CLIENTS["MAX_BUFFER"]`` bytes unsent until it drains, so the
subscription's queue fills and ``OVERFLOW`` bounds the memory, as on uvicorn. On other
servers it measures nothing and relies on ``send()`` waiting.

The outlet needs the server's own ``send`` callable, before any middleware wraps it:
the routing of :mod:`django_broadcast.routing` captures it (:func:`capture_server_send`)
for the connection's task, where :func:`server_send` reads it. Not in the scope: a
scope copied to add it would cost every connection the copy.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["Outlet", "capture_server_send", "server_send"]

_server_send: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "django_broadcast.server_send", default=None
)

#: Seconds between two looks at a stalled client's buffer.
POLL_INTERVAL = 0.05


def _twisted_backlog(transport: Any) -> int:
    """Bytes a Twisted transport (and those it wraps, as TLS does) has not yet sent."""
    total = 0
    seen = 0
    while transport is not None and seen < 4:
        data = getattr(transport, "dataBuffer", None)
        if isinstance(data, bytes):
            total += len(data) - int(getattr(transport, "offset", 0))
            total += int(getattr(transport, "_tempDataLen", 0))
        transport = getattr(transport, "transport", None)
        seen += 1
    return total


def _probe(send: Any) -> Callable[[], int] | None:
    """A function returning the server's unsent bytes, where the server is known."""
    # daphne hands each application functools.partial(server.handle_reply, protocol).
    if isinstance(send, functools.partial) and send.args:
        owner = getattr(send.func, "__self__", None)
        if type(owner).__module__.startswith("daphne."):
            protocol = send.args[0]
            return lambda: _twisted_backlog(getattr(protocol, "transport", None))
    return None


class Outlet:
    """The unsent bytes a server holds for one connection, where they can be read."""

    __slots__ = ("_backlog", "limit")

    def __init__(self, send: Any, limit: int) -> None:
        self.limit = limit
        self._backlog = _probe(send)

    @property
    def measured(self) -> bool:
        """Whether this server's buffer can be read (daphne); else ``send()`` waits."""
        return self._backlog is not None

    def backlog(self) -> int:
        """Bytes sent by the application that the server has not written out yet."""
        return 0 if self._backlog is None else self._backlog()

    def behind(self) -> bool:
        """Whether the client holds more than ``limit`` bytes unsent."""
        return self._backlog is not None and self._backlog() > self.limit

    async def drained(self, give_up: Callable[[], bool]) -> None:
        """Wait until the client is no longer behind, or ``give_up()`` is true."""
        while self.behind() and not give_up():
            await asyncio.sleep(POLL_INTERVAL)


def server_send() -> Any:
    """The server's own ``send`` of the running connection, where the application
    was wrapped with :func:`capture_server_send`; else None."""
    return _server_send.get()


def capture_server_send(app: Any) -> Any:
    """Wrap an ASGI application so that :func:`server_send` returns the server's
    ``send`` within it."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        token = _server_send.set(send)
        try:
            return await app(scope, receive, send)
        finally:
            _server_send.reset(token)

    return wrapper
