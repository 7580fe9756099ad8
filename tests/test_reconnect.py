"""A private broker killed and restarted mid-stream, on every broker that can start
one: a broker with history loses nothing (the missed events are replayed); one
without says so with a gap notice; when the broker stays away, subscriptions end
instead of hanging. The shared broker is never touched.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from django_broadcast import GAP, BroadcastUnavailable, Event, Subscription, SubscriptionClosed

from .brokers import Broker, PrivateServer
from .conftest import using

TIMEOUT = 10


def entry(broker: Broker, server: PrivateServer, **extra: object) -> dict[str, object]:
    return broker.entry(url=broker.private_url(server), **{"TIMEOUT": 2, **extra})


async def next_real(sub: Subscription) -> Event:
    return await sub.get(timeout=TIMEOUT)


@pytest.mark.features("history")
async def test_a_broker_with_history_loses_nothing_across_a_restart(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    with using(entry(broker, server)) as bc:
        async with bc.subscribe(channel) as sub:
            for n in range(5):
                await bc.apublish(channel, n)
            assert [(await next_real(sub)).data for _ in range(3)] == [0, 1, 2]

            server.kill()
            server.start()  # the same port and data: the history survives
            # Published while the subscriber's connection is still broken.
            for n in range(5, 10):
                await bc.apublish(channel, n)

            rest = [(await next_real(sub)).data for _ in range(7)]
            assert rest == [3, 4, 5, 6, 7, 8, 9]  # no gap notice, nothing lost, in order
            marker = await bc.apublish(channel, "marker")
            assert (await next_real(sub)).id == marker.id  # and nothing else came first
        await bc.aclose()


@pytest.mark.features(history=False)
async def test_a_broker_without_history_sends_a_gap_notice_after_a_restart(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    with using(entry(broker, server)) as bc:
        async with bc.subscribe(channel) as sub:
            await bc.apublish(channel, "before")
            assert (await next_real(sub)).data == "before"

            server.kill()
            server.start()

            notice = await next_real(sub)
            assert notice.type == GAP and notice.data["reason"] == "reconnect"
            assert notice.channel == channel
            await bc.apublish(channel, "after")
            assert (await next_real(sub)).data == "after"
        await bc.aclose()


async def test_subscribers_do_not_hang_when_the_broker_stays_away(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    with using(entry(broker, server, RECONNECT_TIMEOUT=1)) as bc:
        async with bc.subscribe(channel) as sub:
            server.kill()
            started = time.monotonic()
            with pytest.raises(SubscriptionClosed, match="RECONNECT_TIMEOUT"):
                async for _ in sub:
                    pass
            assert time.monotonic() - started < TIMEOUT
        await bc.aclose()


async def test_an_unreachable_broker_fails_fast(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    server.kill()
    with using(entry(broker, server, TIMEOUT=1)) as bc:
        for attempt in (
            lambda: asyncio.to_thread(bc.publish, channel, 1, on_commit=False),
            lambda: bc.apublish(channel, 1),
        ):
            started = time.monotonic()
            with pytest.raises(BroadcastUnavailable):
                await asyncio.wait_for(attempt(), TIMEOUT)
            assert time.monotonic() - started < 3
        with pytest.raises(BroadcastUnavailable):
            async with bc.subscribe(channel):
                pass
        await bc.aclose()


@pytest.mark.features("patterns", history=False)
async def test_a_pattern_subscriber_gets_a_gap_notice_after_a_restart(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    pattern = f"{channel}.*"
    with using(entry(broker, server)) as bc:
        async with bc.subscribe(patterns=[pattern]) as sub:
            server.kill()
            server.start()
            notice = await next_real(sub)
            assert notice.type == GAP and notice.channel == pattern
            sent = await bc.apublish(f"{channel}.x", "after")
            assert (await next_real(sub)).id == sent.id
        await bc.aclose()
