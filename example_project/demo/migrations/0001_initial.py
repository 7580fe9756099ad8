from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Seat",
            fields=[
                ("label", models.CharField(max_length=3, primary_key=True, serialize=False)),
                ("taken_by", models.CharField(blank=True, max_length=32)),
                ("taken_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "ordering": ("label",),
            },
        ),
        migrations.CreateModel(
            name="Message",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("room", models.SlugField(max_length=40)),
                ("author", models.CharField(max_length=40)),
                ("text", models.CharField(max_length=500)),
                ("event_id", models.CharField(blank=True, max_length=100)),
                ("created", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ("created", "pk"),
                "indexes": [
                    models.Index(fields=["room", "created"], name="demo_messag_room_81686e_idx")
                ],
            },
        ),
    ]
