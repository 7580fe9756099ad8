"""The PostgreSQL backend: publishing (through psycopg pools, or a Django database
connection inside the caller's transaction) and history."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout
from psycopg_pool.pool_async import StopWorker

from ..._loops import at_close
from ...exceptions import BroadcastError, BroadcastUnavailable
from ..base import Backend, Features, HistoryPage, Message, Receiver
from . import schema
from ._severing import Watchdog, overran, peer_closed
from .queues import LOCK, POLL, PUT, Handover, Waker, give_back, take

logger = logging.getLogger("django_broadcast.backends.postgres")

__all__ = ["PostgresBackend"]

#: NOTIFY channels are identifiers: at most NAMEDATALEN - 1 bytes.
MAX_NAME = 63
#: A NOTIFY payload must be shorter than 8,000 bytes; ids and a margin come off it.
_MAX_INLINE = 7900
#: A bytea value holds at most 1 GB.
MAX_PAYLOAD = 1024**3 - 1
_MAX_ID = 2**63 - 1
_HASHED = 16  # hex digits of the hash that ends a long name

_PUBLISH = f"""
WITH locked AS (SELECT pg_advisory_xact_lock(%s::bigint)),
row AS (
    INSERT INTO {schema.TABLE} (channel, payload) SELECT %s::text, %s::bytea FROM locked
    RETURNING id
)
SELECT id, pg_notify(%s::text, id::text || coalesce(':' || %s::text, '')) FROM row
"""

#: The channels' locks of a batch, taken in one order (see publish_many).
_LOCK_MANY = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k"

_TRIM = f"""
WITH gone AS (
    DELETE FROM {schema.TABLE} WHERE id IN (
        SELECT id FROM {schema.TABLE} WHERE channel = %s::text AND (
            id <= (SELECT id FROM {schema.TABLE} WHERE channel = %s::text
                   ORDER BY id DESC OFFSET %s::bigint LIMIT 1)
            OR created < now() - make_interval(secs => %s::float8))
        FOR UPDATE SKIP LOCKED)
    RETURNING id
)
INSERT INTO {schema.TRIMMED} (channel, upto) SELECT %s::text, max(id) FROM gone
HAVING count(*) > 0
ON CONFLICT (channel) DO UPDATE SET upto = greatest({schema.TRIMMED}.upto, excluded.upto)
"""

#: Why continuity after a position cannot be proven, or NULL: rows after it were
#: deleted by retention, or the position is older than the table (made anew) or
#: newer than any id it made.
GAP = f"""
SELECT CASE
    WHEN coalesce((SELECT upto FROM {schema.TRIMMED} WHERE channel = %s::text), 0)
         > %s::bigint THEN 'trimmed'
    WHEN %s::bigint > 0 AND %s::bigint <
         (SELECT seqstart FROM pg_sequence WHERE seqrelid = '{schema.SEQUENCE}'::regclass)
         THEN 'reset'
    WHEN %s::bigint > (SELECT last_value FROM {schema.SEQUENCE}) THEN 'reset'
