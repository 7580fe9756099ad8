"""Live model admins: changelists and change forms that react to every save.

A model whose admin is a :class:`LiveModelAdmin` (or uses
:class:`LiveModelAdminMixin`) publishes its creates, updates and deletes, when their
transaction commits and wherever they come from (the admin, a view, the shell), on the
reserved channel :func:`admin_channel` (``broadcast.admin.<app_label>.<model_name>``):
the primary key, the object's ``str()``, what happened and, for a change made in the
admin, who made it. The admin's pages load the shipped client and
``broadcast_admin/live.js``, which subscribe to that channel over the WebSocket
consumer (``/broadcast/ws/``):

- the changelist marks the rows that changed and shows new ones where the list puts
  them (reading the page again, with its filters, search and ordering), strikes
  through deleted ones and lists the latest changes above the table; with
  ``list_editable`` it marks rows instead of replacing what you may be editing;
- an open change form warns that someone else just saved or deleted this object.

Only users for whom the model admin's ``has_view_permission()`` is true (and who may
use the admin site at all) can subscribe to the channel; to everyone else it is refused
as every reserved channel is. ``QuerySet.update()`` and ``bulk_create()`` send no model
signals, so they publish nothing (see :mod:`django_broadcast.changes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.http import HttpRequest

from django_broadcast.changes import Action, ChangeStream
from django_broadcast.consumers.settings import client_settings
from django_broadcast.events import RESERVED_PREFIX, validate_channel

__all__ = [
    "ADMIN_CHANNEL_PREFIX",
    "LiveModelAdmin",
    "LiveModelAdminMixin",
    "admin_channel",
    "may_view",
]

#: The reserved namespace of the live admins' channels.
ADMIN_CHANNEL_PREFIX = RESERVED_PREFIX + "admin."

#: Who is saving, and from which open change form, while an admin saves or deletes.
_actor: ContextVar[tuple[str, str] | None] = ContextVar("broadcast_admin_actor", default=None)

#: The live model admins of each channel, which decide who may read it.
_admins: dict[str, list[admin.ModelAdmin[Any]]] = {}
_streams: dict[type[models.Model], AdminChangeStream] = {}


def admin_channel(model: type[models.Model]) -> str:
    """The reserved channel of ``model``'s live admin."""
    return f"{ADMIN_CHANNEL_PREFIX}{model._meta.label_lower}"


class AdminChangeStream(ChangeStream):
    """The change stream of a live admin: the primary key as text, ``str()`` of the
    object, and who changed it."""

    def payload(self, instance: models.Model, action: Action) -> dict[str, Any]:
        """``model``, ``pk``, ``repr``, ``by`` (a username, or None outside the admin)
        and ``editor`` (the token of the change form that saved, or None)."""
        by, editor = _actor.get() or (None, None)
        return {
            "model": self.label,
            "pk": str(instance.pk),
            "repr": str(instance)[:200],
            "by": by,
            "editor": editor,
        }


@contextlib.contextmanager
def _acting(request: HttpRequest) -> Iterator[None]:
    user = getattr(request, "user", None)
    name = user.get_username() if user is not None and user.is_authenticated else None
    editor = request.POST.get("_broadcast_editor", "")[:64] or None
    token = _actor.set((name, editor) if name or editor else None)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _actor.reset(token)


def may_view(user: Any, channel: str) -> bool:
    """The rule of the live admins' channels: may ``user`` use the admin site and view
    the model, for one of the live admins of ``channel``?"""
    request = HttpRequest()
    request.user = user
    return any(
        model_admin.admin_site.has_permission(request) and model_admin.has_view_permission(request)
        for model_admin in _admins.get(channel, ())
    )


def _go_live(model_admin: admin.ModelAdmin[Any]) -> None:
    model = model_admin.model
    channel = admin_channel(model)
    try:
        validate_channel(channel)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{model._meta.label} cannot have a live admin: {exc}") from None
    _admins.setdefault(channel, []).append(model_admin)
    if model not in _streams:
        stream = AdminChangeStream(
            model, fields=[], channel=channel, object_channel=False, using=client_settings().using
        )
        stream.connect()
        _streams[model] = stream


class LiveModelAdminMixin:
    """Make a ``ModelAdmin``'s changelist and change form live (see the module).

    ``class BookAdmin(LiveModelAdminMixin, admin.ModelAdmin): ...``
    """

    model: type[models.Model]

    def __init__(self, model: type[models.Model], admin_site: admin.AdminSite) -> None:
        super().__init__(model, admin_site)  # type: ignore[call-arg]
        _go_live(self)  # type: ignore[arg-type]

    @property
    def media(self) -> forms.Media:
        """The admin's media, the shipped client and the live admin's script."""
        return super().media + forms.Media(  # type: ignore[misc]
            js=["django_broadcast/broadcast.js", "broadcast_admin/live.js"],
            css={"all": ["broadcast_admin/live.css"]},
        )

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        """Save, telling the live pages who saved."""
        with _acting(request):
            super().save_model(request, obj, form, change)  # type: ignore[misc]

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        """Delete, telling the live pages who deleted."""
        with _acting(request):
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        """Delete the selected objects (the delete action), telling who deleted."""
        with _acting(request):
            super().delete_queryset(request, queryset)  # type: ignore[misc]


if TYPE_CHECKING:
    _Base = admin.ModelAdmin[Any]
else:
    _Base = admin.ModelAdmin


class LiveModelAdmin(LiveModelAdminMixin, _Base):
    """A ``ModelAdmin`` whose changelist and change form are live:
    ``admin.site.register(Book, LiveModelAdmin)``."""
