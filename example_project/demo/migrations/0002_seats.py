"""The seat map's seats: rows A to E, eight seats each."""

from django.db import migrations

ROWS = "ABCDE"
PER_ROW = 8


def make_seats(apps, schema_editor):  # type: ignore[no-untyped-def]
    Seat = apps.get_model("demo", "Seat")
    Seat.objects.bulk_create(
        Seat(label=f"{row}{number}") for row in ROWS for number in range(1, PER_ROW + 1)
    )


def remove_seats(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("demo", "Seat").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("demo", "0001_initial")]

    operations = [migrations.RunPython(make_seats, remove_seats)]
