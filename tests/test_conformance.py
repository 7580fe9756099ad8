"""The contract every backend keeps, run against each of them on a real broker."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from uuid import UUID

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from django_broadcast import (
    GAP,
    Broadcast,
    BroadcastError,
    Event,
    MessageTooLarge,
    SubscriptionOverflow,
)

from .brokers import Broker
from .conftest import alias_settings, using

TIMEOUT = 5


async def eventually(predicate, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    """Wait, at most ``timeout`` seconds, for the async ``predicate`` to hold."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_round_trip(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as sub:
        sent = bc.publish(channel, {"text": "hello", "n": 1}, type="chat.message")
        event = await sub.get(timeout=TIMEOUT)
    assert isinstance(sent, Event)
    assert event == Event(channel, "chat.message", {"text": "hello", "n": 1}, sent.id, event.time)
    assert event.time.tzinfo is not None
    assert abs((event.time - datetime.now(timezone.utc)).total_seconds()) < 60


async def test_apublish_returns_the_event(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as sub:
        sent = await bc.apublish(channel, [1, 2, 3])
        received = await sub.get(timeout=TIMEOUT)
    assert (sent.channel, sent.type, sent.data, sent.id) == (
        channel,
        "message",
        [1, 2, 3],
        received.id,
    )


async def test_django_types_are_encoded(bc: Broadcast, channel: str) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    async with bc.subscribe(channel) as sub:
        await bc.apublish(channel, {"at": when, "price": Decimal("1.50"), "uid": UUID(int=1)})
        event = await sub.get(timeout=TIMEOUT)
    assert event.data == {
        "at": "2026-01-02T03:04:05Z",
        "price": "1.50",
        "uid": "00000000-0000-0000-0000-000000000001",
    }


async def test_several_channels_and_no_leaks(bc: Broadcast, channel: str) -> None:
    a, b, c = f"{channel}.a", f"{channel}.b", f"{channel}.c"
    async with bc.subscribe(a, b) as both, bc.subscribe(b) as only_b:
        await bc.apublish(c, "nobody")
        await bc.apublish(a, "to a")
        await bc.apublish(b, "to b")
        assert [
            (e.channel, e.data) for e in [await both.get(timeout=TIMEOUT) for _ in range(2)]
        ] == [
            (a, "to a"),
            (b, "to b"),
        ]
        assert (await only_b.get(timeout=TIMEOUT)).data == "to b"
        with pytest.raises(TimeoutError):
            await only_b.get(timeout=0.2)


async def test_order_is_kept(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as sub:
        for n in range(300):
            bc.publish(channel, n)
        received = [(await sub.get(timeout=TIMEOUT)) for _ in range(300)]
    assert [e.data for e in received] == list(range(300))
    ids = [e.id for e in received]
    assert len(set(ids)) == 300


async def test_a_thousand_subscribers_at_once_share_one_broker_subscription(
    broker: Broker, bc: Broadcast, channel: str
) -> None:
    count = 1000
    ready = 0
    all_ready = asyncio.Event()
    go = asyncio.Event()

    async def subscriber() -> Event:
        nonlocal ready
        async with bc.subscribe(channel) as sub:
            ready += 1
            if ready == count:
                all_ready.set()
            await go.wait()
            return await sub.get(timeout=TIMEOUT)

    tasks = [asyncio.create_task(subscriber()) for _ in range(count)]
    await asyncio.wait_for(all_ready.wait(), TIMEOUT)
    assert bc._hub().channels == {channel}
    assert await broker.subscriptions(bc, channel) == 1
    await bc.apublish(channel, "everyone")
    go.set()
    events = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert {e.data for e in events} == {"everyone"} and len(events) == count


async def test_leaving_releases_the_broker_subscription(
    broker: Broker, bc: Broadcast, channel: str
) -> None:
    async with bc.subscribe(channel):
        async with bc.subscribe(channel):
            assert await broker.subscriptions(bc, channel) == 1
        assert bc._hub().channels == {channel}  # one subscriber left
    assert bc._hub().channels == set()

    async def released() -> bool:
        return await broker.subscriptions(bc, channel) == 0

    await eventually(released)


async def test_cancelled_subscriber_is_released(
    broker: Broker, bc: Broadcast, channel: str
) -> None:
    entered = asyncio.Event()

    async def listen() -> None:
        async with bc.subscribe(channel) as sub:
            entered.set()
            await sub.get()

    task = asyncio.create_task(listen())
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def released() -> bool:
        return await broker.subscriptions(bc, channel) == 0

    await eventually(released)


async def test_sync_publish_from_a_thread_reaches_an_async_subscriber(
    bc: Broadcast, channel: str
) -> None:
    async with bc.subscribe(channel) as sub:
        threads = [
            threading.Thread(target=bc.publish, args=(channel, n), kwargs={"on_commit": False})
            for n in range(5)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        received = {(await sub.get(timeout=TIMEOUT)).data for _ in range(5)}
    assert received == set(range(5))


@pytest.mark.django_db(transaction=True)
async def test_publish_in_a_transaction_waits_for_commit(bc: Broadcast, channel: str) -> None:
    def views() -> None:
        with transaction.atomic():
            assert bc.publish(channel, "committed") is None
            bc.publish(channel, "sent at once", on_commit=False)
        try:
            with transaction.atomic():
                bc.publish(channel, "rolled back")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        bc.publish(channel, "after")

    async with bc.subscribe(channel) as sub:
        await sync_to_async(views)()
        received = [(await sub.get(timeout=TIMEOUT)).data for _ in range(3)]
        with pytest.raises(TimeoutError):
            await sub.get(timeout=0.2)
    assert received == ["sent at once", "committed", "after"]


async def test_history_and_resume(bc: Broadcast, channel: str) -> None:
    if not bc.features.history:
        with pytest.raises(BroadcastError, match="keeps no history"):
            bc.history(channel)
        # A resume on a backend without history says so with a gap notice.
        async with bc.subscribe(channel, since="1-0") as sub:
            notice = await sub.get(timeout=TIMEOUT)
        assert notice.type == GAP and notice.data["reason"] == "history"
        return
    sent = [bc.publish(channel, n) for n in range(10)]
    assert all(sent)
    ids = [e.id for e in sent if e is not None]
    assert [e.data for e in bc.history(channel)] == list(range(10))
    assert [e.data for e in bc.history(channel, limit=3)] == [7, 8, 9]
    assert [e.data for e in await bc.ahistory(channel, since=ids[6])] == [7, 8, 9]
    assert [e.data for e in bc.history(channel, since=ids[2], limit=2)] == [3, 4]
    assert bc.history(f"{channel}.empty") == []

    async with bc.subscribe(channel, since=ids[7]) as sub:
        bc.publish(channel, 10)
        resumed = [(await sub.get(timeout=TIMEOUT)).data for _ in range(3)]
        with pytest.raises(TimeoutError):
            await sub.get(timeout=0.2)
    assert resumed == [8, 9, 10]


@pytest.mark.features("history")
async def test_resume_beyond_history_gets_a_gap(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name, OPTIONS={"history": 5})) as bc:
        first = bc.publish(channel, 0)
        assert first is not None
        for n in range(1, 200):
            bc.publish(channel, n)
        events = bc.history(channel, since=first.id, limit=None)
        assert events[0].type == GAP and events[0].data["reason"] == "history"
        async with bc.subscribe(channel, since=first.id) as sub:
            notice = await sub.get(timeout=TIMEOUT)
            rest = [(await sub.get(timeout=TIMEOUT)).data for _ in range(len(events) - 1)]
        await bc.aclose()
    assert notice.type == GAP
    assert rest == [e.data for e in events[1:]] and rest[-1] == 199


@pytest.mark.features("history")
async def test_malformed_since_is_refused(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name)) as bc:
        with pytest.raises(ValueError, match="not"):
            bc.subscribe(channel, since="yesterday")
        with pytest.raises(ValueError):
            bc.history(channel, since="yesterday")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("chat room", "has a space at position 4"),
        ("chat/room", "'/'"),
        ("", "empty"),
        ("x" * 101, "101 characters"),
        ("caf\u00e9", "'\u00e9'"),
    ],
)
async def test_invalid_channel_names(bc: Broadcast, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bc.publish(name, 1)
    with pytest.raises(ValueError, match=message):
        await bc.apublish(name, 1)
    with pytest.raises(ValueError, match=message):
        bc.subscribe("ok", name)


async def test_bad_data_is_refused_before_anything_is_sent(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as sub:
        with pytest.raises(TypeError, match=f"'{channel}'.*type object is not JSON"):
            bc.publish(channel, {"oops": object()})
        with pytest.raises(TypeError, match="set"):
            await bc.apublish(channel, {1, 2})
        with pytest.raises(ValueError, match="not JSON compliant"):
            bc.publish(channel, float("nan"))
        with pytest.raises(MessageTooLarge) as info:
            bc.publish(channel, "x" * (1024 * 1024))
        assert info.value.size > info.value.limit == 1024 * 1024
        assert "1,048,576" in str(info.value)
        bc.publish(channel, "marker")
        assert (await sub.get(timeout=TIMEOUT)).data == "marker"


async def test_overflow_drops_oldest_and_leaves_a_gap(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name, QUEUE_SIZE=5)) as bc:
        async with bc.subscribe(channel) as slow, bc.subscribe(channel) as fast:
            for n in range(20):
                await bc.apublish(channel, n)
                assert (await fast.get(timeout=TIMEOUT)).data == n  # never slowed down
            # The notice takes a slot of its own: the QUEUE_SIZE newest events remain.
            events = [await slow.get(timeout=TIMEOUT) for _ in range(6)]
            with pytest.raises(TimeoutError):
                await slow.get(timeout=0.1)
        await bc.aclose()
    gap, *rest = events
    assert gap.type == GAP and gap.data == {"reason": "overflow", "dropped": 15}
    assert [e.data for e in rest] == [15, 16, 17, 18, 19]
    assert slow.dropped == 15 and fast.dropped == 0 and bc.dropped == 15


async def test_overflow_can_disconnect(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name, QUEUE_SIZE=3, OVERFLOW="disconnect")) as bc:
        async with bc.subscribe(channel) as sub:
            for n in range(4):
                await bc.apublish(channel, n)
                await asyncio.sleep(0)
            async with bc.subscribe(channel) as witness:  # the hub has fanned out to sub
                await bc.apublish(channel, "sync")
                while (await witness.get(timeout=TIMEOUT)).data != "sync":
                    pass
            received = []
            with pytest.raises(SubscriptionOverflow, match="QUEUE_SIZE"):
                async for event in sub:
                    received.append(event.data)
        await bc.aclose()
    assert received == [0, 1, 2]


