"""Server-Sent Events: ``GET .../events/?channel=a&channel=b`` as ``text/event-stream``.

A stream begins with a ``retry:`` line and an ``id:`` line that holds the position of
every channel of the stream, before any event: a browser that reconnects (its
``EventSource`` sends the last ``id:`` back as ``Last-Event-ID``) resumes every
channel where it stopped, quiet ones included. Each event is then sent as ``id:``,
``event:`` (the event's type; ``gap`` for a gap notice) and ``data:`` (JSON:
``{"channel", "id", "type", "data"}``) lines, with a ``: keep-alive`` comment every
``BROADCAST_CLIENTS["KEEPALIVE"]`` seconds. The ``id:`` of a one-channel stream is the
channel's position; with several channels it is ``channel=id;channel=id``. On
backends without history the position of a channel is ``live`` until it has an
event: a stream resumed from it starts with a gap notice, since nothing can be
replayed. ``?last_event_id=`` does what the header does, for clients that cannot set
it.

When the broker cannot be reached, the answer is still ``200 text/event-stream``: a
``retry:`` line and one ``event: unavailable`` (``data: {"message": ...}``), then the
response ends, so that ``EventSource`` tries again by itself (it gives up for good
after any other status). Requests that cannot be served are answered with a plain
text reason: 400 (a bad channel or ``Last-Event-ID``), 403 (refused by the policy),
405 (not GET). The stream ends when the server shuts down.

Built on ``AsyncConsumer`` rather than ``AsyncHttpConsumer``, which cannot receive
``http.disconnect`` while its handler runs (Channels issue #1302): the stream runs in
a task, and the subscription is released as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from django.contrib.auth.models import AnonymousUser

from .. import auth
from ..broadcast import Broadcast
from ..events import gap_event, validate_channel
from ..exceptions import BroadcastUnavailable, SubscriptionClosed
from ..registry import broadcasts
from ..subscription import Subscription
from . import shutdown
from .frames import sse_body
from .outlet import Outlet, server_send
from .settings import ClientSettings, client_settings

__all__ = ["LIVE", "EventStreamConsumer", "format_position", "parse_position"]

logger = logging.getLogger(__name__)

#: The position of a channel that has no id to resume from (backends without history).
LIVE = "live"

_MAX_LAST_EVENT_ID = 4096
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")


class BadRequest(Exception):
    """The request cannot be served: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def format_position(positions: dict[str, str], channels: tuple[str, ...]) -> str:
    """The SSE ``id:`` of a stream: the position, or ``channel=id;...`` for several."""
    if len(channels) == 1:
        return positions.get(channels[0], LIVE)
    return ";".join(f"{c}={positions.get(c, LIVE)}" for c in channels)


def parse_position(
    value: str, channels: tuple[str, ...], broadcast: Broadcast | None = None
) -> dict[str, str]:
    """Read a ``Last-Event-ID`` made by :func:`format_position`.

    Each id is checked as ``broadcast``'s backend parses its ids (strictly: ASCII
    digits, bounded); raise :class:`BadRequest` (400) for anything else.
    """
    value = value.strip()
    if not value:
        return {}
    if len(value) > _MAX_LAST_EVENT_ID:
        raise BadRequest(400, f"Last-Event-ID is {len(value):,} characters long: too long")
    if "=" not in value:
        positions = dict.fromkeys(channels, value)
    else:
        positions = {}
        for part in value.split(";"):
            channel, sep, event_id = part.partition("=")
            if not sep or not event_id:
                raise BadRequest(400, "Last-Event-ID is malformed: expected channel=id;...")
            if channel in channels:
                positions[channel] = event_id
    for event_id in positions.values():
        _check_id(event_id, broadcast)
    return positions


def _check_id(event_id: str, broadcast: Broadcast | None) -> None:
    if event_id == LIVE:
        return
    if broadcast is None:
        if not _PLAIN_ID.fullmatch(event_id):
            raise BadRequest(400, "Last-Event-ID holds something that is not an event id")
        return
    try:
        broadcast.validate_id(event_id)
    except ValueError as exc:
        raise BadRequest(400, f"Last-Event-ID is not an event id here: {exc}") from None
    if not broadcast.features.history and not _PLAIN_ID.fullmatch(event_id):
        raise BadRequest(400, "Last-Event-ID holds something that is not an event id")


