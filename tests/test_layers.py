"""BroadcastChannelLayer: the Channels layer contract, on every backend, and the bridge.

The behaviours of Channels' own layer tests and of channels_redis's core and pub/sub
layer tests, plus what only the bridge does: groups are broadcast channels.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from asgiref.sync import sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from django_broadcast import Broadcast
from django_broadcast import layers as layers_module
from django_broadcast.layers import BroadcastChannelLayer

TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def layer(bc: Broadcast) -> AsyncIterator[BroadcastChannelLayer]:
    instance = BroadcastChannelLayer(capacity=3)
    yield instance
    await instance.flush()


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


async def receive(layer: BroadcastChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), TIMEOUT)


async def nothing_arrives(layer: BroadcastChannelLayer, channel: str) -> bool:
    """True when nothing is waiting on ``channel`` once every delivery in flight is done:
    a marker sent after the fact must be the next thing received."""
    await layer.send(channel, {"type": "marker"})
    return (await receive(layer, channel))["type"] == "marker"


# Channels' own layer tests --------------------------------------------------------


async def test_send_receive(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "Ahoy-hoy!"})
    assert await receive(layer, channel) == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_send_capacity(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "test.message", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "test.message", "n": 3})
    assert [(await receive(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_channel_capacity_patterns(bc: Broadcast) -> None:
    layer = BroadcastChannelLayer(capacity=10, channel_capacity={"specific.*": 1})
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "a"})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "b"})
    await layer.flush()


async def test_multi_send_receive_in_order(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    for n in range(3):
        await layer.send(channel, {"type": "message.1", "n": n})
    assert [(await receive(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_new_channel_names_are_unique_and_valid(layer: BroadcastChannelLayer) -> None:
    names = {await layer.new_channel() for _ in range(1000)}
    assert len(names) == 1000
    assert all(layer.require_valid_channel_name(name) for name in names)


async def test_groups_basic(layer: BroadcastChannelLayer, group: str) -> None:
    one, two, three = [await layer.new_channel() for _ in range(3)]
    await layer.group_add(group, one)
    await layer.group_add(group, two)
    await layer.group_add(group, three)
    await layer.group_discard(group, two)
    await layer.group_send(group, {"type": "message.1", "text": "hi"})
    assert (await receive(layer, one))["text"] == "hi"
    assert (await receive(layer, three))["text"] == "hi"
    assert await nothing_arrives(layer, two)


async def test_group_full_member_does_not_stop_the_others(
    layer: BroadcastChannelLayer, group: str
) -> None:
    full, other = await layer.new_channel(), await layer.new_channel()
    for n in range(3):
        await layer.send(full, {"type": "filler", "n": n})
    await layer.group_add(group, full)
    await layer.group_add(group, other)
    await layer.group_send(group, {"type": "message.1"})
    assert (await receive(layer, other))["type"] == "message.1"
    assert [(await receive(layer, full))["type"] for _ in range(3)] == ["filler"] * 3


async def test_group_send_with_no_members(layer: BroadcastChannelLayer, group: str) -> None:
    await layer.group_send(group, {"type": "message.1"})


async def test_expired_messages_are_dropped(
    layer: BroadcastChannelLayer, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.send(channel, {"type": "old"})
    now = layers_module.time.time()
    monkeypatch.setattr(layers_module.time, "time", lambda: now + layer.expiry + 1)
    await layer.send(channel, {"type": "new"})
    assert (await receive(layer, channel))["type"] == "new"
    # As in Channels' in-memory layer, an expired message takes its channel out of
    # its groups.
    assert channel not in layer._groups.get(group, {})


async def test_flush_empties_channels_and_groups(layer: BroadcastChannelLayer, group: str) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.send(channel, {"type": "before.flush"})
    await layer.flush()
    await layer.group_send(group, {"type": "after.flush"})
    channel = await layer.new_channel()
    assert await nothing_arrives(layer, channel)
    assert layer.broadcast._hub().channels == {channel.split("!")[0]}


async def test_invalid_names_are_refused(layer: BroadcastChannelLayer) -> None:
    with pytest.raises(TypeError):
        await layer.send("bad channel", {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add("bad group!", await layer.new_channel())
    with pytest.raises(TypeError):
        await layer.group_send("x" * 101, {"type": "x"})


# channels_redis's core and pub/sub layer tests ------------------------------------


async def test_layers_as_separate_processes(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        assert first.client_prefix != second.client_prefix
        channel = await first.new_channel()
        await second.send(channel, {"type": "test.message", "text": "across"})
        assert (await receive(first, channel))["text"] == "across"

        one, two = await first.new_channel(), await second.new_channel()
        await first.group_add(group, one)
        await second.group_add(group, two)
        await second.group_send(group, {"type": "message.1", "n": 1})
        assert (await receive(first, one))["n"] == 1
        assert (await receive(second, two))["n"] == 1
    finally:
        await first.flush()
        await second.flush()


async def test_concurrent_receivers_each_get_one_message(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    receivers = [asyncio.create_task(receive(layer, channel)) for _ in range(2)]
    await asyncio.sleep(0)  # both are waiting now
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    got = await asyncio.gather(*receivers)
    assert sorted(message["n"] for message in got) == [1, 2]


async def test_a_cancelled_receive_loses_nothing(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    cancelled = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await layer.send(channel, {"type": "m"})
    assert (await receive(layer, channel))["type"] == "m"


async def test_a_message_woken_for_a_cancelled_receiver_goes_to_the_next(
    layer: BroadcastChannelLayer,
) -> None:
    channel = await layer.new_channel()
    first = asyncio.create_task(layer.receive(channel))
    second = asyncio.create_task(receive(layer, channel))
    await asyncio.sleep(0)
    await layer.send(channel, {"type": "m"})  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    assert (await second)["type"] == "m"


async def test_each_member_gets_its_own_copy(layer: BroadcastChannelLayer, group: str) -> None:
    one, two = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(group, one)
    await layer.group_add(group, two)
    await layer.group_send(group, {"type": "m", "items": [1, 2]})
    first = await receive(layer, one)
    first["items"].append(3)
    assert (await receive(layer, two))["items"] == [1, 2]


async def test_bytes_survive_the_trip(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        channel = await first.new_channel()
        await second.send(channel, {"type": "websocket.send", "bytes": b"\x00\xffraw"})
        assert (await receive(first, channel))["bytes"] == b"\x00\xffraw"
        await first.group_add(group, channel)
        await second.group_send(group, {"type": "m", "nested": {"b": [b"\x01"]}})
        assert (await receive(first, channel))["nested"] == {"b": [b"\x01"]}
    finally:
        await first.flush()
        await second.flush()


async def test_plain_channels_reach_the_processes_receiving_them(
    bc: Broadcast,
) -> None:
    worker, web = BroadcastChannelLayer(), BroadcastChannelLayer()
    name = f"thumbnails-{uuid.uuid4().hex[:8]}"
    try:
        waiting = asyncio.create_task(receive(worker, name))
        while not bc._hub().channels:  # the worker's subscription is confirmed
            await asyncio.sleep(0.01)
        await web.send(name, {"type": "thumbnail.make", "id": 7})
        assert (await waiting)["id"] == 7
    finally:
        await worker.flush()
        await web.flush()


async def test_many_consumers_one_broker_subscription(
    layer: BroadcastChannelLayer, group: str
) -> None:
    channels = [await layer.new_channel() for _ in range(50)]
    for channel in channels:
        await layer.group_add(group, channel)
    # One inbox and one group subscription, however many consumers.
    assert layer.broadcast._hub().channels == {group, channels[0].split("!")[0]}
    for channel in channels:
        await layer.group_discard(group, channel)
    assert layer.broadcast._hub().channels == {channels[0].split("!")[0]}


# The bridge -----------------------------------------------------------------------


async def test_sync_publish_reaches_group_members(layer: BroadcastChannelLayer, group: str) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    event = await sync_to_async(layer.broadcast.publish)(group, {"text": "hi"}, type="chat.message")
    assert event is not None
    assert await receive(layer, channel) == {
        "type": "chat.message",
        "channel": group,
        "id": event.id,
        "data": {"text": "hi"},
        "text": "hi",
    }


async def test_group_send_reaches_broadcast_subscribers(
    layer: BroadcastChannelLayer, bc: Broadcast, group: str
) -> None:
    async with bc.subscribe(group) as sub:
        await layer.group_send(group, {"type": "chat.message", "text": "hi"})
        event = await sub.get(timeout=TIMEOUT)
    assert (event.type, event.data) == ("chat.message", {"text": "hi"})


class ChatConsumer(AsyncJsonWebsocketConsumer):
    groups: ClassVar[list[str]] = ["chat.lobby"]

    async def chat_message(self, message: dict[str, Any]) -> None:
        await self.send_json(message)


async def test_a_plain_consumer_with_groups_gets_sync_publishes(bc: Broadcast) -> None:
    layer_settings = {
        "default": {
            "BACKEND": "django_broadcast.layers.BroadcastChannelLayer",
            "CONFIG": {"using": "default"},
        }
    }
    with override_settings(CHANNEL_LAYERS=layer_settings):
        communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        try:
            publish = sync_to_async(bc.publish)
            event = await publish("chat.lobby", {"text": "from a view"}, type="chat.message")
            assert event is not None
            message = await communicator.receive_json_from(timeout=TIMEOUT)
            assert message["type"] == "chat.message"
            assert (message["channel"], message["id"]) == ("chat.lobby", event.id)
            assert message["data"] == {"text": "from a view"} and message["text"] == "from a view"
        finally:
            await communicator.disconnect()
            await channel_layers["default"].flush()
