"""The embedded in-process backend (``memory://``).

Events never leave the process, so it suits development and tests; with
``DEBUG=False`` a system check warns that it cannot cross processes. A publish from
any thread (a WSGI worker, a sync view run by ``sync_to_async``) reaches subscribers
on every event loop of the process.

What it guarantees: a publish never waits and never fails for want of a broker.
Ids are decimal numbers from one counter for the whole process (so they increase
across channels too), at most :data:`MAX_ID`. Each publish is stored and handed to
every receiver under one lock, so every receiver sees one order per channel, and
``subscribe`` reads the channel's position (its newest id, or ``"0"``) under the
same lock that registers the receiver: every event after the position is received.
Each channel keeps a ring buffer of its latest events (``OPTIONS["history"]``,
default 1000) for ``since`` and ``history()``; a ``since`` reports a gap where the
buffer no longer holds every event after it, or where it is newer than any id this
process has made (it comes from before a restart, whose history is gone). Nothing
is ever lost between publish and a subscribed receiver, so there is no reconnect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, ClassVar

from .base import Backend, Features, HistoryPage, Message, Receiver

__all__ = ["MAX_ID", "MemoryBackend"]

_ORIGIN = "0"  # the position of a channel with no event: ids start at 1

#: The largest event id the memory backend makes or accepts.
MAX_ID = 2**64 - 1
_MAX_ID_DIGITS = len(str(MAX_ID))


class MemoryBackend(Backend):
    """Process-local broker with per-channel history."""

    features = Features(
        history=True,
        origin=_ORIGIN,
        patterns=True,
        crosses_processes=False,
        id_order="channel",
        queues=True,
    )
    requires_location = False
    option_types: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "max_message_size": int,
        "history": int,
    }

    def __init__(self, location: str, options: Mapping[str, Any], *, timeout: float) -> None:
        super().__init__(location, options, timeout=timeout)
        self.history_size: int = self.options.get("history", 1000)
        self._lock = threading.Lock()
        self._next_id = 0  # one counter for all channels: ids compare across channels
        self._history: dict[str, deque[Message]] = {}
        self._evicted: dict[str, int] = {}  # channel -> id of the newest evicted event
        self._receivers: dict[str, set[_MemoryReceiver]] = {}
        self._pattern_receivers: dict[str, set[_MemoryReceiver]] = {}
        self._queues: dict[str, _Queue] = {}

    def _send(self, channel: str, payload: bytes) -> str:
        with self._lock:
            self._next_id += 1
            message = Message(channel, str(self._next_id), payload)
            buffer = self._history.get(channel)
            if buffer is None:
                buffer = self._history[channel] = deque(maxlen=self.history_size)
            elif len(buffer) == self.history_size:
                self._evicted[channel] = int(buffer[0].id)
            buffer.append(message)
            # Delivered under the lock, so every receiver sees one order per channel.
            for receiver in self._receivers.get(channel, ()):
                receiver.deliver(message)
            for pattern, receivers in self._pattern_receivers.items():
                if fnmatchcase(channel, pattern):
                    matched = Message(channel, message.id, payload, pattern=pattern)
                    for receiver in receivers:
                        receiver.deliver(matched)
        return message.id

    def publish(self, channel: str, payload: bytes) -> str:
        """Store ``payload`` in the channel's history and hand it to every receiver."""
        return self._send(channel, payload)

    async def apublish(self, channel: str, payload: bytes) -> str:
        """As :meth:`publish`; never waits."""
        return self._send(channel, payload)

    # Queues: shared by every event loop of the process, under the backend's lock.

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    async def aqueue_put(
        self, queue: str, payload: bytes, *, capacity: int, expires: float
    ) -> bool:
        """Append to the in-process queue, or hand straight to a waiting taker."""
        with self._lock:
            held = self._queue(queue)
            held.drop_expired()
            if len(held.messages) >= capacity:
                return False
            held.messages.append((expires, payload))
            held.wake_one()
        return True

    async def aqueue_take(self, queue: str, *, timeout: float) -> bytes | None:
        """Take from the in-process queue; a cancelled taker takes nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                held = self._queue(queue)
                held.drop_expired()
                if held.messages:
                    payload = held.messages.popleft()[1]
                    if held.messages:
                        held.wake_one()
                    self._forget_if_idle(queue, held)
                    return payload
                waiter: asyncio.Future[None] = loop.create_future()
                held.waiters.append((loop, waiter))
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                return None
            finally:
                with self._lock:
                    if (loop, waiter) in held.waiters:
                        held.waiters.remove((loop, waiter))
                    elif waiter.cancelled() and held.messages:
                        held.wake_one()  # woken, then cancelled: pass it on
                    self._forget_if_idle(queue, held)

    def _forget_if_idle(self, name: str, queue: _Queue) -> None:
        if not queue.messages and not queue.waiters and self._queues.get(name) is queue:
            del self._queues[name]

    async def aqueue_clear(self, queue: str) -> None:
        """Drop the queue's messages."""
        with self._lock:
            held = self._queues.get(queue)
            if held is not None:
                held.messages.clear()
                self._forget_if_idle(queue, held)

    def id_key(self, event_id: str) -> int:
        """Ids are decimal sequence numbers, ASCII digits, at most :data:`MAX_ID`."""
        if (
            isinstance(event_id, str)
            and 0 < len(event_id) <= _MAX_ID_DIGITS
            and event_id.isascii()
            and event_id.isdigit()
            and int(event_id) <= MAX_ID
        ):
            return int(event_id)
        raise ValueError(
            f"{event_id!r} is not an event id of the memory backend: expected a decimal "
            f"number of ASCII digits from 0 to {MAX_ID}, such as '42'"
        )

    def history(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """Read the channel's ring buffer.

        With ``since``, report a gap where the buffer no longer holds every event
        after it, or where ``since`` is newer than any id this backend has made (the
        id comes from before the process restarted, so its history is gone).
        """
        after = None if since is None else self.id_key(since)
        with self._lock:
            messages = list(self._history.get(channel, ()))
            evicted = self._evicted.get(channel, 0)
            newest = self._next_id
        if after is None:
            return HistoryPage(messages[-limit:] if limit is not None else messages)
        newer = [m for m in messages if int(m.id) > after]
        gap = evicted > after or after > newest
        return HistoryPage(newer[:limit] if limit is not None else newer, gap=gap)

    async def ahistory(self, channel: str, *, limit: int | None, since: str | None) -> HistoryPage:
        """As :meth:`history`; never waits."""
        return self.history(channel, limit=limit, since=since)

    def receiver(self) -> Receiver:
        """Make a receiver for the running event loop."""
        return _MemoryReceiver(self, asyncio.get_running_loop())

    def _attach(self, receiver: _MemoryReceiver, channel: str) -> str:
        """Register ``receiver`` for ``channel``; return the channel's position.

        Both under the lock: every event after the position reaches the receiver.
        """
        with self._lock:
            self._receivers.setdefault(channel, set()).add(receiver)
            buffer = self._history.get(channel)
            return buffer[-1].id if buffer else _ORIGIN

    def _detach(self, receiver: _MemoryReceiver, channel: str) -> None:
        with self._lock:
            _discard(self._receivers, channel, receiver)

    def _attach_pattern(self, receiver: _MemoryReceiver, pattern: str) -> None:
        with self._lock:
            self._pattern_receivers.setdefault(pattern, set()).add(receiver)

    def _detach_pattern(self, receiver: _MemoryReceiver, pattern: str) -> None:
        with self._lock:
            _discard(self._pattern_receivers, pattern, receiver)

    def clear(self) -> None:
        """Forget every channel's history and start ids from 1 again, as a new backend
        would (for tests: :func:`django_broadcast.testing.reset_broadcasts`).
        Subscribed receivers stay subscribed."""
        with self._lock:
            self._next_id = 0
            self._history.clear()
            self._evicted.clear()

    def subscribed_channels(self) -> set[str]:
        """Channels (and patterns) with at least one receiver: what "the broker" is
        subscribed to."""
        with self._lock:
            return set(self._receivers) | set(self._pattern_receivers)


def _discard(
    receivers: dict[str, set[_MemoryReceiver]], name: str, receiver: _MemoryReceiver
) -> None:
    found = receivers.get(name)
    if found is not None:
        found.discard(receiver)
        if not found:
            del receivers[name]


class _MemoryReceiver(Receiver):
    def __init__(self, backend: MemoryBackend, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._loop = loop
        self._thread_id = threading.get_ident()
        self._pending: deque[Message] = deque()
        self._wakeup = asyncio.Event()
        self._channels: set[str] = set()
        self._patterns: set[str] = set()

    def deliver(self, message: Message) -> None:
        # Called with the backend lock held, from any thread.
        if threading.get_ident() == self._thread_id:
            self._put(message)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._put, message)

    def _put(self, message: Message) -> None:
        self._pending.append(message)
        self._wakeup.set()

    async def open(self) -> None:
        pass

    async def subscribe(self, channel: str) -> str:
        self._channels.add(channel)
        return self._backend._attach(self, channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._backend._detach(self, channel)

    async def psubscribe(self, pattern: str) -> None:
        self._patterns.add(pattern)
        self._backend._attach_pattern(self, pattern)

    async def punsubscribe(self, pattern: str) -> None:
        self._patterns.discard(pattern)
        self._backend._detach_pattern(self, pattern)

    async def read(self) -> Sequence[Message]:
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = list(self._pending)
        self._pending.clear()
        return batch

    async def reconnect(self) -> set[str]:
        return set()

    async def close(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
        for pattern in list(self._patterns):
            await self.punsubscribe(pattern)


class _Queue:
    """One in-process queue: its messages (expiry, payload), oldest first, and the
    takers waiting on it (each a future on its own event loop)."""

    __slots__ = ("messages", "waiters")

    def __init__(self) -> None:
        self.messages: deque[tuple[float, bytes]] = deque()
        self.waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    def drop_expired(self) -> None:
        now = time.time()
        while self.messages and self.messages[0][0] < now:
            self.messages.popleft()

    def wake_one(self) -> None:
        """Wake the longest-waiting taker (called with the backend's lock held)."""
        while self.waiters:
            loop, waiter = self.waiters.popleft()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, waiter)
                return


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
