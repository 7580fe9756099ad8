"""What the PostgreSQL backend adds to the contract: publishes written in the caller's
transaction, payloads over NOTIFY's limit, NOTIFY channel names, retention and its
gaps. Against the PostgreSQL at ``POSTGRES_URL`` (the transactional tests in this
run's test database of the ``"pg"`` alias)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from django.db import connections, transaction

from django_broadcast import Broadcast, Event, broadcasts
from django_broadcast.backends.base import Message
from django_broadcast.backends.postgres import PostgresBackend

from .brokers import BROKERS
from .conftest import require_broker, using

TIMEOUT = 5

pytestmark = pytest.mark.usefixtures("_postgres")


@pytest.fixture
def _postgres() -> None:
    require_broker("postgresql")


def entry(**options: object) -> dict[str, object]:
    return BROKERS["postgresql"].entry(OPTIONS=options)


@pytest.fixture
async def bc() -> AsyncIterator[Broadcast]:
    with using(entry()) as instance:
        yield instance
        await instance.aclose()


@pytest.fixture
async def tbc(django_db_blocker: object) -> AsyncIterator[Broadcast]:
    """An alias whose publishes join the transactions of the ``"pg"`` database (this
    run's test database, which the migration gave the tables)."""
    settings = connections["pg"].settings_dict
    url = (
        f"postgresql://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    )
    with using({**entry(database="pg"), "URL": url}) as instance:
        yield instance
        await instance.aclose()


def in_thread(func):  # type: ignore[no-untyped-def]
    """Run ``func`` (a view, say) in a thread of its own, closing its database
    connections after it."""

    def run() -> object:
        try:
            return func()
        finally:
            connections.close_all()

    return asyncio.to_thread(run)


# Transactional publish ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["pg"])
async def test_a_publish_in_a_transaction_leaves_at_the_commit_never_on_rollback(
    tbc: Broadcast, channel: str
) -> None:
    sent: dict[str, Event | None] = {}

    def view() -> None:
        with transaction.atomic(using="pg"):
            sent["committed"] = tbc.publish(channel, "committed")
        with pytest.raises(RuntimeError), transaction.atomic(using="pg"):
            tbc.publish(channel, "rolled back")
            raise RuntimeError
        with transaction.atomic(using="pg"):
            sent["kept"] = tbc.publish(channel, "kept")
            with pytest.raises(RuntimeError), transaction.atomic(using="pg"):  # a savepoint
                tbc.publish(channel, "rolled back to the savepoint")
                raise RuntimeError
        sent["marker"] = tbc.publish(channel, "marker")  # autocommit

    async with tbc.subscribe(channel) as sub:
        await in_thread(view)
        received = [await sub.get(timeout=TIMEOUT) for _ in range(3)]
    assert [e.data for e in received] == ["committed", "kept", "marker"]
    # The ids were known in the transaction, and are those delivered and kept.
    assert [e.id for e in received] == [sent[k].id for k in ("committed", "kept", "marker")]  # type: ignore[union-attr]
    assert [e.data for e in await tbc.ahistory(channel)] == ["committed", "kept", "marker"]


@pytest.mark.django_db(transaction=True, databases=["pg"])
async def test_a_receiver_gets_a_transactions_event_only_once_it_commits(
    tbc: Broadcast, channel: str
) -> None:
    other = f"{channel}.other"
    published, release = threading.Event(), threading.Event()

    def view() -> None:
        with transaction.atomic(using="pg"):
            tbc.publish(channel, "in the transaction")
            published.set()
            assert release.wait(TIMEOUT)

    async with tbc.subscribe(channel, other) as sub:
        running = asyncio.ensure_future(in_thread(view))
        assert await asyncio.to_thread(published.wait, TIMEOUT)
        # Published (on another channel, whose lock the transaction does not hold)
        # after the transaction's publish: received first, as that one waits.
        await tbc.apublish(other, "marker")
        assert (await sub.get(timeout=TIMEOUT)).data == "marker"
        release.set()
        await asyncio.wait_for(running, TIMEOUT)
        assert (await sub.get(timeout=TIMEOUT)).data == "in the transaction"


@pytest.mark.django_db(transaction=True, databases=["pg"])
async def test_outside_a_transaction_the_database_publishes_at_once(
    tbc: Broadcast, channel: str
) -> None:
    async with tbc.subscribe(channel) as sub:
        sent = await in_thread(lambda: tbc.publish(channel, "now"))
        assert (await sub.get(timeout=TIMEOUT)).id == sent.id


@pytest.mark.django_db
def test_the_migration_leaves_models_unchanged() -> None:
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


# Payloads and names ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pool", "transaction"])
@pytest.mark.django_db(transaction=True, databases=["pg"])
async def test_payloads_over_notifys_limit_arrive_in_order(
    bc: Broadcast, tbc: Broadcast, channel: str, how: str
) -> None:
    big = "x" * 20_000
    alias = bc if how == "pool" else tbc

    def publish_all() -> list[Event | None]:
        return [alias.publish(channel, data) for data in ("small", big, "small again")]

    async with alias.subscribe(channel) as sub:
        sent = await in_thread(publish_all)
        received = [await sub.get(timeout=TIMEOUT) for _ in range(3)]
    assert [e.data for e in received] == ["small", big, "small again"]
    assert [e.id for e in received] == [e.id for e in sent]
    assert [e.data for e in await alias.ahistory(channel)] == ["small", big, "small again"]


def test_notify_names_fit_and_do_not_collide() -> None:
    backend = PostgresBackend(BROKERS["postgresql"].url(), {"prefix": "p:"}, timeout=1)
    short = "chat.lobby"
    long_a, long_b = "a" * 98 + "1", "a" * 98 + "2"
    assert backend.notify_name(short) == "p:chat.lobby"  # readable where it fits
    names = {backend.notify_name(n) for n in (short, long_a, long_b)}
    assert len(names) == 3 and all(len(n.encode()) <= 63 for n in names)
    assert PostgresBackend.features.max_name_length == 63


async def test_a_long_channel_name_round_trips(bc: Broadcast) -> None:
    channel = "long." + "n" * 94
    async with bc.subscribe(channel) as sub:
        sent = await bc.apublish(channel, "far")
        assert (await sub.get(timeout=TIMEOUT)).id == sent.id


def test_a_prefix_too_long_for_notify_names_is_refused() -> None:
    [problem] = PostgresBackend.validate_options({"prefix": "p" * 40})
    assert "at most 32 bytes" in problem


# Retention ------------------------------------------------------------------------------


async def test_history_keeps_the_newest_rows_and_says_when_it_lost_some(channel: str) -> None:
    with using(entry(history=5)) as bc:
        sent = [await bc.apublish(channel, n) for n in range(12)]
        assert [e.data for e in await bc.ahistory(channel, limit=None)] == list(range(7, 12))
        [notice, *events] = await bc.ahistory(channel, since=sent[0].id)
        assert notice.is_gap and [e.data for e in events] == list(range(7, 12))
        kept = await bc.ahistory(channel, since=sent[8].id)
        assert [e.data for e in kept] == [9, 10, 11]  # no gap: nothing after it was lost
        await bc.aclose()


async def test_history_drops_rows_older_than_max_age(channel: str) -> None:
    with using(entry(max_age=0.05, history=5)) as bc:  # history=5: trimmed at every publish
        first = await bc.apublish(channel, "old")
        await bc.apublish(channel, "old too")
        await asyncio.sleep(0.1)  # both older than max_age
        await bc.apublish(channel, "new")
        assert [e.data for e in await bc.ahistory(channel)] == ["new"]
        [notice, event] = await bc.ahistory(channel, since=first.id)
        assert notice.is_gap and event.data == "new"  # "old too" is gone
        await bc.aclose()


@pytest.mark.django_db(transaction=True, databases=["pg"])
async def test_a_missing_table_is_a_clear_error(tbc: Broadcast, channel: str) -> None:
    from django_broadcast import BroadcastError
    from django_broadcast.backends.postgres import schema

    def view() -> None:
        with connections["pg"].cursor() as cursor:
            cursor.execute(schema.DROP)
        try:
            with pytest.raises(BroadcastError, match="migrate django_broadcast --database pg"):
                tbc.publish(channel, "nowhere")
        finally:
            with connections["pg"].cursor() as cursor:
                cursor.execute(schema.CREATE)

    await in_thread(view)


async def test_a_large_event_deleted_before_it_was_read_is_a_gap(channel: str) -> None:
    """Its notification carries only its id; retention (one row kept) deleted it
    before the receiver read it: the receiver says so, in order."""
    with using(entry(history=1)) as bc:
        backend = bc.backend
        receiver = backend.receiver()
        await receiver.open()
        try:
            await receiver.subscribe(channel)
            await backend.apublish(channel, b'"' + b"x" * 10_000 + b'"')
            small = await backend.apublish(channel, b'"small"')  # trims the large one
            messages: list[Message] = []
            while len(messages) < 2:
                messages.extend(await asyncio.wait_for(receiver.read(), TIMEOUT))
        finally:
            await receiver.close()
        assert [(m.gap, m.id) for m in messages] == [("trimmed", ""), (None, small)]
        await bc.aclose()


async def test_the_pools_maintenance_worker_ends_when_cancelled_mid_task() -> None:
    """psycopg_pool's worker catches a ``CancelledError`` raised in a task it runs and
    waits for the next one: a loop ending with the pool open (``asyncio.run`` cancels
    every task, then waits for them) would wait for ever. The backend's pool ends."""
    from django_broadcast.backends.postgres.backend import _AsyncPool

    running = asyncio.Event()

    class Stuck:  # a maintenance task that never ends: a connection attempt, say
        async def run(self) -> None:
            running.set()
            await asyncio.Event().wait()

    queue: asyncio.Queue[object] = asyncio.Queue()
    worker = asyncio.get_running_loop().create_task(_AsyncPool.worker(queue))
    queue.put_nowait(Stuck())
    await asyncio.wait_for(running.wait(), 5)
    worker.cancel()
    done, _ = await asyncio.wait({worker}, timeout=5)
    if not done:  # it went back to waiting for a task: cancel that wait, to end the test
        worker.cancel()
    assert worker in done and worker.cancelled()


def test_short_lived_loops_leave_no_connection_open() -> None:
    """A loop that ends (``asyncio.run`` in a thread, a test's loop) closes what it
    opened: its pool's connections and its receiver's, not one set per loop left."""
    import uuid

    import psycopg

    from .brokers import POSTGRES_URL, PREFIX

    require_broker("postgresql")
    name = f"t-short-{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}?application_name={name}"
    listen = f"django_broadcast:listen:{PREFIX}"

    async def one_loop(number: int) -> None:
        bc = broadcasts["default"]
        async with bc.subscribe("short") as subscription:
            await bc.apublish("short", number)
            event = await asyncio.wait_for(subscription.__anext__(), TIMEOUT)
            assert event.data == number
        await bc.aqueue_put("short-q", number, capacity=10, ttl=60)
        assert await asyncio.wait_for(bc.aqueue_take("short-q"), TIMEOUT) == number

    with using({"URL": url, "OPTIONS": {"prefix": PREFIX}}):
        try:
            for number in range(10):
                asyncio.run(one_loop(number))
            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                rows = admin.execute(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE application_name IN (%s, %s)",
                    [name, listen],
                ).fetchall()
            assert rows == [], f"connections of ended loops still open: {rows}"
        finally:
            broadcasts["default"].close()
