"""URL patterns and ready-wrapped routers for ``asgi.py``.

A whole ``asgi.py`` (daphne: ``daphne myproject.asgi:application``; uvicorn:
``uvicorn myproject.asgi:application``; the file is the same)::

    import os

    from django.core.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myproject.settings")
    django_asgi_app = get_asgi_application()  # before importing consumers

    from django_broadcast.routing import application

    application = application(django_asgi_app)

That serves the WebSocket protocol at ``/broadcast/ws/`` and Server-Sent Events at
``/broadcast/events/?channel=...``, both behind Channels' authentication (so the
policy sees ``request.user``: ``AuthMiddlewareStack`` for HTTP, its equivalent without
a ``send`` wrapper for WebSockets), the WebSocket also behind
``AllowedHostsOriginValidator``; every other HTTP request goes to Django, and the ASGI
``lifespan`` protocol is answered: on shutdown the event streams end and every
alias's broker connections are closed. The process announces itself in the live
server list (:mod:`django_broadcast.presence`) from its lifespan startup or its first
request. To add
your own consumers, pass their patterns: ``application(django_asgi_app,
websocket=[path("chat/<room>/", ChatConsumer.as_asgi())])``; workers for
``manage.py runworker`` by channel name: ``channel={"thumbnails":
ThumbnailWorker.as_asgi()}``; or build your own ``ProtocolTypeRouter`` from
:data:`websocket_urlpatterns` and :data:`http_urlpatterns`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import URLPattern, URLResolver, path, re_path
from django.urls.resolvers import RegexPattern

from . import presence
from .consumers import BroadcastWebsocketConsumer, EventStreamConsumer, shutdown
from .consumers.middleware import WebsocketAuthMiddleware
from .consumers.outlet import capture_server_send
from .consumers.settings import client_settings
from .registry import broadcasts

__all__ = [
    "application",
    "http_router",
    "http_urlpatterns",
    "lifespan",
    "websocket_router",
    "websocket_urlpatterns",
]

logger = logging.getLogger("django_broadcast.routing")

Patterns = Sequence[URLPattern | URLResolver]

#: The WebSocket consumer, unwrapped.
websocket_urlpatterns: list[URLPattern | URLResolver] = [
    path("broadcast/ws/", BroadcastWebsocketConsumer.as_asgi()),
]

#: The Server-Sent Events consumer, unwrapped.
http_urlpatterns: list[URLPattern | URLResolver] = [
    path("broadcast/events/", EventStreamConsumer.as_asgi()),
]


def _announce() -> None:
    """Start this process's heartbeat for the server list, unless it runs."""
    settings = client_settings()
    presence.start(broadcasts[settings.using], settings.heartbeat)


def _announcing(app: Any) -> Any:
    """Wrap an ASGI application so that its first connection starts the heartbeat (a
    server that sends no lifespan startup, such as daphne, is announced so)."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        _announce()
        return await app(scope, receive, send)

    return wrapper


def websocket_router(extra: Patterns = ()) -> Any:
    """The WebSocket patterns plus ``extra``, behind the origin check and auth
    (:class:`~django_broadcast.consumers.middleware.WebsocketAuthMiddleware`: what
    ``AuthMiddlewareStack`` puts in the scope, with no wrapper around ``send``)."""
    return _announcing(
        capture_server_send(
            AllowedHostsOriginValidator(
                WebsocketAuthMiddleware(URLRouter([*websocket_urlpatterns, *extra]))
            )
        )
    )


def _with_auth(pattern: URLPattern | URLResolver) -> URLPattern:
    if not isinstance(pattern, URLPattern):
        raise TypeError(f"pass path() or re_path() patterns, not {pattern!r}")
    make = re_path if isinstance(pattern.pattern, RegexPattern) else path
    return make(str(pattern.pattern), AuthMiddlewareStack(pattern.callback), name=pattern.name)


def http_router(django_app: Any, extra: Patterns = ()) -> Any:
    """The SSE patterns plus ``extra``, each behind auth; everything else to Django."""
    return _announcing(
        capture_server_send(
            URLRouter(
                [
                    *(_with_auth(pattern) for pattern in [*http_urlpatterns, *extra]),
                    re_path(r"", django_app),
                ]
            )
        )
    )


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI ``lifespan`` protocol: on startup, start the heartbeat of the server
    list; on shutdown, say goodbye, end the event streams and close every alias's
    broker connections."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _announce()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            presence.stop(broadcasts[client_settings().using])
            shutdown.shut_down()
            for instance in broadcasts.all(initialized_only=True):
                try:
                    await instance.aclose()
                except Exception:
                    logger.exception("closing alias %r failed", instance.alias)
            await send({"type": "lifespan.shutdown.complete"})
            return


def application(
    django_app: Any,
    *,
    websocket: Patterns = (),
    http: Patterns = (),
    channel: Mapping[str, Any] | None = None,
) -> Any:
    """A whole ``ProtocolTypeRouter``: the broadcast consumers, yours, then Django, and
    the ``lifespan`` protocol; with ``channel`` (channel name to consumer), the
    ``ChannelNameRouter`` that ``manage.py runworker`` serves."""
    protocols: dict[str, Any] = {
        "http": http_router(django_app, http),
        "websocket": websocket_router(websocket),
        "lifespan": lifespan,
    }
    if channel is not None:
        protocols["channel"] = ChannelNameRouter(dict(channel))
    return ProtocolTypeRouter(protocols)