async def test_closing_the_alias_wakes_every_subscriber(bc: Broadcast, channel: str) -> None:
    entered = asyncio.Event()
    got: list[Event] = []

    async def listen() -> None:
        async with bc.subscribe(channel) as sub:
            entered.set()
            async for event in sub:
                got.append(event)

    task = asyncio.create_task(listen())
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    await bc.aclose()
    await asyncio.wait_for(task, TIMEOUT)  # iteration ended: nobody hangs
    assert got == []


# Patterns -------------------------------------------------------------------------------


@pytest.mark.features("patterns")
async def test_a_pattern_receives_every_channel_that_matches(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(patterns=[f"{channel}.*"]) as sub:
        await bc.apublish(f"{channel}.a", 1)
        await bc.apublish(f"{channel}-not", "no")
        await bc.apublish(f"{channel}.b.deeper", 2)
        received = [await sub.get(timeout=TIMEOUT) for _ in range(2)]
        marker = await bc.apublish(f"{channel}.marker", "marker")
        assert (await sub.get(timeout=TIMEOUT)).id == marker.id  # nothing else came
    assert [(e.channel, e.data) for e in received] == [
        (f"{channel}.a", 1),
        (f"{channel}.b.deeper", 2),
    ]


@pytest.mark.features("patterns")
async def test_a_channel_held_by_name_and_by_pattern_comes_once(
    bc: Broadcast, channel: str
) -> None:
    named = f"{channel}.a"
    async with bc.subscribe(named, patterns=[f"{channel}.?"]) as sub:
        first = await bc.apublish(named, 1)
        other = await bc.apublish(f"{channel}.b", 2)
        marker = await bc.apublish(named, "marker")
        got = [(await sub.get(timeout=TIMEOUT)).id for _ in range(3)]
        assert sorted(got) == sorted([first.id, other.id, marker.id])
        end = await bc.apublish(f"{channel}.c", "end")  # through the pattern only
        assert (await sub.get(timeout=TIMEOUT)).id == end.id  # no second copy before it


@pytest.mark.features("patterns")
async def test_subscribers_of_a_pattern_share_one_broker_subscription(
    bc: Broadcast, channel: str
) -> None:
    pattern = f"{channel}.*"
    async with bc.subscribe(patterns=[pattern]) as one, bc.subscribe(patterns=[pattern]) as two:
        assert bc._hub().patterns == {pattern}
        sent = await bc.apublish(f"{channel}.x", "both")
        assert (await one.get(timeout=TIMEOUT)).id == sent.id
        assert (await two.get(timeout=TIMEOUT)).id == sent.id
    assert bc._hub().patterns == set()


@pytest.mark.features(patterns=False)
async def test_a_pattern_where_the_backend_has_none_is_a_clear_error(
    bc: Broadcast, channel: str
) -> None:
    with pytest.raises(BroadcastError, match="cannot subscribe by pattern"):
        bc.subscribe(patterns=[f"{channel}.*"])


@pytest.mark.parametrize("bad", ["chat room.*", "", "x" * 101, "a/b"])
def test_invalid_patterns(bad: str) -> None:
    with using(alias_settings("memory")) as bc, pytest.raises(ValueError, match="pattern"):
        bc.subscribe(patterns=[bad])
