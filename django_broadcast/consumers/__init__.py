"""Ready-made consumers for browsers: WebSocket and Server-Sent Events.

Route them with :mod:`django_broadcast.routing`; see its docstring for an ``asgi.py``.
They need Django Channels; this package imports it only when a consumer is used, so
that its settings (``BROADCAST_CLIENTS``, :mod:`.settings`) can be checked without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sse import EventStreamConsumer
    from .websocket import BroadcastWebsocketConsumer

__all__ = ["BroadcastWebsocketConsumer", "EventStreamConsumer"]


def __getattr__(name: str) -> Any:
    if name == "BroadcastWebsocketConsumer":
        from .websocket import BroadcastWebsocketConsumer

        return BroadcastWebsocketConsumer
    if name == "EventStreamConsumer":
        from .sse import EventStreamConsumer

        return EventStreamConsumer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