END
"""

#: Publishers hold their channel's lock until they commit: waits for those in flight.
WAIT_PUBLISHERS = "SELECT pg_advisory_xact_lock_shared(%s::bigint)"
NEWEST = f"SELECT coalesce(max(id), 0) FROM {schema.TABLE} WHERE channel = %s::text"
AFTER = (
    f"SELECT id, payload FROM {schema.TABLE} WHERE channel = %s::text AND id > %s::bigint "
    f"ORDER BY id LIMIT %s"
)
_LATEST = (
    f"SELECT id, payload FROM {schema.TABLE} WHERE channel = %s::text ORDER BY id DESC LIMIT %s"
)
BY_ID = f"SELECT id, payload FROM {schema.TABLE} WHERE id = ANY(%s::bigint[])"


def _parse_id(event_id: str) -> int:
    if (
        isinstance(event_id, str)
        and 0 < len(event_id) <= 19
        and event_id.isascii()
        and event_id.isdigit()
        and int(event_id) <= _MAX_ID
    ):
        return int(event_id)
    raise ValueError(
        f"{event_id!r} is not an event id of the PostgreSQL backend: expected a decimal "
        f"number of ASCII digits from 0 to {_MAX_ID}, such as '1700000000000000'"
    )


def lock_key(text: str) -> int:
    """A signed 64-bit advisory lock key for ``text``."""
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


class PostgresBackend(Backend):
    """PostgreSQL LISTEN/NOTIFY with history in a table, and transactional publish
    (``postgres://``, ``postgresql://``)."""

    features = Features(
        history=True,
        origin="0",
        transactional=True,
        id_order="channel",
        max_payload=MAX_PAYLOAD,
        max_name_length=MAX_NAME,
        queues=True,
    )
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "prefix": str,
        "history": int,
        "max_age": (int, float),
        "database": str,
        "listen_url": str,
        "pool_size": int,
    }

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self.url = location
        self.listen_url: str = self.options.get("listen_url", location)
        self.prefix: str = self.options.get("prefix", "broadcast:")
        self.history_size: int = self.options.get("history", 1000)
        self.max_age: float | None = self.options.get("max_age")
        self.database: str | None = self.options.get("database")
        self.pool_size: int = self.options.get("pool_size", 10)
        self.trim_every = max(1, self.history_size // 10)
        #: Concurrent threads' publishes are gathered on pooled connections, never
        #: in a thread's own Django connection.
        self.coalesces = self.database is None
        #: The application_name of the listening connections (``pg_stat_activity``).
        self.application_name = f"django_broadcast:listen:{self.prefix}"[:MAX_NAME]
        self._pool: ConnectionPool[Any] | None = None
        self._pool_lock = threading.Lock()
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]]
        self._apools = weakref.WeakKeyDictionary()
        self._watchdog = Watchdog()
        self._wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Waker]
        self._wakers = weakref.WeakKeyDictionary()
        #: The tasks putting back messages taken for cancelled takers.
        self._giving_back: set[asyncio.Task[None]] = set()

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        """The base checks, and a prefix short enough to leave room for channel names."""
        problems = super().validate_options(options)
        prefix = options.get("prefix")
        if isinstance(prefix, str) and (len(prefix.encode()) > 32 or "#" in prefix):
            problems.append(
                f"option 'prefix' must be at most 32 bytes without '#', not {prefix!r}: "
                f"NOTIFY channel names are at most {MAX_NAME} bytes"
            )
        return problems

    # Names -----------------------------------------------------------------------

    def key(self, channel: str) -> str:
        """The channel as stored in the table: with the alias's prefix."""
        return self.prefix + channel

    def notify_name(self, channel: str) -> str:
        """The NOTIFY channel of ``channel``: the prefixed name where it fits in 63
        bytes, else its start, ``#`` (never in a channel name) and a hash of it."""
        name = self.key(channel)
        if len(name.encode()) <= MAX_NAME:
            return name
        digest = hashlib.blake2b(name.encode(), digest_size=_HASHED // 2).hexdigest()
        return name[: MAX_NAME - _HASHED - 1] + "#" + digest

    def queue_key(self, queue: str) -> str:
        """The queue as stored in the table: with the alias's prefix."""
        return self.prefix + queue

    def queue_notify_name(self, queue: str) -> str:
        """The NOTIFY channel of ``queue``: as :meth:`notify_name` of ``"!" + queue``
        (``!`` is never in a channel name, so no channel has it)."""
        return self.notify_name("!" + queue)

    # Errors ----------------------------------------------------------------------

    def where(self, url: str | None = None) -> str:
        """Where the server is, for messages (no password)."""
        try:
            info = conninfo_to_dict(url or self.url)
        except psycopg.ProgrammingError:
            return "the configured URL"
        host = info.get("host", "localhost")
        return f"PostgreSQL at {host}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def unavailable(
        self, exc: BaseException, *, maybe_sent: bool | None = None, url: str | None = None
    ) -> BroadcastUnavailable:
        """The error raised when the server cannot be reached or does not answer."""
        what = {
            None: "",
            False: " The event was not sent.",
            True: " The event may still be delivered: the server got it and may run it.",
        }[maybe_sent]
        reason = str(exc).strip().rstrip(".").replace("\n", " ") or type(exc).__name__
        return BroadcastUnavailable(
            f"{self.where(url)} did not answer within {self.timeout} s (TIMEOUT): "
            f"{reason}.{what} Check that the server runs and the URL is right.",
            maybe_sent=bool(maybe_sent),
        )

    # Publishing ------------------------------------------------------------------

    def _publish_params(self, channel: str, payload: bytes) -> tuple[str, list[Any]]:
        inline = None
        if len(payload) <= _MAX_INLINE and b"\x00" not in payload:
            with contextlib.suppress(UnicodeDecodeError):
                inline = payload.decode()
        key = self.key(channel)
        return key, [lock_key(key), key, payload, self.notify_name(channel), inline]

    def _trim_params(self, key: str) -> list[Any]:
        return [key, key, self.history_size, self.max_age, key]

    def _write(self, cursor: Any, channel: str, payload: bytes) -> str:
        """Insert and NOTIFY through a DB-API ``cursor`` (psycopg's or Django's),
        trimming the channel now and then; return the id."""
        key, params = self._publish_params(channel, payload)
        cursor.execute(_PUBLISH, params)
        event_id: int = cursor.fetchone()[0]
        if event_id % self.trim_every == 0:
            cursor.execute(_TRIM, self._trim_params(key))
        return str(event_id)

    def publish(self, channel: str, payload: bytes) -> str:
        """Write the event and its NOTIFY: in the Django database ``OPTIONS["database"]``
        (inside its transaction, if one is open), else on a pooled connection."""
        if self.database is not None:
            return self._publish_in_django(channel, payload)
        pool = self.sync_pool()
        try:
            conn = self._getconn(pool)
        except PoolTimeout as exc:
            raise self.unavailable(exc, maybe_sent=False) from exc
        try:
            with self._watchdog.watch(conn, self.timeout), conn.cursor() as cursor:
                return self._write(cursor, channel, payload)
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc, maybe_sent=True) from exc
        finally:
            pool.putconn(conn)

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        """On a pooled connection: every event and its NOTIFY in one transaction, sent
        in one round trip (a pipeline), the channels' locks taken first in one order
        so that batches never wait on each other in a circle. The transaction stands
        or falls whole: one event refused fails them all. In the Django database
        ``OPTIONS["database"]``: one at a time, as :meth:`publish`."""
        if self.database is not None or len(items) < 2:
            return super().publish_many(items)
        pool = self.sync_pool()
        try:
            conn = self._getconn(pool)
        except PoolTimeout as exc:
            return [self.unavailable(exc, maybe_sent=False)] * len(items)
        try:
            with self._watchdog.watch(conn, self.timeout):
                return list(self._write_many(conn, items))
        except psycopg.OperationalError as exc:
            return [self.unavailable(exc, maybe_sent=True)] * len(items)
        except psycopg.Error as exc:  # refused: the transaction rolled back
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            return [exc] * len(items)
        finally:
            pool.putconn(conn)

    def _write_many(
        self, conn: psycopg.Connection[Any], items: Sequence[tuple[str, bytes]]
    ) -> list[str]:
        writes = [self._publish_params(channel, payload) for channel, payload in items]
        with conn.pipeline():
            conn.execute("BEGIN")  # (not conn.transaction(): it syncs, a round trip more)
            conn.execute(_LOCK_MANY, [sorted({params[0] for _, params in writes})])
            cursors = [conn.execute(_PUBLISH, params) for _, params in writes]
            conn.execute("COMMIT")
        ids: list[str] = []
        for (key, _), cursor in zip(writes, cursors, strict=True):
            row = cursor.fetchone()
            assert row is not None
            event_id: int = row[0]
            if event_id % self.trim_every == 0:
                conn.execute(_TRIM, self._trim_params(key))
            ids.append(str(event_id))
        return ids

    def _publish_in_django(self, channel: str, payload: bytes) -> str:
        from django.db import DatabaseError, connections

        assert self.database is not None
        try:
            with connections[self.database].cursor() as cursor:
                return self._write(cursor, channel, payload)
        except DatabaseError as exc:
            if schema.TABLE in str(exc):
                raise BroadcastError(
                    f"the table {schema.TABLE} is missing from database {self.database!r} "
                    f"(OPTIONS['database']): run manage.py migrate django_broadcast "
                    f"--database {self.database}"
                ) from exc
            raise

    async def apublish(self, channel: str, payload: bytes) -> str:
        """Write the event and its NOTIFY on the running loop's pool."""
        async with self._aconnection(writes=True) as conn, conn.cursor() as cursor:
            key, params = self._publish_params(channel, payload)
            await cursor.execute(_PUBLISH, params)
            row = await cursor.fetchone()
            assert row is not None
            event_id: int = row[0]
            if event_id % self.trim_every == 0:
                await cursor.execute(_TRIM, self._trim_params(key))
        return str(event_id)

    # Pools -----------------------------------------------------------------------

    def _getconn(self, pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
        """A pooled connection the server has not closed (a statement written to a
        closed one would fail as if the server had got it); the pool replaces those
        found closed at once, without the backoff its own check has."""
        deadline = time.monotonic() + self.timeout
        while True:
            conn = pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            if not peer_closed(conn):
                return conn
            conn.close()
            pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def _aconnection(self, *, writes: bool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the running loop's pool, given back after; what runs on it
        is bounded by TIMEOUT (past it, the socket is severed). A pool that gives none,
        or a connection lost, raises :class:`BroadcastUnavailable`; for ``writes``, it
        says whether the server may have got the write."""
        pool = await self.async_pool()
        try:
            conn = await self._agetconn(pool)
        except PoolTimeout as exc:
            raise self.unavailable(exc, maybe_sent=False if writes else None) from exc
        timer = asyncio.get_running_loop().call_later(self.timeout, overran, conn)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc, maybe_sent=True if writes else None) from exc
        finally:
            timer.cancel()
            await pool.putconn(conn)

    async def _agetconn(self, pool: AsyncConnectionPool[Any]) -> psycopg.AsyncConnection[Any]:
        """:meth:`_getconn` for an async pool."""
        deadline = time.monotonic() + self.timeout
        while True:
            conn = await pool.getconn(timeout=max(0.0, deadline - time.monotonic()))
            if not peer_closed(conn):
                return conn
            await conn.close()
            await pool.putconn(conn)

    def _connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": max(2, int(self.timeout + 0.999))}

    def sync_pool(self) -> ConnectionPool[Any]:
        """The process's pool for sync publishes and history, opened on first use."""
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    pool = ConnectionPool(
                        self.url,
                        min_size=0,
                        max_size=self.pool_size,
                        kwargs=self._connect_kwargs(),
                        configure=_create_tables,
                        reconnect_timeout=0,  # see async_pool()
                        open=False,
                        name="django_broadcast",
                    )
                    pool.open(wait=False)
                    self._pool = pool
        return pool

    async def async_pool(self) -> AsyncConnectionPool[Any]:
        """The running loop's pool for async publishes and history."""
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is None:
            pool = _AsyncPool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                kwargs=self._connect_kwargs(),
                configure=_acreate_tables,
                # A failed connection attempt is not retried in the background with
                # a growing backoff: the next request tries again at once.
                reconnect_timeout=0,
                open=False,
                name="django_broadcast",
            )
            self._apools[loop] = pool
            at_close(loop, partial(self._close_loop, loop))  # a loop that ends: its pool
            await pool.open(wait=False)
        return pool

    async def connect(self, url: str) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection (for a receiver), with the tables made."""

        async def connect() -> psycopg.AsyncConnection[Any]:
            conn = await psycopg.AsyncConnection.connect(
                url, application_name=self.application_name, **self._connect_kwargs()
            )
            try:
                await _acreate_tables(conn)
            except BaseException:
                await conn.close()
                raise
            return conn

        try:
            return await asyncio.wait_for(connect(), self.timeout)
        except (psycopg.OperationalError, asyncio.TimeoutError) as exc:
            raise self.unavailable(exc, url=url) from exc

    # History ---------------------------------------------------------------------

    def id_key(self, event_id: str) -> int:
        """Ids are numbers of the table's sequence: ASCII digits, at most 2**63 - 1."""
        return _parse_id(event_id)

    def _page(
        self, channel: str, since: str | None, rows: Sequence[Any], gap: str | None
    ) -> HistoryPage:
        messages = [Message(channel, str(row[0]), bytes(row[1])) for row in rows]
        if since is None:
            messages.reverse()
        return HistoryPage(messages, gap=gap is not None)

    def _history_queries(
        self, channel: str, limit: int | None, since: str | None
    ) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]] | None]:
        key = self.key(channel)
        if since is None:
            return (_LATEST, [key, limit]), None
        at = _parse_id(since)
        return (AFTER, [key, at, limit]), (GAP, [key, at, at, at, at])

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read the table: the latest ``limit`` rows, or those after ``since`` (with
        the proof of continuity in the same transaction)."""
        read, gap_query = self._history_queries(channel, limit, since)
        try:
            pool = self.sync_pool()
            conn = self._getconn(pool)
            try:
                with self._watchdog.watch(conn, self.timeout), conn.transaction():
                    rows = conn.execute(*read).fetchall()
                    gap = None if gap_query is None else conn.execute(*gap_query).fetchone()
            finally:
                pool.putconn(conn)
        except psycopg.OperationalError as exc:
            raise self.unavailable(exc) from exc
        return self._page(channel, since, rows, None if gap is None else gap[0])

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """:meth:`history` from async code."""
        read, gap_query = self._history_queries(channel, limit, since)
        async with self._aconnection(writes=False) as conn, conn.transaction():
            rows = await (await conn.execute(*read)).fetchall()
            gap = None
            if gap_query is not None:
                gap = await (await conn.execute(*gap_query)).fetchone()
        return self._page(channel, since, rows, None if gap is None else gap[0])

    # Queues ------------------------------------------------------------------------

    async def aexecute(self, query: str, params: Any) -> Any:
        """Run one statement on the running loop's pool within TIMEOUT; return its
        first row (``None`` if it has none)."""
        async with self._aconnection(writes=True) as conn:
            cursor = await conn.execute(query.encode(), params)
            return None if cursor.description is None else await cursor.fetchone()

    async def aqueue_put(
        self, queue: str, payload: bytes, *, capacity: int, expires: float
    ) -> bool:
        """Insert the message below ``capacity``, under the queue's advisory lock, and
        NOTIFY its takers."""
        key = self.queue_key(queue)
        params = {
            "queue": key,
            "now": time.time(),
            "capacity": capacity,
            "payload": payload,
            "expires": expires,
            "name": self.queue_notify_name(queue),
        }
        async with self._aconnection(writes=True) as conn, conn.transaction():
            await conn.execute(LOCK.encode(), [lock_key("!" + key)])
            row = await (await conn.execute(PUT.encode(), params)).fetchone()
        return row is not None

    async def aqueue_take(self, queue: str, *, timeout: float) -> bytes | None:
        """Delete and return the oldest unexpired message, waiting for a NOTIFY of the
        queue (or :data:`~.queues.POLL` seconds) while there is none."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        name = self.queue_notify_name(queue)
        params = {"queue": self.queue_key(queue)}
        waker = self._wakers.get(loop)
        if waker is None:
            waker = self._wakers[loop] = Waker(self)
            at_close(loop, partial(self._close_loop, loop))
        put = asyncio.Event()
        waker.add(name, put)
        try:
            while True:
                await waker.listen(name)
                put.clear()
                row = await self._take_once(name, {**params, "now": time.time()})
                if row is not None:
                    return bytes(row[2])
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                # Not wait_for(), which (on Python 3.11) can swallow a cancellation
                # that comes as the event is set.
                waiting = loop.create_task(put.wait())
                try:
                    await asyncio.wait([waiting], timeout=min(remaining, POLL))
                finally:
                    waiting.cancel()
        finally:
            waker.discard(name, put)

    async def _take_once(self, name: str, params: dict[str, Any]) -> Any:
        """Run :func:`~.queues.take` in a task of its own (a cancelled caller lets it
        finish: it keeps or puts back what it took); return its row or ``None``."""
        pool = await self.async_pool()
        try:
            conn = await self._agetconn(pool)  # a cancellation here takes nothing
        except PoolTimeout as exc:
            raise self.unavailable(exc) from exc
        handover = Handover()
        job = asyncio.get_running_loop().create_task(take(self, pool, conn, params, name, handover))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            handover.wanted = False
            # A row handed over just before the cancellation reached this caller.
            job.add_done_callback(lambda done: give_back(self, name, done))
            raise

    async def aqueue_clear(self, queue: str) -> None:
        """Delete the queue's rows."""
        await self.aexecute(
            f"DELETE FROM {schema.QUEUED} WHERE queue = %s::text", [self.queue_key(queue)]
        )

    # Receiving and lifetime --------------------------------------------------------

    def receiver(self) -> Receiver:
        """A receiver holding one listening connection for the running loop."""
        from .receiver import PostgresReceiver

        return PostgresReceiver(self)

    def close(self) -> None:
        """Close the sync pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.timeout)

    async def aclose(self) -> None:
        """Close the running loop's queue waker and pool, then the sync pool."""
        await self._close_loop(asyncio.get_running_loop())
        self.close()

    async def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the queue waker and the pool of ``loop`` (the running one)."""
        waker = self._wakers.pop(loop, None)
        if waker is not None:
            await waker.close()
        giving_back = {task for task in self._giving_back if task.get_loop() is loop}
        if giving_back:
            await asyncio.wait(giving_back, timeout=self.timeout)
        pool = self._apools.pop(loop, None)
        if pool is not None:
            await pool.close(timeout=self.timeout)


def _create_tables(conn: psycopg.Connection[Any]) -> None:
    conn.execute(schema.CREATE.encode())
    conn.execute(schema.CREATE_QUEUED.encode())


async def _acreate_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(schema.CREATE.encode())
    await conn.execute(schema.CREATE_QUEUED.encode())


class _AsyncPool(AsyncConnectionPool[Any]):
    """psycopg_pool's async pool, whose maintenance workers end when cancelled.

    psycopg_pool's workers, and its tasks, swallow a ``CancelledError`` that reaches
    them in the middle of a task, and wait for the next one: an event loop that ends with the pool
    still open (``asyncio.run()`` cancels every task before closing, as
    ``async_to_sync`` and pytest-asyncio do) then waits for them forever.

    Closing the pool once its workers ended that way closes its connections too
    (psycopg_pool's ``close()`` would raise their ``CancelledError`` first).
    """

    async def _signal_stop_worker(self) -> list[Any]:
        workers = await super()._signal_stop_worker()
        return [worker for worker in workers if not worker.done()]

    @classmethod
    async def worker(cls, q: Any) -> None:
        """Run the pool's maintenance tasks until told to stop, or cancelled."""
        me = asyncio.current_task()
        while not isinstance(task := await q.get(), StopWorker):
            try:
                await task.run()
            except Exception as exc:  # as psycopg_pool does, without CancelledError
                logger.warning("a connection pool task %s failed: %r", task, exc)
            # A task swallows a cancellation too: end once it is done (Python 3.11+).
            if me is not None and getattr(me, "cancelling", lambda: 0)():
                raise asyncio.CancelledError
