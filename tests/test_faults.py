"""Broker faults, on a private redis-server of each test's own.

Slow replies, frozen brokers, crashes and restarts with or without their data, a
broker that is down: checked at the receiver level (as the hub drives a receiver) and
at the Python API level, on ``redis://`` and ``redis+streams://``. The shared broker is
never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio

from django_broadcast import Broadcast, BroadcastUnavailable, Event, Subscription
from django_broadcast.backends.redis import RedisBackend

from .conftest import PrivateRedis, using
from .test_redis import TIMEOUT, listening

#: The TIMEOUT of the aliases here: small, so that the faults show quickly.
SHORT = 0.3


def entry(server: PrivateRedis, kind: str, **extra: object) -> dict[str, object]:
    """The alias settings of backend ``kind`` on ``server``."""
    url = server.streams_url if kind == "redis+streams" else server.url
    return {"URL": url, "TIMEOUT": SHORT, **extra}


@contextlib.contextmanager
def sleeping(server: PrivateRedis, seconds: float) -> Iterator[None]:
    """Make ``server`` sleep for ``seconds``; on exit, wait until it answers again."""
    sleeper = server.debug_sleep(seconds)
    try:
        yield
    finally:
        sleeper.settimeout(TIMEOUT)
        assert sleeper.recv(64).startswith(b"+OK")  # DEBUG SLEEP is over
        sleeper.close()


async def test_a_slow_reply_fails_that_subscribe_and_never_answers_a_later_one(
    private_redis: PrivateRedis, channel: str
) -> None:
    async with listening(entry(private_redis, "redis+streams")) as listener:
        backend, receiver = listener.backend, listener.receiver
        old = [await backend.apublish(channel, b"old") for _ in range(3)]
        with (
            sleeping(private_redis, SHORT * 4),
            pytest.raises(BroadcastUnavailable, match="TIMEOUT"),
        ):
            await receiver.subscribe(channel)  # its XINFO is answered too late
        # The late answer went with its connection: later subscribes are right.
        assert await receiver.subscribe(channel) == old[-1]
        other = f"{channel}.other"
        assert await receiver.subscribe(other) == backend.features.origin
        sent = [await backend.apublish(channel, b"new"), await backend.apublish(other, b"new")]
        received = await listener.next(2)
    assert sorted((m.channel, m.id, m.payload) for m in received) == sorted(
        [(channel, sent[0], b"new"), (other, sent[1], b"new")]
    )


async def test_a_slow_resubscribe_fails_the_reconnect(
    private_redis: PrivateRedis, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with listening(entry(private_redis, "redis")) as listener:
        backend, receiver = listener.backend, listener.receiver
        await receiver.subscribe(channel)
        await listener.stop()  # the hub reconnects once its read has failed
        # The server falls asleep once connected, before it confirms the SUBSCRIBE.
        link = receiver.link  # type: ignore[attr-defined]
        connect = link.connect
        with contextlib.ExitStack() as asleep:

            async def connect_then_sleep() -> object:
                connection = await connect()
                asleep.enter_context(sleeping(private_redis, SHORT * 4))
                return connection

            monkeypatch.setattr(link, "connect", connect_then_sleep)
            with pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
                await receiver.reconnect()
        monkeypatch.undo()
        assert await receiver.reconnect() == {channel}
        listener.restart()
        sent = await backend.apublish(channel, b"after")
        [message] = await listener.next(1)
    assert (message.channel, message.id, message.payload) == (channel, sent, b"after")


def cancel_soon(task: asyncio.Task[None], turns: int) -> None:
    """Cancel ``task`` after ``turns`` turns of the event loop."""
    if turns:
        asyncio.get_running_loop().call_soon(cancel_soon, task, turns - 1)
    else:
        task.cancel()


@pytest.mark.parametrize("kind", ["redis", "redis+streams"])
async def test_a_reading_receiver_can_be_cancelled_at_any_moment(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    """The hub cancels its listener and waits for it: the cancellation is never lost.

    (redis-py sends through ``asyncio.wait_for`` on a socket with a timeout, which
    before Python 3.12 returns normally when cancelled just as the send completes.)
    """
    async with listening(entry(private_redis, kind, TIMEOUT=5)) as listener:
        backend, receiver = listener.backend, listener.receiver
        await receiver.subscribe(channel)
        await listener.stop()
        await receiver.reconnect()

        async def read_then_cancel(turns: int) -> None:
            while True:  # cancels itself in the middle of its next read
                await receiver.read()
                cancel_soon(asyncio.current_task(), turns)  # type: ignore[arg-type]

        for turns in range(12):
            reader = asyncio.create_task(read_then_cancel(turns))
            await backend.apublish(channel, b"%d" % turns)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(reader, TIMEOUT)
            await receiver.reconnect()


@contextlib.contextmanager
def frozen(server: PrivateRedis) -> Iterator[None]:
    """Freeze ``server`` for the block; thaw it even where the block fails."""
    server.freeze()
    try:
        yield
    finally:
        server.thaw()


async def test_a_subscribe_that_timed_out_is_unsubscribed_at_the_broker(
    private_redis: PrivateRedis, channel: str
) -> None:
    async with listening(entry(private_redis, "redis")) as listener:
        backend, receiver = listener.backend, listener.receiver
        assert isinstance(backend, RedisBackend)
        with frozen(private_redis), pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
            await receiver.subscribe(channel)  # SUBSCRIBE sent, confirmed too late
        # The broker has run everything sent before this SUBSCRIBE once it confirms it.
        await receiver.subscribe(f"{channel}.marker")
        client = redis.asyncio.Redis.from_url(private_redis.url)
        try:
            [(_, subscribers)] = await client.pubsub_numsub(backend.key(channel))
        finally:
            await client.aclose()
        assert subscribers == 0
        # Subscribed again, it waits for its own confirmation, not the late one.
        await receiver.subscribe(channel)
        sent = await backend.apublish(channel, b"again")
        [message] = await listener.next(1)
    assert (message.channel, message.id) == (channel, sent)


async def test_a_streams_subscribe_that_failed_leaves_no_position(
    private_redis: PrivateRedis, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = f"{channel}.marker"
    async with listening(entry(private_redis, "redis+streams")) as listener:
        backend, receiver = listener.backend, listener.receiver
        await receiver.subscribe(marker)  # the reader now waits in XREAD
        xinfo = receiver._xinfo  # type: ignore[attr-defined]

        async def xinfo_then_freeze(channel: str) -> object:
            reply = await xinfo(channel)
            private_redis.freeze()  # CLIENT UNBLOCK will not be answered in time
            return reply

        monkeypatch.setattr(receiver, "_xinfo", xinfo_then_freeze)
        try:
            with pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
                await receiver.subscribe(channel)
        finally:
            private_redis.thaw()
        await backend.apublish(channel, b"not subscribed")
        sent = await backend.apublish(marker, b"marker")
        [message] = await listener.next(1)
    assert (message.channel, message.id) == (marker, sent)


KINDS = ["redis", "redis+streams"]


def publishes(bc: Broadcast, channel: str, data: object) -> list[Callable[[], Awaitable[Event]]]:
    """A publish from sync code (in a thread, as a view runs) and one from async code."""
    return [
        lambda: asyncio.to_thread(bc.publish, channel, data, on_commit=False),  # type: ignore[arg-type]
        lambda: bc.apublish(channel, data),
    ]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_publish_was_not_sent(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    with using(entry(private_redis, kind)) as bc:
        for publish in publishes(bc, channel, "pooled"):
            await publish()  # each path now holds a pooled connection, soon stale
        private_redis.kill()
        for publish in publishes(bc, channel, "refused"):
            with pytest.raises(BroadcastUnavailable, match="not sent") as info:
                await asyncio.wait_for(publish(), TIMEOUT)
            assert info.value.maybe_sent is False
        await bc.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_publish_to_a_frozen_broker_may_have_been_sent(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    with using(entry(private_redis, kind)) as bc:
        for publish in publishes(bc, channel, "pooled"):
            await publish()
        with frozen(private_redis):
            for publish in publishes(bc, channel, "frozen"):
                started = time.monotonic()
                with pytest.raises(BroadcastUnavailable, match="may still") as info:
                    await asyncio.wait_for(publish(), TIMEOUT)
                assert info.value.maybe_sent is True
                assert time.monotonic() - started < SHORT + 0.5
        # Once thawed, the broker runs what it was sent.
        if kind == "redis+streams":
            marker = await bc.apublish(channel, "marker")
            assert [e.data for e in await bc.ahistory(channel)] == [
                "pooled", "pooled", "frozen", "frozen", "marker"
            ]  # fmt: skip
            assert (await bc.ahistory(channel))[-1].id == marker.id
        await bc.aclose()


# The fault matrix, at the Python API level ---------------------------------------------


async def eventually(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Wait, at most TIMEOUT seconds, until the async ``predicate`` holds."""
    deadline = time.monotonic() + TIMEOUT
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def broker_state(server: PrivateRedis, *channels: str) -> tuple[list[int], int]:
    """How many subscribers each of ``channels`` has at the broker (with the default
    key prefix), and how many receiving connections of this library it holds."""
    client = redis.asyncio.Redis.from_url(server.url)
    try:
        counts = await client.pubsub_numsub(*(f"broadcast:{c}" for c in channels))
        names = [c.get("name", "") for c in await client.client_list()]
    finally:
        await client.aclose()
    return [count for _, count in counts], sum(n.startswith("django_broadcast:") for n in names)