class EventStreamConsumer(AsyncConsumer):
    """Streams the events of the requested channels to one ``EventSource``.

    Subclass and override :meth:`get_channels` to fix a page's channels, or
    :meth:`authorize` to decide access here instead of in the configured policy.
    """

    task: asyncio.Task[None] | None = None
    subscription: Subscription | None = None
    _closing: asyncio.Task[None] | None = None
    _started = False
    _stopping = False

    async def http_request(self, message: dict[str, Any]) -> None:
        """Start streaming once the request has arrived (its body is ignored)."""
        if self.task is None and not message.get("more_body"):
            self.task = asyncio.get_running_loop().create_task(self._serve())

    async def http_disconnect(self, message: dict[str, Any]) -> None:
        """The client went away: release the subscription and stop."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        raise StopConsumer()

    def stop(self) -> None:
        """End the stream soon and cleanly (the server is shutting down)."""
        self._stopping = True
        if self.subscription is not None:
            self._closing = asyncio.get_running_loop().create_task(self.subscription.aclose())

    # Hooks -------------------------------------------------------------------------

    def get_channels(self) -> list[str]:
        """The channels to stream: by default every ``?channel=`` of the query string."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        return query.get("channel", [])

    async def authorize(self, channel: str, action: auth.Action) -> bool:
        """Whether the request's user may ``action`` on ``channel`` (the policy's say)."""
        user = self.scope.get("user") or AnonymousUser()
        return await auth.authorize(user, channel, action)

    # The stream --------------------------------------------------------------------

    def _last_event_id(self) -> str:
        for name, value in self.scope.get("headers", []):
            if name.lower() == b"last-event-id":
                return str(value.decode("latin-1"))
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        return query.get("last_event_id", [""])[0]

    async def _channels(
        self, settings: ClientSettings, broadcast: Broadcast
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        names = self.get_channels()
        if not names:
            raise BadRequest(400, "name at least one channel: ?channel=name")
        if len(names) > settings.max_channels_per_stream:
            raise BadRequest(
                400,
                f"{len(names)} channels requested: one stream may have at most "
                f"{settings.max_channels_per_stream}",
            )
        try:
            channels = tuple(dict.fromkeys(validate_channel(name) for name in names))
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc)) from exc
        since = parse_position(self._last_event_id(), channels, broadcast)
        for channel in channels:
            if not await self.authorize(channel, "subscribe") or (
                channel in since and not await self.authorize(channel, "history")
            ):
                raise BadRequest(403, f"not allowed to subscribe to {channel!r}")
        return channels, since

    async def _serve(self) -> None:
        try:
            await self._serve_stream()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("an event stream failed")
            if not self._started:
                await self._plain(500, "the server failed to serve this stream; it is logged")
            else:
                await self._end()

    async def _serve_stream(self) -> None:
        settings = client_settings()
        if self.scope.get("method", "GET") != "GET":
            await self._plain(405, "an event stream is read with GET", [(b"allow", b"GET")])
            return
        broadcast = broadcasts[settings.using]
        try:
            channels, since = await self._channels(settings, broadcast)
        except BadRequest as exc:
            await self._plain(exc.status, str(exc))
            return
        # A position that proves nothing (no history to resume from) gets a notice.
        unproven = [c for c, event_id in since.items() if event_id == LIVE]
        resume = {c: event_id for c, event_id in since.items() if event_id != LIVE}
        subscription = broadcast.subscribe(*channels, since=resume or None)
        try:
            await subscription.open()
        except BroadcastUnavailable as exc:
            logger.warning("event stream could not subscribe: %s", exc)
            await self._unavailable(settings.retry)
            return
        self.subscription = subscription
        shutdown.register(self)
        broadcast.counters.sse_connections += 1
        try:
            await self._stream(subscription, broadcast, channels, unproven, settings)
        finally:
            broadcast.counters.sse_connections -= 1
            await subscription.aclose()

    async def _stream(
        self,
        subscription: Subscription,
        broadcast: Broadcast,
        channels: tuple[str, ...],
        unproven: list[str],
        settings: ClientSettings,
    ) -> None:
        await self._start(200, [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ])  # fmt: skip
        positions = {c: subscription.positions.get(c, LIVE) for c in channels}
        head = f"retry: {settings.retry}\nid: {format_position(positions, channels)}\n\n"
        head += "".join(sse_body(gap_event(c, "history", since=LIVE), broadcast) for c in unproven)
        await self._body(head)
        outlet = Outlet(server_send(), settings.max_buffer)
        while True:
            try:
                event = await subscription.get(timeout=settings.keepalive)
            except TimeoutError:
                await self._body(": keep-alive\n\n")
                continue
            except SubscriptionClosed:
                if self._stopping:
                    await self._body(": the server is shutting down\n\n")
                else:
                    await self._body(": closed\n\n")
                break
            if event.id:
                positions[event.channel] = event.id
                frame = f"id: {format_position(positions, channels)}\n{sse_body(event, broadcast)}"
            else:
                frame = sse_body(event, broadcast)
            await self._body(frame)
            if outlet.behind():
                # The client does not read: stop taking its events (its queue fills and
                # OVERFLOW applies) until the server has sent what it holds.
                await outlet.drained(lambda: subscription.closed)
        await self._end()

    async def _unavailable(self, retry: int) -> None:
        await self._start(200, [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ])  # fmt: skip
        message = json.dumps({"message": "the event broker is unavailable: retrying"})
        await self._body(f"retry: {retry}\n\nevent: unavailable\ndata: {message}\n\n")
        await self._end()

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, text: str) -> None:
        await self.send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def _end(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _plain(
        self, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self._start(
            status, [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])]
        )
        await self.send({"type": "http.response.body", "body": text.encode() + b"\n"})
