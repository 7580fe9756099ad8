"""A model without a table, so that the admin index links the live dashboard."""

from __future__ import annotations

from django.db import models


class Dashboard(models.Model):
    """The live dashboard's entry in the admin index; nothing is stored."""

    class Meta:
        managed = False
        default_permissions = ()
        verbose_name = "live dashboard"
        verbose_name_plural = "live dashboard"
