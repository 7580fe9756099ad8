"""The faults every broker must survive, on a private server of each test's own (every
broker of ``tests/brokers.py`` that can start one): a crash and restart mid-stream
with a publisher running, a restart without the data, a broker frozen past TIMEOUT, a
broker down when a subscriber starts, and whether a failed publish was sent. The
shared broker is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from django_broadcast import Broadcast, BroadcastUnavailable, Event, Subscription

from .brokers import Broker, PrivateServer
from .conftest import using

TIMEOUT = 10

#: The TIMEOUT of the aliases here: small, so that the faults show quickly.
SHORT = 0.3


def entry(broker: Broker, server: PrivateServer, **extra: object) -> dict[str, object]:
    """The alias settings of ``broker`` on its private ``server``."""
    return broker.entry(url=broker.private_url(server), **{"TIMEOUT": SHORT, **extra})


@contextlib.contextmanager
def frozen(server: PrivateServer) -> Iterator[None]:
    """Freeze ``server`` for the block; thaw it even where the block fails."""
    server.freeze()
    try:
        yield
    finally:
        server.thaw()


def publishes(bc: Broadcast, channel: str, data: object) -> list[Callable[[], Awaitable[Event]]]:
    """A publish from sync code (in a thread, as a view runs) and one from async code."""
    return [
        lambda: asyncio.to_thread(bc.publish, channel, data, on_commit=False),  # type: ignore[arg-type]
        lambda: bc.apublish(channel, data),
    ]


async def test_a_refused_publish_was_not_sent(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    with using(entry(broker, server)) as bc:
        for publish in publishes(bc, channel, "pooled"):
            await publish()  # each path now holds a pooled connection, soon stale
        server.kill()
        for publish in publishes(bc, channel, "refused"):
            with pytest.raises(BroadcastUnavailable, match="not sent") as info:
                await asyncio.wait_for(publish(), TIMEOUT)
            assert info.value.maybe_sent is False
        await bc.aclose()


async def test_a_publish_to_a_frozen_broker_may_have_been_sent(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    with using(entry(broker, server)) as bc:
        for publish in publishes(bc, channel, "pooled"):
            await publish()
        with frozen(server):
            for publish in publishes(bc, channel, "frozen"):
                started = time.monotonic()
                with pytest.raises(BroadcastUnavailable, match="may still") as info:
                    await asyncio.wait_for(publish(), TIMEOUT)
                assert info.value.maybe_sent is True
                assert time.monotonic() - started < SHORT + 0.5
        # Once thawed, the broker runs what it was sent.
        if broker.features.history:
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


def nothing_left(broker: Broker, bc: Broadcast, *channels: str) -> Callable[[], Awaitable[bool]]:
    """A predicate: the broker holds no subscription of ``bc`` for ``channels``."""

    async def check() -> bool:
        return await broker.holds_nothing(bc, *channels)

    return check


async def receive_until(sub: Subscription, data: object, log: list[tuple[float, Event]]) -> None:
    """Receive into ``log`` (with the time of receipt) up to the event with ``data``."""
    while not log or log[-1][1].data != data:
        event = await sub.get(timeout=TIMEOUT)
        log.append((time.monotonic(), event))


async def test_a_crash_and_restart_mid_stream(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    """kill -9 and restart (with its data) while a publisher keeps publishing: streams
    deliver every acknowledged event exactly once, in order; pub/sub says it lost some
    with a gap notice, then delivers live events."""
    # RECONNECT_TIMEOUT outlasts the restart: after kill -9 (crash recovery first) a
    # private PostgreSQL was back only after more than 10 s in one CI run.
    with using(entry(broker, server, TIMEOUT=1, RECONNECT_TIMEOUT=6 * TIMEOUT)) as bc:
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
            server.kill()
            await asyncio.wait_for(down.wait(), TIMEOUT)  # the publisher keeps trying
            await asyncio.to_thread(server.start)  # with the data it had
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
    print(f"\n{broker.name}: {len(acknowledged)} acknowledged, {len(refused)} refused, "
          f"{len(lost)} acknowledged lost {lost}, broker down {up - killed:.2f} s, "
          f"deliveries stalled {stalled:.2f} s")  # fmt: skip
    assert len(set(ids)) == len(ids)  # nothing twice
    assert events[-1].data == "end"
    if broker.features.history:
        assert gaps == [] and lost == []
        assert ids == sorted(ids, key=backend.id_key)  # in order
    else:
        [gap] = gaps
        assert received[gap].data == {"reason": "reconnect"}
        numbers = [e.data for e in events[:-1]]
        assert numbers == sorted(numbers)  # in order, per publisher


@pytest.mark.features("history")
async def test_a_restart_without_its_data_is_a_gap(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    """The stream is made anew with ids after the old position: only the missing
    entry at that position tells that the events in between are gone."""
    with using(entry(broker, server, TIMEOUT=1)) as bc:
        async with bc.subscribe(channel) as sub:
            before = await bc.apublish(channel, "before")
            assert (await sub.get(timeout=TIMEOUT)).id == before.id
            # Both before the hub can reconnect: the event loop waits meanwhile.
            server.restart(persist=False)
            after = bc.publish(channel, "after", on_commit=False)
            assert after is not None
            notice = await sub.get(timeout=TIMEOUT)
            assert notice.is_gap and notice.data["reason"] == "reconnect"
            assert (await sub.get(timeout=TIMEOUT)).id == after.id
        [notice, event] = await bc.ahistory(channel, since=before.id)
        assert notice.is_gap and event.id == after.id
        await bc.aclose()


async def test_a_broker_frozen_past_the_timeout(
    broker: Broker, server: PrivateServer, channel: str
) -> None:
    """Publishes and new subscriptions fail within TIMEOUT; subscribers wait, then
    resume once it thaws, with whatever it was sent; nothing is left behind."""
    late = f"{channel}.late"
    with using(entry(broker, server, RECONNECT_TIMEOUT=SHORT * 3)) as bc:
        async with bc.subscribe(channel) as sub:
            for publish in publishes(bc, channel, "before"):
                sent = await publish()
                assert (await sub.get(timeout=TIMEOUT)).id == sent.id
            with frozen(server):
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
        await eventually(nothing_left(broker, bc, channel, late))
        await bc.aclose()


@pytest.mark.parametrize("state", ["killed", "frozen"])
async def test_a_subscriber_that_starts_while_the_broker_is_down_fails_fast(
    broker: Broker, server: PrivateServer, channel: str, state: str
) -> None:
    with using(entry(broker, server)) as bc:
        if state == "killed":
            server.kill()
        else:
            server.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(BroadcastUnavailable, match="TIMEOUT"):
                await asyncio.wait_for(bc.subscribe(channel).__aenter__(), TIMEOUT)
            assert time.monotonic() - started < SHORT + 0.5
        finally:
            if state == "frozen":
                server.thaw()
        await bc.aclose()
    if state == "frozen":
        await eventually(nothing_left(broker, bc, channel))
