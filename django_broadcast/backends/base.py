"""The contract between a broadcast alias and its broker.

A backend is built once per alias per process from ``(location, options, timeout)``.
It publishes encoded payloads (opaque bytes made by the alias's codec), reads history
where the broker keeps it, and makes :class:`Receiver` objects: one per event loop,
owned and driven by that loop's hub, holding the process's single broker subscription
per channel.

Backends know nothing of Django requests, consumers or channel layers.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = ["Backend", "ConnectionLost", "Features", "HistoryPage", "Message", "Receiver"]


@dataclass(frozen=True)
class Features:
    """What a backend can do, declared as data on its class (:attr:`Backend.features`).

    The core, the system checks, the documentation's capability table and the tests
    read these declarations, never class or module names: a backend is what it
    declares.
    """

    #: The broker keeps history: ``history()``, resuming with ``since`` and
    #: reconnects that lose nothing within the kept window.
    history: bool = False
    #: With history: the position of a channel that has no event yet (resuming from
    #: it replays the channel from its first event).
    origin: str | None = None
    #: Subscriptions by pattern (``news.*``) are possible.
    patterns: bool = False
    #: A publish can be written in the caller's database transaction, so that the
    #: event leaves exactly when the data commits.
    transactional: bool = False
    #: Events cross processes (and servers); False for an in-process broker.
    crosses_processes: bool = True
    #: How far event ids are ordered: ``"channel"`` (increasing per channel, whoever
    #: published) or ``"publisher"`` (increasing per publishing process only).
    id_order: Literal["channel", "publisher"] = "publisher"
    #: The broker's hard limit on one encoded event, in bytes (None: no hard limit);
    #: ``OPTIONS["max_message_size"]`` may not exceed it.
    max_payload: int | None = None
    #: The broker's limit on the length of the names it is given for channels, in
    #: bytes, where it has one (the backend maps longer names to fit).
    max_name_length: int | None = None
    #: Work queues (the channel layer's plain channels): a message waits in its queue
    #: until one reader, in any process, takes it; with a capacity and an expiry.
    queues: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """An event as it comes off the broker, before the codec has decoded it.

    A receiver that finds, while reading, that events of ``channel`` may have been
    lost just before this point (the stream was deleted or trimmed under it) returns
    a message with ``gap`` set to the reason (``"reset"``, ``"trimmed"``) and an
    empty ``id`` and ``payload``: the hub turns it into a ``broadcast.gap`` notice,
    in order with the channel's other messages.
    """

    channel: str
    id: str
    payload: bytes
    gap: str | None = None
    #: The pattern it was received through (:meth:`Receiver.psubscribe`), if any.
    pattern: str | None = None

    def __init__(
        self,
        channel: str,
        id: str,
        payload: bytes,
        gap: str | None = None,
        pattern: str | None = None,
    ) -> None:
        # The generated frozen __init__, made cheaper as Event's is (events.py).
        _set_channel(self, channel)
        _set_id(self, id)
        _set_payload(self, payload)
        _set_gap(self, gap)
        _set_pattern(self, pattern)


_set_channel, _set_id, _set_payload, _set_gap, _set_pattern = (
    Message.__dict__[name].__set__ for name in ("channel", "id", "payload", "gap", "pattern")
)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Messages read from history, oldest first.

    ``gap`` is true when ``since`` was given and continuity after it cannot be
    proven: the broker no longer holds every message after it (trimmed away, or
    older than the window), or the history was deleted or made anew since (a broker
    restart without persistence, a deleted key, an eviction).
    """

    messages: Sequence[Message]
    gap: bool = False


#: After fanning out this many messages, the hub lets the event loop run the
#: subscribers they woke before it reads on; a receiver that can leave the rest of what
#: it holds unparsed (redis:// pub/sub) returns no more than this from one
#: :meth:`Receiver.read`. Each message leaves a few objects alive until its subscriber
#: runs: kept below the garbage collector's first threshold (700) at a time, they
#: trigger few collections, and with thousands of subscribers each collection that
#: reaches the oldest generation is a scan of them all.
READ_BATCH = 100


