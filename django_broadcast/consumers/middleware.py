"""Authentication for WebSocket connections, without a wrapper around ``send``.

Channels' ``AuthMiddlewareStack`` is three middlewares: cookies, then the session
(whose ``send`` wrapper saves a modified session on an HTTP response), then the user.
A WebSocket sends no HTTP response, so for it that wrapper only costs every frame a
call, and each layer costs every connection a copy of the scope and a coroutine held
for the connection's life. :class:`WebsocketAuthMiddleware` puts the same
``cookies``, ``session`` and ``user`` in the scope, in one step, and hands the inner
application the server's ``send`` as it is.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import UserLazyObject, get_user
from django.conf import settings
from django.http.cookie import parse_cookie
from django.utils.functional import LazyObject

__all__ = ["WebsocketAuthMiddleware"]


class WebsocketAuthMiddleware:
    """``AuthMiddlewareStack`` for WebSocket routes: ``scope["cookies"]``,
    ``scope["session"]`` (from the session cookie, as ``SessionMiddleware`` sets it)
    and ``scope["user"]`` (resolved before the inner application runs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if "headers" not in scope:
            raise ValueError("WebsocketAuthMiddleware needs a scope with headers")
        cookies: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"cookie":
                cookies = parse_cookie(value.decode("latin1"))
                break
        scope = dict(scope, cookies=cookies)
        if "session" not in scope:
            session: Any = LazyObject()
            store = import_module(settings.SESSION_ENGINE).SessionStore
            session._wrapped = store(cookies.get(settings.SESSION_COOKIE_NAME))
            scope["session"] = session
        if "user" not in scope:
            user = UserLazyObject()
            scope["user"] = user
            user._wrapped = await get_user(scope)
        return await self.inner(scope, receive, send)
