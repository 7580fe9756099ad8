"""Models the change-stream and live-admin tests save and delete."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models


class Shelf(models.Model):
    """A parent, for channels chosen per parent."""

    name = models.CharField(max_length=50)


class Book(models.Model):
    """A model with the field types a change stream sends."""

    title = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=6, decimal_places=2, default=0)
    published = models.DateField(null=True, blank=True)
    shelf = models.ForeignKey(Shelf, null=True, blank=True, on_delete=models.CASCADE)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    secret_note = models.TextField(blank=True)
    cover = models.FileField(blank=True)
    scan = models.BinaryField(blank=True, default=b"")
    tags: models.ManyToManyField[Tag, Any] = models.ManyToManyField("Tag", blank=True)

    def __str__(self) -> str:
        return self.title


class Tag(models.Model):
    """A many-to-many target, which a change stream refuses to send."""

    name = models.CharField(max_length=50)


class Ticket(models.Model):
    """A model with a UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    subject = models.CharField(max_length=100)


class Label(models.Model):
    """A model whose primary key cannot be part of a channel name."""

    code = models.CharField(max_length=50, primary_key=True)
    text = models.CharField(max_length=100, blank=True)


class Article(models.Model):
    """The model with a live admin."""

    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.title