class ConnectionLost(Exception):
    """Raised by :meth:`Receiver.read` when the broker connection is gone.

    The hub answers it by calling :meth:`Receiver.reconnect` with backoff.
    """


class Receiver(abc.ABC):
    """A process's receiving side of one backend on one event loop.

    The hub calls :meth:`subscribe` and :meth:`unsubscribe` from subscriber tasks
    (serialized by its lock) while its listener task waits in :meth:`read`.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Raise ``BroadcastUnavailable`` if the broker cannot be reached."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> str | None:
        """Start receiving ``channel``; return only once the broker has confirmed, so
        that any message published after this returns is received.

        Return the channel's position on backends with history: the id after which
        every message is received (the channel's newest id at this moment, or the
        backend's "from the beginning" id, ``features.origin``, for a channel without
        messages); None on backends without history.

        Raise ``BroadcastUnavailable`` if it cannot be confirmed within the timeout,
        and leave nothing subscribed at the broker for ``channel`` in that case.
        """

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    async def psubscribe(self, pattern: str) -> None:
        """Start receiving every channel that matches ``pattern`` (shell-style: ``*``
        matches any run of characters, dots included, ``?`` one character); messages
        received so carry ``pattern``, even where the channel is also subscribed by
        name. Return once the broker has confirmed; leave nothing behind on failure.

        Only called on backends whose features declare ``patterns``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot subscribe by pattern")

    async def punsubscribe(self, pattern: str) -> None:
        """Stop receiving through ``pattern``."""
        raise NotImplementedError(f"{type(self).__name__} cannot subscribe by pattern")

    @abc.abstractmethod
    async def read(self) -> Sequence[Message]:
        """Wait for the next messages (at least one), in broker order per channel.
        Where the rest can wait unparsed, return no more than :data:`READ_BATCH`.

        A message with ``gap`` set says that events of its channel may have been lost
        at that point (see :class:`Message`). Raise :class:`ConnectionLost` when the
        connection to the broker is gone.
        """

    @abc.abstractmethod
    async def reconnect(self) -> set[str]:
        """Connect again and resume every subscribed channel and pattern.

        Return the channels (and patterns) whose continuity could not be kept
        (messages published while disconnected may be lost); the hub sends their
        subscribers a gap notice.
        Raise ``BroadcastUnavailable`` (or any ``OSError``) if the broker is still down.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; the receiver is not used again."""


