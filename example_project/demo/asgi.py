"""ASGI entry point: the broadcast consumers, then Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
django_asgi_app = get_asgi_application()

from django_broadcast.routing import application as broadcast_application  # noqa: E402

application = broadcast_application(django_asgi_app)
