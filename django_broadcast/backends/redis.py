"""Redis backends: pub/sub (``redis://``) and Streams (``redis+streams://``).

Both publish from sync code through one connection pool per process (no event loop,
thread or connection per call) and from async code through one pool per event loop,
and receive on one dedicated connection per event loop, driven by the hub, that
carries every channel the process is subscribed to (streams add a control
connection for short commands).

What they guarantee:

- A publish returns once the broker has acknowledged the event, or raises
  :class:`~django_broadcast.exceptions.BroadcastUnavailable` within the alias's
  ``TIMEOUT``, with ``maybe_sent`` False where the command was certainly not run
  (no connection, or it broke before the whole command was written) and True once
  it was written (a frozen broker runs it when it wakes up). Nothing is retried
  beyond one immediate retry on a pooled connection found broken before the command
  left.
- Every command a receiver sends and its answer take at most TIMEOUT, or the
  connection is discarded: a late answer is never read as the answer to a later
  command. Cancelling a receiver is never lost.
- ``subscribe`` returns once the broker has confirmed; one that fails raises
  ``BroadcastUnavailable`` and leaves nothing behind (pub/sub unsubscribes, best
  effort, the SUBSCRIBE that may yet run).
- :class:`RedisBackend` uses ``PUBLISH``/``SUBSCRIBE``: at-most-once, no history;
  ``subscribe`` returns no position, and after a reconnect every channel has a gap.
  Each frame is ``id + "\\n" + payload``; ids are ``<process token>-<sequence>``,
  increasing per publisher.
- :class:`RedisStreamsBackend` appends with ``XADD ... MAXLEN ~ history`` and reads
  with one blocking ``XREAD`` over every subscribed stream; ids are stream ids
  (``<ms>-<seq>``, each part an unsigned 64-bit number). ``subscribe`` returns the
  stream's last id (``"0-0"`` where it has none). Delivery is at-least-once within
  the window that ``OPTIONS["history"]`` keeps: a reconnect or a ``since`` resumes
  from the position. Where continuity after a position cannot be proven (Redis 7:
  the entry at the position is gone or entries after it were deleted; from
  ``"0-0"``, the stream has lost entries), a resume reports a gap (the reconnect's
  lost set, ``HistoryPage.gap``) and live reading puts a gap message before the
  channel's next messages: ``"trimmed"`` for a reader that fell out of the window,
  ``"reset"`` for a stream deleted (a restart without persistence, a DEL, an
  eviction) and perhaps made anew. Each batch is checked in one round trip.

OPTIONS: ``prefix`` (prepended to every Redis channel or key, default
``"broadcast:"``), ``max_message_size`` (bytes, default 1 MiB) and, for streams,
``history`` (entries kept per channel, approximately; default 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import secrets
import select
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import async_timeout as _deadline  # asyncio's or async-timeout's
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..exceptions import BroadcastUnavailable
from .base import Backend, ConnectionLost, HistoryPage, Message, Receiver

__all__ = ["RedisBackend", "RedisStreamsBackend"]

T = TypeVar("T")

_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
_XREAD_COUNT = 1000
_ORIGIN = "0-0"  # the stream position before any entry
_MAX_ID_PART = 2**64 - 1  # either part of a stream id is an unsigned 64-bit number
_MAX_ID_PART_DIGITS = len(str(_MAX_ID_PART))


def safe_url(url: str) -> str:
    """``url`` without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class _RedisBase(Backend):
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
        ``_deadline`` instead (see :class:`_Connection` for why).
        """
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = self._async[loop] = redis.asyncio.Redis.from_url(
                self.url,
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                **self._client_kwargs(socket_timeout=None),
            )
        return client

    def connection_name(self, role: str) -> str:
        """The ``CLIENT SETNAME`` of a receiving connection, for ``CLIENT LIST``."""
        return re.sub(r"\s", "_", f"django_broadcast:{role}:{self.prefix}")

    def make_connection(self, role: str) -> AbstractConnection:
        """A new, unconnected asyncio connection for a receiver; never auto-retried.

        Its socket has no read or write timeout: a receiver bounds each exchange
        itself (see :class:`_Connection`).
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
            except _REDIS_ERRORS as exc:
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
                except _REDIS_ERRORS as exc:  # part of it sent: the broker never runs it
                    conn.disconnect()
                    raise self.unavailable(exc, maybe_sent=False) from exc
                try:
                    return conn.read_response()
                except redis.BusyLoadingError as exc:  # answered: not run
                    raise self.unavailable(exc, maybe_sent=False) from exc
                except _REDIS_ERRORS as exc:
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
            except (*_REDIS_ERRORS, asyncio.TimeoutError) as exc:
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
            except (*_REDIS_ERRORS, asyncio.TimeoutError) as exc:
                await conn.disconnect()
                raise self.unavailable(exc, maybe_sent=True) from exc
            finally:
                await pool.release(conn)

    def call(self, func: Callable[[], T]) -> T:
        """Run a sync Redis call, translating connection failures."""
        try:
            return func()
        except _REDIS_ERRORS as exc:
            raise self.unavailable(exc) from exc

    async def acall(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis call within TIMEOUT, translating connection failures."""
        try:
            async with _deadline(self.timeout):
                return await awaitable
        except (*_REDIS_ERRORS, asyncio.TimeoutError) as exc:
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


class _Connection:
    """One dedicated connection of a receiver: connect, send, read, with clear errors.

    Every command and its answer must come within TIMEOUT, or the connection is
    discarded, so that a late answer can never be read as the answer to a later
    command; the next :meth:`command` connects again. The deadline is asyncio's
    timeout around the whole exchange: the socket itself has none, as redis-py sends
    through ``asyncio.wait_for`` where it has one, which before Python 3.12 can
    swallow the cancellation of the task (the hub cancels its listener).
    """

    def __init__(self, backend: _RedisBase, role: str) -> None:
        self.backend = backend
        self.role = role
        self.conn: AbstractConnection | None = None
        self.lock = asyncio.Lock()  # one command and its answer at a time

    async def connect(self) -> AbstractConnection:
        conn = self.backend.make_connection(self.role)
        try:
            async with _deadline(self.backend.timeout):
                await conn.connect()
        except (*_REDIS_ERRORS, asyncio.TimeoutError) as exc:
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
                if isinstance(exc, (*_REDIS_ERRORS, asyncio.TimeoutError)):
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


# Pub/sub ----------------------------------------------------------------------------


class RedisBackend(_RedisBase):
    """Redis pub/sub: at-most-once delivery, no history (``redis://``, ``rediss://``)."""

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self._token = secrets.token_hex(4)
        self._seq = itertools.count(1)  # next() is atomic under the GIL: thread-safe

    def _frame(self, payload: bytes) -> tuple[str, bytes]:
        event_id = f"{self._token}-{next(self._seq)}"
        return event_id, event_id.encode() + b"\n" + payload

    def publish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on the process's pooled sync connection."""
        event_id, frame = self._frame(payload)
        self.execute("PUBLISH", self.prefix + channel, frame)
        return event_id

    async def apublish(self, channel: str, payload: bytes) -> str:
        """``PUBLISH`` on the running loop's asyncio client."""
        event_id, frame = self._frame(payload)
        await self.aexecute("PUBLISH", self.prefix + channel, frame)
        return event_id

    def receiver(self) -> Receiver:
        """A receiver holding one ``SUBSCRIBE`` connection for the running loop."""
        return _PubSubReceiver(self)


class _PubSubReceiver(Receiver):
    """One SUBSCRIBE connection; :meth:`read` is its only reader.

    ``subscribe`` sends the command and waits for the confirmation, which the
    listener's ``read`` hands over through a future. A SUBSCRIBE not confirmed within
    TIMEOUT is followed by an UNSUBSCRIBE, so that the channel is not left subscribed
    at the broker when the SUBSCRIBE runs late; as its confirmation may still come,
    the confirmations of each channel are counted, and a later subscribe waits for
    its own.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.link = _Connection(backend, "pubsub")
        self.channels: set[str] = set()
        self.unconfirmed: dict[bytes, int] = {}  # key -> SUBSCRIBEs not yet confirmed
        self.pending: dict[bytes, tuple[list[int], asyncio.Future[None]]] = {}

    async def open(self) -> None:
        await self.link.connect()

    async def subscribe(self, channel: str) -> None:
        key = self.backend.key(channel).encode()
        future = asyncio.get_running_loop().create_future()
        try:
            conn = self.link.require()
            ahead = self.unconfirmed[key] = self.unconfirmed.get(key, 0) + 1
            self.pending[key] = ([ahead], future)  # confirmations to wait for
            async with _deadline(self.backend.timeout):
                await conn.send_command("SUBSCRIBE", key)
                await future
        except BaseException as exc:
            await self._abandon(key)
            if isinstance(exc, (*_REDIS_ERRORS, asyncio.TimeoutError, ConnectionLost)):
                raise self.backend.unavailable(exc) from exc
            raise
        finally:
            self.pending.pop(key, None)
        self.channels.add(channel)

    async def _abandon(self, key: bytes) -> None:
        """UNSUBSCRIBE, best effort, a channel whose SUBSCRIBE may yet run."""
        conn = self.link.conn
        if conn is None or not conn.is_connected:
            return  # the broker drops the subscriptions of a closed connection
        with contextlib.suppress(Exception):
            async with _deadline(self.backend.timeout):
                await conn.send_command("UNSUBSCRIBE", key)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        conn = self.link.conn
        if conn is not None:
            async with _deadline(self.backend.timeout):
                await conn.send_command("UNSUBSCRIBE", self.backend.key(channel))

    async def read(self) -> Sequence[Message]:
        conn = self.link.require()
        prefix_length = len(self.backend.prefix)
        messages: list[Message] = []
        while not messages:
            try:
                reply = await conn.read_response(timeout=math.inf)
                while True:
                    self._handle(reply, prefix_length, messages)
                    if not await conn.can_read():
                        break
                    reply = await conn.read_response(timeout=math.inf)
            except (*_REDIS_ERRORS, AttributeError) as exc:
                # redis-py may drop its reader on disconnect (AttributeError).
                self._fail_pending(exc)
                raise ConnectionLost(str(exc)) from exc
        return messages

    def _handle(self, reply: Any, prefix_length: int, messages: list[Message]) -> None:
        kind = reply[0]
        if kind == b"message":
            frame: bytes = reply[2]
            event_id, _, payload = frame.partition(b"\n")
            channel = reply[1][prefix_length:].decode()
            messages.append(Message(channel, event_id.decode(), payload))
        elif kind == b"subscribe":
            key = reply[1]
            left = self.unconfirmed.get(key, 0) - 1
            if left > 0:
                self.unconfirmed[key] = left
            else:
                self.unconfirmed.pop(key, None)
            pending = self.pending.get(key)
            if pending is not None:
                ahead, future = pending
                ahead[0] -= 1
                if ahead[0] == 0 and not future.done():
                    future.set_result(None)

    def _fail_pending(self, exc: BaseException) -> None:
        for _, future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(str(exc)))

    async def reconnect(self) -> set[str]:
        await self.link.close()
        self.unconfirmed.clear()  # counted per connection
        conn = await self.link.connect()
        if self.channels:
            keys = [self.backend.key(c) for c in sorted(self.channels)]
            try:
                async with _deadline(self.backend.timeout):
                    await conn.send_command("SUBSCRIBE", *keys)
                    for _ in keys:  # one confirmation per channel, before any message
                        await conn.read_response()
            except (*_REDIS_ERRORS, asyncio.TimeoutError) as exc:
                await self.link.close()
                raise self.backend.unavailable(exc) from exc
        # Pub/sub keeps nothing: whatever was published meanwhile is gone.
        return set(self.channels)

    async def close(self) -> None:
        self._fail_pending(ConnectionLost("closed"))
        await self.link.close()


# Streams ----------------------------------------------------------------------------


def _parse_id(event_id: str) -> tuple[int, int]:
    """``(milliseconds, sequence)`` of a stream id; ``ValueError`` for anything else."""
    if isinstance(event_id, str):
        ms, sep, seq = event_id.partition("-")
        if sep and _id_part(ms) and _id_part(seq):
            return int(ms), int(seq)
    raise ValueError(
        f"{event_id!r} is not an event id of the Redis Streams backend: expected a stream "
        f"id, two decimal numbers of ASCII digits from 0 to {_MAX_ID_PART} joined by '-', "
        f"such as '1700000000000-0'"
    )


def _id_part(text: str) -> bool:
    return (
        0 < len(text) <= _MAX_ID_PART_DIGITS
        and text.isascii()
        and text.isdigit()
        and int(text) <= _MAX_ID_PART
    )


def _successor(event_id: str) -> str | None:
    """The smallest stream id after ``event_id``; None after the largest one."""
    ms, seq = _parse_id(event_id)
    if seq < _MAX_ID_PART:
        return f"{ms}-{seq + 1}"
    if ms < _MAX_ID_PART:
        return f"{ms + 1}-0"
    return None


def _payload(fields: Any) -> bytes:
    """The payload of a stream entry: raw ``[b"m", payload]`` or redis-py's dict."""
    payload: bytes = fields[b"m"] if isinstance(fields, dict) else fields[1]
    return payload


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamsBackend(_RedisBase):
    """Redis Streams: history, resume and loss-free reconnects (``redis+streams://``)."""

    supports_history = True
    origin = _ORIGIN
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "prefix": str,
        "history": int,
    }

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self.history_size: int = self.options.get("history", 1000)

    def _xadd(self, channel: str, payload: bytes) -> tuple[Any, ...]:
        return ("XADD", self.prefix + channel, "MAXLEN", "~", self.history_size, "*", "m", payload)

    def publish(self, channel: str, payload: bytes) -> str:
        """``XADD`` on the process's pooled sync connection; return the stream id."""
        return _text(self.execute(*self._xadd(channel, payload)))

    async def apublish(self, channel: str, payload: bytes) -> str:
        """``XADD`` on the running loop's asyncio client; return the stream id."""
        return _text(await self.aexecute(*self._xadd(channel, payload)))

    def id_key(self, event_id: str) -> tuple[int, int]:
        """Stream ids sort as ``(milliseconds, sequence)``, each an unsigned 64-bit
        number of ASCII digits."""
        return _parse_id(event_id)

    # History ---------------------------------------------------------------------

    def _history_commands(
        self, channel: str, limit: int | None, since: str | None
    ) -> list[tuple[Any, ...]]:
        key = self.key(channel)
        count = () if limit is None else ("COUNT", limit)
        if since is None:
            return [("XREVRANGE", key, "+", "-", *count)]
        start = _successor(since)
        read = [] if start is None else [("XRANGE", key, start, "+", *count)]
        return [*_continuity_commands(key, since), *read]  # nothing after the largest id

    def _page(self, channel: str, since: str | None, replies: list[Any]) -> HistoryPage:
        # Replies: XREVRANGE; or the entry at since, XINFO, then XRANGE after it (if any).
        for index, reply in enumerate(replies):
            if isinstance(reply, Exception) and (since is None or index != 1):
                raise reply  # (XINFO's error says the stream is missing)
        # (No XRANGE after the largest id: nothing follows it.)
        entries = replies[0] if since is None else next(iter(replies[2:]), [])
        messages = [
            Message(channel, _text(entry_id), _payload(fields)) for entry_id, fields in entries
        ]
        if since is None:
            messages.reverse()
            return HistoryPage(messages)
        return HistoryPage(messages, gap=_gap(since, replies[0], replies[1]) is not None)

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read the stream with ``XREVRANGE``, or ``XRANGE`` after ``since``."""
        commands = self._history_commands(channel, limit, since)

        def run() -> list[Any]:
            with self.sync_client.pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return pipe.execute(raise_on_error=False)

        return self._page(channel, since, self.call(run))

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """:meth:`history` from async code."""
        commands = self._history_commands(channel, limit, since)
        async with self.async_client().pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies = await self.acall(pipe.execute(raise_on_error=False))
        return self._page(channel, since, replies)

    def receiver(self) -> Receiver:
        """A receiver holding one blocking ``XREAD`` connection for the running loop."""
        return _StreamsReceiver(self)


def _info(reply: Any) -> dict[str, Any] | None:
    """``XINFO STREAM`` as a dict, or None where the stream does not exist."""
    if isinstance(reply, Exception) or reply is None:
        return None
    if isinstance(reply, dict):
        return {_text(k): v for k, v in reply.items()}
    return {_text(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def _continuity_commands(key: str, position: str) -> list[tuple[Any, ...]]:
    """The commands whose replies :func:`_gap` reads: the entry at ``position`` and
    ``XINFO STREAM``."""
    return [("XRANGE", key, position, position), ("XINFO", "STREAM", key)]


def _gap(position: str, entry: Any, info_reply: Any) -> str | None:
    """Why the stream's continuity after ``position`` cannot be proven, or None.

    ``entry`` is the reply of ``XRANGE key position position`` and ``info_reply``
    that of ``XINFO STREAM`` (Redis 7 or later). From a position other than the
    origin, continuity is proven only while the entry at the position still exists
    (so this is the stream it was read from) and nothing after it was deleted
    (``max-deleted-entry-id``); from the origin, only while the stream has never
    lost an entry (``entries-added`` equals ``length``), or does not exist. Redis does
    not record which entries were trimmed, so nothing finer can be proven.

    The reason is ``"trimmed"`` where the stream is the same but has lost its oldest
    entries up to and past ``position`` (a slow reader, a long disconnection), and
    ``"reset"`` otherwise: the stream was deleted (a restart without persistence, a
    DEL, an eviction) and perhaps made anew, or entries after ``position`` were
    deleted.
    """
    info = _info(info_reply)
    at = _parse_id(position)
    if info is None:
        return None if position == _ORIGIN else "reset"
    deleted = _parse_id(_text(info.get("max-deleted-entry-id", _ORIGIN)))
    if position == _ORIGIN:
        if info.get("entries-added") == info.get("length"):
            return None
    elif entry and deleted <= at:
        return None
    if deleted >= at and deleted != (0, 0):
        return "reset"  # entries at or after the position were deleted
    if _parse_id(_text(info["last-generated-id"])) < at:
        return "reset"  # made anew: every id is older than the position
    first = info.get("first-entry")
    added, length = info.get("entries-added"), info.get("length")
    if added != length and (not first or _parse_id(_text(first[0])) > at):
        return "trimmed"
    return "reset"


class _StreamsReceiver(Receiver):
    """One connection blocked in ``XREAD`` over every subscribed stream.

    Subscribing records the stream's last id as the position (so whatever is
    published after ``subscribe`` returns is read) and, with ``CLIENT UNBLOCK`` from
    a second, control connection, makes the reader issue its ``XREAD`` again with the
    new set. After each batch, one round trip on the control connection proves that
    the previous position of every channel in the batch still exists (see
    :func:`_gap`); a channel where it does not gets a gap message before its messages.
    """

    def __init__(self, backend: RedisStreamsBackend) -> None:
        self.backend = backend
        self.link = _Connection(backend, "streams")
        self.control = _Connection(backend, "control")  # connects on its first command
        self.positions: dict[str, str] = {}  # channel -> last id read
        self.reported: set[str] = set()  # channels whose gap reconnect() reported
        self.reader_id: int | None = None
        self.generation = 0  # bumped on every change of the channel set
        self.sent_generation = 0  # generation of the XREAD in flight
        self.blocked = False
        self.changed = asyncio.Event()

    async def open(self) -> None:
        await self.link.connect()
        self.reader_id = await self.link.command("CLIENT", "ID")

    async def _xinfo(self, channel: str) -> Any:
        """``XINFO STREAM`` of ``channel``, or None where the stream does not exist."""
        try:
            return await self.control.command("XINFO", "STREAM", self.backend.key(channel))
        except redis.ResponseError:
            return None

    async def subscribe(self, channel: str) -> str:
        info = _info(await self._xinfo(channel))
        position = _ORIGIN if info is None else _text(info["last-generated-id"])
        self.positions[channel] = position
        self.reported.discard(channel)
        try:
            await self._wake()
        except BaseException:
            if self.positions.get(channel) == position:
                del self.positions[channel]  # leave nothing behind: the hub holds no channel
            raise
        return position

    async def unsubscribe(self, channel: str) -> None:
        if self.positions.pop(channel, None) is not None:
            await self._wake(wait=False)

    async def _wake(self, *, wait: bool = True) -> None:
        """Make the reader pick up the new channel set."""
        self.generation += 1
        self.changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.backend.timeout
        # The XREAD may be on its way to the server; unblock until it has been
        # replaced by one that covers the new set.
        while self.blocked and self.sent_generation < self.generation:
            unblocked = await self.control.command("CLIENT", "UNBLOCK", self.reader_id)
            if unblocked or not wait:
                return
            if loop.time() > deadline:
                raise self.backend.unavailable(TimeoutError("CLIENT UNBLOCK did not take"))
            await asyncio.sleep(0.001)

    async def read(self) -> Sequence[Message]:
        conn = self.link.require()
        while True:
            while not self.positions:
                self.changed.clear()
                await self.changed.wait()
            channels = list(self.positions)
            keys = [self.backend.key(c) for c in channels]
            ids = [self.positions[c] for c in channels]
            self.sent_generation = self.generation
            self.blocked = True
            try:
                await conn.send_command(
                    "XREAD", "COUNT", _XREAD_COUNT, "BLOCK", 0, "STREAMS", *keys, *ids
                )
                reply = await conn.read_response(timeout=math.inf)
            except (*_REDIS_ERRORS, AttributeError) as exc:
                raise ConnectionLost(str(exc)) from exc
            finally:
                self.blocked = False
            if not reply:  # unblocked: the channel set changed
                continue
            batch = self._batch(reply)
            try:
                gaps = await self._gaps(batch)
            except BroadcastUnavailable as exc:
                # The positions have not moved: reconnect() resumes from them.
                raise ConnectionLost(str(exc)) from exc
            messages = self._messages(batch, gaps)
            if messages:
                return messages

    def _batch(self, reply: Any) -> list[tuple[str, str, Any]]:
        """``(channel, previous position, entries)`` of each subscribed channel."""
        prefix_length = len(self.backend.prefix)
        batch = []
        for key, entries in reply:
            channel = key[prefix_length:].decode()
            position = self.positions.get(channel)
            if position is not None and entries:  # else unsubscribed meanwhile
                batch.append((channel, position, entries))
        return batch

    async def _gaps(self, batch: list[tuple[str, str, Any]]) -> dict[str, str]:
        """The gap reason of each channel of ``batch`` whose continuity after its
        previous position cannot be proven: one round trip, and one more for the
        channels whose previous entry is gone, to say why."""
        checked = [(c, p) for c, p, _ in batch if c not in self.reported]
        if not checked:
            return {}
        key = self.backend.key
        replies = await self.control.pipeline(
            [
                ("XINFO", "STREAM", key(c)) if p == _ORIGIN else ("XRANGE", key(c), p, p)
                for c, p in checked
            ]
        )
        gaps: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for (channel, position), reply in zip(checked, replies, strict=True):
            if position != _ORIGIN:
                if not reply:
                    missing.append((channel, position))
            elif reason := _gap(position, None, reply):
                gaps[channel] = reason
        if missing:
            infos = await self.control.pipeline([("XINFO", "STREAM", key(c)) for c, _ in missing])
            for (channel, position), info in zip(missing, infos, strict=True):
                gaps[channel] = _gap(position, None, info) or "reset"
        return gaps

    def _messages(self, batch: list[tuple[str, str, Any]], gaps: dict[str, str]) -> list[Message]:
        messages: list[Message] = []
        for channel, previous, entries in batch:
            if self.positions.get(channel) != previous:
                continue  # unsubscribed (or subscribed anew) while the batch was checked
            self.reported.discard(channel)
            reason = gaps.get(channel)
            if reason is not None:
                messages.append(Message(channel, "", b"", gap=reason))
            for entry_id, fields in entries:
                messages.append(Message(channel, entry_id.decode(), fields[1]))
            self.positions[channel] = entries[-1][0].decode()
        return messages

    async def reconnect(self) -> set[str]:
        await self.close()
        await self.open()
        self.reported.clear()
        positions = list(self.positions.items())
        if not positions:
            return set()
        key = self.backend.key
        replies = await self.control.pipeline(
            [command for c, p in positions for command in _continuity_commands(key(c), p)]
        )
        lost: set[str] = set()
        for (channel, position), entry, info_reply in zip(
            positions, replies[0::2], replies[1::2], strict=True
        ):
            if self.positions.get(channel) != position or _gap(position, entry, info_reply) is None:
                continue
            lost.add(channel)
            self.reported.add(channel)  # the hub reports it: not again at the next batch
            info = _info(info_reply)
            if info is None or _parse_id(_text(info["last-generated-id"])) < _parse_id(position):
                self.positions[channel] = _ORIGIN  # a new stream: read all of it
        return lost

    async def close(self) -> None:
        await self.link.close()
        await self.control.close()
