"""What is particular to the NATS backend, on the shared NATS server (``NATS_URL``) or
a private one: channel names as subjects, patterns wider than NATS wildcards, the
JetStream stream OPTIONS make, ids that are JetStream sequences, server lists, the
loop thread of sync publishing."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from django_broadcast import Broadcast
from django_broadcast.backends.nats import NatsBackend
from django_broadcast.backends.nats import _names as nats_names

from .brokers import BROKERS, NATS_PREFIX, NATS_URL, PrivateNats, free_port
from .conftest import require_broker, using

TIMEOUT = 5


@pytest.fixture
def nats_bc() -> Iterator[Broadcast]:
    require_broker("nats")
    with using(BROKERS["nats"].entry()) as bc:
        yield bc


# Channel names and patterns as subjects ------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "subject"),
    [
        ("chat.lobby", "p.chat.lobby"),
        ("a_b", "p.a__b"),
        ("a..b", "p.a._.b"),
        (".a.", "p._.a._"),
        ("a._.b", "p.a.__.b"),
        ("-", "p.-"),
    ],
)
def test_channel_names_map_to_valid_subjects_and_back(channel: str, subject: str) -> None:
    assert nats_names.channel_subject("p", channel) == subject
    assert nats_names.subject_channel("p", subject) == channel


def test_no_two_channels_share_a_subject() -> None:
    names = ["a", "a.", ".a", "a..", "a_", "a__", "_a", "a._", "a.__", "a..b", "a._.b", "_", "__"]
    names += [f"{x}.{y}" for x in ("", "_", "a") for y in ("", "_", "a")]
    subjects = {nats_names.channel_subject("p", n) for n in names}
    assert len(subjects) == len(set(names))
    for subject in subjects:
        assert all(token and " " not in token for token in subject.split("."))
        assert "*" not in subject and ">" not in subject


@pytest.mark.parametrize(
    ("pattern", "subject_filter"),
    [
        ("news.*", "p.news.>"),
        ("news.*.z", "p.news.>"),
        ("a_b.x?", "p.a__b.>"),
        ("*", "p.>"),
        ("news*", "p.>"),
        ("exact.name", "p.exact.name"),
    ],
)
def test_patterns_map_to_the_narrowest_filter_that_covers_them(
    pattern: str, subject_filter: str
) -> None:
    assert nats_names.pattern_filter("p", pattern) == subject_filter


async def test_odd_channel_names_each_get_their_own_events(
    nats_bc: Broadcast, channel: str
) -> None:
    names = [f"{channel}.a..b", f"{channel}.a._.b", f"{channel}.", f"{channel}._", f"{channel}.a_b"]
    subs = [nats_bc.subscribe(name) for name in names]
    for sub in subs:
        await sub.open()
    try:
        for name in names:
            await nats_bc.apublish(name, name)
        for name, sub in zip(names, subs, strict=True):
            event = await sub.get(timeout=TIMEOUT)
            assert (event.channel, event.data) == (name, name)
            marker = await nats_bc.apublish(name, "marker")
            assert (await sub.get(timeout=TIMEOUT)).id == marker.id  # nothing else came
    finally:
        for sub in subs:
            await sub.aclose()
        await nats_bc.aclose()


async def test_a_pattern_matches_across_dots_and_exactly(nats_bc: Broadcast, channel: str) -> None:
    """``*`` spans dots and ``?`` is one character, though NATS wildcards are whole
    tokens: the consumer is wider, the receiver filters."""
    async with nats_bc.subscribe(patterns=[f"{channel}.*.z", f"{channel}.?"]) as sub:
        for name in [f"{channel}.a.b.z", f"{channel}.a.b", f"{channel}.x", f"{channel}.xy"]:
            await nats_bc.apublish(name, name)
        marker = await nats_bc.apublish(f"{channel}.m.z", "marker")
        got = [(await sub.get(timeout=TIMEOUT)) for _ in range(3)]
    await nats_bc.aclose()
    assert sorted(e.data for e in got) == sorted([f"{channel}.a.b.z", f"{channel}.x", "marker"])
    assert got[-1].id == marker.id or marker.id in [e.id for e in got]


# The stream and its ids ----------------------------------------------------------------


async def _stream_info(backend: NatsBackend) -> object:
    client = await nats.connect(backend.servers)
    try:
        return await client.jetstream().stream_info(backend.stream)
    finally:
        await client.close()


async def test_the_stream_is_made_from_the_options() -> None:
    require_broker("nats")
    prefix = f"{NATS_PREFIX}-opts"
    options = {"prefix": prefix, "history": 7, "max_age": 60}
    with using(BROKERS["nats"].entry(OPTIONS=options)) as bc:
        try:
            await bc.apublish("x", 1)
            info = await _stream_info(bc.backend)  # type: ignore[arg-type]
            config = info.config  # type: ignore[attr-defined]
            assert config.name == prefix and config.subjects == [f"{prefix}.>"]
            assert config.max_msgs_per_subject == 7 and config.max_age == 60
        finally:
            await bc.aclose()
    # An alias with other limits brings the stream to its own.
    with using(BROKERS["nats"].entry(OPTIONS={**options, "history": 9})) as bc:
        try:
            await bc.apublish("x", 2)
            info = await _stream_info(bc.backend)  # type: ignore[arg-type]
            assert info.config.max_msgs_per_subject == 9  # type: ignore[attr-defined]
        finally:
            client = await nats.connect(bc.backend.servers)  # type: ignore[attr-defined]
            await client.jetstream().delete_stream(prefix)
            await client.close()
            await bc.aclose()


async def test_a_publish_returns_the_jetstream_sequence(nats_bc: Broadcast, channel: str) -> None:
    first = await nats_bc.apublish(channel, 1)
    second = await asyncio.to_thread(nats_bc.publish, channel, 2, on_commit=False)
    assert second is not None
    backend = nats_bc.backend
    client = await nats.connect(backend.servers)  # type: ignore[attr-defined]
    try:
        stored = await client.jetstream().get_msg(
            backend.stream,  # type: ignore[attr-defined]
            subject=backend.subject(channel),  # type: ignore[attr-defined]
        )
    finally:
        await client.close()
        await nats_bc.aclose()
    epoch, seq = backend.id_key(second.id)
    assert seq == stored.seq and backend.id_key(first.id) < (epoch, seq)


@pytest.mark.parametrize(
    "bad", ["12", "1-2-3", "-1", "1-", "a-1", "1-\u0661", "1-" + "9" * 21, "0x1-2"]
)
def test_malformed_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an event id of the NATS backend"):
        nats_names.parse_id(bad)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix": "a b"}, "option 'prefix' must be"),
        ({"prefix": "a..b"}, "option 'prefix' must be"),
        ({"prefix": "a.*"}, "option 'prefix' must be"),
        ({"stream": "a.b"}, "option 'stream' must be"),
        ({"storage": "disk"}, "option 'storage' must be 'file' or 'memory'"),
        ({"max_age": -1.5}, "option 'max_age' must be positive"),
        ({"replicas": 0}, "option 'replicas' must be positive"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    problems = NatsBackend.validate_options(options)
    assert any(message in problem for problem in problems), problems


# Servers and the loop thread -----------------------------------------------------------


def test_a_url_may_list_several_servers() -> None:
    assert nats_names.servers("nats://a:1,b:2, nats://c:3") == [
        "nats://a:1",
        "nats://b:2",
        "nats://c:3",
    ]
    assert nats_names.safe_url("nats://u:secret@a:1") == "nats://***@a:1"


def test_a_dead_server_in_the_list_is_skipped(channel: str) -> None:
    require_broker("nats")
    url = f"nats://127.0.0.1:{free_port()},{BROKERS['nats'].url()}"
    with using(BROKERS["nats"].entry(url=url)) as bc:
        try:
            sent = bc.publish(channel, "through the second", on_commit=False)
            assert sent is not None
            assert [e.id for e in bc.history(channel)] == [sent.id]
        finally:
            bc.close()


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "django_broadcast.nats"]


def test_sync_publishing_uses_one_loop_thread_closed_with_the_alias(channel: str) -> None:
    require_broker("nats")
    before = len(_loop_threads())
    with using(BROKERS["nats"].entry()) as bc:
        threads = [
            threading.Thread(target=bc.publish, args=(channel, n), kwargs={"on_commit": False})
            for n in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert len(_loop_threads()) == before + 1
        assert sorted(e.data for e in bc.history(channel)) == list(range(8))
        bc.close()
        assert len(_loop_threads()) == before


# A private server ------------------------------------------------------------------------


def test_the_private_server_answers_its_monitoring_port() -> None:
    server = PrivateNats()
    try:
        server.start()
        assert server.monitoring("varz")["jetstream"]["config"]["store_dir"].startswith(server.dir)
    except FileNotFoundError:
        pytest.skip("nats-server is not on PATH")
    finally:
        server.stop()


async def test_a_consumer_lost_at_the_server_is_made_again(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer can go while the receiver's connection stays (the node that held it
    went away): its heartbeats stop, and the receiver connects again and resumes,
    though another channel of the receiver stays busy."""
    require_broker("nats")
    monkeypatch.setattr(NatsBackend, "heartbeat", 0.2)
    busy = f"{channel}.busy"
    with using(BROKERS["nats"].entry()) as bc:
        backend: Any = bc.backend
        async with bc.subscribe(channel) as sub, bc.subscribe(busy) as busy_sub:
            first = await bc.apublish(channel, 1)
            assert (await sub.get(timeout=TIMEOUT)).id == first.id

            async def keep_busy() -> None:
                while True:
                    await bc.apublish(busy, "busy")
                    await busy_sub.get(timeout=TIMEOUT)
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(keep_busy())
            try:
                client = await nats.connect(backend.servers)
                try:
                    jsm = client.jetstream()
                    for info in await jsm.consumers_info(backend.stream):
                        if info.config.filter_subject == backend.subject(channel):
                            await jsm.delete_consumer(backend.stream, info.name)
                finally:
                    await client.close()
                sent = await bc.apublish(channel, 2)  # while the channel has no consumer
                event = await sub.get(timeout=TIMEOUT)
                assert (event.id, event.data) == (sent.id, 2)  # no gap: nothing was lost
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await bc.aclose()


