"""System checks of the real-time admin (``broadcast_admin.E001``...)."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .middleware import RequestStatsMiddleware

MIDDLEWARE = f"{RequestStatsMiddleware.__module__}.{RequestStatsMiddleware.__name__}"


def check_setup(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The apps the real-time admin needs, and its middleware."""
    messages: list[CheckMessage] = []
    for app, id_ in (("django.contrib.admin", "E001"), ("django_broadcast", "E002")):
        if not apps.is_installed(app):
            messages.append(
                Error(
                    f"django_broadcast.contrib.admin needs {app!r} in INSTALLED_APPS.",
                    hint=f"Add {app!r} to INSTALLED_APPS.",
                    id=f"broadcast_admin.{id_}",
                )
            )
    if MIDDLEWARE not in settings.MIDDLEWARE:
        messages.append(
            Warning(
                "The live dashboard shows no requests per second or response times: "
                "its middleware is not in MIDDLEWARE.",
                hint=f"Add {MIDDLEWARE!r} first in MIDDLEWARE.",
                id="broadcast_admin.W001",
            )
        )
    return messages
