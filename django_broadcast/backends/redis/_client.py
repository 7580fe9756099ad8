"""What both Redis backends share: the URL, the key prefix, the sync and asyncio
clients, one command run with a clear answer to "was it sent?", and the dedicated
connections receivers hold, each exchange bounded by TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import async_timeout as _deadline  # asyncio's or async-timeout's

from ...exceptions import BroadcastUnavailable
from ..base import Backend, ConnectionLost
from ._topology import Address, Server, topology

T = TypeVar("T")

#: Errors that mean the broker cannot be reached (a cluster's: no node answers for a
#: slot, or none at all).
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.RedisClusterException,
    OSError,
)
#: Answers of a cluster that say the command was not run: ask elsewhere, or later.
_NOT_RUN = (
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
#: Any failure of a client of redis-py (its cluster's are apart).
_FAILED = (redis.RedisError, redis.exceptions.RedisClusterException)
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
        scheme, _, _ = location.partition("://")
        #: Where commands go: one server, a Sentinel's master or a Cluster's nodes.
        self.topology: Server = topology(scheme, location, self._client_kwargs, timeout)
        #: The redis-py URL (``redis+streams://`` becomes ``redis://``).
        self.url = self.topology.url
        self.prefix: str = self.options.get("prefix", "broadcast:")
        self._safe_url = safe_url(self.url)
        #: Per pool: the idle sync connections this backend keeps (see _borrow).
        self._idle: dict[Any, list[Any]] = {}
        self._pid = os.getpid()

    # Clients ---------------------------------------------------------------------

    def _client_kwargs(self, socket_timeout: float | None) -> dict[str, Any]:
        return {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "protocol": 2,
        }

    @property
    def sync_client(self) -> Any:
        """The process's sync client; its pool is shared by every thread."""
        return self.topology.sync_client

    def async_client(self) -> Any:
        """The running event loop's asyncio client.

        Its sockets have no read or write timeout: each exchange is bounded by
        ``_deadline`` instead (see :class:`Connection` for why).
        """
        return self.topology.async_client()

    def connection_name(self, role: str) -> str:
        """The ``CLIENT SETNAME`` of a receiving connection, for ``CLIENT LIST``."""
        return re.sub(r"\s", "_", f"django_broadcast:{role}:{self.prefix}")

    def make_connection(self, role: str, node: Address | None = None) -> AbstractConnection:
        """A new, unconnected asyncio connection for a receiver (to ``node`` of a
        cluster); never auto-retried.

        Its socket has no read or write timeout: a receiver bounds each exchange
        itself (see :class:`Connection`).
        """
        return self.topology.make_connection(self.connection_name(role), node)

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
        """Run one command (its key second) from sync code on a connection of the
        server that holds the key, and return its reply.

        Raise :class:`BroadcastUnavailable` where the broker cannot be reached or does
        not answer within TIMEOUT, with ``maybe_sent`` False where the command was
        certainly not run (no connection, or it broke before the whole command was
        written; a kept connection found broken so is replaced once, at once) and
        True once it was written (the broker may run it late). Where the command was
        certainly not run and the key may have moved (a cluster answered MOVED, or
        its node is gone), the topology is refreshed and the command sent once to the
        key's new node, if it has one.
        """
        try:
            client = self.topology.sync_for(args[1])
        except _FAILED as exc:  # (a cluster with no node that answers)
            raise self.unavailable(exc, maybe_sent=False) from exc
        try:
            return self._execute(client.connection_pool, args)
        except (*_NOT_RUN, BroadcastUnavailable) as exc:
            if isinstance(exc, BroadcastUnavailable) and exc.maybe_sent:
                raise
            failure = exc
        try:
            self.topology.refresh()
            moved = self.topology.sync_for(args[1])
        except _FAILED:
            moved = client
        if moved is client:
            self._fail(failure)
        try:
            return self._execute(moved.connection_pool, args)
        except _NOT_RUN as exc:
            self._fail(exc)

    def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` (each with its key second) from sync code, pipelined: one
        write and one read per server that holds their keys; return each reply, in
        order, or in its place the exception :meth:`execute` would have raised for it.

        The commands of one server are sent in their order. Those certainly not run
        whose key may have moved are sent once more, as :meth:`execute` does, to the
        key's new node.
        """
        replies: list[Any] = [None] * len(commands)
        groups: dict[int, tuple[Any, list[int]]] = {}
        for index, command in enumerate(commands):
            try:
                client = self.topology.sync_for(command[1])
            except _FAILED as exc:
                replies[index] = self.unavailable(exc, maybe_sent=False)
                continue
            groups.setdefault(id(client), (client, []))[1].append(index)
        moved: list[tuple[Any, int]] = []  # (client it failed on, index)
        for client, indexes in groups.values():
            outcomes = self._pipeline(client.connection_pool, [commands[i] for i in indexes])
            for index, outcome in zip(indexes, outcomes, strict=True):
                replies[index] = outcome
                if isinstance(outcome, _NOT_RUN) or (
                    isinstance(outcome, BroadcastUnavailable) and not outcome.maybe_sent
                ):
                    moved.append((client, index))
        if moved:
            self._resend(commands, moved, replies)
        return [
            self.unavailable(reply, maybe_sent=False) if isinstance(reply, _NOT_RUN) else reply
            for reply in replies
        ]

    def _resend(
        self, commands: Sequence[tuple[Any, ...]], failed: list[tuple[Any, int]], replies: list[Any]
    ) -> None:
        """Send once more, each to its key's node after a refresh of the topology, the
        commands certainly not run whose node has changed (on a cluster)."""
        try:
            self.topology.refresh()
        except _FAILED:
            return
        for client, index in failed:
            try:
                moved = self.topology.sync_for(commands[index][1])
            except _FAILED:
                continue
            if moved is not client:
                [replies[index]] = self._pipeline(moved.connection_pool, [commands[index]])

    def _fail(self, exc: BaseException) -> NoReturn:
        """Raise for a command certainly not run."""
        if isinstance(exc, BroadcastUnavailable):
            raise exc
        raise self.unavailable(exc, maybe_sent=False) from exc

    # The sync connections: borrowed once from a client's pool, then kept here, so
    # that a command costs a list's pop and append rather than the pool's bookkeeping.

    def _borrow(self, pool: Any) -> Any:
        """A connection of ``pool`` ready to send, or :class:`BroadcastUnavailable`."""
        if self._pid != os.getpid():  # a forked child: its parent's sockets are not its own
            self._idle, self._pid = {}, os.getpid()
        idle = self._idle.get(pool)
        if idle:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                pass
            else:
                try:
                    if not conn.can_read():
                        return conn
                except REDIS_ERRORS:
                    pass
                # Closed by the server, or it sent something unasked: the command
                # would fail as if the server had got it.
                self._reconnect(pool, conn)
                return conn
        try:
            return pool.get_connection()
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc, maybe_sent=False) from exc

    def _reconnect(self, pool: Any, conn: Any) -> None:
        """Connect ``conn`` anew (through ``connect()``, where a Sentinel's connection
        asks for the current master), or give it back and raise."""
        conn.disconnect()
        try:
            conn.connect()
        except REDIS_ERRORS as exc:
            self._give_back(pool, conn)
            raise self.unavailable(exc, maybe_sent=False) from exc

    def _give_back(self, pool: Any, conn: Any) -> None:
        if not pool.owns_connection(conn):  # a Sentinel's old master: ask again
            conn.disconnect()
        idle = self._idle.get(pool)
        if idle is None:
            idle = self._idle.setdefault(pool, [])
        idle.append(conn)

    def _execute(self, pool: Any, args: tuple[Any, ...]) -> Any:
        conn = self._borrow(pool)
        try:
            retried = False
            while True:
                try:
                    conn.send_command(*args)
                except redis.ConnectionError as exc:
                    conn.disconnect()
                    if retried:
                        raise self.unavailable(exc, maybe_sent=False) from exc
                    retried = True  # a stale connection: the command did not leave
                    try:
                        conn.connect()
                    except REDIS_ERRORS as again:
                        raise self.unavailable(again, maybe_sent=False) from again
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
            self._give_back(pool, conn)

    def _pipeline(self, pool: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on a connection of ``pool`` and read their
        replies: each reply, or the exception raised for it (an error reply as
        redis-py raises it; :class:`BroadcastUnavailable` where the connection
        failed, ``maybe_sent`` as in :meth:`execute`)."""
        try:
            conn = self._borrow(pool)
        except BroadcastUnavailable as exc:
            return [exc] * len(commands)
        replies: list[Any] = []
        try:
            packed = conn.pack_commands(commands)
            retried = False
            while True:
                try:
                    conn.send_packed_command(packed)
                except redis.ConnectionError as exc:
                    conn.disconnect()
                    if retried:
                        return [self.unavailable(exc, maybe_sent=False)] * len(commands)
                    retried = True  # a stale connection: nothing left
                    try:
                        conn.connect()
                    except REDIS_ERRORS as again:
                        return [self.unavailable(again, maybe_sent=False)] * len(commands)
                    continue
                except REDIS_ERRORS as exc:  # part of it sent: the broker never runs it
                    conn.disconnect()
                    return [self.unavailable(exc, maybe_sent=False)] * len(commands)
                break
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.BusyLoadingError as exc:  # answered: not run
                    replies.append(self.unavailable(exc, maybe_sent=False))
                except redis.ResponseError as exc:  # answered: refused
                    replies.append(exc)
                except REDIS_ERRORS as exc:  # the rest were written: they may run
                    conn.disconnect()
                    lost = self.unavailable(exc, maybe_sent=True)
                    replies.extend([lost] * (len(commands) - len(replies)))
                    break
            return replies
        finally:
            self._give_back(pool, conn)

    async def aexecute(self, *args: Any) -> Any:
        """:meth:`execute` from async code, on the running loop's pool.

        A command whose sending was cut short by the deadline may still be written
        (asyncio flushes what it buffered when the connection closes): it counts as
        maybe sent.
        """
        try:
            async with _deadline(self.timeout):
                client = await self.topology.async_for(args[1])
        except (*_FAILED, asyncio.TimeoutError) as exc:
            raise self.unavailable(exc, maybe_sent=False) from exc
        try:
            return await self._aexecute(client.connection_pool, args)
        except (*_NOT_RUN, BroadcastUnavailable) as exc:
            if isinstance(exc, BroadcastUnavailable) and exc.maybe_sent:
                raise
            failure = exc
        try:
            async with _deadline(self.timeout):
                await self.topology.arefresh()
                moved = await self.topology.async_for(args[1])
        except (*_FAILED, asyncio.TimeoutError):
            moved = client
        if moved is client:
            self._fail(failure)
        try:
            return await self._aexecute(moved.connection_pool, args)
        except _NOT_RUN as exc:
            self._fail(exc)

    async def _aexecute(self, pool: Any, args: tuple[Any, ...]) -> Any:
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

    def channel_of(self, key: bytes) -> str:
        """The channel of a Redis channel or key (the inverse of :meth:`key`)."""
        return key[len(self.prefix) :].decode()

    # Lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect the sync pools."""
        self._idle = {}
        self.topology.close()

    async def aclose(self) -> None:
        """Close the running loop's asyncio clients, then the sync pools."""
        await self.topology.aclose()
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

    def __init__(self, backend: RedisBase, role: str, node: Address | None = None) -> None:
        self.backend = backend
        self.role = role
        self.node = node  # a cluster's node, or None for the one server
        self.conn: AbstractConnection | None = None
        self.lock = asyncio.Lock()  # one command and its answer at a time

    async def connect(self) -> AbstractConnection:
        conn = self.backend.make_connection(self.role, self.node)
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
            except BaseException as exc:  # cancelled too: its answers would come late
                await self.close()
                if isinstance(exc, (*REDIS_ERRORS, asyncio.TimeoutError)):
                    raise self.backend.unavailable(exc) from exc
                raise
            for reply in replies:
                if isinstance(reply, _NOT_RUN):  # a cluster's node that cannot answer now
                    raise self.backend.unavailable(reply)
            return replies

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
