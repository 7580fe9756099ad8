"""The NATS backend's work queues, on the shared NATS server (``NATS_URL``): the
work-queue stream, the capacity of each queue under racing puts, expiry, cancelled
takers and a consumer or stream gone at the server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import pytest
from nats.js import api

from django_broadcast.backends.nats import NatsBackend
from django_broadcast.backends.nats import queues as nats_queues
from django_broadcast.exceptions import BroadcastUnavailable

from .brokers import NATS_PREFIX, NATS_URL, PrivateNats
from .conftest import require_broker, using

TIMEOUT = 5


@pytest.fixture
async def backend() -> AsyncIterator[NatsBackend]:
    require_broker("nats")
    backend = NatsBackend(NATS_URL, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)
    yield backend
    await backend.aclose()


async def _jsm(backend: NatsBackend) -> tuple[nats.NATS, object]:
    client = await nats.connect(backend.servers)
    return client, client.jetstream()


def _later() -> float:
    return time.time() + 60


async def test_the_queues_are_a_work_queue_stream_of_their_own(
    backend: NatsBackend, channel: str
) -> None:
    assert await backend.aqueue_put(channel, b"job", capacity=10, expires=_later())
    client = await nats.connect(backend.servers)
    try:
        js = client.jetstream()
        info = await js.stream_info(backend.queue_stream)
        assert backend.queue_stream == f"{backend.stream}_queues"
        assert info.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert info.config.subjects == [f"{NATS_PREFIX}+queues.>"]
        subject = f"{NATS_PREFIX}+queues.{channel}"
        held = await js.stream_info(backend.queue_stream, subjects_filter=subject)
        assert (held.state.subjects or {}).get(subject) == 1
        assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"job"
        held = await js.stream_info(backend.queue_stream, subjects_filter=subject)
        assert not (held.state.subjects or {}).get(subject)  # taken: removed
    finally:
        await client.close()


async def test_racing_puts_from_two_connections_never_pass_the_capacity(
    backend: NatsBackend, channel: str
) -> None:
    other = NatsBackend(NATS_URL, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)
    try:
        puts = [
            side.aqueue_put(channel, f"{i}-{n}".encode(), capacity=7, expires=_later())
            for i in range(20)
            for n, side in enumerate((backend, other))
        ]
        done = await asyncio.gather(*puts)
        assert done.count(True) == 7
        assert await backend.aqueue_put(f"{channel}.b", b"m", capacity=8, expires=_later())
        taken = [await other.aqueue_take(channel, timeout=TIMEOUT) for _ in range(7)]
        assert None not in taken and len(set(taken)) == 7
        # Empty now: the marker of the other queue is taken at once, this one has none.
        assert await backend.aqueue_take(f"{channel}.b", timeout=TIMEOUT) == b"m"
        assert await backend.aqueue_put(channel, b"again", capacity=7, expires=_later())
        assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"again"
    finally:
        await other.aclose()


async def test_each_queue_has_a_capacity_of_its_own(backend: NatsBackend, channel: str) -> None:
    small, large = f"{channel}.small", f"{channel}.large"
    assert await backend.aqueue_put(small, b"1", capacity=1, expires=_later())
    assert not await backend.aqueue_put(small, b"2", capacity=1, expires=_later())
    for i in range(3):
        assert await backend.aqueue_put(large, b"%d" % i, capacity=3, expires=_later())
    assert not await backend.aqueue_put(large, b"4", capacity=3, expires=_later())
    await backend.aqueue_clear(small)
    await backend.aqueue_clear(large)
    assert await backend.aqueue_put(large, b"after", capacity=1, expires=_later())
    assert await backend.aqueue_take(large, timeout=TIMEOUT) == b"after"


async def test_expired_messages_take_no_room_and_are_never_taken(
    backend: NatsBackend, channel: str
) -> None:
    past = time.time() - 1
    assert await backend.aqueue_put(channel, b"old1", capacity=2, expires=past)
    assert await backend.aqueue_put(channel, b"old2", capacity=2, expires=past)
    # Full of expired messages: the put deletes them and is let in.
    assert await backend.aqueue_put(channel, b"new", capacity=2, expires=_later())
    assert await backend.aqueue_put(channel, b"marker", capacity=2, expires=_later())
    assert not await backend.aqueue_put(channel, b"over", capacity=2, expires=_later())
    assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"new"
    # An expired message not yet swept is skipped by the taker.
    assert await backend.aqueue_put(channel, b"old3", capacity=5, expires=past)
    assert await backend.aqueue_put(channel, b"last", capacity=5, expires=_later())
    assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"marker"
    assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"last"


async def test_cancelled_takers_lose_nothing_under_load(backend: NatsBackend, channel: str) -> None:
    sent = [b"%d" % i for i in range(60)]
    taken: list[bytes] = []
    rng = random.Random(13)

    async def produce() -> None:
        for payload in sent:
            assert await backend.aqueue_put(channel, payload, capacity=100, expires=_later())
            await asyncio.sleep(rng.random() / 500)

    async def cancel_takers() -> None:
        while len(taken) < len(sent) // 2:
            task = asyncio.create_task(backend.aqueue_take(channel, timeout=TIMEOUT))
            await asyncio.sleep(rng.random() / 200)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                if (payload := await task) is not None:
                    taken.append(payload)

    await asyncio.wait_for(asyncio.gather(produce(), cancel_takers()), 60)
    while len(taken) < len(sent):
        payload = await backend.aqueue_take(channel, timeout=TIMEOUT)
        assert payload is not None, f"lost: {sorted(set(sent) - set(taken))}"
        taken.append(payload)
    assert sorted(taken) == sorted(sent)  # each once


async def test_a_consumer_or_stream_gone_at_the_server_is_made_again(
    backend: NatsBackend, channel: str
) -> None:
    assert await backend.aqueue_put(channel, b"1", capacity=10, expires=_later())
    assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"1"
    client = await nats.connect(backend.servers)
    try:
        js = client.jetstream()
        for info in await js.consumers_info(backend.queue_stream):
            await js.delete_consumer(backend.queue_stream, info.name)
        assert await backend.aqueue_put(channel, b"2", capacity=10, expires=_later())
        # The first request goes unanswered: the take makes the consumer again after it.
        assert await backend.aqueue_take(channel, timeout=TIMEOUT) is None
        assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"2"
        await js.delete_stream(backend.queue_stream)
        assert await backend.aqueue_put(channel, b"3", capacity=10, expires=_later())
        assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"3"
    finally:
        await client.close()


async def test_a_stream_of_the_name_for_other_subjects_is_an_error(channel: str) -> None:
    require_broker("nats")
    prefix = f"{NATS_PREFIX}-{channel}"
    backend = NatsBackend(NATS_URL, {"prefix": prefix}, timeout=TIMEOUT)
    client = await nats.connect(backend.servers)
    try:
        js = client.jetstream()
        await js.add_stream(name=backend.queue_stream, subjects=[f"{channel}.other.>"])
        with pytest.raises(BroadcastUnavailable, match="set OPTIONS\\['stream'\\]"):
            await backend.aqueue_put(channel, b"1", capacity=1, expires=_later())
    finally:
        await js.delete_stream(backend.queue_stream)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(backend.stream)
        await client.close()
        await backend.aclose()


def test_queues_from_sync_code_go_through_the_loop_thread() -> None:
    """``async_to_sync`` runs each call on a loop of its own: the queue operations of
    such a loop use the backend's loop thread, not a connection per call left open."""
    from asgiref.sync import async_to_sync

    require_broker("nats")
    server = PrivateNats()
    try:
        server.start()
        with using({"URL": server.url}) as bc:
            for i in range(8):
                async_to_sync(bc.aqueue_put)("jobs", i, capacity=10, ttl=60)
            assert [async_to_sync(bc.aqueue_take)("jobs") for _ in range(8)] == list(range(8))
            names = [c.get("name", "") for c in server.monitoring("connz")["connections"]]
            assert len(names) == 1, names
            bc.close()
    finally:
        server.stop()