def nothing_left(server: PrivateRedis, *channels: str) -> Callable[[], Awaitable[bool]]:
    """A predicate: the broker holds nothing of this library for ``channels``."""

    async def check() -> bool:
        return await broker_state(server, *channels) == ([0] * len(channels), 0)

    return check


async def receive_until(sub: Subscription, data: object, log: list[tuple[float, Event]]) -> None:
    """Receive into ``log`` (with the time of receipt) up to the event with ``data``."""
    while not log or log[-1][1].data != data:
        event = await sub.get(timeout=TIMEOUT)
        log.append((time.monotonic(), event))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_crash_and_restart_mid_stream(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    """kill -9 and restart (with its data) while a publisher keeps publishing: streams
    deliver every acknowledged event exactly once, in order; pub/sub says it lost some
    with a gap notice, then delivers live events."""
    with using(entry(private_redis, kind, TIMEOUT=1, RECONNECT_TIMEOUT=TIMEOUT)) as bc:
        acknowledged: list[Event] = []
        refused: list[BroadcastUnavailable] = []
        down, restarted = asyncio.Event(), asyncio.Event()

        async def publish_on() -> None:
            n = since_restart = 0
            while since_restart < 20:
                n += 1
                try:
                    acknowledged.append(await bc.apublish(channel, n))
                except BroadcastUnavailable as exc:  # not acknowledged
                    refused.append(exc)
                    if len(refused) == 5:
                        down.set()
                    continue
                finally:
                    await asyncio.sleep(0.005)
                since_restart += restarted.is_set()
            acknowledged.append(await bc.apublish(channel, "end"))

        log: list[tuple[float, Event]] = []
        async with bc.subscribe(channel) as sub:
            publisher = asyncio.create_task(publish_on())
            while len(log) < 10:
                log.append((time.monotonic(), await sub.get(timeout=TIMEOUT)))
            killed = time.monotonic()
            private_redis.kill()
            await asyncio.wait_for(down.wait(), TIMEOUT)  # the publisher keeps trying
            await asyncio.to_thread(private_redis.start)  # with the data it had
            up = time.monotonic()
            restarted.set()
            await receive_until(sub, "end", log)
            await asyncio.wait_for(publisher, TIMEOUT)
        await bc.aclose()
        received = [event for _, event in log]
        backend = bc.backend
    gaps = [i for i, event in enumerate(received) if event.is_gap]
    events = [event for event in received if not event.is_gap]
    ids = [event.id for event in events]
    lost = [event.data for event in acknowledged if event.id not in ids]
    times = [t for t, _ in log]
    stalled = max(later - earlier for earlier, later in itertools.pairwise(times))
    print(f"\n{kind}: {len(acknowledged)} acknowledged, {len(refused)} refused, "
          f"{len(lost)} acknowledged lost {lost}, broker down {up - killed:.2f} s, "
          f"deliveries stalled {stalled:.2f} s")  # fmt: skip
    assert len(set(ids)) == len(ids)  # nothing twice
    assert events[-1].data == "end"
    if kind == "redis+streams":
        assert gaps == [] and lost == []
        assert ids == sorted(ids, key=backend.id_key)  # in order
    else:
        [gap] = gaps
        assert received[gap].data == {"reason": "reconnect"}
        numbers = [e.data for e in events[:-1]]
        assert numbers == sorted(numbers)  # in order, per publisher


async def test_a_restart_without_its_data_is_a_gap_on_streams(
    private_redis: PrivateRedis, channel: str
) -> None:
    """The stream is made anew with ids after the old position: only the missing
    entry at that position tells that the events in between are gone."""
    with using(entry(private_redis, "redis+streams", TIMEOUT=1)) as bc:
        async with bc.subscribe(channel) as sub:
            before = await bc.apublish(channel, "before")
            assert (await sub.get(timeout=TIMEOUT)).id == before.id
            # Both before the hub can reconnect: the event loop waits meanwhile.
            private_redis.restart(persist=False)
            after = bc.publish(channel, "after", on_commit=False)
            assert after is not None
            notice = await sub.get(timeout=TIMEOUT)
            assert notice.is_gap and notice.data["reason"] == "reconnect"
            assert (await sub.get(timeout=TIMEOUT)).id == after.id
        [notice, event] = await bc.ahistory(channel, since=before.id)
        assert notice.is_gap and event.id == after.id
        await bc.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_broker_frozen_past_the_timeout(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    """Publishes and new subscriptions fail within TIMEOUT; subscribers wait, then
    resume once it thaws, with whatever it was sent; nothing is left behind."""
    late = f"{channel}.late"
    with using(entry(private_redis, kind, RECONNECT_TIMEOUT=SHORT * 3)) as bc:
        async with bc.subscribe(channel) as sub:
            for publish in publishes(bc, channel, "before"):
                sent = await publish()
                assert (await sub.get(timeout=TIMEOUT)).id == sent.id
            with frozen(private_redis):
                for attempt in [
                    *publishes(bc, channel, "frozen"),
                    lambda: bc.subscribe(late).__aenter__(),
                ]:
                    started = time.monotonic()
                    with pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
                        await asyncio.wait_for(attempt(), TIMEOUT)
                    assert time.monotonic() - started < SHORT + 0.5
            await bc.apublish(channel, "after")
            log: list[tuple[float, Event]] = []
            await receive_until(sub, "after", log)
            # The broker ran, late, both publishes it had got.
            assert [event.data for _, event in log] == ["frozen", "frozen", "after"]
            subscribers, _ = await broker_state(private_redis, late)
            assert subscribers == [0]
        await eventually(nothing_left(private_redis, channel, late))
        await bc.aclose()


@pytest.mark.parametrize("state", ["killed", "frozen"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_subscriber_that_starts_while_the_broker_is_down_fails_fast(
    private_redis: PrivateRedis, channel: str, kind: str, state: str
) -> None:
    with using(entry(private_redis, kind)) as bc:
        if state == "killed":
            private_redis.kill()
        else:
            private_redis.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
                await asyncio.wait_for(bc.subscribe(channel).__aenter__(), TIMEOUT)
            assert time.monotonic() - started < SHORT + 0.5
        finally:
            if state == "frozen":
                private_redis.thaw()
        await bc.aclose()
    if state == "frozen":
        await eventually(nothing_left(private_redis, channel))
