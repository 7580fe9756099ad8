"""Live events shared by every part of a Django site, across processes and servers.

``broadcast.publish(channel, data)`` from sync code, ``await broadcast.apublish(...)``
and ``async with broadcast.subscribe(channel) as sub`` from async code; the broker is
picked in ``settings.BROADCAST`` like a database.
"""

from typing import cast

from django.utils.connection import ConnectionProxy

from .broadcast import Broadcast
from .conf import DEFAULT_ALIAS
from .events import GAP, Event
from .exceptions import (
    BroadcastError,
    BroadcastUnavailable,
    MessageTooLarge,
    QueueFull,
    SubscriptionClosed,
    SubscriptionOverflow,
)
from .registry import broadcasts
from .subscription import Subscription

__all__ = [
    "GAP",
    "Broadcast",
    "BroadcastError",
    "BroadcastUnavailable",
    "Event",
    "MessageTooLarge",
    "QueueFull",
    "Subscription",
    "SubscriptionClosed",
    "SubscriptionOverflow",
    "broadcast",
    "broadcasts",
]

__version__ = "0.1.0"

#: The ``"default"`` alias, as ``django.core.cache.cache`` is the default cache.
# The registry is one per process, not one per thread, so it is not a
# BaseConnectionHandler; ConnectionProxy needs only its __getitem__.
broadcast: Broadcast = cast(Broadcast, ConnectionProxy(broadcasts, DEFAULT_ALIAS))  # type: ignore[arg-type]
