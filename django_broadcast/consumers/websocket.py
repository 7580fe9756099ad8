"""WebSocket: a JSON protocol to subscribe, resume, unsubscribe and publish.

Client to server (text frames)::

    {"op": "subscribe", "channel": "chat.lobby", "since": "<event id>"}   # since optional
    {"op": "unsubscribe", "channel": "chat.lobby"}
    {"op": "publish", "channel": "chat.lobby", "data": {...}, "type": "message"}

Server to client::

    {"op": "subscribed", "channel": "chat.lobby", "recovered": true, "position": "<id>"}
    {"op": "event", "channel": "chat.lobby", "id": "...", "type": "...", "data": ...}
    {"op": "unsubscribed", "channel": "chat.lobby"}
    {"op": "published", "channel": "chat.lobby", "id": "..."}
    {"op": "error", "code": "forbidden", "message": "...", "channel": "chat.lobby"}

``subscribe`` with ``since`` first replays the events after it, then goes live;
``recovered`` says whether every event after ``since`` was delivered (false when a
``broadcast.gap`` event stands in for some, or without ``since``). ``position`` is,
on backends with history, the id to resume the channel from (the channel's newest id
at subscribe time, or ``since``): a client that keeps it, and moves it on with each
event's id, resumes a quiet channel without loss. It is null on backends without
history. Subscribing again to a subscribed channel restarts it from the new
``since`` (the old subscription keeps running until the new one is in place).

Every bad frame gets an ``error`` frame and the connection stays up, its other
subscriptions unaffected. Codes: ``malformed`` (not JSON, nested too deeply, not an
object, unknown ``op``, missing or wrong field), ``too_large`` (a frame over
``BROADCAST_CLIENTS["MAX_FRAME_SIZE"]``, or a publish over the alias's size limit),
``invalid_channel``, ``bad_since``, ``forbidden`` (the policy said no, or the channel
is reserved), ``too_many_subscriptions`` (over ``MAX_SUBSCRIPTIONS``),
``not_subscribed``, ``invalid_data`` (a publish the codec cannot encode, a reserved
``type``, or ``data`` keys a Channels consumer would read as the layer's own),
``unavailable`` (the broker could not be reached: retry later), ``subscription_closed``
(the subscriber fell behind or the broker stayed away: subscribe again from the
position) and ``internal`` (the server failed; it is logged). Error messages never
name the broker.

However a connection ends, every subscription it held is released.
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
from ..events import RESERVED_PREFIX, validate_channel
from ..exceptions import (
    BroadcastUnavailable,
    MessageTooLarge,
    SubscriptionClosed,
    SubscriptionOverflow,
)
from ..registry import broadcasts
from ..subscription import Subscription
from .frames import websocket_frame
from .outlet import Outlet
from .settings import ClientSettings, client_settings

__all__ = ["LAYER_FIELDS", "RESERVED_TYPE_PREFIXES", "BroadcastWebsocketConsumer", "ProtocolError"]

logger = logging.getLogger(__name__)

#: Event types a browser may never publish: ASGI's and Channels' own message types
#: (a Channels consumer in a group would act on them) and django_broadcast's.
RESERVED_TYPE_PREFIXES = ("websocket.", "http.", "lifespan.", "channels.", RESERVED_PREFIX)

#: Keys of a browser publish's ``data`` that a Channels consumer in a group would read
#: as the channel layer's own fields.
LAYER_FIELDS = frozenset({"type", "channel", "id", "data"})

_MAX_TYPE_LENGTH = 100
_ECHO_LIMIT = 200


class ProtocolError(Exception):
    """A client frame that is refused: sent back as an ``error`` frame."""

    def __init__(self, code: str, message: str, channel: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.channel = channel

    def frame(self) -> dict[str, Any]:
        """The ``error`` frame; the channel is echoed only where it is a short string."""
        frame: dict[str, Any] = {"op": "error", "code": self.code, "message": str(self)}
        if isinstance(self.channel, str) and len(self.channel) <= _ECHO_LIMIT:
            frame["channel"] = self.channel
        return frame


def closed_reason(exc: SubscriptionClosed) -> str:
    """What a browser is told when its subscription ended: never the broker's address."""
    if isinstance(exc, SubscriptionOverflow):
        return "the subscriber fell behind: subscribe again from the last position"
    return "the event broker is unavailable: subscribe again from the last position"


