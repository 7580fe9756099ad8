"""Faults inside the Redis backends, at the receiver level (as the hub drives a
receiver), on a private redis-server of each test's own: replies slower than TIMEOUT,
a receiver cancelled at any moment, subscribes that fail half-way. The faults every
broker must survive are in ``test_faults.py``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import redis.asyncio

from django_broadcast import BroadcastUnavailable
from django_broadcast.backends.redis import RedisBackend

from .conftest import PrivateRedis
from .test_faults import frozen
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
