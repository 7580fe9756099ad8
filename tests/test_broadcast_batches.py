"""Publishing in batches: the events of one transaction leave at its commit in one
round trip, in order, each with its own id or its own failure; concurrent sync
publishes from threads are coalesced into pipelined flushes; and the backends'
``publish_many`` keeps order and ids on every broker."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import transaction

from django_broadcast import Broadcast, BroadcastUnavailable, Event
from django_broadcast.backends._coalescer import Coalescer
from django_broadcast.signals import publish_failed
from django_broadcast.testing import capture_broadcasts

from .brokers import BROKERS, PREFIX
from .conftest import PrivateRedis, using

TIMEOUT = 10


class Reads:
    """The read events a private server has handled (``INFO stats``), asked on one
    connection of its own: a pipeline written at once is one read, however many
    commands it holds. Each asking costs one."""

    def __init__(self, server: PrivateRedis) -> None:
        self.client = redis.Redis.from_url(server.url)
        self.client.ping()

    def __call__(self) -> int:
        return int(self.client.info("stats")["total_reads_processed"])

    def close(self) -> None:
        self.client.close()


def until(check: Callable[[], bool]) -> None:
    """Wait, at most TIMEOUT seconds, for ``check`` to hold."""
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@contextlib.contextmanager
def failures() -> Iterator[list[dict[str, Any]]]:
    """The ``publish_failed`` signals sent inside the block."""
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    publish_failed.connect(receiver)
    try:
        yield calls
    finally:
        publish_failed.disconnect(receiver)


def url_of(server: PrivateRedis, kind: str) -> str:
    return server.streams_url if kind == "streams" else server.url


# One round trip per transaction ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["pubsub", "streams"])
def test_ten_publishes_in_a_transaction_leave_at_its_commit_in_one_round_trip(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    entry = {"URL": url_of(private_redis, kind), "OPTIONS": {"prefix": PREFIX}}
    with using(entry) as bc, capture_broadcasts(bc.alias) as captured:
        bc.publish(channel, "warm-up", on_commit=False)  # the connection is made
        reads = Reads(private_redis)
        first = reads()
        with transaction.atomic():
            assert [bc.publish(channel, n) for n in range(10)] == [None] * 10
            inside = reads()
        after = reads()
        reads.close()
        bc.close()
    assert inside - first == 1  # only the INFO: nothing left before the commit
    assert after - inside == 2  # one pipeline, and the INFO
    events = captured.events[1:]
    assert [e.data for e in events] == list(range(10))
    ids = [e.id for e in events]
    assert len(set(ids)) == 10
    if kind == "streams":
        assert [e.id for e in bc.history(channel, limit=10)] == ids


@pytest.mark.django_db(transaction=True)
async def test_a_transactions_events_arrive_in_order_without_those_of_rolled_back_savepoints(
    bc: Broadcast, channel: str
) -> None:
    def view() -> None:
        with transaction.atomic():
            bc.publish(channel, 0)
            with contextlib.suppress(RuntimeError), transaction.atomic():
                bc.publish(channel, "rolled back")
                raise RuntimeError("roll the savepoint back")
            bc.publish(channel, 1)
            with transaction.atomic():
                bc.publish(channel, 2)
            bc.publish(channel, 3)
            with contextlib.suppress(RuntimeError), transaction.atomic():
                bc.publish(channel, "rolled back after the last publish")
                raise RuntimeError("roll the savepoint back")
        with contextlib.suppress(RuntimeError), transaction.atomic():
            bc.publish(channel, "rolled back with its transaction")
            raise RuntimeError("roll the transaction back")
        bc.publish(channel, "marker")

    async with bc.subscribe(channel) as sub:
        with capture_broadcasts(bc.alias) as captured:
            await sync_to_async(view)()
        received = [await sub.get(timeout=TIMEOUT) for _ in range(5)]
    assert [e.data for e in received] == [0, 1, 2, 3, "marker"]
    assert [e.id for e in received] == [e.id for e in captured.events]


@pytest.mark.django_db(transaction=True)
def test_each_event_of_a_transaction_fails_or_succeeds_on_its_own_at_the_commit(
    channel: str,
) -> None:
    good, bad = f"{channel}.good", f"{channel}.bad"
    with using(BROKERS["redis+streams"].entry()) as bc:
        client = redis.Redis.from_url(bc.backend.url)  # type: ignore[attr-defined]
        client.set(bc.backend.key(bad), "not a stream")  # type: ignore[attr-defined]
        with failures() as failed, capture_broadcasts(bc.alias) as captured, transaction.atomic():
            for n, name in enumerate([good, bad, good, bad, good]):
                bc.publish(name, n)
        assert [e.data for e in captured.events] == [0, 2, 4]
        assert [e.data for e in bc.history(good)] == [0, 2, 4]
        assert [e.id for e in bc.history(good)] == [e.id for e in captured.events]
        assert [(c["channel"], c["data"], c["maybe_sent"]) for c in failed] == [
            (bad, 1, False),
            (bad, 3, False),
        ]
        assert bc.failed_publishes == 2
        client.delete(bc.backend.key(bad))  # type: ignore[attr-defined]
        client.close()
        bc.close()


@pytest.mark.django_db(transaction=True)
def test_every_event_of_a_transaction_whose_commit_finds_the_broker_down_is_reported(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using({"URL": private_redis.url, "TIMEOUT": 1}) as bc, failures() as failed:
        bc.publish(channel, "warm-up", on_commit=False)
        private_redis.kill()
        with transaction.atomic():
            for n in range(3):
                bc.publish(channel, n)
        bc.close()
    assert [c["data"] for c in failed] == [0, 1, 2]
    assert all(isinstance(c["exception"], BroadcastUnavailable) for c in failed)
    assert bc.failed_publishes == 3


@pytest.mark.django_db(transaction=True)
def test_a_transaction_over_a_clusters_nodes_sends_every_event_with_its_id(channel: str) -> None:
    broker = BROKERS["redis+cluster+streams"]
    if not broker.reachable():
        pytest.skip("redis-server or redis-cli missing: no cluster")
    channels = [f"{channel}.{n}" for n in range(12)]  # spread over the three masters
    with using(broker.entry()) as bc, capture_broadcasts(bc.alias) as captured:
        with transaction.atomic():
            for n, name in enumerate(channels):
                bc.publish(name, n)
        for n, name in enumerate(channels):
            [event] = bc.history(name)
            assert (event.data, event.id) == (n, captured.events[n].id)
        bc.close()


# The backends' publish_many --------------------------------------------------------------


async def test_publish_many_returns_each_events_id_in_order(bc: Broadcast, channel: str) -> None:
    other = f"{channel}.other"
    items = [(channel if n % 3 else other, bc.codec.encode(envelope(n))) for n in range(9)]
    async with bc.subscribe(channel, other) as sub:
        ids = await sync_to_async(bc.backend.publish_many)(items)
        received = [await sub.get(timeout=TIMEOUT) for _ in range(9)]
    assert all(isinstance(i, str) for i in ids)
    by_channel = {c: [(e.id, e.data) for e in received if e.channel == c] for c in (channel, other)}
    for name in (channel, other):
        sent = [(i, n) for n, ((c, _), i) in enumerate(zip(items, ids, strict=True)) if c == name]
        assert by_channel[name] == sent


def envelope(n: int) -> dict[str, Any]:
    return {"type": "message", "time": 0, "data": n}


# Concurrent publishes from threads -------------------------------------------------------


def publish_in_threads(
    bc: Broadcast, calls: list[tuple[str, Any]], server: PrivateRedis
) -> list[Event | BaseException]:
    """Publish the first call while the server is frozen, then the others, so that
    they wait behind it; thaw once they all wait. Return each call's outcome."""
    outcomes: list[Event | BaseException | None] = [None] * len(calls)

    def publish(index: int) -> None:
        name, data = calls[index]
        try:
            outcomes[index] = bc.publish(name, data)
        except BaseException as exc:
            outcomes[index] = exc

    coalescer = bc._publisher
    assert isinstance(coalescer, Coalescer)
    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(calls))]
    server.freeze()
    try:
        threads[0].start()
        until(lambda: coalescer.busy)
        for thread in threads[1:]:
            thread.start()
        until(lambda: coalescer.waiting == len(calls) - 1)
    finally:
        server.thaw()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    return [o for o in outcomes if o is not None]


