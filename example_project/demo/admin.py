"""The demo's models in the real-time admin: changelists and forms follow others' edits."""

from django.contrib import admin

from django_broadcast.contrib.admin import LiveModelAdmin

from .models import Message, Seat


@admin.register(Message)
class MessageAdmin(LiveModelAdmin):
    list_display = ("text", "author", "room", "created")
    list_filter = ("room",)
    search_fields = ("text", "author")


@admin.register(Seat)
class SeatAdmin(LiveModelAdmin):
    list_display = ("label", "taken_by", "taken_at")
