"""The ASGI application of the multi-process test, as a user's ``asgi.py`` would be."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.multiprocess.settings")
django_asgi_app = get_asgi_application()

from django.urls import path  # noqa: E402

from django_broadcast.routing import application as broadcast_application  # noqa: E402

from .consumers import ChatConsumer, ThumbnailWorker  # noqa: E402

application = broadcast_application(
    django_asgi_app,
    websocket=[path("chat/<str:room>/", ChatConsumer.as_asgi())],
    channel={"thumbnails": ThumbnailWorker.as_asgi()},
)
