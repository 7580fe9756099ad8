"""Work queues on PostgreSQL: one row per message in the table
``django_broadcast_queued`` (id, queue, payload, expiry), the id giving the order.

``aqueue_put`` takes a transaction-level advisory lock of the queue, then (in a new
statement, so that its snapshot sees every put that committed before it got the lock)
deletes the expired rows, counts the others and inserts below ``capacity``, with a
NOTIFY on the queue's notification channel. ``aqueue_take`` deletes the oldest
unexpired row (``FOR UPDATE SKIP LOCKED``: each row goes to one taker) and the expired
ones; finding none, it waits for a NOTIFY, heard by one LISTEN connection per event
loop (a :class:`Waker`), or :data:`POLL` seconds at most. The DELETE runs in a
transaction of a task of its own, which commits only while its taker still waits: a
taker cancelled meanwhile has it rolled back (the row stays where it was), and one
cancelled during the commit has the row put back under its own id (at the head of
the queue), so a cancellation loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from . import schema
from ._severing import overran, sever

if TYPE_CHECKING:
    from .backend import PostgresBackend

__all__ = ["GIVE_BACK", "LOCK", "POLL", "PUT", "TAKE", "Handover", "Waker", "give_back", "take"]

logger = logging.getLogger("django_broadcast.hub")

#: Seconds a taker waits for a NOTIFY before it looks again: a safety net only, for a
#: notification lost with a listening connection.
POLL = 2.0

LOCK = "SELECT pg_advisory_xact_lock(%s::bigint)"

PUT = f"""
WITH expired AS (
    DELETE FROM {schema.QUEUED} WHERE id IN (
        SELECT id FROM {schema.QUEUED} WHERE queue = %(queue)s::text AND expires < %(now)s
        FOR UPDATE SKIP LOCKED)
),
room AS (
    SELECT count(*) < %(capacity)s AS ok FROM {schema.QUEUED}
    WHERE queue = %(queue)s::text AND expires >= %(now)s
),
row AS (
    INSERT INTO {schema.QUEUED} (queue, payload, expires)
    SELECT %(queue)s::text, %(payload)s::bytea, %(expires)s::float8 FROM room WHERE ok
    RETURNING id
)
SELECT pg_notify(%(name)s::text, '') FROM row
"""

TAKE = f"""
WITH expired AS (
    DELETE FROM {schema.QUEUED} WHERE id IN (
        SELECT id FROM {schema.QUEUED} WHERE queue = %(queue)s::text AND expires < %(now)s
        FOR UPDATE SKIP LOCKED)
)
DELETE FROM {schema.QUEUED} WHERE id = (
    SELECT id FROM {schema.QUEUED} WHERE queue = %(queue)s::text AND expires >= %(now)s
    ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, queue, payload, expires
"""

#: Puts a row taken for a cancelled taker back, under its own id (so at the head).
GIVE_BACK = f"""
WITH row AS (
    INSERT INTO {schema.QUEUED} (id, queue, payload, expires) VALUES (%s, %s, %s, %s)
    RETURNING id
)
SELECT pg_notify(%s::text, '') FROM row
"""


class Waker:
    """One connection per event loop LISTENing to the notification channels of the
    queues that have takers, waking them when a message is put.

    It waits in psycopg's ``notifies()``, in a task of its own; a LISTEN cancels that
    wait (which consumed nothing), runs, and starts it again: notifications that arrive
    meanwhile are kept by psycopg and read first. A channel nobody takes from any more
    is UNLISTENed at the next LISTEN; a new connection LISTENs to those with takers.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()
        self.listening: set[str] = set()  # on self.conn
        self.takers: dict[str, set[asyncio.Event]] = {}  # name -> the takers' events
        self.task: asyncio.Task[None] | None = None

    def add(self, name: str, event: asyncio.Event) -> None:
        """Set ``event`` whenever a NOTIFY on ``name`` arrives."""
        self.takers.setdefault(name, set()).add(event)

    def discard(self, name: str, event: asyncio.Event) -> None:
        """Stop setting ``event``."""
        events = self.takers.get(name, set())
        events.discard(event)
        if not events:
            self.takers.pop(name, None)

    def ready(self, name: str) -> bool:
        """Whether a NOTIFY on ``name`` would be heard now."""
        conn, task = self.conn, self.task
        return (
            name in self.listening
            and conn is not None
            and not conn.closed
            and task is not None
            and not task.done()
        )

    async def listen(self, name: str) -> None:
        """LISTEN to ``name``, connecting (within TIMEOUT) where needed; a cancelled
        caller lets the work finish for the next one."""
        if self.ready(name):
            return
        task = asyncio.get_running_loop().create_task(self._listen(name))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(task)

    async def _listen(self, name: str) -> None:
        async with self.lock:
            if self.ready(name):
                return
            await self._stop()
            conn = self.conn
            if conn is None or conn.closed:
                self.listening = set()
                conn = self.conn = await self.backend.connect(self.backend.listen_url)
            timer = asyncio.get_running_loop().call_later(self.backend.timeout, overran, conn)
            try:
                for wanted in {name, *self.takers} - self.listening:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(wanted)))
                    self.listening.add(wanted)
                for unwanted in self.listening - {name, *self.takers}:
                    await conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(unwanted)))
                    self.listening.discard(unwanted)
            except psycopg.OperationalError as exc:
                raise self.backend.unavailable(exc, url=self.backend.listen_url) from exc
            finally:
                timer.cancel()
            self.task = asyncio.get_running_loop().create_task(self._collect(conn))

    async def _collect(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for note in conn.notifies():
                for event in self.takers.get(note.channel, ()):
                    event.set()
        except psycopg.Error:
            # The connection is lost: wake every taker, whose next look reconnects.
            for events in self.takers.values():
                for event in events:
                    event.set()

    async def _stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def close(self) -> None:
        """Stop waiting and close the connection."""
        await self._stop()
        conn, self.conn = self.conn, None
        if conn is not None:
            sever(conn)  # a frozen server would not answer the goodbye
            await conn.close()


class Handover:
    """Whether the taker of a :func:`take` still waits for its row."""

    wanted = True


async def take(
    backend: PostgresBackend,
    pool: Any,
    conn: psycopg.AsyncConnection[Any],
    params: dict[str, Any],
    name: str,
    handover: Handover,
) -> Any:
    """Run :data:`TAKE` on ``conn`` (returned to ``pool`` at the end) in a transaction
    that commits only while ``handover.wanted``; return the row for the taker, or
    ``None`` (none, or kept or put back for a taker gone)."""
    timer = asyncio.get_running_loop().call_later(backend.timeout, overran, conn)
    try:
        kept = False
        async with conn.transaction():
            row = await (await conn.execute(TAKE.encode(), params)).fetchone()
            if row is not None and not handover.wanted:
                kept = True
                raise psycopg.Rollback
        if row is None or handover.wanted:
            return row
        if kept:  # wake a taker that skipped the row while it was locked
            await conn.execute(b"SELECT pg_notify(%s::text, '')", [name])
        else:  # the taker left during the commit
            await conn.execute(GIVE_BACK.encode(), [*row, name])
        return None
    except psycopg.OperationalError as exc:
        raise backend.unavailable(exc) from exc
    finally:
        timer.cancel()
        await pool.putconn(conn)


def give_back(backend: PostgresBackend, name: str, done: asyncio.Task[Any]) -> None:
    """Put a row taken for a cancelled taker back, under its id."""
    if done.cancelled() or done.exception() is not None or done.result() is None:
        return
    row = done.result()

    async def insert() -> None:
        try:
            await backend.aexecute(GIVE_BACK, [*row, name])
        except Exception:
            logger.error("a message taken for a cancelled reader of %r was lost", row[1])

    task = asyncio.get_running_loop().create_task(insert())
    backend._giving_back.add(task)
    task.add_done_callback(backend._giving_back.discard)
