"""``django_broadcast.testing``: capturing what a test published, asserting on it, and
a clean broker for every test, in each style of Django and pytest-django test."""

from __future__ import annotations

import logging
import textwrap
import uuid
from contextlib import suppress
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import TestCase, TransactionTestCase, override_settings

from django_broadcast import GAP, Event, broadcast, broadcasts
from django_broadcast.events import utcnow
from django_broadcast.testing import (
    BroadcastCapture,
    assert_broadcast,
    assert_no_broadcast,
    capture_broadcasts,
    reset_broadcasts,
)

from .userproject import run_pytest

TIMEOUT = 5


class Boom(Exception):
    pass


def unique() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def publish_in_a_transaction(channel: str, data: object, *, fail: bool = False) -> None:
    with transaction.atomic():
        broadcast.publish(channel, data)
        if fail:
            raise Boom


# The hook ------------------------------------------------------------------------------


def test_an_observer_sees_every_sent_event_and_nothing_else(
    transactional_db: None, channel: str
) -> None:
    seen: list[Event] = []
    broadcast.observers.append(seen.append)
    try:
        at_once = broadcast.publish(channel, 1)
        with transaction.atomic():
            assert broadcast.publish(channel, 2) is None
            assert [e.data for e in seen] == [1]  # not sent before the commit
        with suppress(Boom):
            publish_in_a_transaction(channel, 3, fail=True)  # never sent
    finally:
        broadcast.observers.remove(seen.append)
    broadcast.publish(channel, 4)  # no observer any more
    assert [e.data for e in seen] == [1, 2]
    assert seen[0] == at_once and seen[1].id == broadcast.history(channel)[1].id


async def test_an_observer_sees_apublish(channel: str) -> None:
    seen: list[Event] = []
    broadcast.observers.append(seen.append)
    try:
        sent = await broadcast.apublish(channel, "async", type="note")
    finally:
        broadcast.observers.remove(seen.append)
    assert seen == [sent]


# Capturing -----------------------------------------------------------------------------


def test_capture_collects_what_the_block_publishes(channel: str) -> None:
    broadcast.publish(channel, "before")
    with capture_broadcasts() as captured:
        sent = broadcast.publish(channel, {"n": 1}, type="created")
    broadcast.publish(channel, "after")
    assert isinstance(captured, BroadcastCapture)
    assert captured.events == [sent] and list(captured) == [sent]
    assert len(captured) == 1 and captured[0] == sent and sent in captured


async def test_capture_works_in_async_code(channel: str) -> None:
    async with capture_broadcasts() as captured:
        sent = await broadcast.apublish(channel, {"n": 1})
        assert captured.events == [sent]  # visible inside the block too
    assert captured.events == [sent]


def test_capture_sees_only_its_alias(channel: str) -> None:
    setting = {"default": {"URL": "memory://"}, "audit": {"URL": "memory://"}}
    with override_settings(BROADCAST=setting), capture_broadcasts(using="audit") as captured:
        broadcast.publish(channel, "default")
        sent = broadcasts["audit"].publish(channel, "audit")
    assert captured.events == [sent]
    assert captured.alias == "audit"


def test_capture_sees_publishes_from_other_threads(channel: str) -> None:
    import threading

    with capture_broadcasts() as captured:
        thread = threading.Thread(target=broadcast.publish, args=(channel, "threaded"))
        thread.start()
        thread.join(TIMEOUT)
    assert [e.data for e in captured] == ["threaded"]


def test_a_capture_is_used_once() -> None:
    capture = capture_broadcasts()
    with capture:
        pass
    with pytest.raises(RuntimeError, match="once"), capture:
        pass


# Django's TestCase: the transaction never commits ---------------------------------------


