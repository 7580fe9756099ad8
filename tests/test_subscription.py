"""Subscriptions: positions, paged replay, overflow notices and drop counts, on every
backend; and what a publish that fails after the commit does."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from django.db import transaction

from django_broadcast import GAP, Broadcast, Event, Subscription, SubscriptionOverflow
from django_broadcast.signals import publish_failed

from .conftest import PrivateRedis, alias_settings, using

TIMEOUT = 5


async def drain(sub: Subscription, count: int) -> list[Event]:
    return [await sub.get(timeout=TIMEOUT) for _ in range(count)]


@pytest.mark.features("history")
async def test_a_subscription_knows_its_position_when_it_opens(
    backend_name: str, channel: str
) -> None:
    quiet, busy = f"{channel}.quiet", f"{channel}.busy"
    with using(alias_settings(backend_name)) as bc:
        last = [await bc.apublish(busy, n) for n in range(3)][-1]
        async with bc.subscribe(quiet, busy) as sub:
            # The busy channel resumes after its newest event, the quiet one from the
            # start: whatever is published from now on is after both.
            assert sub.positions == {quiet: bc.features.origin, busy: last.id}
            later = await bc.apublish(quiet, "later")
            assert (await sub.get(timeout=TIMEOUT)).id == later.id
            assert sub.positions[quiet] == later.id  # it moves as events are read
        async with bc.subscribe(quiet, since=sub.positions[quiet]) as again:
            assert again.positions == {quiet: later.id} and again.recovered
            after = await bc.apublish(quiet, "after")
            assert (await again.get(timeout=TIMEOUT)).id == after.id
        await bc.aclose()


@pytest.mark.features("history")
async def test_a_second_local_subscriber_gets_the_hubs_position(
    backend_name: str, channel: str
) -> None:
    with using(alias_settings(backend_name)) as bc:
        async with bc.subscribe(channel) as first:
            sent = await bc.apublish(channel, 1)
            assert (await first.get(timeout=TIMEOUT)).id == sent.id
            async with bc.subscribe(channel) as second:
                assert second.positions == {channel: sent.id}
        await bc.aclose()


@pytest.mark.features(history=False)
async def test_no_positions_without_history(bc: Broadcast, channel: str) -> None:
    async with bc.subscribe(channel) as sub:
        assert sub.positions == {}


@pytest.mark.features("history")
async def test_a_long_replay_is_paged_and_loses_nothing(backend_name: str, channel: str) -> None:
    entry = alias_settings(backend_name, QUEUE_SIZE=10, OPTIONS={"history": 5000})
    with using(entry) as bc:
        first = await bc.apublish(channel, 0)
        for n in range(1, 300):
            await bc.apublish(channel, n)
        async with bc.subscribe(channel, since=first.id) as sub:
            # Open, the subscription holds one page at most, not the whole window.
            assert sub.queued <= 10
            received = []
            for _ in range(150):
                received.append((await sub.get(timeout=TIMEOUT)).data)
                assert sub.queued <= 10
            # Live events published in the middle of the replay come after it, once.
            for n in range(300, 308):
                await bc.apublish(channel, n)
            for _ in range(157):
                received.append((await sub.get(timeout=TIMEOUT)).data)
            marker = await bc.apublish(channel, "marker")
            last = await sub.get(timeout=TIMEOUT)
        await bc.aclose()
    assert received == list(range(1, 308)) and sub.recovered
    assert last.id == marker.id


@pytest.mark.features("history")
async def test_live_events_that_overflow_during_a_replay_are_read_from_history(
    backend_name: str, channel: str
) -> None:
    entry = alias_settings(backend_name, QUEUE_SIZE=5, OPTIONS={"history": 5000})
    with using(entry) as bc:
        first = await bc.apublish(channel, 0)
        for n in range(1, 50):
            await bc.apublish(channel, n)
        async with bc.subscribe(channel, since=first.id) as sub:
            # Far more live events than QUEUE_SIZE while the replay is under way: the
            # subscription does not hold them, history has them.
            for n in range(50, 120):
                await bc.apublish(channel, n)
            async with bc.subscribe(channel) as witness:  # fanned out to sub as well
                marker = await bc.apublish(channel, "marker")
                while (await witness.get(timeout=TIMEOUT)).id != marker.id:
                    pass  # the witness overflows too: its newest event is kept
            received = [(await sub.get(timeout=TIMEOUT)).data for _ in range(120)]
        await bc.aclose()
    assert received == [*range(1, 120), "marker"]
    assert sub.dropped == 0 and sub.recovered


async def test_an_overflow_notice_names_each_channel(backend_name: str, channel: str) -> None:
    a, b = f"{channel}.a", f"{channel}.b"
    with using(alias_settings(backend_name, QUEUE_SIZE=4)) as bc:
        async with bc.subscribe(a, b) as slow, bc.subscribe(a, b) as fast:
            for n in range(6):
                await bc.apublish(a, f"a{n}")
                await bc.apublish(b, f"b{n}")
                await drain(fast, 2)
            events = await drain(slow, 6)
        await bc.aclose()
    gaps = {e.channel: e.data for e in events if e.type == GAP}
    overflow = {"reason": "overflow", "dropped": 4}
    assert gaps == {a: overflow, b: overflow}
    assert [e.data for e in events if e.type != GAP] == ["a4", "b4", "a5", "b5"]
    assert slow.dropped == 8 == bc.dropped


async def publish_through(bc: Broadcast, witness: Subscription, channel: str, data: Any) -> None:
    """Publish, and wait until the hub has handed the event out (to ``witness`` and,
    in the same call, every other subscriber of ``channel``)."""
    sent = await bc.apublish(channel, data)
    assert (await witness.get(timeout=TIMEOUT)).id == sent.id


async def test_disconnect_counts_every_event_the_subscriber_lost(
    backend_name: str, channel: str
) -> None:
    with using(alias_settings(backend_name, QUEUE_SIZE=3, OVERFLOW="disconnect")) as bc:
        async with bc.subscribe(channel) as sub, bc.subscribe(channel) as witness:
            for n in range(100):
                await publish_through(bc, witness, channel, n)
            received = []
            with pytest.raises(SubscriptionOverflow):
                async for event in sub:
                    received.append(event.data)
        await bc.aclose()
    assert received == [0, 1, 2]
    assert sub.dropped == 97 == bc.dropped  # 3 to 99: the subscriber never saw them


async def test_events_left_queued_when_an_overflowed_subscription_closes_count_as_dropped(
    backend_name: str, channel: str
) -> None:
    with using(alias_settings(backend_name, QUEUE_SIZE=3, OVERFLOW="disconnect")) as bc:
        async with bc.subscribe(channel) as sub, bc.subscribe(channel) as witness:
            for n in range(5):
                await publish_through(bc, witness, channel, n)
        await bc.aclose()
    assert sub.dropped == 5  # 0 to 2 never read, 3 overflowed, 4 came after


def test_deeply_nested_data_is_a_clear_error(channel: str) -> None:
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with using(alias_settings("memory")) as bc, pytest.raises(ValueError, match="nested"):
        bc.publish(channel, nested)


def test_text_that_cannot_be_encoded_is_a_clear_error(channel: str) -> None:
    with using(alias_settings("memory")) as bc:
        with pytest.raises(ValueError, match=f"channel '{channel}'.*surrogate"):
            bc.publish(channel, "x", type="\ud800")
        with pytest.raises(ValueError, match=f"channel '{channel}'.*surrogate"):
            bc.publish(channel, {"text": "\udfff"})


class _Received:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.calls.append(kwargs)


@pytest.mark.django_db(transaction=True)
def test_a_publish_that_fails_after_commit_never_raises(
    private_redis: PrivateRedis, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    received = _Received()
    publish_failed.connect(received)
    later: list[str] = []
    try:
        with using({"URL": private_redis.url, "TIMEOUT": 1}) as bc:
            private_redis.kill()
            with caplog.at_level(logging.ERROR, "django_broadcast"), transaction.atomic():
                bc.publish(channel, {"n": 1}, type="saved")
                transaction.on_commit(lambda: later.append("ran"))
            bc.close()
    finally:
        publish_failed.disconnect(received)
    assert later == ["ran"]  # hooks after the failed one still run
    [call] = received.calls
    assert (call["channel"], call["type"], call["data"]) == (channel, "saved", {"n": 1})
    assert call["maybe_sent"] is False and isinstance(call["broadcast"], Broadcast)
    assert bc.failed_publishes == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert channel in record.getMessage() and "saved" in record.getMessage()
    assert "not sent" in record.getMessage()


@pytest.mark.django_db(transaction=True)
def test_publish_on_commit_sends_at_once_outside_a_transaction_and_never_raises(
    private_redis: PrivateRedis, channel: str
) -> None:
    from django_broadcast.testing import capture_broadcasts

    with using({"URL": private_redis.url, "TIMEOUT": 1}) as bc:
        with capture_broadcasts(bc.alias) as captured:
            bc.publish_on_commit(channel, {"n": 1})  # autocommit: sent at once
            assert [e.data for e in captured.events] == [{"n": 1}]
            with transaction.atomic(using="default"):
                bc.publish_on_commit(channel, {"n": 2}, type="saved", using="default")
                assert len(captured.events) == 1  # not before the commit
            assert [(e.type, e.data) for e in captured.events][1] == ("saved", {"n": 2})
        private_redis.kill()
        bc.publish_on_commit(channel, {"n": 3})  # the broker is down: logged, not raised
        assert bc.failed_publishes == 1
        with pytest.raises(TypeError):
            bc.publish_on_commit(channel, {"n": object()})  # bad data raises in the caller
        bc.close()


async def test_subscribing_while_the_hub_reconnects_is_unavailable_not_an_internal_error(
    private_redis: PrivateRedis, channel: str
) -> None:
    from django_broadcast import BroadcastUnavailable, SubscriptionClosed

    with using({"URL": private_redis.url, "TIMEOUT": 1, "RECONNECT_TIMEOUT": 30}) as bc:
        async with bc.subscribe(channel) as sub:
            private_redis.kill()
            for _ in range(3):
                with pytest.raises(BroadcastUnavailable):
                    async with bc.subscribe(f"{channel}.other"):
                        pass
            private_redis.start()
            notice = await sub.get(timeout=TIMEOUT)
            assert notice.type == GAP and notice.data["reason"] == "reconnect"
            async with bc.subscribe(f"{channel}.other") as other:
                await bc.apublish(f"{channel}.other", "back")
                assert (await other.get(timeout=TIMEOUT)).data == "back"
        with pytest.raises(SubscriptionClosed):
            await sub.get(timeout=TIMEOUT)
        await bc.aclose()


@pytest.mark.features("history")
async def test_subscribe_with_since_on_a_history_backend_replays_to_the_live_head(
    backend_name: str, channel: str
) -> None:
    # Events published while a replay reads history are neither lost nor repeated.
    with using(alias_settings(backend_name, QUEUE_SIZE=7)) as bc:
        first = await bc.apublish(channel, 0)

        async def publisher() -> None:
            for n in range(1, 60):
                await bc.apublish(channel, n)
                await asyncio.sleep(0)

        task = asyncio.create_task(publisher())
        async with bc.subscribe(channel, since=first.id) as sub:
            received = [(await sub.get(timeout=TIMEOUT)).data for _ in range(59)]
        await task
        await bc.aclose()
    assert received == list(range(1, 60))


async def until(check: Any) -> None:
    """Wait (at most TIMEOUT) until ``check()`` is true."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


