"""ASGI entry point: the broadcast consumers, then Django.

``daphne demo.asgi:application`` or ``uvicorn demo.asgi:application`` serve the whole
site; with ``DEBUG`` the static files too (``runserver`` does that by itself).
"""

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
django_asgi_app = get_asgi_application()  # before importing consumers
if settings.DEBUG:
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from django_broadcast.routing import application as broadcast_application  # noqa: E402

application = broadcast_application(django_asgi_app)
