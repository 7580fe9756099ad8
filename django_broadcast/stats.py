"""The counters of one alias in this process, and the figures made from them.

Counting is kept off the hot paths' costs: an integer add per publish, per fan-out of
a batch to a channel's subscribers, per gap notice, per reconnect and per connection,
and two clock reads per publish for its latency, kept in a ring of the latest 1,024.
:meth:`django_broadcast.Broadcast.stats` turns them into a plain dict.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field

__all__ = ["Counters", "Latencies"]


class Latencies:
    """The latest publish latencies, in a ring, for percentiles."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._samples = array("d", bytes(8 * size))
        self._count = 0

    def add(self, seconds: float) -> None:
        """Record one latency (thread-safe enough for statistics: a lost race loses a
        sample, never corrupts one)."""
        count = self._count
        self._samples[count % self._size] = seconds
        self._count = count + 1

    def percentiles(self) -> dict[str, float]:
        """``p50``, ``p90`` and ``p99`` of the samples kept, in milliseconds, and
        ``samples``, how many there are (0: no publish yet)."""
        kept = sorted(self._samples[: min(self._count, self._size)])
        if not kept:
            return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "samples": 0}

        def at(q: float) -> float:
            return round(kept[min(len(kept) - 1, int(q * len(kept)))] * 1000, 3)

        return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "samples": len(kept)}


@dataclass
class Counters:
    """What happened to one alias's events in this process."""

    #: Events published (sent to the broker) from this process.
    published: int = 0
    #: Events handed to local subscriptions (one per subscription per event).
    delivered: int = 0
    #: Events dropped, over all the alias's subscribers, because one fell behind.
    dropped: int = 0
    #: Gap notices handed to local subscriptions.
    gaps: int = 0
    #: Times a hub of this alias reconnected to the broker.
    reconnects: int = 0
    #: Events published in a transaction that could not be sent at its commit.
    failed_publishes: int = 0
    #: Open WebSocket connections of the shipped consumer on this alias.
    websocket_connections: int = 0
    #: Open Server-Sent Events streams of the shipped consumer on this alias.
    sse_connections: int = 0
    #: When the counting started (the alias was built), ``time.time()``.
    since: float = field(default_factory=time.time)
    latencies: Latencies = field(default_factory=Latencies)
