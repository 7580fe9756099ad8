"""Redis backends: pub/sub (``redis://``) and Streams (``redis+streams://``), on one
server, on the master a Sentinel quorum names (``redis+sentinel://``,
``redis+sentinel+streams://``) or on a Redis Cluster (``redis+cluster://`` with sharded
pub/sub, ``redis+cluster+streams://``; see :mod:`.cluster`).

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

from ._client import safe_url
from .cluster import RedisClusterBackend, RedisClusterStreamsBackend
from .pubsub import RedisBackend
from .streams import RedisStreamsBackend

__all__ = [
    "RedisBackend",
    "RedisClusterBackend",
    "RedisClusterStreamsBackend",
    "RedisStreamsBackend",
    "safe_url",
]
