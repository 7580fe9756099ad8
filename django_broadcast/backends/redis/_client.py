"""What both Redis backends share: the URL, the key prefix, the sync and asyncio
clients, one command run with a clear answer to "was it sent?", and the dedicated
connections receivers hold, each exchange bounded by TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import async_timeout as _deadline  # asyncio's or async-timeout's
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._loops import at_close
from ...exceptions import BroadcastUnavailable
from ..base import Backend, ConnectionLost

T = TypeVar("T")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
#: Redis's own limit on one value (``proto-max-bulk-len``), the hard payload limit.
MAX_PAYLOAD = 512 * 1024 * 1024


def safe_url(url: str) -> str:
    """``url`` without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisBase(Backend):
    """What both Redis backends share: URL, prefix, clients, error translation."""

    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "prefix": str,
    }

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        scheme, sep, rest = location.partition("://")
        #: The redis-py URL (``redis+streams://`` becomes ``redis://``).
        self.url = scheme.split("+", 1)[0] + sep + rest
        self.prefix: str = self.options.get("prefix", "broadcast:")
        self._safe_url = safe_url(self.url)
        self._sync: redis.Redis | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]
        self._async = weakref.WeakKeyDictionary()

    # Clients ---------------------------------------------------------------------

    def _client_kwargs(self, *, socket_timeout: float | None) -> dict[str, Any]:
        return {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "protocol": 2,
        }

    @property
    def sync_client(self) -> redis.Redis:
        """The process's sync client; its pool is shared by every thread."""
        client = self._sync
        if client is None:
            client = self._sync = redis.Redis.from_url(
                self.url,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                **self._client_kwargs(socket_timeout=self.timeout),
            )
        return client

    def async_client(self) -> redis.asyncio.Redis:
        """The running event loop's asyncio client.

        Its sockets have no read or write timeout: each exchange is bounded by
        ``_deadline`` instead (see :class:`Connection` for why).
        """
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = redis.asyncio.Redis.from_url(
                self.url,
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                **self._client_kwargs(socket_timeout=None),
            )
            at_close(loop, partial(self._release, loop, client))
        return client

    async def _release(self, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis) -> None:
        """Close the client of ``loop``, which is closing."""
        if self._async.get(loop) is client:
            del self._async[loop]
        await client.aclose()

    def connection_name(self, role: str) -> str:
        """The ``CLIENT SETNAME`` of a receiving connection, for ``CLIENT LIST``."""
        return re.sub(r"\s", "_", f"django_broadcast:{role}:{self.prefix}")

    def make_connection(self, role: str) -> AbstractConnection:
        """A new, unconnected asyncio connection for a receiver; never auto-retried.

        Its socket has no read or write timeout: a receiver bounds each exchange
        itself (see :class:`Connection`).
        """
        pool = redis.asyncio.ConnectionPool.from_url(
            self.url,
            client_name=self.connection_name(role),
            retry=AsyncRetry(NoBackoff(), 0),
            **self._client_kwargs(socket_timeout=None),
        )
        return pool.make_connection()

    def unavailable(
        self, exc: BaseException, *, maybe_sent: bool | None = None
    ) -> BroadcastUnavailable:
        """The error raised when the broker cannot be reached or does not answer.

        For a publish, ``maybe_sent`` says whether the broker may have got the event
        (see :meth:`execute`); None for anything else.
        """
        what = {
            None: "",
            False: " The event was not sent.",
            True: " The event may still be delivered: the broker got it and may run it.",
        }[maybe_sent]
        return BroadcastUnavailable(
            f"Redis at {self._safe_url} did not answer within {self.timeout} s "
            f"(TIMEOUT): {str(exc).rstrip('.') or type(exc).__name__}.{what} "
            f"Check that the server runs and the URL is right.",
            maybe_sent=bool(maybe_sent),
        )

    def execute(self, *args: Any) -> Any:
        """Run one command from sync code on a pooled connection and return its reply.

        Raise :class:`BroadcastUnavailable` where the broker cannot be reached or does
        not answer within TIMEOUT, with ``maybe_sent`` False where the command was
        certainly not run (no connection, or it broke before the whole command was
        written; a pooled connection found broken so is replaced once, at once) and
        True once it was written (the broker may run it late).
        """
        pool = self.sync_client.connection_pool
        retried = False
        while True:
            try:
                conn = pool.get_connection()
            except REDIS_ERRORS as exc:
                raise self.unavailable(exc, maybe_sent=False) from exc
            try:
                try:
                    conn.send_command(*args)
                except redis.ConnectionError as exc:
                    conn.disconnect()
                    if retried:
                        raise self.unavailable(exc, maybe_sent=False) from exc
                    retried = True  # a stale connection: the command did not leave
                    continue
                except REDIS_ERRORS as exc:  # part of it sent: the broker never runs it
                    conn.disconnect()
                    raise self.unavailable(exc, maybe_sent=False) from exc
                try:
                    return conn.read_response()
                except redis.BusyLoadingError as exc:  # answered: not run
                    raise self.unavailable(exc, maybe_sent=False) from exc
                except REDIS_ERRORS as exc:
                    conn.disconnect()
                    raise self.unavailable(exc, maybe_sent=True) from exc
            finally:
                pool.release(conn)

    async def aexecute(self, *args: Any) -> Any:
        """:meth:`execute` from async code, on the running loop's pool.

        A command whose sending was cut short by the deadline may still be written
        (asyncio flushes what it buffered when the connection closes): it counts as
        maybe sent.
        """
        pool = self.async_client().connection_pool
        retried = False
        while True:
            try:
                async with _deadline(self.timeout):
                    conn = await pool.get_connection()
                    if _peer_closed(conn):  # a stale pooled connection
                        await conn.disconnect()
                        await conn.connect()
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                raise self.unavailable(exc, maybe_sent=False) from exc
            try:
                async with _deadline(self.timeout):
                    try:
                        await conn.send_command(*args)
                    except redis.ConnectionError as exc:
                        await conn.disconnect()
                        if retried:
                            raise self.unavailable(exc, maybe_sent=False) from exc
                        retried = True  # a stale connection: the command did not leave
                        continue
                    return await conn.read_response()
            except redis.BusyLoadingError as exc:  # answered: not run
                raise self.unavailable(exc, maybe_sent=False) from exc
            except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
                await conn.disconnect()
                raise self.unavailable(exc, maybe_sent=True) from exc
            finally:
                await pool.release(conn)

    def call(self, func: Callable[[], T]) -> T:
        """Run a sync Redis call, translating connection failures."""
        try:
            return func()
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from exc

    async def acall(self, awaitable: Awaitable[T], *, waits: float = 0) -> T:
        """Await a Redis call within TIMEOUT (plus ``waits``, the seconds a blocking
        command may wait at the server), translating connection failures."""
        try:
            async with _deadline(self.timeout + waits):
                return await awaitable
        except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
            raise self.unavailable(exc) from exc

    def key(self, channel: str) -> str:
        """The Redis channel or key of ``channel``."""
        return self.prefix + channel

    # Lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect the sync pool."""
        client, self._sync = self._sync, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the running loop's asyncio client, then the sync pool."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()


