"""Gathering the sync publishes of concurrent threads into pipelined flushes.

A thread that publishes while no other does sends its event at once, alone: a lone
caller waits for nothing but its own round trip. Threads that publish while one is
on its way wait in line; when it returns, the first of them takes the whole line and
sends it with one :meth:`~.base.Backend.publish_many` (one round trip where the
backend pipelines), then hands the line that formed meanwhile to its first waiter,
and so on. Each caller gets its own event id, or its own exception.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from .base import Backend

__all__ = ["Coalescer"]


class _Call:
    """One waiting publish: what to send, and what came of it."""

    __slots__ = ("batch", "channel", "done", "next", "outcome", "payload")

    def __init__(self, channel: str, payload: bytes) -> None:
        self.channel = channel
        self.payload = payload
        self.outcome: Any = None  # the id, or the exception to raise
        self.batch: list[_Call] | None = None  # set where this caller leads a flush
        self.next: _Call | None = None  # the caller to wake after this one, once settled
        self.done = threading.Lock()
        self.done.acquire()  # released once settled, or once it leads


class Coalescer:
    """Sends the sync publishes of ``backend`` from concurrent threads in batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        #: Whether a publish or a flush is on its way.
        self.busy = False

    @property
    def waiting(self) -> int:
        """The publishes waiting for the one on its way."""
        return len(self._waiting)

    def publish(self, channel: str, payload: bytes) -> str:
        """:meth:`Backend.publish`, sent at once if nothing is on its way, else with
        the others that wait."""
        with self._lock:
            if self.busy:
                call = _Call(channel, payload)
                self._waiting.append(call)
            else:
                self.busy = True
                call = None
        if call is None:
            try:
                return self.backend.publish(channel, payload)
            finally:
                self._hand_over()
        interrupted = _wait(call)
        if call.batch is not None:
            self._flush(call.batch)
        elif call.next is not None:  # settled: wake the next one of the batch
            call.next.done.release()
        if interrupted is not None:
            raise interrupted
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        event_id: str = call.outcome
        return event_id

    def _hand_over(self) -> None:
        """Give the line that formed to its first caller, or mark nothing on its way."""
        with self._lock:
            if not self._waiting:
                self.busy = False
                return
            batch, self._waiting = self._waiting, []
        batch[0].batch = batch
        batch[0].done.release()

    def _flush(self, batch: list[_Call]) -> None:
        """Send ``batch`` in one call, settle each caller, then hand over."""
        try:
            try:
                outcomes: list[Any] = self.backend.publish_many(
                    [(call.channel, call.payload) for call in batch]
                )
            except BaseException as exc:  # publish_many reports each failure: a bug, or
                outcomes = [exc] * len(batch)  # an interrupt; every caller hears of it
            for call, outcome in zip(batch, outcomes, strict=True):
                call.outcome = outcome
        finally:
            # One after the other, each woken by the one before: waking them all at
            # once would have them all contend for the GIL at once.
            for call, after in itertools.pairwise(batch[1:]):
                call.next = after
            if len(batch) > 1:
                batch[1].done.release()
            self._hand_over()


def _wait(call: _Call) -> BaseException | None:
    """Wait until ``call`` is settled or leads a flush; an interrupt meanwhile (a
    signal's exception in the main thread) is returned once the wait is over, so that
    no flush that this caller must lead is ever lost."""
    interrupted: BaseException | None = None
    while True:
        try:
            call.done.acquire()
            return interrupted
        except BaseException as exc:
            interrupted = exc