class CaptureInTestCase(TestCase):
    def test_a_publish_in_the_test_is_captured_as_if_the_test_committed(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured:
            broadcast.publish(channel, {"n": 1})
        captured.assert_broadcast(channel, data={"n": 1})
        # Sent for real, as the commit would have: history has it.
        self.assertEqual([e.data for e in broadcast.history(channel)], [{"n": 1}])

    def test_an_open_transaction_is_not_committed_yet(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured:
            with transaction.atomic():
                broadcast.publish(channel, "inner")
                captured.assert_no_broadcast()  # still inside the atomic block
            captured.assert_broadcast(channel, data="inner")  # its "commit"

    def test_a_rolled_back_publish_is_never_captured(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured, suppress(Boom):
            publish_in_a_transaction(channel, "lost", fail=True)
        captured.assert_no_broadcast()
        self.assertEqual(broadcast.history(channel), [])

    def test_only_what_the_block_registered_is_run(self) -> None:
        channel = unique()
        broadcast.publish(channel, "before the block")  # waits for a commit that never comes
        with capture_broadcasts() as captured:
            broadcast.publish(channel, "in the block")
        self.assertEqual([e.data for e in captured], ["in the block"])
        self.assertEqual([e.data for e in broadcast.history(channel)], ["in the block"])

    def test_each_callback_runs_once_however_often_the_capture_is_read(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured:
            broadcast.publish(channel, 1)
            self.assertEqual(len(captured), 1)
            broadcast.publish(channel, 2)
            self.assertEqual([e.data for e in captured], [1, 2])
        self.assertEqual([e.data for e in captured], [1, 2])
        self.assertEqual([e.data for e in broadcast.history(channel)], [1, 2])

    def test_other_on_commit_callbacks_run_too_and_a_robust_one_may_fail(self) -> None:
        ran: list[str] = []

        def fails() -> None:
            raise Boom("mail server down")

        channel = unique()
        with (
            self.assertLogs("django_broadcast.testing", logging.ERROR) as logs,
            capture_broadcasts() as captured,
        ):
            transaction.on_commit(fails, robust=True)
            transaction.on_commit(lambda: ran.append("mail"))
            broadcast.publish(channel, "saved")
        self.assertEqual(ran, ["mail"])
        captured.assert_broadcast(channel, data="saved")
        self.assertIn("mail server down", logs.output[0])

    async def test_async_code_in_a_test_case(self) -> None:
        channel = unique()
        async with capture_broadcasts() as captured:
            await broadcast.apublish(channel, "async")
            await sync_to_async(publish_in_a_transaction)(channel, "from a sync view")
        captured.assert_broadcast(channel, data="async")
        captured.assert_broadcast(channel, data="from a sync view")


# Django's TransactionTestCase: transactions really commit -------------------------------


class CaptureInTransactionTestCase(TransactionTestCase):
    def test_a_publish_is_captured_when_its_transaction_commits(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured:
            with transaction.atomic():
                broadcast.publish(channel, "committed")
                captured.assert_no_broadcast()
            captured.assert_broadcast(channel, data="committed")
            with suppress(Boom):
                publish_in_a_transaction(channel, "rolled back", fail=True)
        captured.assert_no_broadcast(channel, data="rolled back")
        self.assertEqual(len(captured), 1)

    def test_a_publish_outside_a_transaction_is_sent_at_once(self) -> None:
        channel = unique()
        with capture_broadcasts() as captured:
            broadcast.publish(channel, "now")
            captured.assert_broadcast(channel, data="now")


# pytest-django ------------------------------------------------------------------------


def test_with_the_db_fixture(db: None, channel: str) -> None:
    with capture_broadcasts() as captured:
        publish_in_a_transaction(channel, "db")
        with suppress(Boom):
            publish_in_a_transaction(channel, "rolled back", fail=True)
    assert [e.data for e in captured] == ["db"]


def test_with_the_transactional_db_fixture(transactional_db: None, channel: str) -> None:
    with capture_broadcasts() as captured:
        with transaction.atomic():
            broadcast.publish(channel, "committed")
            assert not captured
        with suppress(Boom):
            publish_in_a_transaction(channel, "rolled back", fail=True)
    assert [e.data for e in captured] == ["committed"]


def test_the_plugin_is_registered_with_pytest() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("django_broadcast") == "django_broadcast.testing.plugin"


def test_the_plugin_fixture_captures_the_test(
    broadcasts_captured: BroadcastCapture, channel: str
) -> None:
    sent = broadcast.publish(channel, "fixture")
    assert broadcasts_captured.events == [sent]


def test_the_plugin_fixture_sees_what_a_db_test_publishes(
    db: None, broadcasts_captured: BroadcastCapture, channel: str
) -> None:
    publish_in_a_transaction(channel, "db")
    broadcasts_captured.assert_broadcast(channel, data="db")


# Asserting ------------------------------------------------------------------------------


def test_assert_broadcast_returns_the_first_match(channel: str) -> None:
    with capture_broadcasts() as captured:
        broadcast.publish(channel, {"id": 1, "text": "a"}, type="created")
        second = broadcast.publish(channel, {"id": 2, "text": "b"}, type="created")
    assert captured.assert_broadcast(channel, data={"id": 2, "text": "b"}) == second
    assert captured.assert_broadcast(channel, type="created").data["id"] == 1
    # unittest.mock.ANY matches any value, also inside the data.
    from unittest.mock import ANY

    assert captured.assert_broadcast(channel, data={"id": 2, "text": ANY}) == second
    assert assert_broadcast(captured.events, channel, data={"id": 2, "text": "b"}) == second


def test_assert_broadcast_shows_what_was_published_instead() -> None:
    events = [
        Event("ticket.7", "ticket.opened", {"status": "open", "by": "ann"}, "1", utcnow()),
        Event("ticket.8", "ticket.closed", {"status": "closed"}, "2", utcnow()),
    ]
    with pytest.raises(AssertionError) as failure:
        assert_broadcast(events, "ticket.7", type="ticket.closed", data={"status": "closed"})
    assert str(failure.value) == textwrap.dedent(
        """\
        no event on channel 'ticket.7' with type 'ticket.closed' and data {'status': 'closed'} was published; 2 were published instead:
          ticket.7  ticket.opened  {'status': 'open', 'by': 'ann'}
          ticket.8  ticket.closed  {'status': 'closed'}
        the nearest, on 'ticket.7' with type 'ticket.opened', differs (- expected, + published):
          type: - 'ticket.closed'
                + 'ticket.opened'
          data: - {'status': 'closed'}
                + {'status': 'open', 'by': 'ann'}"""  # noqa: E501
    )


def test_assert_broadcast_when_nothing_was_published() -> None:
    with capture_broadcasts() as captured:
        pass
    with pytest.raises(AssertionError, match=r"^no event on channel 'x' was published; "
                       r"nothing was published through alias 'default'$"):  # fmt: skip
        captured.assert_broadcast("x")


def test_a_long_list_of_events_is_cut_short() -> None:
    events = [Event("other", "message", n, str(n), utcnow()) for n in range(30)]
    with pytest.raises(AssertionError) as failure:
        assert_broadcast(events, "x")
    message = str(failure.value)
    assert "30 were published instead" in message and "... and 10 more" in message
    assert "nearest" not in message  # nothing on that channel to compare with


def test_assert_no_broadcast() -> None:
    events = [
        Event("ticket.7", "ticket.opened", {"status": "open"}, "1", utcnow()),
        Event("ticket.8", "ticket.closed", {"status": "closed"}, "2", utcnow()),
    ]
    assert_no_broadcast(events, "ticket.9")
    assert_no_broadcast(events, "ticket.7", type="ticket.closed")
    assert_no_broadcast(events, type="ticket.reopened")
    assert_no_broadcast([])
    with pytest.raises(AssertionError) as failure:
        assert_no_broadcast(events, type="ticket.closed")
    assert str(failure.value) == (
        "expected no event with type 'ticket.closed', but 1 was published:\n"
        "  ticket.8  ticket.closed  {'status': 'closed'}"
    )
    with pytest.raises(AssertionError, match=r"^expected no event, but 2 were published:\n"):
        assert_no_broadcast(events)


# A clean broker for every test ----------------------------------------------------------


def test_reset_broadcasts_forgets_memory_history_and_keeps_subscribers(channel: str) -> None:
    import asyncio

    async def scenario() -> None:
        old = broadcast.publish(channel, "old")
        async with broadcast.subscribe(channel) as sub:
            reset_broadcasts()
            assert broadcast.history(channel) == []
            first = broadcast.publish(channel, "new")
            assert first is not None and old is not None
            # Numbered anew, as in a new process: the old position is a gap.
            assert broadcast.history(channel, since=old.id)[0].type == GAP
            assert (await sub.get(timeout=TIMEOUT)).data == "new"

    asyncio.run(scenario())


def test_memory_history_does_not_leak_from_one_test_to_the_next(tmp_path: Path) -> None:
    """Two tests in order, in a project of their own: the second never sees what the
    first published, with the plugin's fixture or with ``reset_broadcasts()`` in an
    autouse fixture; without either it does (so this test can fail)."""
    tests = """
        def test_first(FIXTURE):
            broadcast.publish("orders", {"id": 1})
            assert broadcast.history("orders")[-1].data == {"id": 1}

        def test_next(FIXTURE):
            assert broadcast.history("orders") == []
    """
    autouse = """
        import pytest
        from django_broadcast.testing import reset_broadcasts

        @pytest.fixture(autouse=True)
        def clean_broadcasts():
            reset_broadcasts()
    """
    header = "from django_broadcast import broadcast\n"
    tests, autouse = textwrap.dedent(tests), textwrap.dedent(autouse)
    files = {
        "test_plugin_fixture.py": header + tests.replace("FIXTURE", "broadcasts_captured"),
        "test_autouse.py": header + autouse + tests.replace("FIXTURE", ""),
        "test_leaks_without.py": header + tests.replace("FIXTURE", ""),
    }
    result = run_pytest(tmp_path, files)
    assert result.outcomes() == {
        "test_autouse.py::test_first": "passed",
        "test_autouse.py::test_next": "passed",
        "test_leaks_without.py::test_first": "passed",
        "test_leaks_without.py::test_next": "failed",
        "test_plugin_fixture.py::test_first": "passed",
        "test_plugin_fixture.py::test_next": "passed",
    }, result.output
