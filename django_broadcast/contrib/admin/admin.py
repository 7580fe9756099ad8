"""The live dashboard, in the admin: staff only, linked from the admin index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, get_script_prefix, path

from django_broadcast.consumers.settings import client_settings
from django_broadcast.events import SERVERS_CHANNEL
from django_broadcast.exceptions import BroadcastError
from django_broadcast.registry import broadcasts

from .checks import MIDDLEWARE
from .models import Dashboard

__all__ = ["DashboardAdmin"]

if TYPE_CHECKING:
    _Base = admin.ModelAdmin[Dashboard]
else:
    _Base = admin.ModelAdmin


class DashboardAdmin(_Base):
    """The dashboard page: requests, events, servers and channels of the deployment,
    updated live from the servers' heartbeats. Register it on your own admin site with
    ``site.register(Dashboard, DashboardAdmin)``."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Staff see the dashboard; it needs no model permission."""
        user = request.user
        return bool(user.is_active and user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """As :meth:`has_module_permission`."""
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Nothing to add."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nothing to change."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Nothing to delete."""
        return False

    def get_urls(self) -> list[URLPattern]:
        """One page, where the admin index links the model's changelist."""
        opts = self.model._meta
        return [
            path(
                "",
                self.admin_site.admin_view(self.dashboard_view),
                name=f"{opts.app_label}_{opts.model_name}_changelist",
            )
        ]

    def dashboard_config(self) -> dict[str, Any]:
        """What the page's script starts from: the servers heard so far (on a backend
        with history; elsewhere the first heartbeats fill the page), the heartbeat
        interval, the channel and the WebSocket consumer's URL."""
        settings = client_settings()
        bc = broadcasts[settings.using]
        servers: list[dict[str, Any]] = []
        if bc.features.history:
            try:
                servers = bc.servers()
            except BroadcastError:
                servers = []
        return {
            "url": f"{get_script_prefix()}broadcast/ws/",
            "channel": SERVERS_CHANNEL,
            "interval": settings.heartbeat,
            "servers": servers,
            "alias": bc.alias,
            "backend": type(bc.backend).__name__,
            "crosses_processes": bc.features.crosses_processes,
            "counts_requests": MIDDLEWARE in django_settings.MIDDLEWARE,
        }

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Render the dashboard."""
        context = {
            **self.admin_site.each_context(request),
            "title": "Live dashboard",
            "opts": self.model._meta,
            "config": self.dashboard_config(),
        }
        return TemplateResponse(request, "broadcast_admin/dashboard.html", context)


admin.site.register(Dashboard, DashboardAdmin)