def _peer_closed(conn: AbstractConnection) -> bool:
    """Whether the broker closed ``conn`` (or sent it something unasked), as its socket
    says: the pool's own check asks asyncio, which may not have polled it yet, and a
    command written to a closed connection would fail as if the broker had got it."""
    writer = getattr(conn, "_writer", None)
    sock = None if writer is None else writer.get_extra_info("socket")
    if sock is None:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class Connection:
    """One dedicated connection of a receiver: connect, send, read, with clear errors.

    Every command and its answer must come within TIMEOUT, or the connection is
    discarded, so that a late answer can never be read as the answer to a later
    command; the next :meth:`command` connects again. The deadline is asyncio's
    timeout around the whole exchange: the socket itself has none, as redis-py sends
    through ``asyncio.wait_for`` where it has one, which before Python 3.12 can
    swallow the cancellation of the task (the hub cancels its listener).
    """

    def __init__(self, backend: RedisBase, role: str) -> None:
        self.backend = backend
        self.role = role
        self.conn: AbstractConnection | None = None
        self.lock = asyncio.Lock()  # one command and its answer at a time

    async def connect(self) -> AbstractConnection:
        conn = self.backend.make_connection(self.role)
        try:
            async with _deadline(self.backend.timeout):
                await conn.connect()
        except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
            await conn.disconnect()
            raise self.backend.unavailable(exc) from exc
        self.conn = conn
        return conn

    async def command(self, *args: Any) -> Any:
        """Send a command and read its answer (only where nothing else reads),
        connecting first where the connection is gone."""
        [reply] = await self.pipeline([args])
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their answers, as :meth:`command`;
        an error answer (``redis.ResponseError``) is returned in its place."""
        async with self.lock:
            conn = self.conn
            if conn is None or not conn.is_connected:
                conn = await self.connect()
            try:
                async with _deadline(self.backend.timeout):
                    await conn.send_packed_command(conn.pack_commands(commands))
                    replies: list[Any] = []
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response())
                        except redis.ResponseError as exc:
                            replies.append(exc)
                return replies
            except BaseException as exc:  # cancelled too: its answers would come late
                await self.close()
                if isinstance(exc, (*REDIS_ERRORS, asyncio.TimeoutError)):
                    raise self.backend.unavailable(exc) from exc
                raise

    def require(self) -> AbstractConnection:
        """The connection, or :class:`ConnectionLost` where it is gone."""
        conn = self.conn
        if conn is None or not conn.is_connected:
            raise ConnectionLost("not connected")
        return conn

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
