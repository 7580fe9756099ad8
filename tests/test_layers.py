"""BroadcastChannelLayer: the Channels layer contract, on every backend, and the bridge.

The behaviours of Channels' own layer tests and of channels_redis's core and pub/sub
layer tests, plus what only the bridge does: groups are broadcast channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.exceptions import ChannelFull
from channels.exceptions import MessageTooLarge as ChannelsMessageTooLarge
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_broadcast import Broadcast, MessageTooLarge
from django_broadcast.layers import BroadcastChannelLayer
from django_broadcast.registry import broadcasts

from .conftest import Broker, PrivateRedis, using

TIMEOUT = 5
T = TypeVar("T")

pytestmark = pytest.mark.django_db(transaction=True)
#: For the tests of plain channels: the layer keeps them in the broker's queues.
QUEUES = pytest.mark.features("queues")


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


async def waiting_receive(
    layer: BroadcastChannelLayer, channel: str
) -> asyncio.Task[dict[str, Any]]:
    """A receive of ``channel`` that is already waiting; await it with ``wait_for``."""
    task = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # it runs up to its wait: this layer's inbox is subscribed
    return task


async def nothing_arrives(layer: BroadcastChannelLayer, channel: str) -> bool:
    """True when nothing is waiting on ``channel`` once every delivery in flight is done:
    a marker sent after the fact must be the next thing received."""
    await layer.send(channel, {"type": "marker"})
    return (await receive(layer, channel))["type"] == "marker"


async def until(condition: Callable[[], bool]) -> None:
    """Wait, at most TIMEOUT seconds, until ``condition()`` holds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


def inbox_of(channel: str) -> str:
    """The broadcast channel that carries a process-specific channel's messages."""
    return BroadcastChannelLayer._inbox_channel(channel.split("!")[0])


async def subscribed(bc: Broadcast, broker_channel: str) -> None:
    """Wait until this event loop holds a confirmed subscription to ``broker_channel``."""
    await until(lambda: broker_channel in bc._hub().channels)


async def ready_channel(layer: BroadcastChannelLayer) -> str:
    """A new channel of ``layer`` whose inbox is subscribed, so that another process
    can reach it (``new_channel()`` itself does not wait for the broker)."""
    channel = await layer.new_channel()
    await subscribed(layer.broadcast, inbox_of(channel))
    return channel


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Wait until a log record says ``text``."""
    await until(lambda: any(text in record.getMessage() for record in caplog.records))


async def in_new_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on an event loop of its own, in another thread (as
    ``async_to_sync`` does from sync code)."""
    return await asyncio.to_thread(asyncio.run, coroutine)


# Channels' own layer tests --------------------------------------------------------


