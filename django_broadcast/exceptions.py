"""Exceptions raised by django_broadcast."""

from __future__ import annotations


class BroadcastError(Exception):
    """Base class of every error django_broadcast raises on purpose."""


class BroadcastUnavailable(BroadcastError):
    """The broker could not be reached (or did not answer) within the alias's TIMEOUT.

    Nothing was sent: the caller may retry.
    """


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


class SubscriptionClosed(BroadcastError):
    """The subscription ended: it was closed, its alias was closed, or the broker
    stayed unreachable for longer than RECONNECT_TIMEOUT."""


class SubscriptionOverflow(SubscriptionClosed):
    """The subscriber fell behind with ``OVERFLOW = "disconnect"``: its queue filled up."""
