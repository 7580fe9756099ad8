"""Exceptions raised by django_broadcast."""

from __future__ import annotations


class BroadcastError(Exception):
    """Base class of every error django_broadcast raises on purpose."""


class BroadcastUnavailable(BroadcastError):
    """The broker could not be reached (or did not answer) within the alias's TIMEOUT.

    ``maybe_sent`` tells a failed publish apart: False when the event was certainly
    not sent (the connection was refused, so a retry cannot duplicate it); True when
    the broker got the command but did not answer in time, so the event may still be
    delivered (a frozen broker runs it when it wakes up).
    """

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class MessageTooLarge(BroadcastError, ValueError):
    """The encoded event is larger than the alias's ``max_message_size`` option."""

    def __init__(self, channel: str, size: int, limit: int) -> None:
        self.channel = channel
        self.size = size
        self.limit = limit
        super().__init__(
            f"event for channel {channel!r} is {size:,} bytes once encoded, over the "
            f"limit of {limit:,} bytes: send a smaller payload (an id the client can "
            f"fetch, say) or raise OPTIONS['max_message_size']"
        )


class QueueFull(BroadcastError):
    """The queue already holds as many messages as its capacity allows."""

    def __init__(self, queue: str, capacity: int) -> None:
        self.queue = queue
        self.capacity = capacity
        super().__init__(
            f"queue {queue!r} already holds {capacity} messages, its capacity: wait for "
            f"a reader to take some, or raise the capacity"
        )


class SubscriptionClosed(BroadcastError):
    """The subscription ended: it was closed, its alias was closed, or the broker
    stayed unreachable for longer than RECONNECT_TIMEOUT."""


class SubscriptionOverflow(SubscriptionClosed):
    """The subscriber fell behind with ``OVERFLOW = "disconnect"``: its queue filled up."""
