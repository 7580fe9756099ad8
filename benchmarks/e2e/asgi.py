"""The benchmark server: ``daphne benchmarks.e2e.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.settings")
django_asgi_app = get_asgi_application()

import json  # noqa: E402
from typing import Any  # noqa: E402

from channels.consumer import get_handler_name  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from django_broadcast.routing import application as broadcast_application  # noqa: E402


class GroupConsumer(AsyncWebsocketConsumer):
    """What existing Channels code looks like: ``groups`` and a handler per type."""

    groups = ["bench"]  # noqa: RUF012 (Channels reads it as a class attribute)

    async def bench_event(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"t": message["t"], "n": message["n"]}))


class GroupConsumerWithoutDbCleanup(GroupConsumer):
    """The diagnostic cases: ``dispatch`` without the ``aclose_old_connections()``
    that Channels (4.2 and later) runs before every handler, a thread hop through the
    one thread-sensitive executor per message per consumer."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        await getattr(self, get_handler_name(message))(message)


CASE = os.environ.get("E2E_CASE", "consumer")
if CASE == "consumer":
    application = broadcast_application(django_asgi_app)
else:
    consumer = GroupConsumerWithoutDbCleanup if CASE.endswith("-nodb") else GroupConsumer
    application = ProtocolTypeRouter({"websocket": URLRouter([path("bench/", consumer.as_asgi())])})
