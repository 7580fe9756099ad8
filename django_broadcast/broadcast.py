"""``Broadcast``: one alias of ``settings.BROADCAST``, and everything it can do."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from time import perf_counter
from typing import Any

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.module_loading import import_string

from ._commits import Commits, Pending
from ._loops import is_throwaway
from .backends import schemes
from .backends._coalescer import Coalescer
from .backends.base import Backend, Features, HistoryPage, Message
from .codec import Codec
from .conf import AliasConfig
from .events import (
    GOODBYE,
    HEARTBEAT,
    SERVERS_CHANNEL,
    Event,
    gap_event,
    validate_channel,
    validate_pattern,
)
from .exceptions import BroadcastError, BroadcastUnavailable, MessageTooLarge, QueueFull
from .hub import Hub, Hubs
from .signals import publish_failed
from .stats import Counters
from .subscription import Subscription

__all__ = ["Broadcast"]

logger = logging.getLogger("django_broadcast.broadcast")


@functools.lru_cache(maxsize=1024)
def _from_ms(ms: int) -> datetime:
    """The time of an event (milliseconds since the epoch): events received together
    share their millisecond, and a datetime is immutable, so each is made once."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


#: A server is gone once it has not been heard from for this many of its heartbeats.
_MISSED = 3
#: Seconds one wait of a queue taker lasts at the broker before it waits again.
_QUEUE_POLL = 5.0


def _alive(events: list[Event], now: float) -> list[dict[str, Any]]:
    """The servers whose last word in ``events`` is a heartbeat recent enough."""
    last: dict[str, Event] = {}
    for event in events:
        if isinstance(event.data, dict) and "id" in event.data:
            if event.type == GOODBYE:
                last.pop(event.data["id"], None)
            elif event.type == HEARTBEAT:
                last[event.data["id"]] = event
    alive = [
        {**event.data, "seen": event.time.isoformat(timespec="milliseconds")}
        for event in last.values()
        if now - event.time.timestamp() <= _MISSED * float(event.data.get("interval", 5))
    ]
    return sorted(alive, key=lambda entry: (str(entry.get("host")), int(entry.get("pid", 0))))


def _connection_in_atomic_block() -> BaseDatabaseWrapper | None:
    """The first database connection of this thread in an atomic block, if any.

    Each alias's connection is looked up once, where this thread made it, as
    ``connections.all(initialized_only=True)`` does in two lookups (each costs about
    a microsecond: Django's per-thread storage asks asyncio for a running loop).
    """
    made = connections._connections  # type: ignore[attr-defined]
    for alias in connections.settings:
        connection: BaseDatabaseWrapper | None = getattr(made, alias, None)
        if connection is not None and connection.in_atomic_block:
            return connection
    return None