async def test_a_taker_refused_by_the_consumer_does_not_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull request the consumer refuses at once (409: too many waiting requests)
    is asked again after a pause, not at once in a loop."""
    require_broker("nats")
    monkeypatch.setattr(nats_queues, "MAX_WAITING", 1)
    server = PrivateNats()
    try:
        server.start()
        backend = NatsBackend(server.url, {}, timeout=TIMEOUT)
        try:
            assert await backend.aqueue_put("jobs", b"warm", capacity=5, expires=_later())
            assert await backend.aqueue_take("jobs", timeout=TIMEOUT) == b"warm"
            holder = asyncio.create_task(backend.aqueue_take("jobs", timeout=3 * TIMEOUT))
            while not (await _consumer_info(backend)).num_waiting:
                await asyncio.sleep(0.01)  # (bounded by the test's timeout)
            before = server.monitoring("varz")["in_msgs"]
            assert await backend.aqueue_take("jobs", timeout=1) is None
            assert server.monitoring("varz")["in_msgs"] - before < 50
            assert await backend.aqueue_put("jobs", b"end", capacity=5, expires=_later())
            assert await asyncio.wait_for(holder, TIMEOUT) == b"end"
        finally:
            await backend.aclose()
    finally:
        server.stop()


async def _consumer_info(backend: NatsBackend) -> api.ConsumerInfo:
    client = await nats.connect(backend.servers)
    try:
        js = client.jetstream()
        [info] = await js.consumers_info(backend.queue_stream)
        return info
    finally:
        await client.close()


def test_a_taker_cancelled_on_a_loop_that_then_closed_holds_back_no_message(
    channel: str,
) -> None:
    """A loop that ends (a test's, a thread's) closes its connection with it: its
    cancelled taker's pull request, still out at the server, must not take the next
    message to a connection nobody reads (the message would wait ``ack_wait``)."""
    require_broker("nats")
    backend = NatsBackend(NATS_URL, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)

    async def cancelled_take() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(backend.aqueue_take(channel, timeout=60), 0.5)

    async def put_then_take() -> bytes | None:
        assert await backend.aqueue_put(channel, b"job", capacity=10, expires=_later())
        taken = await backend.aqueue_take(channel, timeout=TIMEOUT)
        await backend.aclose()
        return taken

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(cancelled_take())
    finally:
        loop.close()
    assert asyncio.run(put_then_take()) == b"job"


async def test_a_put_after_a_put_on_the_connection_is_one_round_trip(channel: str) -> None:
    """The connection remembers the queue's last sequence: later puts publish at once
    (the server gets one message each), where the first reads the queue first."""
    require_broker("nats")
    server = PrivateNats()
    server.start()
    backend = NatsBackend(server.url, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)
    try:
        assert await backend.aqueue_put(channel, b"first", capacity=100, expires=_later())
        before = server.monitoring("varz")["in_msgs"]
        for i in range(20):
            assert await backend.aqueue_put(channel, b"%d" % i, capacity=100, expires=_later())
        assert server.monitoring("varz")["in_msgs"] - before == 20
    finally:
        await backend.aclose()
        server.stop()


async def test_what_a_connection_remembers_never_lets_a_queue_pass_its_capacity(
    backend: NatsBackend, channel: str
) -> None:
    """Another process's put makes the remembered sequence stale (JetStream refuses the
    put, which reads again); another's take only makes the remembered count too high
    (a full-looking queue is read again)."""
    other = NatsBackend(NATS_URL, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)
    try:
        assert await backend.aqueue_put(channel, b"a1", capacity=2, expires=_later())
        assert await other.aqueue_put(channel, b"b1", capacity=2, expires=_later())
        assert not await backend.aqueue_put(channel, b"a2", capacity=2, expires=_later())
        assert await other.aqueue_take(channel, timeout=TIMEOUT) == b"a1"
        assert await backend.aqueue_put(channel, b"a3", capacity=2, expires=_later())
        assert not await backend.aqueue_put(channel, b"a4", capacity=2, expires=_later())
        assert await other.aqueue_take(channel, timeout=TIMEOUT) == b"b1"
        assert await other.aqueue_take(channel, timeout=TIMEOUT) == b"a3"
    finally:
        await other.aclose()