@pytest.mark.parametrize("kind", ["pubsub", "streams"])
def test_concurrent_publishes_from_threads_leave_in_one_pipeline(
    private_redis: PrivateRedis, channel: str, kind: str
) -> None:
    entry = {"URL": url_of(private_redis, kind), "TIMEOUT": TIMEOUT}
    with using(entry) as bc:
        bc.publish(channel, "warm-up")
        reads = Reads(private_redis)
        before = reads()
        outcomes = publish_in_threads(bc, [(channel, n) for n in range(8)], private_redis)
        after = reads()
        reads.close()
        bc.close()
    assert all(isinstance(o, Event) for o in outcomes)
    assert [o.data for o in outcomes if isinstance(o, Event)] == list(range(8))
    assert len({o.id for o in outcomes if isinstance(o, Event)}) == 8
    assert after - before == 3  # the first alone, the seven others together, the INFO


def test_each_coalesced_caller_gets_its_own_error(
    private_redis: PrivateRedis, channel: str
) -> None:
    good, bad = f"{channel}.good", f"{channel}.bad"
    with using({"URL": private_redis.streams_url, "TIMEOUT": TIMEOUT}) as bc:
        client = redis.Redis.from_url(private_redis.url)
        client.set(bc.backend.key(bad), "not a stream")  # type: ignore[attr-defined]
        client.close()
        bc.publish(good, "warm-up")
        calls = [(good, 0), (good, 1), (bad, 2), (good, 3), (bad, 4), (good, 5)]
        outcomes = publish_in_threads(bc, calls, private_redis)
        history = bc.history(good)
        bc.close()
    for (_, n), outcome in zip(calls, outcomes, strict=True):
        if n in (2, 4):
            assert isinstance(outcome, redis.ResponseError), outcome
            assert "WRONGTYPE" in str(outcome)
        else:
            assert isinstance(outcome, Event) and outcome.data == n
    assert [(e.id, e.data) for e in history[1:]] == [
        (o.id, o.data) for o in outcomes if isinstance(o, Event)
    ]


