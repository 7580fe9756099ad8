"""Helpers for testing code that publishes: capture what a test published, assert on
it, and start every test from a clean broker.

.. code-block:: python

    from django_broadcast.testing import capture_broadcasts

    with capture_broadcasts() as captured:
        close_ticket(7)
    captured.assert_broadcast("ticket.7", type="ticket.closed")

The pytest plugin (:mod:`django_broadcast.testing.plugin`, loaded by pytest through
its entry point) adds the ``broadcasts_captured`` fixture. See the "Testing your code"
page of the documentation.
"""

from __future__ import annotations

import difflib
import logging
import pprint
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload
from unittest.mock import ANY

from asgiref.sync import sync_to_async
from django.db import connections

from ..conf import DEFAULT_ALIAS
from ..events import Event
from ..registry import broadcasts

if TYPE_CHECKING:
    from ..broadcast import Broadcast

__all__ = [
    "BroadcastCapture",
    "assert_broadcast",
    "assert_no_broadcast",
    "capture_broadcasts",
    "reset_broadcasts",
]

logger = logging.getLogger("django_broadcast.testing")

_LISTED = 20  # events listed in a failure message, at most
_WIDTH = 120  # characters of one listed event, at most


class BroadcastCapture(Sequence[Event]):
    """The events published through one alias while the capture is open: a sequence of
    :class:`~django_broadcast.Event`, oldest first. Make one with
    :func:`capture_broadcasts`.

    Events are captured as they are sent: at once outside a transaction, at its commit
    inside one. Inside a Django ``TestCase`` (or pytest-django's ``db`` fixture),
    whose transaction never commits, the ``transaction.on_commit()`` callbacks that
    the capture's thread registered since it opened are run when it is read or
    closed, outside any ``atomic()`` block of the test's own, as the commit would
    have run them: every callback, not only the publishes (as
    ``TestCase.captureOnCommitCallbacks(execute=True)`` does, so use one or the
    other around a block, not both).
    """

    def __init__(self, using: str | None = None) -> None:
        #: The alias captured.
        self.alias = using or DEFAULT_ALIAS
        self._events: list[Event] = []
        self._used = False
        self._broadcast: Broadcast | None = None
        self._thread: int | None = None
        # DB alias -> how many of its on-commit callbacks are not ours to run.
        self._seen: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<BroadcastCapture {self.alias!r}: {len(self._events)} events>"

    # Opening and closing ----------------------------------------------------------------

    def _open(self) -> None:
        if self._used:
            raise RuntimeError("a capture_broadcasts() is used once: make a new one")
        self._used = True
        self._broadcast = broadcasts[self.alias]
        self._thread = threading.get_ident()
        self._seen = {c.alias: len(c.run_on_commit) for c in connections.all(initialized_only=True)}
        self._broadcast.observers.append(self._events.append)

    def _close(self, exc: BaseException | None) -> None:
        assert self._broadcast is not None, "the capture was not opened"
        try:
            if exc is None:
                self._run_on_commit()
        finally:
            self._broadcast.observers.remove(self._events.append)
            self._thread = None

    def __enter__(self) -> BroadcastCapture:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc)

    async def __aenter__(self) -> BroadcastCapture:
        # In the thread where Django runs the sync code of async tests and views (that
        # of a TestCase's transaction), so that closing runs its callbacks.
        await sync_to_async(self._open)()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await sync_to_async(self._close)(exc)

    def _run_on_commit(self) -> None:
        """Run the on-commit callbacks this capture's thread registered since it
        opened, on every connection whose transaction belongs to a test case and
        would have committed by now, as Django's commit runs them."""
        if self._thread != threading.get_ident():
            return
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block or not all(
                getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
            ):
                continue  # autocommit, or an atomic() block of the test's own is open
            # Callbacks may register callbacks: run until there are no new ones.
            while len(connection.run_on_commit) > self._seen.get(connection.alias, 0):
                start = self._seen.get(connection.alias, 0)
                self._seen[connection.alias] = len(connection.run_on_commit)
                for entry in connection.run_on_commit[start:]:
                    _run(*entry)  # (savepoint ids, callback, robust) since Django 4.2

    # Reading ------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """The events captured so far, oldest first (a copy)."""
        self._run_on_commit()
        return list(self._events)

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...

    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        return self.events[index]

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def assert_broadcast(self, channel: str, type: str | None = None, data: Any = ANY) -> Event:
        """Assert that an event was published on ``channel`` (with ``type`` and
        ``data``, where given) and return the first such event; see
        :func:`assert_broadcast`."""
        __tracebackhide__ = True
        return _assert_broadcast(self.events, channel, type, data, f" through alias {self.alias!r}")

    def assert_no_broadcast(
        self, channel: str | None = None, type: str | None = None, data: Any = ANY
    ) -> None:
        """Assert that no event was published that matches; see
        :func:`assert_no_broadcast`."""
        __tracebackhide__ = True
        assert_no_broadcast(self.events, channel, type, data)


