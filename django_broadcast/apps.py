"""The Django app configuration."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class BroadcastConfig(AppConfig):
    """Registers the system checks of the settings."""

    name = "django_broadcast"
    verbose_name = "Broadcast"

    def ready(self) -> None:
        from .checks import check_clients, check_layers, check_settings

        checks.register(check_settings)
        checks.register(check_clients)
        checks.register(check_layers)
