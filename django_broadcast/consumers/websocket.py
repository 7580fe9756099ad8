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
from channels.layers import DEFAULT_CHANNEL_LAYER
from django.contrib.auth.models import AnonymousUser

from .. import auth
from ..broadcast import Broadcast
from ..events import RESERVED_PREFIX, Event, validate_channel
from ..exceptions import (
    BroadcastUnavailable,
    MessageTooLarge,
    SubscriptionClosed,
    SubscriptionOverflow,
)
from ..registry import broadcasts
from ..subscription import Subscription
from .frames import websocket_message
from .outlet import Outlet, server_send
from .sending import Sender
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

    Event frames are sent from the hub's fan-out, in the pass that hands an event to
    every local subscription, through the server's own ``send``: no task per
    subscription, and no middleware's ``send`` wrapper per frame (control frames,
    such as the reply to ``subscribe``, do pass the middlewares). Where a client
    cannot take them (its server holds ``MAX_BUFFER`` unsent, or its socket is
    full), its events wait in its subscription's queue, whose ``QUEUE_SIZE`` and
    ``OVERFLOW`` apply, and one task per connection sends them as it drains.
    """

    subscriptions: dict[str, Subscription]

    #: None: the consumer needs no Channels layer, so a connection holds none (no
    #: channel name, no pending receive). A subclass that uses one (``groups``, or
    #: handlers of ``group_send`` messages) names the layer's alias here; one that
    #: sets ``groups`` gets the default layer.
    channel_layer_alias: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.groups and cls.channel_layer_alias is None:
            cls.channel_layer_alias = DEFAULT_CHANNEL_LAYER

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.subscriptions = {}
        self._counted: Broadcast | None = None
        self._woken: dict[Subscription, None] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._dropping: asyncio.Task[None] | None = None
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
        send = server_send()
        self.outlet = Outlet(send, self.settings.max_buffer)
        self._sender = Sender(send or self.base_send, self.outlet, self._client_gone)
        await self.accept()
        self._counted = self.broadcast
        self.broadcast.counters.websocket_connections += 1
        for channel in self.get_channels():
            await self._handle({"op": "subscribe", "channel": channel})

    async def disconnect(self, code: int) -> None:
        """Release every subscription."""
        await self._release_all()

    async def _release_all(self) -> None:
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        self._woken.clear()
        for subscription in subscriptions:
            subscription.push_to(None)
        drainer = self._drainer
        if drainer is not None and drainer is not asyncio.current_task():
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drainer
        # Each closes at once; the broker clean-up completes even when cancelled.
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.aclose()

    def _client_gone(self) -> None:
        """A send failed: stop taking events, and let go of every subscription."""
        for subscription in self.subscriptions.values():
            subscription.push_to(None)
        # Not in the fan-out's pass: leaving the hub would change what it iterates.
        self._dropping = asyncio.get_running_loop().create_task(self._release_all())

    # Fed by the hub (the Sink of every subscription) -------------------------------

    def take(self, subscription: Subscription, events: list[Event]) -> int:
        """Send ``events`` now, as many as the client takes without waiting."""
        sender = self._sender
        broadcast = self.broadcast
        taken = 0
        for event in events:
            if not sender.free:
                break
            sender.send_now(websocket_message(event, broadcast))
            taken += 1
        return taken

    def wake(self, subscription: Subscription) -> None:
        """``subscription`` has events queued, or ended: the drainer sends them."""
        self._woken[subscription] = None
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        sender = self._sender
        outlet = self.outlet
        woken = self._woken
        try:
            while woken:
                subscription = next(iter(woken))
                if not await sender.sent():
                    return
                if outlet.behind():
                    # The client does not read: its events wait in their queues
                    # (OVERFLOW applies) until the server has sent what it holds.
                    await outlet.drained(lambda: any(s.closed for s in woken))
                    for ended in [s for s in woken if s.closed]:
                        await ended.aclose()  # fell behind: leave the hub now
                try:
                    event = await subscription.poll()
                except SubscriptionClosed as exc:
                    woken.pop(subscription, None)
                    await self._forget(subscription)
                    await self._send_control(
                        ProtocolError("subscription_closed", closed_reason(exc),
                                      subscription.channels[0]).frame()
                    )  # fmt: skip
                    continue
                if event is None:
                    woken.pop(subscription, None)  # caught up: back to the fan-out
                    continue
                await sender.send(websocket_message(event, self.broadcast))
        except Exception:
            logger.exception("sending the events of a WebSocket connection failed")
        finally:
            self._drainer = None

    async def _forget(self, subscription: Subscription) -> None:
        """Drop an ended subscription's entry (never a newer one's), and release it."""
        channel = subscription.channels[0]
        if self.subscriptions.get(channel) is subscription:
            del self.subscriptions[channel]
        subscription.push_to(None)
        await subscription.aclose()

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
        self.subscriptions[channel] = subscription
        subscription.push_to(self)  # what came meanwhile is queued: it is sent first

    async def _stop(self, channel: str) -> bool:
        subscription = self.subscriptions.pop(channel, None)
        if subscription is None:
            return False
        subscription.push_to(None)
        self._woken.pop(subscription, None)
        await subscription.aclose()
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
        # In order with the event frames, through the middlewares.
        message = {"type": "websocket.send", "text": json.dumps(frame, separators=(",", ":"))}
        await self._sender.send(message, via=self.base_send)
