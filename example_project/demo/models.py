"""The example project's data: chat messages and the seats of the seat map."""

from django.db import models

from django_broadcast.changes import broadcast_changes


class Message(models.Model):
    """A chat message, saved before it is published on ``chat.<room>``."""

    room = models.SlugField(max_length=40)
    author = models.CharField(max_length=40)
    text = models.CharField(max_length=500)
    event_id = models.CharField(max_length=100, blank=True)  # the published event's id
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("created", "pk")
        indexes = (models.Index(fields=["room", "created"]),)

    def __str__(self) -> str:
        return f"{self.author} in {self.room}: {self.text[:40]}"


class Seat(models.Model):
    """A seat of the seat map; ``taken_by`` is the taker's session token, or empty."""

    label = models.CharField(max_length=3, primary_key=True)  # "A1"
    taken_by = models.CharField(max_length=32, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("label",)

    def __str__(self) -> str:
        return f"seat {self.label} ({'taken' if self.taken_by else 'free'})"


# Every save and delete of a seat is published on the "seats" channel when its
# transaction commits, as {"model": "demo.seat", "pk": "A1", "fields": {"taken_by": ...}}.
broadcast_changes(Seat, fields=["taken_by"], channel="seats", object_channel=False)
