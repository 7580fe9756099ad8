"""Broker failures: a private redis-server is killed and restarted mid-stream.

Redis Streams loses nothing (the missed events are replayed from the stream); pub/sub
delivers a gap notice; when the broker stays away, subscriptions end instead of
hanging. The shared broker is never touched.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from django_broadcast import GAP, BroadcastUnavailable, Event, Subscription, SubscriptionClosed

from .conftest import PrivateRedis, using

TIMEOUT = 10


def entry(server: PrivateRedis, streams: bool, **extra: object) -> dict[str, object]:
    url = server.url.replace("redis://", "redis+streams://") if streams else server.url
    return {"URL": url, "TIMEOUT": 2, **extra}


async def next_real(sub: Subscription) -> Event:
    return await sub.get(timeout=TIMEOUT)


async def test_streams_lose_nothing_across_a_broker_restart(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using(entry(private_redis, streams=True)) as bc:
        async with bc.subscribe(channel) as sub:
            for n in range(5):
                await bc.apublish(channel, n)
            assert [(await next_real(sub)).data for _ in range(3)] == [0, 1, 2]

            private_redis.kill()
            private_redis.start()  # same port and data directory: the stream survives
            # Published while the subscriber's connection is still broken.
            for n in range(5, 10):
                await bc.apublish(channel, n)

            rest = [(await next_real(sub)).data for _ in range(7)]
            assert rest == [3, 4, 5, 6, 7, 8, 9]  # no gap notice, nothing lost, in order
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.3)
        await bc.aclose()


async def test_pubsub_sends_a_gap_notice_after_a_broker_restart(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using(entry(private_redis, streams=False)) as bc:
        async with bc.subscribe(channel) as sub:
            await bc.apublish(channel, "before")
            assert (await next_real(sub)).data == "before"

            private_redis.kill()
            private_redis.start()

            notice = await next_real(sub)
            assert notice.type == GAP and notice.data["reason"] == "reconnect"
            assert notice.channel == channel
            await bc.apublish(channel, "after")
            assert (await next_real(sub)).data == "after"
        await bc.aclose()


@pytest.mark.parametrize("streams", [False, True], ids=["redis", "redis+streams"])
async def test_subscribers_do_not_hang_when_the_broker_stays_away(
    private_redis: PrivateRedis, channel: str, streams: bool
) -> None:
    with using(entry(private_redis, streams, RECONNECT_TIMEOUT=1)) as bc:
        async with bc.subscribe(channel) as sub:
            private_redis.kill()
            started = time.monotonic()
            with pytest.raises(SubscriptionClosed, match="RECONNECT_TIMEOUT"):
                async for _ in sub:
                    pass
            assert time.monotonic() - started < TIMEOUT
        await bc.aclose()


@pytest.mark.parametrize("streams", [False, True], ids=["redis", "redis+streams"])
async def test_an_unreachable_broker_fails_fast(
    private_redis: PrivateRedis, channel: str, streams: bool
) -> None:
    private_redis.kill()
    with using(entry(private_redis, streams, TIMEOUT=1)) as bc:
        for attempt in (
            lambda: asyncio.to_thread(bc.publish, channel, 1),
            lambda: bc.apublish(channel, 1),
        ):
            started = time.monotonic()
            with pytest.raises(BroadcastUnavailable, match=str(private_redis.port)):
                await asyncio.wait_for(attempt(), TIMEOUT)
            assert time.monotonic() - started < 3
        with pytest.raises(BroadcastUnavailable):
            async with bc.subscribe(channel):
                pass
        await bc.aclose()
