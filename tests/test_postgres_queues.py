"""What the PostgreSQL backend's work queues add to the contract: the table the
migration makes, a capacity that holds under concurrent puts, takers woken by NOTIFY,
expired rows deleted, and takers cancelled under load that lose nothing. Against the
PostgreSQL at ``POSTGRES_URL``."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from django.db import connections

from django_broadcast.backends.postgres import PostgresBackend, schema
from django_broadcast.backends.postgres.queues import POLL

from .brokers import BROKERS, POSTGRES_URL
from .conftest import require_broker, using

TIMEOUT = 5

pytestmark = pytest.mark.usefixtures("_postgres")


@pytest.fixture
def _postgres() -> None:
    require_broker("postgresql")


@pytest.fixture
async def backend() -> AsyncIterator[PostgresBackend]:
    with using(BROKERS["postgresql"].entry()) as instance:
        assert isinstance(instance.backend, PostgresBackend)
        yield instance.backend
        await instance.aclose()


def rows(backend: PostgresBackend, queue: str) -> int:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {schema.QUEUED} WHERE queue = %s".encode(),
            [backend.queue_key(queue)],
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.django_db(databases=["pg"])
def test_the_migration_makes_the_queues_table() -> None:
    with connections["pg"].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [schema.QUEUED])
        assert cursor.fetchone() == (True,)


async def test_capacity_holds_under_concurrent_puts(backend: PostgresBackend, channel: str) -> None:
    expires = time.time() + 60
    for _ in range(20):  # ten connections at a time, rounds for the race to show
        done = await asyncio.gather(
            *(
                backend.aqueue_put(channel, b"%d" % i, capacity=3, expires=expires)
                for i in range(30)
            )
        )
        assert done.count(True) == 3
        assert rows(backend, channel) == 3
        await backend.aqueue_clear(channel)
        assert rows(backend, channel) == 0


async def test_a_waiting_taker_is_woken_by_the_put_not_the_poll(
    backend: PostgresBackend, channel: str
) -> None:
    taking = asyncio.ensure_future(backend.aqueue_take(channel, timeout=TIMEOUT))
    # The taker LISTENs before it first looks: a message put once it waits wakes it.
    await backend.aqueue_put(channel, b"warm", capacity=10, expires=time.time() + 60)
    assert await asyncio.wait_for(taking, TIMEOUT) == b"warm"
    taking = asyncio.ensure_future(backend.aqueue_take(channel, timeout=TIMEOUT))
    await asyncio.sleep(0.1)  # let it wait (if it has not, it simply finds the message)
    started = time.monotonic()
    await backend.aqueue_put(channel, b"woken", capacity=10, expires=time.time() + 60)
    assert await asyncio.wait_for(taking, TIMEOUT) == b"woken"
    assert time.monotonic() - started < POLL / 2


async def test_expired_rows_are_deleted_not_only_skipped(
    backend: PostgresBackend, channel: str
) -> None:
    def insert_expired() -> None:
        with psycopg.connect(POSTGRES_URL) as conn:
            conn.execute(
                f"INSERT INTO {schema.QUEUED} (queue, payload, expires) "
                f"VALUES (%s, %s, %s)".encode(),
                [backend.queue_key(channel), b"stale", time.time() - 1],
            )

    await backend.aqueue_take(channel, timeout=0)  # the table exists
    insert_expired()
    assert await backend.aqueue_take(channel, timeout=0) is None
    assert rows(backend, channel) == 0  # by a take
    insert_expired()
    assert await backend.aqueue_put(channel, b"fresh", capacity=1, expires=time.time() + 60)
    assert rows(backend, channel) == 1  # by a put
    assert await backend.aqueue_take(channel, timeout=TIMEOUT) == b"fresh"


async def test_cancelled_takers_under_load_lose_nothing(channel: str) -> None:
    count = 200
    with using(BROKERS["postgresql"].entry()) as bc:
        backend = bc.backend
        assert isinstance(backend, PostgresBackend)
        taken: list[bytes] = []

        async def patient() -> None:
            while len(taken) < count:
                payload = await backend.aqueue_take(channel, timeout=TIMEOUT)
                if payload is not None:
                    taken.append(payload)

        async def impatient() -> None:
            # Takers cancelled at random moments, many while a DELETE is in flight.
            while len(taken) < count:
                task = asyncio.ensure_future(backend.aqueue_take(channel, timeout=TIMEOUT))
                await asyncio.sleep(random.uniform(0, 0.003))
                task.cancel()
                try:
                    payload = await task
                except asyncio.CancelledError:
                    continue
                if payload is not None:
                    taken.append(payload)

        workers = [asyncio.ensure_future(impatient()) for _ in range(6)]
        for i in range(count):
            await backend.aqueue_put(channel, b"%d" % i, capacity=count, expires=time.time() + 60)
        workers.append(asyncio.ensure_future(patient()))
        await asyncio.wait_for(asyncio.gather(*workers), 60)
        assert sorted(taken) == sorted(b"%d" % i for i in range(count))
        await bc.aclose()


async def test_two_processes_share_a_queue(channel: str) -> None:
    # Two processes taking from one queue: each message is taken by one of them.
    code = (
        "import asyncio, sys\n"
        "from django_broadcast.backends.postgres import PostgresBackend\n"
        "async def main():\n"
        "    b = PostgresBackend(sys.argv[1], {'prefix': sys.argv[2]}, timeout=5)\n"
        "    got = []\n"
        "    while (p := await b.aqueue_take(sys.argv[3], timeout=1)) != b'end':\n"
        "        if p is not None: got.append(p.decode())\n"
        "    print(' '.join(got))\n"
        "    await b.aclose()\n"
        "asyncio.run(main())\n"
    )
    entry = BROKERS["postgresql"].entry()
    prefix = entry["OPTIONS"]["prefix"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            POSTGRES_URL,
            prefix,
            channel,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        with using(entry) as bc:
            for i in range(100):
                await bc.backend.aqueue_put(
                    channel, b"%d" % i, capacity=200, expires=time.time() + 60
                )
            for _ in procs:
                await bc.backend.aqueue_put(channel, b"end", capacity=200, expires=time.time() + 60)
            outputs = [
                (await asyncio.wait_for(p.communicate(), 30))[0].decode().split() for p in procs
            ]
            await bc.aclose()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert sorted(outputs[0] + outputs[1], key=int) == [str(i) for i in range(100)]


def test_queue_names_do_not_collide_with_channel_names() -> None:
    backend = PostgresBackend(POSTGRES_URL, {"prefix": "p:"}, timeout=1)
    assert backend.queue_notify_name("a") != backend.notify_name("a")
    assert backend.queue_notify_name("a" * 100) != backend.notify_name("a" * 100)
    assert len(backend.queue_notify_name("a" * 100).encode()) <= 63


async def test_the_waker_stops_listening_to_queues_without_takers(
    backend: PostgresBackend, channel: str
) -> None:
    """A loop that took from many queues over its life LISTENs only to those with
    takers now (each LISTEN costs the server a slot per connection)."""
    for queue in (f"{channel}-0", f"{channel}-1", f"{channel}-2"):
        assert await backend.aqueue_put(queue, b"m", capacity=5, expires=time.time() + 60)
        assert await backend.aqueue_take(queue, timeout=TIMEOUT) == b"m"
    waker = backend._wakers[asyncio.get_running_loop()]
    assert waker.listening == {backend.queue_notify_name(f"{channel}-2")}
