"""The tables of the PostgreSQL backend (``postgres://``), made on PostgreSQL
databases only: on others this migration does nothing."""

from typing import Any

from django.db import migrations

from django_broadcast.backends.postgres import schema


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(schema.CREATE, params=None)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(schema.DROP, params=None)


class Migration(migrations.Migration):
    initial = True
    operations = [migrations.RunPython(create, drop, elidable=False)]
