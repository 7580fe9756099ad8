"""Model change streams: a model's creates, updates and deletes published on commit,
with the fields chosen explicitly, on a channel per model and per object."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings

from django_broadcast import broadcasts
from django_broadcast.changes import ChangeStream, broadcast_changes
from django_broadcast.signals import publish_failed
from django_broadcast.testing import capture_broadcasts

from .conftest import free_port
from .testapp.models import Book, Label, Shelf, Ticket

pytestmark = pytest.mark.django_db


@pytest.fixture
def stream() -> Iterator[list[ChangeStream]]:
    """Streams made by a test, disconnected after it."""
    made: list[ChangeStream] = []
    yield made
    for each in made:
        each.disconnect()


def test_create_update_delete_publish_the_chosen_fields_per_model_and_per_object(
    stream: list[ChangeStream],
) -> None:
    stream.append(broadcast_changes(Book, fields=["title", "price", "published"]))
    with capture_broadcasts() as captured:
        book = Book.objects.create(
            title="Dune", price=Decimal("9.90"), published=datetime.date(1965, 8, 1)
        )
        book.title = "Dune Messiah"
        book.save()
        pk = book.pk
        book.delete()
    # As published; subscribers get them as the codec encodes them ("9.90", "1965-08-01").
    fields = {"title": "Dune", "price": Decimal("9.90"), "published": datetime.date(1965, 8, 1)}
    expected = [
        ("created", {**fields}),
        ("updated", {**fields, "title": "Dune Messiah"}),
        ("deleted", {**fields, "title": "Dune Messiah"}),
    ]
    for channel in ("testapp.book", f"testapp.book.{pk}"):
        events = [event for event in captured if event.channel == channel]
        assert [(e.type, e.data["fields"]) for e in events] == expected
        assert all(e.data["model"] == "testapp.book" and e.data["pk"] == pk for e in events)


def test_nothing_but_the_chosen_fields_is_sent(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Book, fields=["title"], object_channel=False))
    with capture_broadcasts() as captured:
        Book.objects.create(title="Emma", secret_note="do not send")
    (event,) = captured
    assert event.data == {
        "model": "testapp.book",
        "pk": event.data["pk"],
        "fields": {"title": "Emma"},
    }


def test_fields_must_be_chosen() -> None:
    with pytest.raises(TypeError, match="fields"):
        broadcast_changes(Book)  # type: ignore[call-overload]


def test_unknown_and_unsendable_fields_are_refused_when_registered() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"Book has no field 'titel'.*title"):
        broadcast_changes(Book, fields=["titel"])
    with pytest.raises(ImproperlyConfigured, match="'tags' is a many-to-many"):
        broadcast_changes(Book, fields=["tags"])
    with pytest.raises(ImproperlyConfigured, match="'scan' is a BinaryField"):
        broadcast_changes(Book, fields=["scan"])
    with pytest.raises(TypeError, match="not a model"):
        broadcast_changes(dict, fields=[])  # type: ignore[type-var]


def test_foreign_keys_send_the_related_pk_and_files_their_name(
    stream: list[ChangeStream],
) -> None:
    stream.append(broadcast_changes(Book, fields=["shelf", "cover"], object_channel=False))
    shelf = Shelf.objects.create(name="A")
    with capture_broadcasts() as captured:
        Book.objects.create(title="x", shelf=shelf, cover="covers/x.png")
    assert captured[0].data["fields"] == {"shelf": shelf.pk, "cover": "covers/x.png"}


def test_nothing_is_sent_on_rollback_and_all_at_commit(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Book, fields=["title"], object_channel=False))
    with capture_broadcasts() as captured:
        with pytest.raises(RuntimeError), transaction.atomic():
            Book.objects.create(title="rolled back")
            raise RuntimeError
        with transaction.atomic():
            Book.objects.create(title="committed")
            assert captured.events == []  # not before the commit
    assert [e.data["fields"]["title"] for e in captured] == ["committed"]


def test_a_channel_per_parent_and_a_decorator(stream: list[ChangeStream]) -> None:
    shelf = Shelf.objects.create(name="A")
    made = broadcast_changes(
        fields=["title"], channel=lambda book: f"shelf.{book.shelf_id}", object_channel=False
    )(Book)
    assert made is Book  # the decorator returns the class
    stream.extend(ChangeStream.of(Book))
    with capture_broadcasts() as captured:
        Book.objects.create(title="x", shelf=shelf)
    assert [e.channel for e in captured] == [f"shelf.{shelf.pk}"]


def test_a_bad_channel_from_a_callable_says_which_stream(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Book, fields=[], channel=lambda book: "bad channel!"))
    with pytest.raises(ValueError, match=r"channel of the change stream of testapp\.book"):
        Book.objects.create(title="x")


def test_uuid_pks_make_object_channels(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Ticket, fields=["subject"]))
    with capture_broadcasts() as captured:
        ticket = Ticket.objects.create(subject="help")
    assert f"testapp.ticket.{ticket.pk}" in {e.channel for e in captured}
    assert captured[0].data["pk"] == str(ticket.pk)


def test_a_pk_that_cannot_name_a_channel_skips_the_object_channel_only(
    stream: list[ChangeStream], caplog: pytest.LogCaptureFixture
) -> None:
    stream.append(broadcast_changes(Label, fields=["text"]))
    with capture_broadcasts() as captured, caplog.at_level(logging.WARNING):
        Label.objects.create(code="no spaces allowed", text="x")
    assert [e.channel for e in captured] == ["testapp.label"]
    assert "cannot be part of a channel name" in caplog.text


def test_raw_saves_loading_fixtures_are_not_published(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Book, fields=["title"]))
    with capture_broadcasts() as captured:
        Book(title="from a fixture").save_base(raw=True)
        Book.objects.create(title="marker")
    assert [e.data["fields"]["title"] for e in captured] == ["marker", "marker"]


def test_unencodable_values_fail_the_save_with_the_field_named(
    stream: list[ChangeStream],
) -> None:
    stream.append(broadcast_changes(Book, fields=["title"], object_channel=False))
    with (
        pytest.raises(TypeError, match=r"change stream of testapp\.book.*title"),
        transaction.atomic(),
    ):
        book = Book(title="x")
        book.title = object()  # type: ignore[assignment]
        book.save_base(raw=False, force_insert=False)
    assert not Book.objects.exists()


def test_disconnect_stops_publishing() -> None:
    made = broadcast_changes(Book, fields=["title"], object_channel=False)
    made.disconnect()
    assert made not in ChangeStream.of(Book)
    with capture_broadcasts() as captured:
        Book.objects.create(title="x")
    assert captured.events == []


@pytest.mark.django_db(transaction=True)
async def test_a_subscriber_receives_the_changes(stream: list[ChangeStream]) -> None:
    stream.append(broadcast_changes(Book, fields=["title", "price"], object_channel=False))
    async with broadcasts["default"].subscribe("testapp.book") as sub:
        book = await sync_to_async(Book.objects.create)(title="live", price=Decimal("1.50"))
        event = await sub.get(timeout=5)
    assert (event.type, event.data["pk"]) == ("created", book.pk)
    assert event.data["fields"] == {"title": "live", "price": "1.50"}


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_broker_never_breaks_a_committed_save(
    stream: list[ChangeStream], caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> None:
        failures.append(kwargs)

    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    aliases = {"default": {"URL": "memory://"}, "down": {"URL": nowhere, "TIMEOUT": 0.5}}
    publish_failed.connect(record)
    try:
        with override_settings(BROADCAST=aliases):
            stream.append(broadcast_changes(Book, fields=["title"], using="down"))
            Book.objects.create(title="saved anyway")  # autocommit: sent at once
            with transaction.atomic():
                Book.objects.create(title="saved in a transaction")
            assert Book.objects.count() == 2
            assert broadcasts["down"].stats()["failed_publishes"] == 4
    finally:
        publish_failed.disconnect(record)
    assert len(failures) == 4 and "testapp.book" in caplog.text


def test_streams_of_a_model_are_listed() -> None:
    made = broadcast_changes(Book, fields=["title"])
    try:
        assert made in ChangeStream.of(Book)
        assert repr(made) == "<ChangeStream testapp.book fields=['title'] using='default'>"
    finally:
        made.disconnect()


def test_object_channels_follow_uuid_text() -> None:
    assert ChangeStream(Ticket, fields=[]).object_channel_name(uuid.UUID(int=1)) == (
        "testapp.ticket.00000000-0000-0000-0000-000000000001"
    )