class Taker:
    """A sink that takes at most ``room`` events, then none until given more."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.taken: list[Any] = []
        self.woken = asyncio.Event()

    def take(self, subscription: Subscription, events: list[Event]) -> int:
        count = min(self.room, len(events))
        self.room -= count
        self.taken.extend(event.data for event in events[:count])
        return count

    def wake(self, subscription: Subscription) -> None:
        self.woken.set()


async def test_a_pushed_subscription_hands_events_to_its_sink_as_they_are_fanned_out(
    bc: Broadcast, channel: str
) -> None:
    async with bc.subscribe(channel) as sub:
        sink = Taker(room=1000)
        sub.push_to(sink)
        sent = [await bc.apublish(channel, n) for n in range(3)]
        marker = await bc.apublish(channel, "marker")
        await until(lambda: "marker" in sink.taken)
        assert sink.taken == [0, 1, 2, "marker"] and sub.queued == 0
        assert not sub.pending and not sink.woken.is_set()
        if bc.features.history:
            assert sub.positions[channel] == marker.id != sent[-1].id


async def test_what_its_sink_cannot_take_waits_in_the_queue_in_order() -> None:
    with using(alias_settings("memory", QUEUE_SIZE=3)) as bc:
        async with bc.subscribe("t-pushed") as sub:
            sink = Taker(room=2)
            sub.push_to(sink)
            for n in range(7):
                await bc.apublish("t-pushed", n)
            await asyncio.wait_for(sink.woken.wait(), TIMEOUT)
            await until(lambda: sub.queued == 4)  # 3 events and the overflow notice
            assert sink.taken == [0, 1] and sub.pending
            gap = await sub.poll()
            assert gap is not None and gap.type == GAP and gap.data["dropped"] == 2
            assert [(await sub.poll()).data for _ in range(3)] == [4, 5, 6]  # type: ignore[union-attr]
            assert await sub.poll() is None and not sub.pending
        await bc.aclose()


async def test_a_pushed_subscription_that_failed_raises_once_drained() -> None:
    with using(alias_settings("memory", QUEUE_SIZE=1, OVERFLOW="disconnect")) as bc:
        async with bc.subscribe("t-pushed") as sub:
            sink = Taker(room=0)
            sub.push_to(sink)
            for n in range(3):
                await bc.apublish("t-pushed", n)
            await until(lambda: sub.closed)
            assert (await sub.poll()).data == 0  # type: ignore[union-attr]
            with pytest.raises(SubscriptionOverflow):
                await sub.poll()
        await bc.aclose()