def test_coalesced_callers_each_get_the_brokers_failure(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using({"URL": private_redis.url, "TIMEOUT": 1}) as bc:
        bc.publish(channel, "warm-up")
        outcomes: list[BaseException] = []
        private_redis.kill()
        threads = [
            threading.Thread(target=lambda n=n: outcomes.append(_raised(bc, channel, n)))
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        bc.close()
    assert len(outcomes) == 4
    assert all(isinstance(o, BroadcastUnavailable) for o in outcomes)


def _raised(bc: Broadcast, channel: str, n: int) -> BaseException:
    try:
        bc.publish(channel, n)
    except BaseException as exc:
        return exc
    raise AssertionError("the publish did not fail")


def test_publish_many_on_a_postgres_pool_is_one_transaction(channel: str) -> None:
    # One event the server refuses (a NUL in a name) fails the others with it:
    # they were one transaction, rolled back whole; the connection stays usable.
    with using(BROKERS["postgresql"].entry()) as bc:
        backend = bc.backend
        refused = backend.publish_many([(channel, b"1"), (f"{channel}\x00", b"2"), (channel, b"3")])
        assert all(isinstance(outcome, Exception) for outcome in refused)
        assert bc.history(channel) == []
        ids = backend.publish_many([(channel, bc.codec.encode(envelope(n))) for n in range(3)])
        assert [(e.id, e.data) for e in bc.history(channel)] == list(
            zip(ids, range(3), strict=True)
        )
        bc.close()
