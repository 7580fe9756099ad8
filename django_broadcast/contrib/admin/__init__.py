"""The real-time admin: a live dashboard of the deployment and live model admins.

Add ``"django_broadcast.contrib.admin"`` to ``INSTALLED_APPS`` (after
``django.contrib.admin`` and ``django_broadcast``) and
``"django_broadcast.contrib.admin.middleware.RequestStatsMiddleware"`` first in
``MIDDLEWARE``; the admin index then links the live dashboard. Make a model's admin
live with :class:`LiveModelAdmin` (or :class:`LiveModelAdminMixin` on your own
``ModelAdmin``)::

    from django.contrib import admin
    from django_broadcast.contrib.admin import LiveModelAdmin

    admin.site.register(Book, LiveModelAdmin)

See the "Real-time admin" page of the documentation.
"""

from .live import LiveModelAdmin, LiveModelAdminMixin, admin_channel

__all__ = ["LiveModelAdmin", "LiveModelAdminMixin", "admin_channel"]
