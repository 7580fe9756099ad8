"""WebSocket: a JSON protocol to subscribe, resume, unsubscribe and publish.

Client to server (text frames)::

    {"op": "subscribe", "channel": "chat.lobby", "since": "<event id>"}   # since optional
    {"op": "unsubscribe", "channel": "chat.lobby"}
    {"op": "publish", "channel": "chat.lobby", "data": {...}, "type": "message"}

Server to client::

    {"op": "subscribed", "channel": "chat.lobby", "recovered": true}
    {"op": "event", "channel": "chat.lobby", "id": "...", "type": "...", "data": ...}
    {"op": "unsubscribed", "channel": "chat.lobby"}
    {"op": "published", "channel": "chat.lobby", "id": "..."}
    {"op": "error", "code": "forbidden", "message": "...", "channel": "chat.lobby"}

``subscribe`` with ``since`` first replays the events after it, then goes live;
``recovered`` says whether every event after ``since`` was delivered (false when a
``broadcast.gap`` event stands in for some, or without ``since``). Subscribing again
to a subscribed channel restarts it from the new ``since``.

Every bad frame gets an ``error`` frame and the connection stays up. Codes:
``malformed`` (not JSON, not an object, unknown ``op``, missing or wrong field),
``too_large`` (a frame over ``BROADCAST_CLIENTS["MAX_FRAME_SIZE"]``, or a publish over
the alias's size limit), ``invalid_channel``, ``bad_since``, ``forbidden`` (the
policy said no), ``too_many_subscriptions`` (over ``MAX_SUBSCRIPTIONS``),
``not_subscribed``, ``invalid_data`` (a publish the codec cannot encode, or a
``broadcast.*`` type), ``unavailable`` (the broker could not be reached) and
``subscription_closed`` (the subscriber fell behind or the broker stayed away; the
client may subscribe again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.models import AnonymousUser

from .. import auth
from ..broadcast import Broadcast
from ..clients import ClientSettings, client_settings
from ..events import validate_channel
from ..exceptions import BroadcastUnavailable, MessageTooLarge, SubscriptionClosed
from ..handler import broadcasts
from ..hub import Subscription
from .frames import websocket_frame

__all__ = ["BroadcastWebsocketConsumer", "ProtocolError"]

logger = logging.getLogger(__name__)


class ProtocolError(Exception):
    """A client frame that is refused: sent back as an ``error`` frame."""

    def __init__(self, code: str, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.channel = channel

    def frame(self) -> dict[str, Any]:
        """The ``error`` frame."""
        frame: dict[str, Any] = {"op": "error", "code": self.code, "message": str(self)}
        if self.channel is not None:
            frame["channel"] = self.channel
        return frame


class BroadcastWebsocketConsumer(AsyncWebsocketConsumer):
    """Serves the JSON protocol above to one browser.

    Subclass to fix a page's channels (:meth:`get_channels`, subscribed at connect)
    or to decide access in the consumer (:meth:`authorize`).
    """

    async def connect(self) -> None:
        """Accept, then subscribe to :meth:`get_channels` (each authorized)."""
        self.settings: ClientSettings = client_settings()
        self.broadcast: Broadcast = broadcasts[self.settings.using]
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        await self.accept()
        for channel in self.get_channels():
            await self._handle({"op": "subscribe", "channel": channel})

    async def disconnect(self, code: int) -> None:
        """Release every subscription."""
        tasks = list(getattr(self, "subscriptions", {}).values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # Hooks -------------------------------------------------------------------------

    def get_channels(self) -> list[str]:
        """Channels to subscribe to at connect; none by default."""
        return []

    async def authorize(self, channel: str, action: auth.Action) -> bool:
        """Whether the connection's user may ``action`` on ``channel``."""
        user = self.scope.get("user") or AnonymousUser()
        return await auth.authorize(user, channel, action)

    # Frames ------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one client frame and act on it; answer errors with an error frame."""
        try:
            if text_data is None:
                raise ProtocolError("malformed", "send JSON text frames, not binary ones")
            size = len(text_data.encode())
            if size > self.settings.max_frame_size:
                raise ProtocolError(
                    "too_large",
                    f"frame of {size:,} bytes: the limit is {self.settings.max_frame_size:,}",
                )
            try:
                frame = json.loads(text_data)
            except ValueError as exc:
                raise ProtocolError("malformed", f"frame is not JSON: {exc}") from None
            if not isinstance(frame, dict):
                raise ProtocolError("malformed", "frame must be a JSON object with an 'op'")
            await self._handle(frame)
        except ProtocolError as exc:
            await self._send_json(exc.frame())

    async def _handle(self, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        try:
            if op == "subscribe":
                await self._subscribe(frame)
            elif op == "unsubscribe":
                await self._unsubscribe(frame)
            elif op == "publish":
                await self._publish(frame)
            else:
                raise ProtocolError(
                    "malformed", f"unknown op {op!r}: use subscribe, unsubscribe or publish"
                )
        except ProtocolError as exc:
            await self._send_json(exc.frame())

    def _channel(self, frame: dict[str, Any]) -> str:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise ProtocolError("malformed", "the frame needs a 'channel' string")
        try:
            return validate_channel(channel)
        except ValueError as exc:
            raise ProtocolError("invalid_channel", str(exc), channel) from None

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        channel = self._channel(frame)
        since = frame.get("since")
        if since is not None and not isinstance(since, str):
            raise ProtocolError("bad_since", "'since' must be an event id string", channel)
        if since is not None and self.broadcast.backend.supports_history:
            try:
                self.broadcast.backend.id_key(since)
            except ValueError as exc:
                raise ProtocolError("bad_since", str(exc), channel) from None
        if channel not in self.subscriptions and (
            len(self.subscriptions) >= self.settings.max_subscriptions
        ):
            raise ProtocolError(
                "too_many_subscriptions",
                f"at most {self.settings.max_subscriptions} channels per connection",
                channel,
            )
        if not await self.authorize(channel, "subscribe") or (
            since is not None and not await self.authorize(channel, "history")
        ):
            raise ProtocolError("forbidden", f"not allowed to subscribe to {channel!r}", channel)
        await self._stop(channel)
        subscription = self.broadcast.subscribe(channel, since=since)
        try:
            await subscription.__aenter__()
        except BroadcastUnavailable as exc:
            logger.warning("subscribe to %r failed: %s", channel, exc)
            raise ProtocolError("unavailable", "the event broker is unavailable", channel) from None
        await self._send_json(
            {"op": "subscribed", "channel": channel, "recovered": bool(subscription.recovered)}
        )
        self.subscriptions[channel] = asyncio.get_running_loop().create_task(
            self._forward(channel, subscription)
        )

    async def _forward(self, channel: str, subscription: Subscription) -> None:
        try:
            async for event in subscription:
                await self.send(text_data=websocket_frame(event))
        except SubscriptionClosed as exc:
            self.subscriptions.pop(channel, None)
            await self._send_json(ProtocolError("subscription_closed", str(exc), channel).frame())
        finally:
            await subscription.aclose()

    async def _stop(self, channel: str) -> bool:
        task = self.subscriptions.pop(channel, None)
        if task is None:
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return True

    async def _unsubscribe(self, frame: dict[str, Any]) -> None:
        channel = self._channel(frame)
        if not await self._stop(channel):
            raise ProtocolError("not_subscribed", f"not subscribed to {channel!r}", channel)
        await self._send_json({"op": "unsubscribed", "channel": channel})

    async def _publish(self, frame: dict[str, Any]) -> None:
        channel = self._channel(frame)
        if "data" not in frame:
            raise ProtocolError("malformed", "a publish frame needs 'data'", channel)
        type_ = frame.get("type", "message")
        if not isinstance(type_, str) or not type_ or type_.startswith("broadcast."):
            raise ProtocolError(
                "invalid_data", "'type' must be a non-empty string not starting with "
                "'broadcast.'", channel,
            )  # fmt: skip
        if not await self.authorize(channel, "publish"):
            raise ProtocolError("forbidden", f"not allowed to publish to {channel!r}", channel)
        try:
            event = await self.broadcast.apublish(channel, frame["data"], type=type_)
        except MessageTooLarge as exc:
            raise ProtocolError("too_large", str(exc), channel) from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError("invalid_data", str(exc), channel) from None
        except BroadcastUnavailable:
            raise ProtocolError("unavailable", "the event broker is unavailable", channel) from None
        await self._send_json({"op": "published", "channel": channel, "id": event.id})

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":"), ensure_ascii=False))
