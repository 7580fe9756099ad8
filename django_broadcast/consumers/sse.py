"""Server-Sent Events: ``GET .../events/?channel=a&channel=b`` as ``text/event-stream``.

Each event is sent as ``id:``, ``event:`` (the event's type; ``gap`` for a gap
notice) and ``data:`` (JSON: ``{"channel", "id", "type", "data"}``) lines, after a
``retry:`` line, with a ``: keep-alive`` comment every ``BROADCAST_CLIENTS["KEEPALIVE"]``
seconds. The ``id:`` of a one-channel stream is the event id; with several channels
it is ``channel=id;channel=id``, the position of every channel, so that a reconnecting
``EventSource`` (which sends it back as ``Last-Event-ID``) resumes every channel where
it stopped. ``?last_event_id=`` does the same for clients that cannot set the header.

Built on ``AsyncConsumer`` rather than ``AsyncHttpConsumer``, which cannot receive
``http.disconnect`` while its handler runs (Channels issue #1302): the stream runs in
a task, and the subscription is released as soon as the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from django.contrib.auth.models import AnonymousUser

from .. import auth
from ..clients import client_settings
from ..events import validate_channel
from ..exceptions import BroadcastUnavailable, SubscriptionClosed
from ..handler import broadcasts
from ..hub import Subscription
from .frames import sse_body

__all__ = ["EventStreamConsumer", "format_position", "parse_position"]

logger = logging.getLogger(__name__)


class BadRequest(Exception):
    """The request cannot be served: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def format_position(positions: dict[str, str], channels: tuple[str, ...]) -> str:
    """The SSE ``id:`` of a stream: the event id, or ``channel=id;...`` for several."""
    if len(channels) == 1:
        return positions.get(channels[0], "")
    return ";".join(f"{c}={positions[c]}" for c in channels if c in positions)


def parse_position(value: str, channels: tuple[str, ...]) -> dict[str, str]:
    """Read a ``Last-Event-ID`` made by :func:`format_position`."""
    value = value.strip()
    if not value:
        return {}
    if "=" not in value:
        return dict.fromkeys(channels, value)
    positions = {}
    for part in value.split(";"):
        channel, sep, event_id = part.partition("=")
        if not sep or not event_id:
            raise BadRequest(400, f"Last-Event-ID {value!r} is malformed")
        if channel in channels:
            positions[channel] = event_id
    return positions


class EventStreamConsumer(AsyncConsumer):
    """Streams the events of the requested channels to one ``EventSource``.

    Subclass and override :meth:`get_channels` to fix a page's channels, or
    :meth:`authorize` to decide access here instead of in the configured policy.
    """

    task: asyncio.Task[None] | None = None

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

    async def _channels(self) -> tuple[tuple[str, ...], dict[str, str]]:
        settings = client_settings()
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
        since = parse_position(self._last_event_id(), channels)
        for channel in channels:
            if not await self.authorize(channel, "subscribe") or (
                channel in since and not await self.authorize(channel, "history")
            ):
                raise BadRequest(403, f"not allowed to subscribe to {channel!r}")
        return channels, since

    async def _serve(self) -> None:
        settings = client_settings()
        broadcast = broadcasts[settings.using]
        try:
            channels, since = await self._channels()
            subscription = broadcast.subscribe(*channels, since=since or None)
            await subscription.__aenter__()
        except BadRequest as exc:
            await self._plain(exc.status, str(exc))
            return
        except ValueError as exc:  # an id the backend does not make
            await self._plain(400, f"Last-Event-ID is not an event id here: {exc}")
            return
        except BroadcastUnavailable as exc:
            logger.warning("event stream refused: %s", exc)
            await self._plain(503, "the event broker is unavailable; retry later")
            return
        try:
            await self._stream(subscription, channels, since, settings.keepalive, settings.retry)
        finally:
            await subscription.aclose()

    async def _stream(
        self,
        subscription: Subscription,
        channels: tuple[str, ...],
        positions: dict[str, str],
        keepalive: float,
        retry: int,
    ) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        await self._body(f"retry: {retry}\n\n")
        while True:
            try:
                event = await subscription.get(timeout=keepalive)
            except TimeoutError:
                await self._body(": keep-alive\n\n")
                continue
            except SubscriptionClosed as exc:
                reason = str(exc).replace("\r", " ").replace("\n", " ")[:200]
                await self._body(f": closed: {reason}\n\n")
                break
            if event.id:
                positions[event.channel] = event.id
                frame = f"id: {format_position(positions, channels)}\n{sse_body(event)}"
            else:
                frame = sse_body(event)
            await self._body(frame)
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _body(self, text: str) -> None:
        await self.send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    async def _plain(self, status: int, text: str) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await self.send({"type": "http.response.body", "body": text.encode() + b"\n"})
