"""The real-time admin's app configuration."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


def is_staff(user: Any, channel: str) -> bool:
    """The dashboard's rule: active staff read the server list."""
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


class BroadcastAdminConfig(AppConfig):
    """Opens the reserved channels the real-time admin reads to those allowed, and
    registers its system checks."""

    name = "django_broadcast.contrib.admin"
    label = "broadcast_admin"
    verbose_name = "Broadcast"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django_broadcast.auth import allow_reserved
        from django_broadcast.events import SERVERS_CHANNEL

        from .checks import check_setup
        from .live import ADMIN_CHANNEL_PREFIX, may_view

        allow_reserved(SERVERS_CHANNEL, is_staff)
        allow_reserved(ADMIN_CHANNEL_PREFIX + "*", may_view)
        checks.register(check_setup)
