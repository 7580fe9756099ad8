"""Ready-made consumers for browsers: WebSocket and Server-Sent Events.

Route them with :mod:`django_broadcast.routing`; see its docstring for an ``asgi.py``.
"""

from .sse import EventStreamConsumer
from .websocket import BroadcastWebsocketConsumer

__all__ = ["BroadcastWebsocketConsumer", "EventStreamConsumer"]
