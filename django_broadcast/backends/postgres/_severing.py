"""Bounding what psycopg does not bound: a statement to a frozen server waits for ever,
so a connection that overruns TIMEOUT is severed (its socket shut down), from a timer
on the event loop or from one watchdog thread for sync code."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

__all__ = ["Watchdog", "overran", "peer_closed", "sever"]

logger = logging.getLogger("django_broadcast.backends.postgres")


def sever(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Shut down ``conn``'s socket, so that whatever waits on it fails at once (a
    frozen server answers nothing, and psycopg has no timeout of its own per query)."""
    with contextlib.suppress(OSError, psycopg.Error):
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def overran(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """:func:`sever` a connection whose statement outlived TIMEOUT."""
    logger.debug("closing a connection whose statement did not end within TIMEOUT")
    sever(conn)


def peer_closed(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server closed ``conn`` (an idle connection has nothing to read)."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


class Watchdog:
    """One thread per backend that severs the connections of sync statements that
    overrun their deadline (no thread per call)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.due: list[tuple[float, int, psycopg.Connection[Any]]] = []
        self.done: set[int] = set()
        self.counter = itertools.count()
        self.thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection[Any], timeout: float) -> Iterator[None]:
        number = next(self.counter)
        with self.cond:
            heapq.heappush(self.due, (time.monotonic() + timeout, number, conn))
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="django_broadcast postgres watchdog", daemon=True
                )
                self.thread.start()
            if self.due[0][1] == number:  # the earliest deadline: wake the thread for it
                self.cond.notify()
        try:
            yield
        finally:
            with self.cond:
                self.done.add(number)

    def _run(self) -> None:
        with self.cond:
            while True:
                while self.due and self.due[0][1] in self.done:
                    self.done.discard(heapq.heappop(self.due)[1])
                if not self.due:
                    self.cond.wait()
                    continue
                deadline, number, conn = self.due[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                heapq.heappop(self.due)
                self.done.add(number)  # discarded at its end
                overran(conn)
