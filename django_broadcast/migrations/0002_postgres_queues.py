"""The work queues' table of the PostgreSQL backend (``postgres://``), made on
PostgreSQL databases only: on others this migration does nothing."""

from typing import Any

from django.db import migrations

from django_broadcast.backends.postgres import schema


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(schema.CREATE_QUEUED, params=None)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(schema.DROP_QUEUED, params=None)


class Migration(migrations.Migration):
    dependencies = [("django_broadcast", "0001_postgres_tables")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
