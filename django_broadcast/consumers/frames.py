"""Encode once: the wire form of an event, shared by every local client.

The hub hands the same :class:`~django_broadcast.events.Event` to every subscriber of
a process, so a bounded cache keyed by (kind, channel, id) lets a thousand WebSocket
or SSE clients of one event cost one JSON encoding, not a thousand. Each alias has a
cache of its own, kept as long as the alias is: ids are only unique within one alias
(and ``override_settings`` makes a new alias whose ids start over).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from ..broadcast import Broadcast
from ..codec import tag_bytes
from ..events import GAP, Event

__all__ = ["FrameCache", "frame_cache", "sse_body", "websocket_frame", "websocket_message"]


class FrameCache:
    """A least-recently-used map of (kind, channel, id) to frame text, bounded both in
    frames and in characters: a frame is reused while an event is fanned out to the
    local clients, so the cache only needs the newest events, however big they are."""

    def __init__(self, size: int = 1024, max_chars: int = 4 * 1024 * 1024) -> None:
        self.size = size
        self.max_chars = max_chars
        #: How many frames were encoded (a test can tell reuse from re-encoding).
        self.encoded = 0
        self._frames: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, kind: str, event: Event, make: Callable[[Event], str]) -> str:
        """The ``kind`` frame of ``event``, made by ``make`` at most once while cached.

        Events without an id (gap notices, which differ per subscriber) are not cached.
        """
        if not event.id:
            self.encoded += 1
            return make(event)
        key = (kind, event.channel, event.id)
        with self._lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                return frame
        frame = make(event)
        with self._lock:
            self.encoded += 1
            if key not in self._frames:
                self._frames[key] = frame
                self._chars += len(frame)
            while self._frames and (len(self._frames) > self.size or self._chars > self.max_chars):
                self._chars -= len(self._frames.popitem(last=False)[1])
        return frame


_caches: weakref.WeakKeyDictionary[Broadcast, FrameCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def frame_cache(broadcast: Broadcast) -> FrameCache:
    """The frame cache of one alias."""
    cache = _caches.get(broadcast)
    if cache is None:
        with _caches_lock:
            cache = _caches.setdefault(broadcast, FrameCache())
    return cache


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_tag_bytes)


def _tag_bytes(value: object) -> object:
    """``bytes`` (from a codec that carries them) as the channel layer tags them for
    JSON: ``{"__bytes__": "<base64>"}``."""
    if isinstance(value, bytes):
        return tag_bytes(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _websocket(event: Event) -> str:
    return _dumps(
        {"op": "event", "channel": event.channel, "id": event.id, "type": event.type,
         "data": event.data}
    )  # fmt: skip


def _sse(event: Event) -> str:
    name = "gap" if event.type == GAP else event.type.replace("\r", " ").replace("\n", " ")
    data = _dumps({"channel": event.channel, "id": event.id, "type": event.type,
                   "data": event.data})  # fmt: skip
    return f"event: {name}\ndata: {data}\n\n"


def websocket_frame(event: Event, broadcast: Broadcast) -> str:
    """The ``{"op": "event", ...}`` text frame of ``event``, an event of ``broadcast``."""
    return frame_cache(broadcast).get("ws", event, _websocket)


# The message of the event fanned out last: the hub hands the same Event object to
# every local client, so its clients after the first find it here by identity (the
# Event is held, so its identity cannot be reused meanwhile).
_last: tuple[Event | None, dict[str, str]] = (None, {})


def websocket_message(event: Event, broadcast: Broadcast) -> dict[str, str]:
    """The ASGI ``websocket.send`` message of ``event``'s frame, the same dict for
    every client of one fan-out (servers only read it)."""
    global _last
    last_event, message = _last
    if last_event is event:
        return message
    message = {"type": "websocket.send", "text": websocket_frame(event, broadcast)}
    _last = (event, message)
    return message


def sse_body(event: Event, broadcast: Broadcast) -> str:
    """The ``event:`` and ``data:`` lines of ``event``, an event of ``broadcast`` (the
    ``id:`` line is the stream's own: it carries the position of every channel)."""
    return frame_cache(broadcast).get("sse", event, _sse)