def test_short_lived_loops_leave_no_connection_open() -> None:
    """A loop that ends (``asyncio.run`` in a thread, a test's loop) closes what it
    opened: its publishing connection and its receiver's, not one set per loop left."""
    require_broker("nats")
    server = PrivateNats()

    async def one_loop(bc: Broadcast, number: int) -> None:
        async with bc.subscribe("short") as subscription:
            await bc.apublish("short", number)
            event = await asyncio.wait_for(subscription.__anext__(), TIMEOUT)
            assert event.data == number
        await bc.aqueue_put("short-q", number, capacity=10, ttl=60)
        assert await asyncio.wait_for(bc.aqueue_take("short-q"), TIMEOUT) == number

    try:
        server.start()
        with using({"URL": server.url}) as bc:
            for number in range(10):
                asyncio.run(one_loop(bc, number))
            deadline = time.monotonic() + TIMEOUT  # (the server notes a close at once,
            while (connections := server.monitoring("connz")["connections"]) and (
                time.monotonic() < deadline  # or nearly)
            ):
                time.sleep(0.05)
            assert connections == [], [c.get("name") for c in connections]
            bc.close()
    finally:
        server.stop()


async def test_a_cancellation_swallowed_below_the_backend_still_stops_its_caller() -> None:
    """nats-py waits for its requests with ``asyncio.wait_for``, which on Python 3.11
    returns the result when the caller is cancelled as it arrives: the caller (a
    task being stopped) must not run on."""
    backend = NatsBackend(NATS_URL, {"prefix": NATS_PREFIX}, timeout=TIMEOUT)
    started = asyncio.Event()

    async def swallows() -> str:  # what wait_for does in that race
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "answered"
        return "late"

    async def caller() -> None:
        await backend.within(swallows())
        await asyncio.sleep(60)  # runs on if the cancellation was lost

    task = asyncio.get_running_loop().create_task(caller())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
    if not done:
        task.cancel()  # (let the test end)
    assert task in done and task.cancelled()