class Broadcast:
    """Publish to, subscribe to and read the history of the channels of one alias.

    Get one from the registry, ``broadcasts["alias"]``, or use ``broadcast`` for the
    ``"default"`` alias; both are built once per process.
    """

    def __init__(self, config: AliasConfig) -> None:
        self.alias = config.alias
        self.config = config
        self.backend: Backend = config.backend(
            config.location, config.options, timeout=config.timeout
        )
        self.codec: Codec = import_string(config.codec)()
        #: What this alias's backend can do (history, patterns, ...).
        self.features: Features = self.backend.features
        #: This alias's counters in this process.
        self.counters = Counters()
        #: Callables given each event once :meth:`publish` or :meth:`apublish` has sent
        #: it (at the commit, in a transaction), in the publishing thread; for test
        #: helpers (:mod:`django_broadcast.testing`). They must be quick and not raise.
        self.observers: list[Callable[[Event], object]] = []
        self._hubs = Hubs(self.backend, self._decode, config, self.counters)
        #: Where sync publishes go: gathered across threads where the backend gains.
        self._publisher: Backend | Coalescer = (
            Coalescer(self.backend) if self.backend.coalesces else self.backend
        )
        self._commits = Commits(self._send_at_commit)

    def __repr__(self) -> str:
        return f"<Broadcast {self.alias!r} {type(self.backend).__name__}>"

    @property
    def dropped(self) -> int:
        """Events dropped, over all this alias's subscribers, because one fell behind."""
        return self.counters.dropped

    @property
    def failed_publishes(self) -> int:
        """Events published in a transaction that could not be sent at its commit."""
        return self.counters.failed_publishes

    def stats(self) -> dict[str, Any]:
        """This alias's figures in this process, as a plain dict.

        ``published`` (events sent from this process), ``delivered`` (handed to local
        subscriptions, one per subscription), ``dropped`` (lost by subscribers that
        fell behind), ``gaps`` (gap notices handed out), ``reconnects``,
        ``failed_publishes`` (at a commit), ``subscribers`` (local subscriptions),
        ``broker_subscriptions`` (what this process holds at the broker, every event
        loop together), ``channels`` and ``patterns`` (local subscribers of each),
        ``publish_latency_ms`` (p50, p90 and p99 of the latest publishes, and how many
        samples), ``connections`` (open ``websocket`` and ``sse`` connections of the
        shipped consumers) and ``uptime`` (seconds since the alias was built here).
        """
        c = self.counters
        channels, patterns, subscribers, held = self._hubs.census()
        return {
            "alias": self.alias,
            "backend": type(self.backend).__name__,
            "published": c.published,
            "delivered": c.delivered,
            "dropped": c.dropped,
            "gaps": c.gaps,
            "reconnects": c.reconnects,
            "failed_publishes": c.failed_publishes,
            "subscribers": subscribers,
            "broker_subscriptions": held,
            "channels": channels,
            "patterns": patterns,
            "publish_latency_ms": c.latencies.percentiles(),
            "connections": {"websocket": c.websocket_connections, "sse": c.sse_connections},
            "uptime": round(time.time() - c.since, 3),
        }

    def servers(self, *, listen: float = 6.0) -> list[dict[str, Any]]:
        """The live server processes of the deployment (see
        :mod:`django_broadcast.presence`): those heard from on the reserved channel
        ``broadcast.servers`` within three of their heartbeats, each as the dict of its
        last heartbeat plus ``seen``, when it was sent.

        On a backend with history the answer is read from it at once; on one without,
        this listens to the channel for ``listen`` seconds (more than one heartbeat,
        ``BROADCAST_CLIENTS["HEARTBEAT"]``, 5 s by default). From sync code; from
        async code use :meth:`aservers`.
        """
        if self.features.history:
            return _alive(self.history(SERVERS_CHANNEL, limit=1000), time.time())
        return asyncio.run(self.aservers(listen=listen))

    async def aservers(self, *, listen: float = 6.0) -> list[dict[str, Any]]:
        """:meth:`servers` from async code."""
        if self.features.history:
            return _alive(await self.ahistory(SERVERS_CHANNEL, limit=1000), time.time())
        events: list[Event] = []
        async with self.subscribe(SERVERS_CHANNEL) as sub:
            deadline = time.monotonic() + listen
            while (left := deadline - time.monotonic()) > 0:
                try:
                    events.append(await sub.get(timeout=left))
                except TimeoutError:
                    break
        return _alive(events, time.time())

    def validate_id(self, event_id: object) -> str:
        """Return ``event_id`` if it is an id this alias's backend could have made,
        else raise ``ValueError`` saying what was expected.

        On backends without history, where nothing can be resumed from an id, any
        short string is accepted.
        """
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"an event id is a non-empty string, not {event_id!r}")
        if self.features.history:
            self.backend.id_key(event_id)
        elif len(event_id) > 100:
            raise ValueError(f"an event id has at most 100 characters, not {len(event_id)}")
        return event_id

    # Publishing ------------------------------------------------------------------------

    def _encode(self, channel: str, type: str, data: Any) -> tuple[bytes, int]:
        validate_channel(channel)
        if not isinstance(type, str) or not type:
            raise TypeError(f"event type must be a non-empty str, not {type!r}")
        ms = time.time_ns() // 1_000_000
        payload = self._encode_checked(
            {"type": type, "time": ms, "data": data}, f"publish to channel {channel!r}", channel
        )
        return payload, ms

    def _encode_checked(self, obj: Any, doing: str, name: str) -> bytes:
        """``obj`` encoded by the codec, within ``max_message_size``; errors say what
        failed (``doing``)."""
        try:
            payload = self.codec.encode(obj)
        except (TypeError, ValueError) as exc:
            # The plain class: subclasses such as UnicodeEncodeError (a lone surrogate
            # in a string) take other arguments.
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"cannot {doing}: {exc}") from exc
        except RecursionError as exc:
            raise ValueError(
                f"cannot {doing}: the data is nested too deeply to encode; flatten it"
            ) from exc
        if len(payload) > self.backend.max_message_size:
            raise MessageTooLarge(name, len(payload), self.backend.max_message_size)
        return payload

    def publish(
        self, channel: str, data: Any, *, type: str = "message", on_commit: bool = True
    ) -> Event | None:
        """Publish ``data`` on ``channel`` from sync code; safe from any thread.

        The channel name and the data are checked, and the data encoded, here, in the
        caller, before anything is sent. Inside ``transaction.atomic()`` the event is
        sent when the transaction commits and never if it rolls back, and this returns
        ``None``; ``on_commit=False`` sends at once. On a transactional backend whose
        ``database`` is the one in the atomic block, the event is written in that
        transaction instead (it leaves at the commit, never on rollback) and returned.
        Otherwise return the sent :class:`Event`. A publish that fails at the commit
        never raises out of the committed transaction: it is logged, counted in
        :attr:`failed_publishes` and sent as the
        :data:`~django_broadcast.signals.publish_failed` signal.

        Raise ``ValueError`` for a bad channel name, ``TypeError`` for data the codec
        cannot encode, :class:`MessageTooLarge` over the size limit, and
        :class:`BroadcastUnavailable` when the broker cannot be reached in ``TIMEOUT``.
        """
        payload, ms = self._encode(channel, type, data)
        if on_commit:
            joined = self._joined_transaction()
            if joined is not None:  # written in the transaction: it leaves at the commit
                event = self._send(channel, type, data, payload, ms, observe=False)
                if self.observers:
                    joined.on_commit(lambda: self._notify(event))
                return event
            connection = _connection_in_atomic_block()
            if connection is not None:
                self._commits.defer(connection, channel, type, data, payload, ms)
                return None
        return self._send(channel, type, data, payload, ms)

    def publish_on_commit(
        self, channel: str, data: Any, *, type: str = "message", using: str | None = None
    ) -> None:
        """Publish ``data`` on ``channel`` through ``transaction.on_commit()`` of the
        database ``using`` (default: Django's default), for code that runs after data
        was written, such as a ``post_save`` receiver.

        Inside a transaction the event is sent at its commit, as :meth:`publish` does;
        outside one it is sent at once. Either way a broker failure never raises: the
        data is already written, so the failure is logged, counted in
        :attr:`failed_publishes` and sent as the
        :data:`~django_broadcast.signals.publish_failed` signal. The channel name and
        the data are checked here, in the caller, and raise as :meth:`publish` does.
        """
        payload, ms = self._encode(channel, type, data)
        connection = transaction.get_connection(using)
        if connection.in_atomic_block:
            self._commits.defer(connection, channel, type, data, payload, ms)
        else:  # sent at once in autocommit; refused in manual transaction management
            pending = Pending(None, channel, type, data, payload, ms)
            connection.on_commit(lambda: self._send_at_commit([pending]))

    def _joined_transaction(self) -> BaseDatabaseWrapper | None:
        """The database connection whose open transaction a publish is written in: the
        backend's ``database`` where it is transactional and in an atomic block."""
        database = self.backend.database if self.features.transactional else None
        if database is not None and connections[database].in_atomic_block:
            return connections[database]
        return None

    def _send(
        self, channel: str, type: str, data: Any, payload: bytes, ms: int, *, observe: bool = True
    ) -> Event:
        started = perf_counter()
        event_id = self._publisher.publish(channel, payload)
        counters = self.counters
        counters.latencies.add(perf_counter() - started)
        counters.published += 1
        event = Event(channel, type, data, event_id, _from_ms(ms))
        if observe and self.observers:
            self._notify(event)
        return event

    def _notify(self, event: Event) -> None:
        for observer in tuple(self.observers):
            observer(event)

    def _send_at_commit(self, pending: Sequence[Pending]) -> None:
        """Send the events of a transaction at its commit, in order, in one round trip
        where the backend can; whatever happens, never raise: the data is committed,
        and the hooks registered after these must run. Each event that fails is
        reported on its own."""
        if not pending:
            return
        started = perf_counter()
        outcomes: list[Any]
        try:
            if len(pending) == 1:
                outcomes = [self._publisher.publish(pending[0].channel, pending[0].payload)]
            else:
                outcomes = self.backend.publish_many([(p.channel, p.payload) for p in pending])
        except Exception as exc:
            outcomes = [exc] * len(pending)
        elapsed = perf_counter() - started
        counters = self.counters
        for event, outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._report_failure(event, outcome)
                continue
            counters.latencies.add(elapsed)
            counters.published += 1
            if self.observers:
                sent = Event(event.channel, event.type, event.data, outcome, _from_ms(event.ms))
                try:
                    self._notify(sent)
                except Exception as exc:
                    self._report_failure(event, exc)

    def _report_failure(self, event: Pending, exc: Exception) -> None:
        """Log, count and signal an event that could not be sent at its commit."""
        maybe_sent = isinstance(exc, BroadcastUnavailable) and exc.maybe_sent
        self.counters.failed_publishes += 1
        logger.error(
            "publish to channel %r (type %r) of alias %r failed after the transaction "
            "committed: %s; the event %s",
            event.channel,
            event.type,
            self.alias,
            exc,
            "may still be delivered" if maybe_sent else "was not sent",
            exc_info=None if isinstance(exc, BroadcastError) else exc,
        )
        for receiver, error in publish_failed.send_robust(
            Broadcast,
            broadcast=self,
            channel=event.channel,
            type=event.type,
            data=event.data,
            exception=exc,
            maybe_sent=maybe_sent,
        ):
            if isinstance(error, Exception):
                logger.error("a publish_failed receiver (%r) raised", receiver, exc_info=error)

    async def apublish(self, channel: str, data: Any, *, type: str = "message") -> Event:
        """Publish ``data`` on ``channel`` from async code and return the sent event.

        Raises as :meth:`publish` does. There is no ``on_commit``: Django transactions
        are sync-only; publish from the sync code that holds the transaction.
        """
        payload, ms = self._encode(channel, type, data)
        if is_throwaway(asyncio.get_running_loop()):
            # async_to_sync made this loop for this one call from sync code: the sync
            # path needs no connection of its own and may block it.
            return self._send(channel, type, data, payload, ms)
        started = perf_counter()
        event_id = await self.backend.apublish(channel, payload)
        counters = self.counters
        counters.latencies.add(perf_counter() - started)
        counters.published += 1
        event = Event(channel, type, data, event_id, _from_ms(ms))
        if self.observers:
            self._notify(event)
        return event

    # Queues ----------------------------------------------------------------------------

    def _check_queues(self, queue: str) -> None:
        validate_channel(queue)
        if not self.features.queues:
            raise BroadcastError(
                f"alias {self.alias!r} uses {type(self.backend).__name__}, which has no "
                f"queues: use a backend that has ({schemes.describe('queues')})"
            )

    async def aqueue_put(self, queue: str, data: Any, *, capacity: int, ttl: float) -> None:
        """Append ``data`` to the work queue ``queue``: it waits there until one
        reader, in any process, takes it with :meth:`aqueue_take`, for at most ``ttl``
        seconds.

        Queue names follow the channel-name rules. Raise :class:`QueueFull` when the
        queue already holds ``capacity`` unexpired messages, ``TypeError`` for data the
        codec cannot encode, :class:`MessageTooLarge` over the size limit, and
        :class:`BroadcastError` on a backend without queues (``features.queues``).
        """
        self._check_queues(queue)
        payload = self._encode_checked(data, f"put data in queue {queue!r}", queue)
        if not await self.backend.aqueue_put(
            queue, payload, capacity=capacity, expires=time.time() + ttl
        ):
            raise QueueFull(queue, capacity)

    async def aqueue_take(self, queue: str) -> Any:
        """Wait for the oldest message of the work queue ``queue`` and return its data.

        Each message is taken by one reader only. Cancelling the wait takes nothing:
        the message stays in the queue for the next reader.
        """
        self._check_queues(queue)
        while True:
            payload = await self.backend.aqueue_take(queue, timeout=_QUEUE_POLL)
            if payload is not None:
                return self.codec.decode(payload)

    async def aqueue_clear(self, queue: str) -> None:
        """Drop every message of the work queue ``queue``."""
        self._check_queues(queue)
        await self.backend.aqueue_clear(queue)

    # Subscribing -----------------------------------------------------------------------

    def subscribe(
        self,
        *channels: str,
        patterns: Sequence[str] = (),
        since: str | Mapping[str, str] | None = None,
        persistent: bool = False,
    ) -> Subscription:
        """Subscribe to ``channels``: ``async with broadcast.subscribe("a", "b") as sub``.

        Once the ``async with`` has entered, every event published afterwards is
        received. ``since`` is an event id, applied to every channel, or a mapping of
        channel to id: on backends with history the events after it are replayed first,
        in order, and where history cannot cover the gap (or the backend keeps none)
        the subscriber gets a ``broadcast.gap`` notice instead. ``patterns`` (where the
        backend can subscribe by pattern, ``features.patterns``) receive every channel
        that matches: ``"chat.*"`` (``*`` any run of characters, ``?`` one); there is
        no resume for them. A ``persistent`` subscription outlives broker outages of
        any length (see :class:`Subscription`).
        """
        if isinstance(patterns, str):
            patterns = (patterns,)
        if not channels and not patterns:
            raise TypeError("subscribe() needs at least one channel or pattern")
        unique = tuple(dict.fromkeys(validate_channel(c) for c in channels))
        globs = tuple(dict.fromkeys(validate_pattern(p) for p in patterns))
        if globs and not self.features.patterns:
            raise BroadcastError(
                f"alias {self.alias!r} uses {type(self.backend).__name__}, which cannot "
                f"subscribe by pattern: name the channels, or use a backend that can "
                f"({schemes.describe('patterns')})"
            )
        resume: dict[str, str] = {}
        if isinstance(since, str):
            if not unique:
                raise ValueError("since resumes channels: patterns have no history")
            resume = dict.fromkeys(unique, since)
        elif isinstance(since, Mapping):
            unknown = set(since) - set(unique)
            if unknown:
                raise ValueError(f"since names channels that are not subscribed: {sorted(unknown)}")
            resume = dict(since)
        elif since is not None:
            raise TypeError(f"since must be an event id or a mapping, not {since!r}")
        for event_id in resume.values():
            self.validate_id(event_id)
        return Subscription(self._hubs, unique, resume, patterns=globs, persistent=persistent)

    def _decode(self, message: Message) -> Event:
        envelope = self.codec.decode(message.payload)
        return Event(
            message.channel,
            envelope["type"],
            envelope["data"],
            message.id,
            _from_ms(envelope["time"]),
        )

    def _hub(self) -> Hub:
        """The running event loop's hub (for tests and diagnostics)."""
        return self._hubs.current()

    # History ---------------------------------------------------------------------------

    def _check_history(self, channel: str, limit: int | None, since: str | None) -> None:
        validate_channel(channel)
        if not self.features.history:
            raise BroadcastError(
                f"alias {self.alias!r} uses {type(self.backend).__name__}, which keeps no "
                f"history: use a backend that does ({schemes.describe('history')})"
            )
        if limit is not None and (type(limit) is not int or limit < 1):
            raise ValueError(f"limit must be a positive int or None, not {limit!r}")
        if since is not None:
            self.backend.id_key(since)

    def _events(self, channel: str, since: str | None, page: HistoryPage) -> list[Event]:
        events = [self._decode(m) for m in page.messages]
        if page.gap:
            events.insert(0, gap_event(channel, "history", since=since))
        return events

    def history(
        self, channel: str, *, limit: int | None = 100, since: str | None = None
    ) -> list[Event]:
        """Return past events of ``channel``, oldest first.

        Without ``since``: the latest ``limit`` events. With ``since``: the first
        ``limit`` events after that id, led by a ``broadcast.gap`` notice where some
        of them are no longer kept. Raise :class:`BroadcastError` on a backend without
        history.
        """
        self._check_history(channel, limit, since)
        return self._events(channel, since, self.backend.history(channel, limit=limit, since=since))

    async def ahistory(
        self, channel: str, *, limit: int | None = 100, since: str | None = None
    ) -> list[Event]:
        """:meth:`history` from async code."""
        self._check_history(channel, limit, since)
        page = await self.backend.ahistory(channel, limit=limit, since=since)
        return self._events(channel, since, page)

    # Closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """End every subscription (on every event loop) and release the broker.

        The alias stays usable: later calls connect again.
        """
        self._hubs.close()
        self.backend.close()

    async def aclose(self) -> None:
        """:meth:`close` from async code, waiting for this loop's connections to close."""
        await self._hubs.aclose()
        await self.backend.aclose()