class Backend(abc.ABC):
    """One broker, as seen by one alias in one process."""

    #: What this backend can do.
    features: ClassVar[Features] = Features()

    #: OPTIONS this backend accepts, with the type each must have.
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"max_message_size": int}

    #: OPTIONS that only make sense with a feature, and that feature.
    option_features: ClassVar[Mapping[str, str]] = {"history": "history"}

    #: Whether LOCATION (or the URL) must name a server.
    requires_location: ClassVar[bool] = True

    #: Default of OPTIONS["max_message_size"], in bytes.
    default_max_message_size: ClassVar[int] = 1024 * 1024

    #: With ``features.transactional``: the ``DATABASES`` alias in whose open
    #: transaction :meth:`publish` writes the event (None: it never joins one).
    database: str | None = None

    #: Whether :meth:`publish_many` sends its payloads in fewer round trips than one
    #: each, from any thread: then the sync publishes of concurrent threads are worth
    #: gathering into one call (the alias does, see :mod:`~._coalescer`).
    coalesces: bool = False

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        self.location = location
        self.options = dict(options)
        self.timeout = timeout
        self.max_message_size: int = self.options.get(
            "max_message_size", self.default_max_message_size
        )

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        """Return a sentence for every option that is unknown, of the wrong type, asks
        for something this backend cannot do, or exceeds the broker's limits."""
        problems = []
        name = cls.__name__
        for key, value in options.items():
            expected = cls.option_types.get(key)
            feature = cls.option_features.get(key)
            if expected is None and feature is not None and not getattr(cls.features, feature):
                problems.append(f"option {key!r} needs a backend with {feature}; {name} has none")
            elif expected is None:
                known = ", ".join(sorted(cls.option_types)) or "none"
                problems.append(f"unknown option {key!r} for {name} (known: {known})")
            elif not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                problems.append(
                    f"option {key!r} must be {_type_name(expected)}, "
                    f"not {type(value).__name__} ({value!r})"
                )
            elif isinstance(value, int) and not isinstance(value, bool) and value <= 0:
                problems.append(f"option {key!r} must be positive, not {value!r}")
        limit = cls.features.max_payload
        size = options.get("max_message_size", cls.default_max_message_size)
        if limit is not None and isinstance(size, int) and size > limit:
            problems.append(
                f"option 'max_message_size' of {size:,} bytes is over the broker's hard "
                f"limit of {limit:,} bytes for {name}"
            )
        return problems

    # Publishing -------------------------------------------------------------------

    @abc.abstractmethod
    def publish(self, channel: str, payload: bytes) -> str:
        """Send ``payload`` on ``channel`` from sync code; return the event id.

        Must not create an event loop, a thread or a connection per call. Raise
        ``BroadcastUnavailable`` within ``timeout`` if the broker cannot be reached.
        """

    @abc.abstractmethod
    async def apublish(self, channel: str, payload: bytes) -> str:
        """Send ``payload`` on ``channel`` from async code; return the event id."""

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[str | Exception]:
        """Send each ``(channel, payload)`` of ``items``, in order, from sync code, in
        as few round trips as the broker allows; return, in the same order, each
        event's id, or the exception its own :meth:`publish` would have raised.

        Order is kept per channel, and one event's failure never stops the others.
        This default publishes them one at a time.
        """
        results: list[str | Exception] = []
        for channel, payload in items:
            try:
                results.append(self.publish(channel, payload))
            except Exception as exc:
                results.append(exc)
        return results

    # History ----------------------------------------------------------------------

    def id_key(self, event_id: str) -> Any:
        """Return a sort key for an id of this backend; raise ``ValueError`` if the id
        is not one this backend makes.

        Parse strictly: ASCII digits only (``str.isdigit`` also accepts other
        scripts' digits) and bounded to what the broker accepts, so that an id from a
        client is refused here, with a message saying what was expected, rather than
        by the broker.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no history")

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read history from sync code: the ``limit`` latest messages, or with ``since``
        the first ``limit`` messages after it (all of them where ``limit`` is None)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no history")

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """:meth:`history` from async code."""
        raise NotImplementedError(f"{type(self).__name__} keeps no history")

    # Queues (only where ``features.queues``) --------------------------------------

    async def aqueue_put(
        self, queue: str, payload: bytes, *, capacity: int, expires: float
    ) -> bool:
        """Append ``payload`` to ``queue`` unless it already holds ``capacity``
        messages that have not expired; return whether it was appended.

        The message expires at ``expires`` (a ``time.time()`` value): an expired
        message is never taken and takes no room.
        """
        raise NotImplementedError(f"{type(self).__name__} has no queues")

    async def aqueue_take(self, queue: str, *, timeout: float) -> bytes | None:
        """Take the oldest unexpired message of ``queue``, waiting at most ``timeout``
        seconds; return None if none came.

        Each message is taken once, by one caller, whichever process it runs in. A
        caller cancelled while waiting takes nothing: a message the broker handed
        over meanwhile goes back to the head of the queue.
        """
        raise NotImplementedError(f"{type(self).__name__} has no queues")

    async def aqueue_clear(self, queue: str) -> None:
        """Drop every message of ``queue``."""
        raise NotImplementedError(f"{type(self).__name__} has no queues")

    # Receiving and lifetime -------------------------------------------------------

    @abc.abstractmethod
    def receiver(self) -> Receiver:
        """Make a receiver for the running event loop."""

    def close(self) -> None:  # noqa: B027 (optional to override)
        """Release sync resources (connection pools). Safe to call more than once."""

    async def aclose(self) -> None:
        """Release the async resources of the running event loop, then :meth:`close`."""
        self.close()


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__