class BroadcastWebsocketConsumer(AsyncWebsocketConsumer):
    """Serves the JSON protocol above to one browser.

    Subclass to fix a page's channels (:meth:`get_channels`, subscribed at connect)
    or to decide access in the consumer (:meth:`authorize`).
    """

    subscriptions: dict[str, asyncio.Task[None]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.subscriptions = {}
        self._counted: Broadcast | None = None
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the connection ended (a disconnect, an error, the server
            # cancelling the application), nothing it held outlives it.
            await self._release_all()
            if self._counted is not None:
                self._counted.counters.websocket_connections -= 1

    async def connect(self) -> None:
        """Accept, then subscribe to :meth:`get_channels` (each authorized)."""
        self.settings: ClientSettings = client_settings()
        self.broadcast: Broadcast = broadcasts[self.settings.using]
        self.outlet = Outlet(self.scope, self.settings.max_buffer)
        await self.accept()
        self._counted = self.broadcast
        self.broadcast.counters.websocket_connections += 1
        for channel in self.get_channels():
            await self._handle({"op": "subscribe", "channel": channel})

    async def disconnect(self, code: int) -> None:
        """Release every subscription."""
        await self._release_all()

    async def _release_all(self) -> None:
        tasks = list(self.subscriptions.values())
        self.subscriptions.clear()
        for task in tasks:
            task.cancel()
        # Each task releases its subscription as it ends; wait for all of them.
        await asyncio.gather(*tasks, return_exceptions=True)

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
            size = len(text_data.encode("utf-8", "surrogatepass"))
            if size > self.settings.max_frame_size:
                raise ProtocolError(
                    "too_large",
                    f"frame of {size:,} bytes: the limit is {self.settings.max_frame_size:,}",
                )
            try:
                frame = json.loads(text_data)
            except ValueError as exc:
                raise ProtocolError("malformed", f"frame is not JSON: {exc}") from None
            except RecursionError:
                raise ProtocolError("malformed", "frame is nested too deeply") from None
            if not isinstance(frame, dict):
                raise ProtocolError("malformed", "frame must be a JSON object with an 'op'")
        except ProtocolError as exc:
            await self._send_control(exc.frame())
            return
        await self._handle(frame)

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
                    "malformed", "unknown 'op': use subscribe, unsubscribe or publish"
                )
        except ProtocolError as exc:
            await self._send_control(exc.frame())
        except Exception:
            logger.exception("a %s frame failed", op if isinstance(op, str) else "client")
            channel = frame.get("channel")
            error = ProtocolError("internal", "the server could not handle this frame", channel)
            await self._send_control(error.frame())

    def _channel(self, frame: dict[str, Any]) -> str:
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise ProtocolError("malformed", "the frame needs a 'channel' string")
        try:
            return validate_channel(channel)
        except ValueError as exc:
            raise ProtocolError("invalid_channel", str(exc), channel) from None

    def _since(self, frame: dict[str, Any], channel: str) -> str | None:
        since = frame.get("since")
        if since is None:
            return None
        if not isinstance(since, str):
            raise ProtocolError("bad_since", "'since' must be an event id string", channel)
        try:
            return self.broadcast.validate_id(since)
        except ValueError as exc:
            raise ProtocolError("bad_since", str(exc), channel) from None

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        channel = self._channel(frame)
        since = self._since(frame, channel)
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
        subscription = self.broadcast.subscribe(channel, since=since)
        try:
            await subscription.open()
        except BroadcastUnavailable as exc:
            logger.warning("subscribe to %r failed: %s", channel, exc)
            raise ProtocolError(
                "unavailable", "the event broker is unavailable: retry later", channel
            ) from None
        try:
            await self._stop(channel)  # the new subscription is in place: replace the old
            await self._send_control(
                {
                    "op": "subscribed",
                    "channel": channel,
                    "recovered": bool(subscription.recovered),
                    "position": subscription.positions.get(channel),
                }
            )
        except BaseException:
            await subscription.aclose()
            raise
        self.subscriptions[channel] = asyncio.get_running_loop().create_task(
            self._forward(channel, subscription)
        )

    async def _forward(self, channel: str, subscription: Subscription) -> None:
        outlet = self.outlet
        try:
            async for event in subscription:
                await self.send(text_data=websocket_frame(event, self.broadcast))
                if outlet.behind():
                    # The client does not read: stop taking its events, so that its
                    # queue fills and OVERFLOW applies, until the server has sent
                    # what it holds (or the subscription ended).
                    await outlet.drained(lambda: subscription.closed)
                    if subscription.closed:
                        await subscription.aclose()
        except SubscriptionClosed as exc:
            self._forget(channel)
            await self._send_control(
                ProtocolError("subscription_closed", closed_reason(exc), channel).frame()
            )
        except Exception:
            logger.exception("forwarding the events of %r failed", channel)
            self._forget(channel)
            await self._send_control(
                ProtocolError("internal", "the server stopped this subscription", channel).frame()
            )
        finally:
            await subscription.aclose()

    def _forget(self, channel: str) -> None:
        """Drop the current task's own entry (never a newer subscription's)."""
        if self.subscriptions.get(channel) is asyncio.current_task():
            del self.subscriptions[channel]

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
        await self._send_control({"op": "unsubscribed", "channel": channel})

    async def _publish(self, frame: dict[str, Any]) -> None:
        channel = self._channel(frame)
        if "data" not in frame:
            raise ProtocolError("malformed", "a publish frame needs 'data'", channel)
        type_ = frame.get("type", "message")
        if not isinstance(type_, str) or not type_ or len(type_) > _MAX_TYPE_LENGTH:
            raise ProtocolError(
                "invalid_data", "'type' must be a non-empty string of at most 100 characters",
                channel,
            )  # fmt: skip
        if type_.startswith(RESERVED_TYPE_PREFIXES):
            raise ProtocolError(
                "invalid_data",
                f"'type' may not start with {', '.join(RESERVED_TYPE_PREFIXES)}: those are "
                f"the message types of ASGI, Channels and django_broadcast",
                channel,
            )
        data = frame["data"]
        if isinstance(data, dict) and LAYER_FIELDS.intersection(data):
            raise ProtocolError(
                "invalid_data",
                f"'data' may not have the keys {', '.join(sorted(LAYER_FIELDS))}: a Channels "
                f"consumer reads them as the channel layer's own; nest your values",
                channel,
            )
        if not await self.authorize(channel, "publish"):
            raise ProtocolError("forbidden", f"not allowed to publish to {channel!r}", channel)
        try:
            event = await self.broadcast.apublish(channel, data, type=type_)
        except MessageTooLarge as exc:
            raise ProtocolError("too_large", str(exc), channel) from None
        except (TypeError, ValueError) as exc:
            raise ProtocolError("invalid_data", str(exc), channel) from None
        except BroadcastUnavailable as exc:
            logger.warning("publish to %r failed: %s", channel, exc)
            raise ProtocolError(
                "unavailable", "the event broker is unavailable: retry later", channel
            ) from None
        await self._send_control({"op": "published", "channel": channel, "id": event.id})

    async def _send_control(self, frame: dict[str, Any]) -> None:
        # ASCII JSON: whatever a client sent that is echoed back (a lone surrogate in
        # a channel name, say) is escaped, never a frame the server cannot encode.
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))