def capture_broadcasts(using: str | None = None) -> BroadcastCapture:
    """Capture the events published through alias ``using`` (default ``"default"``)
    inside a ``with`` or ``async with`` block.

    .. code-block:: python

        with capture_broadcasts() as captured:
            close_ticket(7)
        captured.assert_broadcast("ticket.7", type="ticket.closed")

    The alias is looked up when the block begins: change ``BROADCAST`` (with
    ``override_settings``) before it, not inside it.
    """
    return BroadcastCapture(using)


def reset_broadcasts() -> None:
    """Give the next test a clean broker: forget what every alias built so far holds,
    where its backend can (``memory://``: the history of every channel, and events are
    numbered anew, as in a new process; subscribers stay subscribed).

    Other brokers keep their data, and a test suite shares them: give each test its
    own ``OPTIONS["prefix"]`` on Redis (see the "Testing your code" page).
    """
    for instance in broadcasts.all(initialized_only=True):
        clear = getattr(instance.backend, "clear", None)
        if clear is not None:
            clear()


def _run(savepoints: object, callback: Callable[[], object], robust: bool = False) -> None:
    """Run one on-commit callback as Django's commit does: a robust one's error is
    logged, any other's raised."""
    if not robust:
        callback()
        return
    try:
        callback()
    except Exception as exc:
        logger.error(
            "Error calling %s in on_commit() (%s).",
            getattr(callback, "__qualname__", callback),
            exc,
            exc_info=True,
        )


# Assertions ------------------------------------------------------------------------------


def _matches(event: Event, channel: str | None, type: str | None, data: Any) -> bool:
    return (
        (channel is None or event.channel == channel)
        and (type is None or event.type == type)
        and data == event.data
    )


def _describe(channel: str | None, type: str | None, data: Any) -> str:
    parts = []
    if channel is not None:
        parts.append(f" on channel {channel!r}")
    if type is not None:
        parts.append(f" with type {type!r}")
    if data is not ANY:
        parts.append(f"{' and' if type is not None else ' with'} data {data!r}")
    return "".join(parts)


def _listing(events: Sequence[Event]) -> list[str]:
    lines = []
    for event in events[:_LISTED]:
        line = f"  {event.channel}  {event.type}  {event.data!r}"
        lines.append(line if len(line) <= _WIDTH else line[: _WIDTH - 3] + "...")
    if len(events) > _LISTED:
        lines.append(f"  ... and {len(events) - _LISTED} more")
    return lines


def _were(count: int) -> str:
    return f"{count} was" if count == 1 else f"{count} were"


def _diff(label: str, expected: Any, published: Any) -> list[str]:
    """``expected`` against ``published``, line by line (- expected, + published)."""
    lines = difflib.ndiff(
        pprint.pformat(expected, width=72, sort_dicts=False).splitlines(),
        pprint.pformat(published, width=72, sort_dicts=False).splitlines(),
    )
    lead = f"  {label}: "
    shown = [line for line in lines if not line.startswith("? ")]
    return [(lead if n == 0 else " " * len(lead)) + line for n, line in enumerate(shown)]


def _nearest(events: Sequence[Event], channel: str, type: str | None, data: Any) -> list[str]:
    """How the closest event published on ``channel`` differs from the one expected."""
    on_channel = [e for e in events if e.channel == channel]
    if not on_channel:
        return []
    same_type = [e for e in on_channel if type is None or e.type == type]
    nearest = (same_type or on_channel)[0]
    lines = [
        f"the nearest, on {channel!r} with type {nearest.type!r}, differs "
        f"(- expected, + published):"
    ]
    if type is not None and nearest.type != type:
        lines += _diff("type", type, nearest.type)
    if data != nearest.data:
        lines += _diff("data", data, nearest.data)
    return lines


def _assert_broadcast(
    events: Sequence[Event], channel: str, type: str | None, data: Any, where: str
) -> Event:
    __tracebackhide__ = True
    for event in events:
        if _matches(event, channel, type, data):
            return event
    wanted = f"no event{_describe(channel, type, data)} was published"
    if not events:
        raise AssertionError(f"{wanted}; nothing was published{where}")
    lines = [f"{wanted}; {_were(len(events))} published instead:", *_listing(events)]
    lines += _nearest(events, channel, type, data)
    raise AssertionError("\n".join(lines))


def assert_broadcast(
    events: Iterable[Event], channel: str, type: str | None = None, data: Any = ANY
) -> Event:
    """Assert that ``events`` hold one published on ``channel``, of ``type`` if given,
    whose data equals ``data`` if given (``unittest.mock.ANY`` matches anything, also
    inside it), and return the first such event.

    On failure the message lists what was published instead, and how the nearest
    event on that channel differs, line by line.
    """
    __tracebackhide__ = True
    return _assert_broadcast(list(events), channel, type, data, "")


def assert_no_broadcast(
    events: Iterable[Event],
    channel: str | None = None,
    type: str | None = None,
    data: Any = ANY,
) -> None:
    """Assert that none of ``events`` matches: on ``channel``, of ``type`` and with
    ``data``, each where given; with no criteria, that nothing was published at all.
    On failure the message lists the events that match."""
    __tracebackhide__ = True
    found = [e for e in events if _matches(e, channel, type, data)]
    if found:
        lines = [
            f"expected no event{_describe(channel, type, data)}, "
            f"but {_were(len(found))} published:",
            *_listing(found),
        ]
        raise AssertionError("\n".join(lines))