async def test_send_receive(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "Ahoy-hoy!"})
    assert await receive(layer, channel) == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_a_channel_is_forgotten_once_emptied(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    await receive(layer, channel)
    assert channel in layer._inboxes  # not empty yet
    await receive(layer, channel)
    assert channel not in layer._inboxes


async def test_a_cancelled_receive_leaves_nothing_behind(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    waiting = await waiting_receive(layer, channel)
    assert channel in layer._inboxes
    waiting.cancel()  # as when a consumer disconnects
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert channel not in layer._inboxes


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


@QUEUES
async def test_a_plain_channel_in_a_group_gets_its_messages(bc: Broadcast, group: str) -> None:
    worker, web = BroadcastChannelLayer(), BroadcastChannelLayer()
    name = f"test-gr-chan-{uuid.uuid4().hex[:8]}"
    try:
        waiting = asyncio.create_task(receive(worker, name))
        await web.group_add(group, name)
        await web.group_send(group, {"type": "message.1"})
        assert (await waiting)["type"] == "message.1"
    finally:
        await worker.flush()
        await web.flush()


async def test_expired_messages_are_dropped(
    layer: BroadcastChannelLayer, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.send(channel, {"type": "old"})
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + layer.expiry + 1)
    await layer.send(channel, {"type": "new"})
    assert (await receive(layer, channel))["type"] == "new"


async def test_group_membership_survives_an_expired_message(
    layer: BroadcastChannelLayer, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # channels_redis keeps a member whose message expired unreceived (a consumer
    # blocked longer than ``expiry``): only ``group_expiry`` ends a membership.
    member, witness = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(group, member)
    await layer.group_add(group, witness)
    await layer.group_send(group, {"type": "old"})
    assert (await receive(layer, witness))["type"] == "old"
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + layer.expiry + 1)
    assert await nothing_arrives(layer, member)  # "old" expired, unreceived
    await layer.group_send(group, {"type": "new"})
    assert (await receive(layer, witness))["type"] == "new"
    assert (await receive(layer, member))["type"] == "new"


async def test_a_membership_older_than_group_expiry_ends(
    bc: Broadcast, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = BroadcastChannelLayer(group_expiry=600)
    try:
        member = await layer.new_channel()
        await layer.group_add(group, member)
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + 601)
        witness = await layer.new_channel()  # added after the jump: still a member
        await layer.group_add(group, witness)
        await layer.group_send(group, {"type": "late"})
        assert (await receive(layer, witness))["type"] == "late"
        assert await nothing_arrives(layer, member)
        await layer.group_add(group, member)  # adding again renews the membership
        await layer.group_send(group, {"type": "renewed"})
        assert (await receive(layer, witness))["type"] == "renewed"
        assert (await receive(layer, member))["type"] == "renewed"
        monkeypatch.setattr(time, "time", lambda: now + 1202)
        await layer.group_send(group, {"type": "to nobody"})
        # Every membership expired: the group's broker subscription is released.
        await until(lambda: group not in layer._readers and group not in layer._groups)
        await until(lambda: group not in layer.broadcast._hub().channels)
    finally:
        await layer.flush()


async def test_expired_messages_of_channels_nobody_reads_are_dropped(
    layer: BroadcastChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    unread, read = await layer.new_channel(), await layer.new_channel()
    await layer.send(unread, {"type": "never.read"})
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + layer.expiry + 1)
    await layer.send(read, {"type": "m"})
    assert (await receive(layer, read))["type"] == "m"
    assert layer._inboxes == {}  # the unread channel is forgotten too


async def test_flush_empties_channels_and_groups(layer: BroadcastChannelLayer, group: str) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.send(channel, {"type": "before.flush"})
    await layer.flush()
    await layer.group_send(group, {"type": "after.flush"})
    channel = await ready_channel(layer)
    assert await nothing_arrives(layer, channel)
    assert layer.broadcast._hub().channels == {inbox_of(channel)}


async def test_a_receiver_waiting_across_a_flush_gets_later_messages(
    layer: BroadcastChannelLayer,
) -> None:
    channel = await layer.new_channel()
    waiting = await waiting_receive(layer, channel)
    await layer.flush()
    await layer.send(channel, {"type": "after.flush"})
    assert (await asyncio.wait_for(waiting, TIMEOUT))["type"] == "after.flush"


async def test_invalid_names_are_refused(layer: BroadcastChannelLayer) -> None:
    with pytest.raises(TypeError):
        await layer.send("bad channel", {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add("bad group!", await layer.new_channel())
    with pytest.raises(TypeError):
        await layer.group_send("x" * 101, {"type": "x"})


@pytest.mark.parametrize(
    "name", ["\u00af\\_(\u30c4)_/\u00af", "chat" * 25], ids=["ascii", "length"]
)
async def test_every_method_refuses_invalid_names(layer: BroadcastChannelLayer, name: str) -> None:
    valid = await layer.new_channel()
    channel_error = re.escape(layer.invalid_name_error.format("Channel"))
    group_error = re.escape(layer.invalid_name_error.format("Group"))
    with pytest.raises(TypeError, match=channel_error):
        await layer.send(name, {"type": "x"})
    with pytest.raises(TypeError, match=channel_error):
        await receive(layer, name)
    with pytest.raises(TypeError, match=group_error):
        await layer.group_add(name, valid)
    with pytest.raises(TypeError, match=channel_error):
        await layer.group_add("valid-group", name)
    with pytest.raises(TypeError, match=group_error):
        await layer.group_discard(name, valid)
    with pytest.raises(TypeError, match=channel_error):
        await layer.group_discard("valid-group", name)
    with pytest.raises(TypeError, match=group_error):
        await layer.group_send(name, {"type": "x"})


# channels_redis's core and pub/sub layer tests ------------------------------------


async def test_layers_as_separate_processes(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        assert first.client_prefix != second.client_prefix
        channel = await ready_channel(first)
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


async def test_receiving_on_another_processs_channel_is_refused(
    layer: BroadcastChannelLayer,
) -> None:
    with pytest.raises(AssertionError):
        await receive(layer, "not-client-prefix!local_part")


async def test_an_inbox_message_for_another_processs_channel_is_not_kept(
    bc: Broadcast, layer: BroadcastChannelLayer
) -> None:
    channel = await ready_channel(layer)
    stranger = "not-client-prefix!local_part"
    # Only layers write to the reserved inbox channels; this one names a stranger.
    for to in (stranger, channel):
        data = {"to": to, "expires": time.time() + 60, "message": {"type": to}}
        await bc.apublish(inbox_of(channel), data, type="channels.send")
    assert (await receive(layer, channel))["type"] == channel
    with pytest.raises(AssertionError):
        await receive(layer, stranger)


async def test_channels_with_different_prefixes_are_each_served(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        channels = [await first.new_channel(prefix=f"test-gr-chan-{n}.") for n in range(3)]
        for channel in channels:
            await first.group_add(group, channel)
        await second.group_send(group, {"type": "message.1"})
        for channel in channels:
            await second.send(channel, {"type": "direct"})
        for channel in channels:  # a group and an inbox: two routes, so no order between
            got = {(await receive(first, channel))["type"] for _ in range(2)}
            assert got == {"message.1", "direct"}
    finally:
        await first.flush()
        await second.flush()


async def test_a_group_send_reaches_a_hundred_members(
    layer: BroadcastChannelLayer, group: str
) -> None:
    channels = [await layer.new_channel() for _ in range(100)]
    for channel in channels:
        await layer.group_add(group, channel)
    await asyncio.wait_for(layer.group_send(group, {"type": "message.1"}), TIMEOUT)
    assert [(await receive(layer, channel))["type"] for channel in channels] == ["message.1"] * 100


async def test_group_capacity_holds_by_the_time_group_send_returns(
    layer: BroadcastChannelLayer, group: str
) -> None:
    # channels_redis's test_group_send_capacity: the member is full once the fourth
    # group_send returns, so taking one message makes no room for the fourth.
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    for n in range(4):
        await layer.group_send(group, {"type": "message", "n": n})
    assert (await receive(layer, channel))["n"] == 0
    assert [(await receive(layer, channel))["n"] for _ in range(2)] == [1, 2]
    assert await nothing_arrives(layer, channel)
    # And each message came once: the broker's copy of what was delivered here at
    # once is not delivered again.
    await layer.group_send(group, {"type": "message", "n": 4})
    assert (await receive(layer, channel))["n"] == 4
    assert await nothing_arrives(layer, channel)


async def test_members_here_and_elsewhere_get_the_same_message(bc: Broadcast, group: str) -> None:
    sender, other = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        here, elsewhere = await sender.new_channel(), await other.new_channel()
        await sender.group_add(group, here)
        await other.group_add(group, elsewhere)
        sent = {"type": "m", "when": datetime(2026, 1, 2, tzinfo=timezone.utc), "pair": (1, 2)}
        await sender.group_send(group, sent)
        # Through the codec for both, wherever the member is.
        assert await receive(sender, here) == await receive(other, elsewhere)
    finally:
        await sender.flush()
        await other.flush()


async def test_a_group_of_one_past_capacity_drops_and_logs(
    bc: Broadcast, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_broadcast.layers")
    layer, other = BroadcastChannelLayer(capacity=2), BroadcastChannelLayer()
    try:
        member = await layer.new_channel()
        await layer.group_add(group, member)
        for n in range(3):  # routed here as each is sent: the third finds it full
            await layer.group_send(group, {"type": "message", "n": n})
        assert [(await receive(layer, member))["n"] for _ in range(2)] == [0, 1]
        await other.group_send(group, {"type": "message", "n": 3})  # from the broker
        assert (await receive(layer, member))["n"] == 3
        dropped = [r.getMessage() for r in caplog.records if "over capacity" in r.getMessage()]
        assert dropped == [f"1 of 1 channels over capacity in group {group}"]
    finally:
        await layer.flush()
        await other.flush()


async def test_group_messages_past_capacity_are_dropped_and_logged(
    bc: Broadcast, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_broadcast.layers")
    layer = BroadcastChannelLayer(capacity=3, channel_capacity={"witness.*": 10})
    try:
        member, witness = await layer.new_channel(), await layer.new_channel("witness.")
        await layer.group_add(group, member)
        await layer.group_add(group, witness)
        for n in range(4):
            await layer.group_send(group, {"type": "message", "n": n})
        # The witness has all four: each was routed to the member as well.
        assert [(await receive(layer, witness))["n"] for _ in range(4)] == [0, 1, 2, 3]
        assert [(await receive(layer, member))["n"] for _ in range(3)] == [0, 1, 2]
        assert await nothing_arrives(layer, member)
        # channels_redis's words, at its level.
        [record] = [r for r in caplog.records if "over capacity" in r.getMessage()]
        assert record.levelname == "INFO"
        assert record.getMessage() == f"1 of 2 channels over capacity in group {group}"
    finally:
        await layer.flush()


async def test_messages_from_another_process_past_capacity_are_dropped(bc: Broadcast) -> None:
    receiver, sender = BroadcastChannelLayer(capacity=3), BroadcastChannelLayer()
    try:
        full, witness = await ready_channel(receiver), await ready_channel(receiver)
        for n in range(4):
            await sender.send(full, {"type": "m", "n": n})
        await sender.send(witness, {"type": "witness"})
        # One inbox subscription carries both, in order: all four are routed now.
        assert (await receive(receiver, witness))["type"] == "witness"
        assert [(await receive(receiver, full))["n"] for _ in range(3)] == [0, 1, 2]
        assert await nothing_arrives(receiver, full)
    finally:
        await receiver.flush()
        await sender.flush()


async def test_group_messages_expire_unreceived(
    layer: BroadcastChannelLayer, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    member, witness = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(group, member)
    await layer.group_add(group, witness)
    await layer.group_send(group, {"type": "old"})
    assert (await receive(layer, witness))["type"] == "old"  # routed to the member too
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + layer.expiry + 1)
    assert await nothing_arrives(layer, member)


async def test_each_event_loop_can_send_and_receive(bc: Broadcast) -> None:
    layer = BroadcastChannelLayer()
    try:
        one = await in_new_loop(layer.new_channel())
        two = await in_new_loop(layer.new_channel())
        await in_new_loop(layer.send(one, {"type": "test.message.1"}))
        await in_new_loop(layer.send(two, {"type": "test.message.2"}))
        assert (await in_new_loop(receive(layer, two)))["type"] == "test.message.2"
        assert (await in_new_loop(receive(layer, one)))["type"] == "test.message.1"
    finally:
        await layer.flush()


async def test_sends_from_sync_code_reach_a_waiting_receiver_in_order(
    layer: BroadcastChannelLayer,
) -> None:
    channel = await layer.new_channel()
    waiting = await waiting_receive(layer, channel)

    def view() -> None:
        for n in range(3):
            async_to_sync(layer.send, force_new_loop=True)(channel, {"type": "m", "n": n})

    await asyncio.to_thread(view)
    assert (await asyncio.wait_for(waiting, TIMEOUT))["n"] == 0
    assert [(await receive(layer, channel))["n"] for _ in range(2)] == [1, 2]


async def test_repeated_group_sends_from_sync_code_arrive(
    layer: BroadcastChannelLayer, group: str
) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)

    def view() -> None:
        for n in range(2):
            async_to_sync(layer.group_send)(group, {"type": "m", "n": n})

    await asyncio.to_thread(view)
    assert [(await receive(layer, channel))["n"] for _ in range(2)] == [0, 1]


@QUEUES
async def test_a_layer_used_from_sync_code_leaves_no_task_pending(
    bc: Broadcast, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = BroadcastChannelLayer()

    async def use() -> None:
        await layer.group_add(group, await layer.new_channel())
        await layer.send("test-channel", {"type": "test.message"})

    try:
        await asyncio.to_thread(async_to_sync(use))
        gc.collect()
        assert "Task was destroyed but it is pending" not in caplog.text
    finally:
        await layer.flush()


async def test_channel_names_do_not_repeat_after_a_random_reset(
    layer: BroadcastChannelLayer,
) -> None:
    state = random.getstate()
    try:
        random.seed(1)
        one = await layer.new_channel()
        random.seed(1)
        assert await layer.new_channel() != one
    finally:
        random.setstate(state)


def test_client_prefixes_do_not_repeat_after_a_random_reset() -> None:
    state = random.getstate()
    try:
        random.seed(1)
        first = BroadcastChannelLayer()
        random.seed(1)
        assert BroadcastChannelLayer().client_prefix != first.client_prefix
    finally:
        random.setstate(state)


async def test_group_discard_before_group_add_does_nothing(
    layer: BroadcastChannelLayer, group: str
) -> None:
    await layer.group_discard(group, await layer.new_channel())
    assert group not in layer.broadcast._hub().channels


@pytest.mark.parametrize("streams", [False, True], ids=["redis", "redis+streams"])
async def test_group_members_keep_receiving_after_a_broker_restart(
    private_redis: PrivateRedis, group: str, streams: bool
) -> None:
    url = private_redis.url.replace("redis://", "redis+streams://", 1) if streams else None
    with using({"URL": url or private_redis.url, "TIMEOUT": 2}) as bc:
        member, sender = BroadcastChannelLayer(), BroadcastChannelLayer()
        try:
            channel = await member.new_channel()
            await member.group_add(group, channel)
            async with bc.subscribe(group) as watcher:
                private_redis.kill()
                private_redis.start()
                if not streams:
                    # Pub/sub loses what is published before the subscription is
                    # renewed; the gap notice says it has been.
                    assert (await watcher.get(timeout=TIMEOUT)).is_gap
                await sender.group_send(group, {"type": "after.restart"})
            assert (await receive(member, channel))["type"] == "after.restart"
        finally:
            await member.flush()
            await sender.flush()
            await bc.aclose()


@pytest.mark.parametrize("streams", [False, True], ids=["redis", "redis+streams"])
async def test_group_members_receive_again_after_the_broker_stayed_away(
    private_redis: PrivateRedis, group: str, streams: bool, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_redis.url.replace("redis://", "redis+streams://", 1) if streams else None
    entry = {"URL": url or private_redis.url, "TIMEOUT": 1, "RECONNECT_TIMEOUT": 0.3}
    with using(entry) as bc, caplog.at_level("INFO", logger="django_broadcast"):
        member, sender = BroadcastChannelLayer(), BroadcastChannelLayer()
        try:
            channel = await member.new_channel()
            await member.group_add(group, channel)
            private_redis.kill()
            # Past RECONNECT_TIMEOUT the layer's persistent subscriptions keep waiting.
            await logged(caplog, "persistent subscriptions keep waiting")
            private_redis.start()
            await logged(caplog, "reconnected")
            await sender.group_send(group, {"type": "after.outage"})
            assert (await receive(member, channel))["type"] == "after.outage"
        finally:
            await member.flush()
            await sender.flush()
            await bc.aclose()


async def test_concurrent_receivers_each_get_one_message(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    receivers = [await waiting_receive(layer, channel) for _ in range(2)]
    await layer.send(channel, {"type": "m", "n": 1})
    await layer.send(channel, {"type": "m", "n": 2})
    got = await asyncio.wait_for(asyncio.gather(*receivers), TIMEOUT)
    assert sorted(message["n"] for message in got) == [1, 2]


async def test_a_cancelled_receive_loses_nothing(layer: BroadcastChannelLayer) -> None:
    channel = await layer.new_channel()
    cancelled = await waiting_receive(layer, channel)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await layer.send(channel, {"type": "m"})
    assert (await receive(layer, channel))["type"] == "m"


async def test_a_message_woken_for_a_cancelled_receiver_goes_to_the_next(
    layer: BroadcastChannelLayer,
) -> None:
    channel = await layer.new_channel()
    first = await waiting_receive(layer, channel)
    second = await waiting_receive(layer, channel)
    await layer.send(channel, {"type": "m"})  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    assert (await asyncio.wait_for(second, TIMEOUT))["type"] == "m"


async def test_each_member_gets_its_own_copy(layer: BroadcastChannelLayer, group: str) -> None:
    one, two = await layer.new_channel(), await layer.new_channel()
    await layer.group_add(group, one)
    await layer.group_add(group, two)
    await layer.group_send(group, {"type": "m", "items": [1, 2], "meta": {"tags": ["a"]}})
    first = await receive(layer, one)
    first["items"].append(3)
    first["meta"]["tags"].append("b")
    first["data"]["items"].append(4)
    second = await receive(layer, two)
    assert second["items"] == [1, 2] and second["meta"] == {"tags": ["a"]}
    assert second["data"] == {"items": [1, 2], "meta": {"tags": ["a"]}}


async def test_bytes_survive_the_trip(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        channel = await ready_channel(first)
        await second.send(channel, {"type": "websocket.send", "bytes": b"\x00\xffraw"})
        assert (await receive(first, channel))["bytes"] == b"\x00\xffraw"
        await first.group_add(group, channel)
        await second.group_send(group, {"type": "m", "nested": {"b": [b"\x01"]}})
        assert (await receive(first, channel))["nested"] == {"b": [b"\x01"]}
    finally:
        await first.flush()
        await second.flush()


@QUEUES
async def test_plain_channels_reach_the_processes_receiving_them(
    bc: Broadcast,
) -> None:
    worker, web = BroadcastChannelLayer(), BroadcastChannelLayer()
    name = f"thumbnails-{uuid.uuid4().hex[:8]}"
    try:
        waiting = asyncio.create_task(receive(worker, name))
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
    assert layer.broadcast._hub().channels == {group, inbox_of(channels[0])}
    for channel in channels:
        await layer.group_discard(group, channel)
    assert layer.broadcast._hub().channels == {inbox_of(channels[0])}


def tasks_of_the_layer() -> int:
    """How many tasks of this event loop run code of the layer's package."""
    folder = os.path.dirname(inspect.getfile(BroadcastChannelLayer))
    codes = (getattr(task.get_coro(), "cr_code", None) for task in asyncio.all_tasks())
    return sum(1 for code in codes if code is not None and code.co_filename.startswith(folder))


async def test_groups_are_routed_without_a_task_of_their_own(
    layer: BroadcastChannelLayer, group: str
) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    before = tasks_of_the_layer()
    groups = [f"{group}-{n}" for n in range(20)]
    for name in groups:
        await layer.group_add(name, channel)
    # The hub hands each group's events straight to the layer: no reader task per group.
    assert tasks_of_the_layer() <= before
    for name in groups:
        await layer.group_send(name, {"type": "m", "group": name})
        assert (await receive(layer, channel))["group"] == name


# Channels' layer specification ----------------------------------------------------


def test_the_layer_declares_its_extensions_and_group_expiry() -> None:
    layer = BroadcastChannelLayer(group_expiry=3600)
    assert set(layer.extensions) == {"groups", "flush"}
    assert layer.group_expiry == 3600
    assert BroadcastChannelLayer().group_expiry == 86400


@pytest.mark.parametrize(
    ("config", "told"),
    [
        ({"hosts": ["redis://127.0.0.1:6379/0"]}, "BROADCAST['default']['URL']"),
        ({"prefix": "asgi"}, "BROADCAST['default']['OPTIONS']['prefix']"),
        ({"symmetric_encryption_keys": ["secret"]}, "rediss://"),
        ({"serializer_format": "json", "using": "other"}, "'serializer_format'"),
    ],
)
def test_channels_redis_keys_the_layer_does_not_take_are_refused(
    config: dict[str, Any], told: str
) -> None:
    # Copied from a channels_redis CONFIG, they would otherwise do nothing, silently:
    # no encryption where symmetric_encryption_keys promised it.
    with pytest.raises(ImproperlyConfigured) as raised:
        BroadcastChannelLayer(**config)
    assert told in str(raised.value)
    assert "using, expiry, capacity, channel_capacity, group_expiry" in str(raised.value)


def test_the_layer_methods_are_coroutine_functions() -> None:
    layer = BroadcastChannelLayer()
    methods = ["send", "receive", "new_channel", "group_add", "group_discard", "group_send"]
    for name in [*methods, "flush", "close"]:
        assert inspect.iscoroutinefunction(getattr(layer, name)), name


async def test_adding_a_channel_twice_delivers_once(
    layer: BroadcastChannelLayer, group: str
) -> None:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "once"})
    assert (await receive(layer, channel))["type"] == "once"
    assert await nothing_arrives(layer, channel)


async def test_a_megabyte_message_travels_between_processes(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    text = "x" * 1_000_000  # 1 MB encoded as JSON: the size every layer must carry
    try:
        channel = await first.new_channel()
        await first.group_add(group, channel)
        await second.send(channel, {"type": "big", "text": text})
        assert (await receive(first, channel))["text"] == text
        await second.group_send(group, {"type": "big", "text": text})
        assert (await receive(first, channel))["text"] == text
    finally:
        await first.flush()
        await second.flush()


@pytest.mark.parametrize("method", ["send", "group_send"])
async def test_an_oversized_message_raises_channels_message_too_large(
    broker: Broker, group: str, method: str
) -> None:
    # Handlers written for channels_redis catch channels.exceptions.MessageTooLarge.
    with using(broker.entry(OPTIONS={"max_message_size": 4096})) as bc:
        layer, other = BroadcastChannelLayer(), BroadcastChannelLayer()
        try:
            # Another process's channel, or a group: what goes through the broker.
            target = await other.new_channel() if method == "send" else group
            with pytest.raises(ChannelsMessageTooLarge) as caught:
                await getattr(layer, method)(target, {"type": "big", "text": "x" * 5000})
            assert isinstance(caught.value, MessageTooLarge)
            assert "max_message_size" in str(caught.value)
        finally:
            await layer.flush()
            await other.flush()
            await bc.aclose()


async def test_names_of_99_characters_travel_between_processes(bc: Broadcast) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    group = f"g-{uuid.uuid4().hex}".ljust(99, "x")
    try:
        channel = await first.new_channel(prefix="p" * 54)
        assert len(channel) == len(group) == 99
        await first.group_add(group, channel)
        await second.group_send(group, {"type": "long.group"})
        assert (await receive(first, channel))["type"] == "long.group"
        await second.send(channel, {"type": "long.channel"})
        assert (await receive(first, channel))["type"] == "long.channel"
    finally:
        await first.flush()
        await second.flush()


async def test_every_type_the_spec_allows_survives_the_trip(bc: Broadcast) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    values = {
        "bytes": b"\x00\xff",
        "text": "Ahoy-hoy! \u2713",
        "int": 2**63 - 1,
        "negative": -(2**63),
        "float": 1.5e308,
        "list": [1, "two", None],
        "dict": {"nested": {"ok": True}},
        "bool": False,
        "none": None,
    }
    try:
        channel = await ready_channel(first)
        await second.send(channel, {"type": "typed", **values, "tuple": (1, 2)})
        assert await receive(first, channel) == {"type": "typed", **values, "tuple": [1, 2]}
    finally:
        await first.flush()
        await second.flush()


async def test_a_flush_leaves_the_groups_of_other_processes(bc: Broadcast, group: str) -> None:
    first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
    try:
        one, two = await first.new_channel(), await second.new_channel()
        await first.group_add(group, one)
        await second.group_add(group, two)
        await first.flush()  # memberships are local to the process: only its own end
        await first.group_send(group, {"type": "after.flush"})
        assert (await receive(second, two))["type"] == "after.flush"
        assert await nothing_arrives(first, one)
    finally:
        await first.flush()
        await second.flush()


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


# Sync code (WSGI views, management commands, Celery tasks) -----------------------------


def test_sync_group_sends_leave_no_connection_open(private_redis: PrivateRedis) -> None:
    """Each ``async_to_sync(group_send)`` from a thread without an event loop runs on a
    loop of its own that asgiref closes after the call: none may leave a connection."""
    import redis as redis_py

    with override_settings(BROADCAST={"default": {"URL": private_redis.url}}):
        layer = BroadcastChannelLayer()
        admin = redis_py.Redis.from_url(private_redis.url)
        try:

            def publish_from_a_plain_thread() -> None:
                for number in range(200):
                    async_to_sync(layer.group_send)("g-sync", {"type": "n", "n": number})

            opened = admin.info("stats")["total_connections_received"]
            thread = threading.Thread(target=publish_from_a_plain_thread)
            thread.start()
            thread.join(timeout=60)
            assert not thread.is_alive()
            clients = admin.client_list()
            # This admin client and the alias's sync pool at most; none per call.
            assert len(clients) <= 3, [c.get("name") for c in clients]
            # And none opened per call either: such a call takes the sync path.
            assert admin.info("stats")["total_connections_received"] - opened <= 2
        finally:
            admin.close()
            broadcasts["default"].close()


def test_short_lived_loops_that_subscribe_leave_no_connection_open(
    private_redis: PrivateRedis,
) -> None:
    """Whatever a loop opened (its hub's receiving connection, its async client) is
    closed with the loop."""
    import redis as redis_py

    async def subscribe_and_publish(number: int) -> None:
        bc = broadcasts["default"]
        async with bc.subscribe("short-lived") as subscription:
            await bc.apublish("short-lived", number)
            event = await asyncio.wait_for(subscription.__anext__(), TIMEOUT)
            assert event.data == number

    with override_settings(BROADCAST={"default": {"URL": private_redis.url}}):
        admin = redis_py.Redis.from_url(private_redis.url)
        try:
            for number in range(20):
                asyncio.run(subscribe_and_publish(number))
            clients = admin.client_list()
            assert len(clients) <= 3, [c.get("name") for c in clients]
        finally:
            admin.close()
            broadcasts["default"].close()


# Plain channels are queues (Channels' spec, channels_redis's core layer) --------------


@pytest.fixture
def plain() -> str:
    return f"plain-{uuid.uuid4().hex[:10]}"


@QUEUES
async def test_a_plain_channel_keeps_a_message_until_it_is_received(
    layer: BroadcastChannelLayer, plain: str
) -> None:
    # Channels' tutorial check: send to "test_channel" with nobody receiving, then
    # receive it.
    await layer.send(plain, {"type": "hello"})
    assert await receive(layer, plain) == {"type": "hello"}


@QUEUES
def test_the_tutorials_shell_check(bc: Broadcast, plain: str) -> None:
    channel_layer = BroadcastChannelLayer()
    received: list[dict[str, Any]] = []

    def shell() -> None:
        async_to_sync(channel_layer.send)(plain, {"type": "hello"})
        received.append(async_to_sync(channel_layer.receive)(plain))

    thread = threading.Thread(target=shell, daemon=True)
    try:
        thread.start()
        thread.join(timeout=TIMEOUT)
        assert received == [{"type": "hello"}]
    finally:
        async_to_sync(channel_layer.flush)()


@QUEUES
async def test_plain_channel_messages_are_received_in_order(
    layer: BroadcastChannelLayer, plain: str
) -> None:
    for n in range(3):
        await layer.send(plain, {"type": "m", "n": n})
    assert [(await receive(layer, plain))["n"] for _ in range(3)] == [0, 1, 2]
    await layer.send(plain, {"type": "m", "n": 3})
    assert (await receive(layer, plain))["n"] == 3


@QUEUES
async def test_a_full_plain_channel_raises_channel_full(
    layer: BroadcastChannelLayer, plain: str
) -> None:
    for n in range(3):  # the layer's capacity
        await layer.send(plain, {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await layer.send(plain, {"type": "m", "n": 3})
    assert (await receive(layer, plain))["n"] == 0
    await layer.send(plain, {"type": "m", "n": 4})  # room again
    assert [(await receive(layer, plain))["n"] for _ in range(3)] == [1, 2, 4]


@QUEUES
async def test_channel_capacity_applies_to_plain_channels(bc: Broadcast, plain: str) -> None:
    layer = BroadcastChannelLayer(capacity=10, channel_capacity={"tiny*": 1})
    try:
        await layer.send(f"tiny-{plain}", {"type": "a"})
        with pytest.raises(ChannelFull):
            await layer.send(f"tiny-{plain}", {"type": "b"})
        for n in range(10):
            await layer.send(plain, {"type": "m", "n": n})
        with pytest.raises(ChannelFull):
            await layer.send(plain, {"type": "m", "n": 10})
    finally:
        await layer.flush()


@QUEUES
async def test_plain_channel_messages_expire(
    layer: BroadcastChannelLayer, plain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await layer.send(plain, {"type": "m", "n": 1})
    await layer.send(plain, {"type": "m", "n": 2})
    await layer.send(plain, {"type": "m", "n": 3})
    assert (await receive(layer, plain))["n"] == 1
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + layer.expiry + 1)
    # The two left expired: they are not received and take no room.
    for n in range(4, 7):
        await layer.send(plain, {"type": "m", "n": n})
    assert [(await receive(layer, plain))["n"] for _ in range(3)] == [4, 5, 6]


@QUEUES
async def test_each_plain_channel_message_reaches_exactly_one_process(
    bc: Broadcast, plain: str
) -> None:
    workers = [BroadcastChannelLayer(), BroadcastChannelLayer()]
    sender = BroadcastChannelLayer(capacity=100)
    received: list[int] = []

    async def work(worker: BroadcastChannelLayer) -> None:
        while True:
            received.append((await worker.receive(plain))["n"])

    tasks = [asyncio.create_task(work(worker)) for worker in workers for _ in range(2)]
    try:
        for n in range(40):
            await sender.send(plain, {"type": "job", "n": n})
        await until(lambda: len(received) >= 40)
        await sender.send(plain, {"type": "job", "n": -1})  # the marker: nothing else
        await until(lambda: -1 in received)
        assert sorted(received) == [-1, *range(40)]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for layer in (*workers, sender):
            await layer.flush()


@QUEUES
async def test_a_cancelled_receive_of_a_plain_channel_loses_nothing(
    layer: BroadcastChannelLayer, plain: str
) -> None:
    for _ in range(20):
        waiting = await waiting_receive(layer, plain)
        await layer.send(plain, {"type": "m"})
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            message = await waiting
            assert message == {"type": "m"}
            continue
        assert await receive(layer, plain) == {"type": "m"}  # it went back to the queue


@QUEUES
async def test_flush_empties_plain_channels(layer: BroadcastChannelLayer, plain: str) -> None:
    await layer.send(plain, {"type": "old"})
    await layer.flush()
    await layer.send(plain, {"type": "new"})
    assert (await receive(layer, plain))["type"] == "new"


# Codecs that carry bytes ----------------------------------------------------------------


@QUEUES
async def test_bytes_are_not_inflated_where_the_codec_carries_them(
    broker: Broker, group: str
) -> None:
    # Binary frames of 0.8 of the limit fit it (1.2 MB, or the broker's hard limit where
    # lower): base64 would make them 1.07 of it.
    limit = min(1_200_000, broker.features.max_payload or 1_200_000)
    entry = broker.entry(
        CODEC="django_broadcast.codec.MsgpackCodec", OPTIONS={"max_message_size": limit}
    )
    blob = (bytes(range(256)) * 4096)[: limit * 4 // 5]
    with using(entry) as bc:
        first, second = BroadcastChannelLayer(), BroadcastChannelLayer()
        try:
            channel = await ready_channel(first)
            await first.group_add(group, channel)
            await second.send(channel, {"type": "websocket.send", "bytes": blob})
            assert (await receive(first, channel))["bytes"] == blob
            await second.group_send(group, {"type": "m", "nested": {"b": [blob]}})
            assert (await receive(first, channel))["nested"] == {"b": [blob]}
            await second.send("plain-bytes", {"type": "job", "bytes": blob})
            assert (await receive(first, "plain-bytes"))["bytes"] == blob
        finally:
            await first.flush()
            await second.flush()
            await bc.aclose()


def test_browsers_get_bytes_from_a_binary_codec_tagged() -> None:
    from django_broadcast import Event
    from django_broadcast.consumers.frames import sse_body, websocket_frame

    event = Event("g", "m", {"bytes": b"\x00\x01"}, "1", datetime.now(timezone.utc))
    with using({"URL": "memory://", "CODEC": "django_broadcast.codec.MsgpackCodec"}) as bc:
        assert '"data":{"bytes":{"__bytes__":"AAE="}}' in websocket_frame(event, bc)
        assert '"data":{"bytes":{"__bytes__":"AAE="}}' in sse_body(event, bc)


async def test_the_msgpack_codec_refuses_what_it_cannot_carry_clearly() -> None:
    from datetime import datetime, timezone

    with using({"URL": "memory://", "CODEC": "django_broadcast.codec.MsgpackCodec"}) as bc:
        async with bc.subscribe("c") as subscription:
            when = datetime(2026, 1, 2, tzinfo=timezone.utc)
            await bc.apublish("c", {"when": when, "pair": (1, 2), "raw": b"\x00"})
            event = await subscription.get(timeout=TIMEOUT)
            assert event.data == {"when": "2026-01-02T00:00:00Z", "pair": [1, 2], "raw": b"\x00"}
            with pytest.raises(ValueError, match=r"channel 'c'.*64-bit integers"):
                await bc.apublish("c", {"n": 2**70})
            with pytest.raises(TypeError, match=r"channel 'c'.*object"):
                await bc.apublish("c", {"n": object()})
