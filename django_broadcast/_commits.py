"""The events an alias publishes inside a database transaction, sent together at its
commit: one round trip per transaction, in the order they were published.

Each event is registered with Django's ``on_commit`` as a hook of its own, so that
Django drops the events of a savepoint that rolls back (and all of them when the
transaction does). A hook that runs sends its event and every later one of the
transaction whose hook Django still holds and that is not sent yet: at a commit the
first hook sends them all, and the others find theirs sent (a test helper that runs
some hooks alone sends no earlier event). Django keeps no record of the hooks it
dropped, but it held the only reference to them: each event is known here through
a weak reference, which dies with the dropped hook (CPython frees an object when its
last reference goes).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["Commits", "Pending"]


class Pending:
    """One event waiting for its transaction's commit, and its ``on_commit`` hook."""

    __slots__ = (
        "__weakref__",
        "channel",
        "commit",
        "data",
        "index",
        "ms",
        "payload",
        "sent",
        "type",
    )

    def __init__(
        self,
        commit: _Commit | None,
        channel: str,
        type: str,
        data: Any,
        payload: bytes,
        ms: int,
    ) -> None:
        self.commit = commit
        self.channel = channel
        self.type = type
        self.data = data
        self.payload = payload
        self.ms = ms
        self.index = 0  # its place among its transaction's events
        self.sent = False

    def __call__(self) -> None:
        if self.commit is not None:
            self.commit.send(self)


class _Commit:
    """The events of one alias published in one transaction of one connection."""

    __slots__ = ("connection", "events", "send_events")

    def __init__(
        self, connection: BaseDatabaseWrapper, send: Callable[[Sequence[Pending]], None]
    ) -> None:
        self.connection = connection
        self.events: list[weakref.ref[Pending]] = []
        self.send_events = send

    def takes(self, connection: BaseDatabaseWrapper) -> bool:
        """Whether an event published now on ``connection`` joins these: the same
        connection, and the latest event neither sent (committed) nor dropped
        (rolled back: a new batch begins, sent after this one)."""
        if connection is not self.connection:
            return False
        latest = self.events[-1]()
        return latest is not None and not latest.sent

    def add(self, event: Pending) -> None:
        event.index = len(self.events)
        self.events.append(weakref.ref(event))

    def send(self, first: Pending) -> None:
        """Send ``first`` and every later event whose hook Django still holds, once."""
        if first.sent:
            return
        alive = [
            event
            for ref in self.events[first.index :]
            if (event := ref()) is not None and not event.sent
        ]
        for event in alive:
            event.sent = True
        self.send_events(alive)


class Commits:
    """An alias's events waiting for commits: one batch per transaction, per thread."""

    def __init__(self, send: Callable[[Sequence[Pending]], None]) -> None:
        self._send = send
        self._local = threading.local()

    def defer(
        self,
        connection: BaseDatabaseWrapper,
        channel: str,
        type: str,
        data: Any,
        payload: bytes,
        ms: int,
    ) -> None:
        """Send the event at the commit of ``connection``'s transaction, with the
        others of that transaction; never if it rolls back."""
        commit: _Commit | None = getattr(self._local, "commit", None)
        if commit is None or not commit.takes(connection):
            commit = self._local.commit = _Commit(connection, self._send)
        event = Pending(commit, channel, type, data, payload, ms)
        commit.add(event)
        connection.on_commit(event)
