"""The WebSocket consumer's JSON protocol, on every backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from django_broadcast import Broadcast
from django_broadcast.consumers import BroadcastWebsocketConsumer
from django_broadcast.consumers.frames import frame_cache

from .conftest import PrivateRedis, alias_settings, using

TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def public() -> Iterator[None]:
    with override_settings(BROADCAST_AUTH={"PUBLIC": ["t-*", "open.*"], "PUBLISH": ["t-*"]}):
        yield


async def connect(consumer: Any = BroadcastWebsocketConsumer) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/broadcast/ws/")
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


@pytest.fixture
async def ws(bc: Broadcast) -> AsyncIterator[WebsocketCommunicator]:
    communicator = await connect()
    yield communicator
    await communicator.disconnect()


async def send(ws: WebsocketCommunicator, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json_to(frame)
    reply: dict[str, Any] = await ws.receive_json_from(timeout=TIMEOUT)
    return reply


async def next_frame(ws: WebsocketCommunicator) -> dict[str, Any]:
    frame: dict[str, Any] = await ws.receive_json_from(timeout=TIMEOUT)
    return frame


async def test_subscribe_and_receive(
    ws: WebsocketCommunicator, bc: Broadcast, channel: str
) -> None:
    reply = await send(ws, {"op": "subscribe", "channel": channel})
    # A new channel's position is the backend's "from the start" (none without history).
    assert reply == {
        "op": "subscribed", "channel": channel, "recovered": False, "position": bc.features.origin
    }  # fmt: skip
    event = await sync_to_async(bc.publish)(channel, {"text": "hi"}, type="chat")
    assert event is not None
    assert await next_frame(ws) == {
        "op": "event", "channel": channel, "id": event.id, "type": "chat", "data": {"text": "hi"}
    }  # fmt: skip


async def test_resume_replays_then_goes_live(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name)) as bc:
        sent = [bc.publish(channel, n, on_commit=False) for n in range(5)]
        ws = await connect()
        try:
            since = sent[1].id if sent[1] else ""
            reply = await send(ws, {"op": "subscribe", "channel": channel, "since": since})
            if not bc.features.history:
                assert reply["recovered"] is False
                assert (await next_frame(ws))["type"] == "broadcast.gap"
                return
            assert reply == {
                "op": "subscribed", "channel": channel, "recovered": True, "position": since
            }  # fmt: skip
            assert [(await next_frame(ws))["data"] for _ in range(3)] == [2, 3, 4]
            await bc.apublish(channel, 5)
            assert (await next_frame(ws))["data"] == 5
        finally:
            await ws.disconnect()
            await bc.aclose()


@pytest.mark.features("history")
async def test_resume_beyond_history_is_not_recovered(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name, OPTIONS={"history": 5})) as bc:
        first = bc.publish(channel, 0, on_commit=False)
        for n in range(1, 300):
            bc.publish(channel, n, on_commit=False)
        ws = await connect()
        try:
            assert first is not None
            reply = await send(ws, {"op": "subscribe", "channel": channel, "since": first.id})
            assert reply["recovered"] is False
            gap = await next_frame(ws)
            assert gap["type"] == "broadcast.gap" and gap["data"]["reason"] == "history"
        finally:
            await ws.disconnect()
            await bc.aclose()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "malformed"),
        ("[1, 2]", "malformed"),
        ('{"op": "dance"}', "malformed"),
        ('{"op": "subscribe"}', "malformed"),
        ('{"op": "subscribe", "channel": "no spaces"}', "invalid_channel"),
        ('{"op": "subscribe", "channel": "t-x", "since": 5}', "bad_since"),
        ('{"op": "subscribe", "channel": "private.x"}', "forbidden"),
        ('{"op": "unsubscribe", "channel": "t-never"}', "not_subscribed"),
        ('{"op": "publish", "channel": "t-x"}', "malformed"),
        ('{"op": "publish", "channel": "open.x", "data": 1}', "forbidden"),
        ('{"op": "publish", "channel": "t-x", "data": 1, "type": "broadcast.gap"}', "invalid_data"),
        ('{"op": "publish", "channel": "t-x", "data": NaN}', "invalid_data"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays(
    ws: WebsocketCommunicator, channel: str, frame: str, code: str
) -> None:
    await ws.send_to(text_data=frame)
    reply = await next_frame(ws)
    assert reply["op"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    # Still up and serving.
    assert (await send(ws, {"op": "subscribe", "channel": channel}))["op"] == "subscribed"


async def test_binary_and_oversized_frames(ws: WebsocketCommunicator, channel: str) -> None:
    await ws.send_to(bytes_data=b"\x00")
    assert (await next_frame(ws))["code"] == "malformed"
    with override_settings(BROADCAST_CLIENTS={"MAX_FRAME_SIZE": 100}):
        big = await connect()
        try:
            await big.send_json_to({"op": "publish", "channel": channel, "data": "x" * 200})
            reply = await next_frame(big)
            assert reply["code"] == "too_large" and "100" in reply["message"]
        finally:
            await big.disconnect()


async def test_subscription_limit(bc: Broadcast, channel: str) -> None:
    with override_settings(BROADCAST_CLIENTS={"MAX_SUBSCRIPTIONS": 2}):
        ws = await connect()
        try:
            for n in range(2):
                assert (await send(ws, {"op": "subscribe", "channel": f"{channel}-{n}"}))[
                    "op"
                ] == "subscribed"
            reply = await send(ws, {"op": "subscribe", "channel": f"{channel}-2"})
            assert reply["code"] == "too_many_subscriptions"
            # Resubscribing to a channel already held is not a new one.
            reply = await send(ws, {"op": "subscribe", "channel": f"{channel}-0"})
            assert reply["op"] == "subscribed"
        finally:
            await ws.disconnect()


async def test_publish_where_allowed(
    ws: WebsocketCommunicator, bc: Broadcast, channel: str
) -> None:
    async with bc.subscribe(channel) as sub:
        reply = await send(ws, {"op": "publish", "channel": channel, "data": {"a": 1}})
        assert reply["op"] == "published" and reply["id"]
        event = await sub.get(timeout=TIMEOUT)
    assert (event.id, event.type, event.data) == (reply["id"], "message", {"a": 1})


async def test_unsubscribe_stops_delivery_and_releases(
    ws: WebsocketCommunicator, bc: Broadcast, channel: str
) -> None:
    await send(ws, {"op": "subscribe", "channel": channel})
    assert channel in bc._hub().channels
    assert await send(ws, {"op": "unsubscribe", "channel": channel}) == {
        "op": "unsubscribed",
        "channel": channel,
    }
    assert channel not in bc._hub().channels
    await bc.apublish(channel, "after")
    assert await ws.receive_nothing(timeout=0.2)


async def test_disconnect_releases_every_subscription(bc: Broadcast, channel: str) -> None:
    ws = await connect()
    await send(ws, {"op": "subscribe", "channel": channel})
    await send(ws, {"op": "subscribe", "channel": f"{channel}-b"})
    assert {channel, f"{channel}-b"} <= bc._hub().channels
    await ws.disconnect()
    assert not ({channel, f"{channel}-b"} & bc._hub().channels)


async def test_an_event_is_encoded_once_for_many_clients(bc: Broadcast, channel: str) -> None:
    clients = [await connect() for _ in range(5)]
    try:
        for ws in clients:
            await send(ws, {"op": "subscribe", "channel": channel})
        before = frame_cache(bc).encoded
        await bc.apublish(channel, {"big": "x" * 1000})
        received = [await next_frame(ws) for ws in clients]
        assert all(frame["data"] == {"big": "x" * 1000} for frame in received)
        assert frame_cache(bc).encoded - before == 1
    finally:
        for ws in clients:
            await ws.disconnect()


class LobbyConsumer(BroadcastWebsocketConsumer):
    def get_channels(self) -> list[str]:
        return ["open.lobby"]

    async def authorize(self, channel: str, action: str) -> bool:
        return channel == "open.lobby" and action == "subscribe"


async def test_static_channels_and_an_authorize_hook(bc: Broadcast) -> None:
    ws = await connect(LobbyConsumer)
    try:
        assert await next_frame(ws) == {
            "op": "subscribed", "channel": "open.lobby", "recovered": False,
            "position": bc.features.origin,
        }  # fmt: skip
        reply = await send(ws, {"op": "subscribe", "channel": "t-other"})
        assert reply["code"] == "forbidden"
        await bc.apublish("open.lobby", "welcome")
        assert (await next_frame(ws))["data"] == "welcome"
    finally:
        await ws.disconnect()


def test_frames_are_compact_json() -> None:
    from django_broadcast.consumers.frames import websocket_frame
    from django_broadcast.events import Event, utcnow

    with using(alias_settings("memory")) as bc:
        frame = websocket_frame(Event("c", "t", {"é": 1}, "1", utcnow()), bc)
    assert json.loads(frame) == {"op": "event", "channel": "c", "id": "1", "type": "t",
                                 "data": {"é": 1}}  # fmt: skip
    assert " " not in frame


def test_frames_are_not_shared_between_aliases(channel: str) -> None:
    from django_broadcast.consumers.frames import websocket_frame
    from django_broadcast.events import Event, utcnow

    # Two aliases may number different events alike: a frame is cached per alias.
    for text in ("first alias", "second alias"):
        with using(alias_settings("memory")) as bc:
            event = Event(channel, "message", text, "1", utcnow())
            assert json.loads(websocket_frame(event, bc))["data"] == text


async def test_a_closed_subscription_is_told_without_the_brokers_address(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using({"URL": private_redis.url, "TIMEOUT": 1, "RECONNECT_TIMEOUT": 1}) as bc:
        ws = await connect()
        try:
            await send(ws, {"op": "subscribe", "channel": channel})
            private_redis.kill()
            frame = await ws.receive_json_from(timeout=15)
            assert frame["op"] == "error" and frame["code"] == "subscription_closed"
            assert str(private_redis.port) not in frame["message"]
            assert "127.0.0.1" not in frame["message"]
            # The connection is still up: a new subscribe is answered.
            reply = await send(ws, {"op": "subscribe", "channel": channel})
            assert reply["code"] == "unavailable"
            assert str(private_redis.port) not in reply["message"]
        finally:
            await ws.disconnect()
            await bc.aclose()
