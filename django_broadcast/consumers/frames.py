"""Encode once: the wire form of an event, shared by every local client.

The hub hands the same :class:`~django_broadcast.events.Event` to every subscriber of
a process, so a bounded cache keyed by (kind, channel, id) lets a thousand WebSocket
or SSE clients of one event cost one JSON encoding, not a thousand.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable

from ..events import GAP, Event

__all__ = ["FrameCache", "frames", "sse_body", "websocket_frame"]


class FrameCache:
    """A bounded least-recently-used map of (kind, channel, id) to frame text."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        #: How many frames were encoded (a test can tell reuse from re-encoding).
        self.encoded = 0
        self._frames: OrderedDict[tuple[str, str, str], str] = OrderedDict()
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
            self._frames[key] = frame
            if len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame


#: The process's cache.
frames = FrameCache()


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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


def websocket_frame(event: Event) -> str:
    """The ``{"op": "event", ...}`` text frame of ``event``."""
    return frames.get("ws", event, _websocket)


def sse_body(event: Event) -> str:
    """The ``event:`` and ``data:`` lines of ``event`` (the ``id:`` line is the
    stream's own, since it carries the position of every channel of the stream)."""
    return frames.get("sse", event, _sse)
