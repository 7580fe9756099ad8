"""What the Redis backends do (URLs, stream ids, trimmed and deleted history), and the
receiver contract checked at the receiver level, as the hub drives it, on every backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import redis

from django_broadcast import GAP, BroadcastUnavailable
from django_broadcast.backends.base import READ_BATCH, Backend, Message, Receiver
from django_broadcast.backends.redis import safe_url

from .conftest import PREFIX, REDIS_URL, alias_settings, free_port, require_broker, using

TIMEOUT = 5


def test_passwords_stay_out_of_messages() -> None:
    assert safe_url("redis://:s3cret@host:6379/0") == "redis://***@host:6379/0"
    assert safe_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert safe_url("redis://host:6379/0") == "redis://host:6379/0"
    port = free_port()
    with using({"URL": f"redis://user:s3cret@127.0.0.1:{port}/0", "TIMEOUT": 1}) as bc:
        try:
            bc.publish("c", 1, on_commit=False)
        except BroadcastUnavailable as exc:
            assert "s3cret" not in str(exc) and "user:***@" in str(exc)
        else:
            raise AssertionError("publish to a closed port succeeded")


def test_history_after_a_deleted_entry_reports_a_gap(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        sent = [bc.publish(channel, n, on_commit=False) for n in range(5)]
        ids = [e.id for e in sent if e is not None]
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.xdel(PREFIX + channel, ids[2])
        finally:
            client.close()
        events = bc.history(channel, since=ids[1])
        assert events[0].type == GAP
        assert [e.data for e in events[1:]] == [3, 4]
        # Resuming from the deleted entry itself: nothing proves it is the same stream.
        events = bc.history(channel, since=ids[2])
        assert events[0].type == GAP
        assert [e.data for e in events[1:]] == [3, 4]
        assert [e.data for e in bc.history(channel, since=ids[3])] == [4]


def test_history_of_a_stream_that_never_existed(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        assert bc.history(channel, since="0-0") == []
        [notice] = bc.history(channel, since="1700000000000-0")
        assert notice.type == GAP


# The receiver contract, as the hub sees it, on every backend ---------------------------


class Listener:
    """An open receiver of a backend with a task reading it, as the hub's listener.

    :meth:`pause` makes it a slow reader: the read under way returns its batch, and
    no other read starts until :meth:`resume`.
    """

    def __init__(self, backend: Backend, receiver: Receiver) -> None:
        self.backend = backend
        self.receiver = receiver
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        #: The size of each batch read.
        self.batches: list[int] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            await self.reading.wait()
            batch = await self.receiver.read()
            self.batches.append(len(batch))
            for message in batch:
                self.messages.put_nowait(message)

    def pause(self) -> None:
        self.reading.clear()

    def resume(self) -> None:
        self.reading.set()

    async def stop(self) -> None:
        """Cancel the reading task (as the hub does before it reconnects)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def failed(self) -> BaseException | None:
        """The error that ends the reading task, within TIMEOUT (its reading ends)."""
        await asyncio.wait([self.task], timeout=TIMEOUT)
        error = self.task.exception()  # InvalidStateError where it still reads
        self.task = asyncio.create_task(asyncio.sleep(0))  # a task for stop()
        return error

    def restart(self) -> None:
        """Read again, after :meth:`stop`."""
        self.task = asyncio.create_task(self._read())

    async def next(self, count: int) -> list[Message]:
        """The next ``count`` messages, each within TIMEOUT."""
        return [await asyncio.wait_for(self.messages.get(), TIMEOUT) for _ in range(count)]

    async def until(self, event_id: str) -> list[Message]:
        """The messages up to and including the one of ``event_id``, each within TIMEOUT."""
        messages = await self.next(1)
        while messages[-1].id != event_id:
            messages += await self.next(1)
        return messages


@asynccontextmanager
async def listening(
    entry: dict[str, Any], prepare: Callable[[Any], None] | None = None
) -> AsyncIterator[Listener]:
    """The backend of the alias ``entry`` and a receiver of it, opened and read;
    ``prepare`` is given the backend first."""
    with using(entry) as bc:
        if prepare is not None:
            prepare(bc.backend)
        receiver = bc.backend.receiver()
        await receiver.open()
        listener = Listener(bc.backend, receiver)
        try:
            yield listener
        finally:
            await listener.stop()
            await receiver.close()
            await bc.aclose()


async def test_subscribe_returns_the_channel_position(backend_name: str, channel: str) -> None:
    empty, busy = f"{channel}.empty", f"{channel}.busy"
    async with listening(alias_settings(backend_name)) as listener:
        backend, receiver = listener.backend, listener.receiver
        old = [await backend.apublish(busy, b"old") for _ in range(3)]
        positions = [await receiver.subscribe(empty), await receiver.subscribe(busy)]
        if not backend.features.history:
            assert positions == [None, None]
        else:
            assert positions == [backend.features.origin, old[-1]]
        # Published right after subscribe returned: read, and after the position.
        sent = [await backend.apublish(busy, b"new"), await backend.apublish(empty, b"new")]
        received = await listener.next(2)
    assert sorted((m.channel, m.id, m.payload) for m in received) == sorted(
        [(busy, sent[0], b"new"), (empty, sent[1], b"new")]
    )
    if backend.features.history:
        assert backend.id_key(sent[0]) > backend.id_key(old[-1])
        assert backend.id_key(sent[1]) > backend.id_key(str(backend.features.origin))


ARABIC_1700 = "\u0661\u0667\u0660\u0660"  # str.isdigit() and int() accept it
BAD_IDS = {
    "memory": ["", "-1", "+1", " 1", "1.0", "1_000", ARABIC_1700, "9" * 30, str(2**64)],
    "postgresql": ["", "-1", "+1", " 1", "1.0", "1_000", ARABIC_1700, "9" * 30, str(2**63)],
    "redis+streams": [
        *("17", "a-1", "1-", "-1", "1-2-3", "1-+2", "1- 2", "1_0-0"),
        f"{ARABIC_1700}-0",
        f"0-{ARABIC_1700}",
        f"{2**64}-0",  # one more than Redis accepts in either part
        f"0-{2**64}",
        f"{'1' * 5000}-0",
    ],
}
BAD_IDS["nats"] = BAD_IDS["redis+streams"]  # the same form: two unsigned 64-bit numbers


@pytest.mark.features("history")
def test_ids_are_parsed_strictly(backend_name: str, channel: str) -> None:
    with using(alias_settings(backend_name)) as bc:
        backend = bc.backend
        expected = "stream id" if backend_name == "redis+streams" else "decimal number"
        for bad in BAD_IDS[backend_name]:
            with pytest.raises(ValueError, match=expected):
                backend.id_key(bad)
            with pytest.raises(ValueError, match=expected):
                bc.history(channel, since=bad)  # refused here, not by the broker
        largest = str(2**63 - 1 if backend_name == "postgresql" else 2**64 - 1)
        if backend_name in ("redis+streams", "nats"):
            largest = f"{largest}-{largest}"
        assert backend.id_key(largest) > backend.id_key(backend.features.origin or "")
        [notice] = bc.history(channel, since=largest)  # an id this broker never made
        assert notice.type == GAP


def delete_stream(channel: str) -> None:
    """DEL the stream of ``channel`` on the shared broker, as an eviction would."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.delete(PREFIX + channel) == 1
    finally:
        client.close()


async def test_history_after_the_stream_was_made_anew_reports_a_gap(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        old = [(await bc.apublish(channel, n)).id for n in range(3)]
        delete_stream(channel)
        new = [(await bc.apublish(channel, n)).id for n in (3, 4)]
        assert bc.backend.id_key(new[0]) > bc.backend.id_key(old[-1])  # ids prove nothing
        resumed = [bc.history(channel, since=old[-1]), await bc.ahistory(channel, since=old[0])]
        for events in resumed:
            assert events[0].type == GAP
            assert [e.data for e in events[1:]] == [3, 4]
        # From the origin: the new stream has lost nothing.
        assert [e.data for e in bc.history(channel, since="0-0")] == [3, 4]
        await bc.aclose()


def test_history_from_the_origin_of_a_trimmed_stream_reports_a_gap(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams", OPTIONS={"history": 5})) as bc:
        for n in range(300):
            bc.publish(channel, n)
        events = bc.history(channel, since="0-0", limit=None)
    assert events[0].type == GAP and events[-1].data == 299


def gap(message: Message) -> tuple[str, str, bytes, str | None]:
    return message.channel, message.id, message.payload, message.gap


async def test_a_reader_reports_a_gap_where_its_stream_was_made_anew(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    async with listening(alias_settings("redis+streams")) as listener:
        backend = listener.backend
        await listener.receiver.subscribe(channel)
        await backend.apublish(channel, b"a")
        await listener.next(1)
        delete_stream(channel)
        sent = await backend.apublish(channel, b"b")
        notice, message = await listener.next(2)
    assert gap(notice) == (channel, "", b"", "reset")
    assert (message.id, message.payload, message.gap) == (sent, b"b", None)


@pytest.mark.parametrize("from_origin", [False, True], ids=["from-an-id", "from-the-origin"])
async def test_a_slow_reader_reports_a_gap_where_its_stream_was_trimmed_past_it(
    channel: str, from_origin: bool
) -> None:
    require_broker("redis", REDIS_URL)
    async with listening(alias_settings("redis+streams", OPTIONS={"history": 5})) as listener:
        backend = listener.backend
        if from_origin:
            await listener.stop()  # waiting for a channel: no read is under way
            assert await listener.receiver.subscribe(channel) == backend.features.origin
        else:
            await listener.receiver.subscribe(channel)
            listener.pause()  # the read under way still returns the next batch
            await backend.apublish(channel, b"read")
            await listener.next(1)
        sent = [await backend.apublish(channel, b"%d" % n) for n in range(300)]
        if from_origin:
            listener.restart()
        else:
            listener.resume()
        received = await listener.until(sent[-1])
        marker = await backend.apublish(channel, b"marker")
        [after] = await listener.next(1)
    # What the reader had been sent before the trim, the notice, then what is left.
    [notice] = [m for m in received if m.gap]
    assert gap(notice) == (channel, "", b"", "trimmed")
    cut = received.index(notice)
    before, left = [m.id for m in received[:cut]], [m.id for m in received[cut + 1 :]]
    assert before == sent[: len(before)] and left == sent[-len(left) :]
    assert len(left) >= 5 and len(before) + len(left) < 300
    assert after.id == marker


async def test_a_reconnect_reports_a_gap_where_the_stream_was_made_anew(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    async with listening(alias_settings("redis+streams")) as listener:
        backend, receiver = listener.backend, listener.receiver
        await receiver.subscribe(channel)
        await backend.apublish(channel, b"a")
        await listener.next(1)
        await listener.stop()
        delete_stream(channel)
        sent = [await backend.apublish(channel, b"b")]
        assert await receiver.reconnect() == {channel}
        listener.restart()
        sent.append(await backend.apublish(channel, b"c"))
        received = await listener.next(2)  # the reconnect's gap is not reported twice
    assert [(m.id, m.gap) for m in received] == [(sent[0], None), (sent[1], None)]


# redis:// reads its SUBSCRIBE connection with hiredis where redis-py parses with it,
# and through redis-py's read_response with its pure-Python parser: both ways alike.

PARSERS = ["hiredis", "python"]


def pubsub_listener(parser: str) -> AbstractAsyncContextManager[Listener]:
    """A redis:// receiver whose connections parse with ``parser``, opened and read."""
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

    def with_parser(backend: Any) -> None:
        make_connection = backend.make_connection

        def connection(*args: Any) -> Any:
            conn = make_connection(*args)
            conn.set_parser(_AsyncHiredisParser if parser == "hiredis" else _AsyncRESP2Parser)
            return conn

        backend.make_connection = connection

    return listening(alias_settings("redis"), with_parser)


@pytest.mark.parametrize("parser", PARSERS)
async def test_pubsub_reads_channels_and_patterns_alike_with_either_parser(
    parser: str, channel: str
) -> None:
    async with pubsub_listener(parser) as listener:
        receiver: Any = listener.receiver
        assert type(receiver.link.conn._parser).__name__ == (
            "_AsyncHiredisParser" if parser == "hiredis" else "_AsyncRESP2Parser"
        )
        await receiver.subscribe(f"{channel}.a")
        await receiver.subscribe(f"{channel}.b")
        await receiver.psubscribe(f"{channel}.p.*")
        sent = []
        for n in range(300):  # more than one read of the socket holds
            name = (f"{channel}.a", f"{channel}.b", f"{channel}.p.x")[n % 3]
            payload = b"%d:" % n + b"x" * 200
            sent.append((name, listener.backend.publish(name, payload), payload))
        got = await listener.next(len(sent))
        assert [(m.channel, m.id, m.payload) for m in got] == sent
        assert {m.pattern for m in got[2::3]} == {f"{channel}.p.*"}
        assert {m.pattern for m in got[0::3] + got[1::3]} == {None}


@pytest.mark.parametrize("parser", PARSERS)
async def test_pubsub_raises_an_error_reply_with_either_parser(parser: str, channel: str) -> None:
    async with pubsub_listener(parser) as listener:
        receiver: Any = listener.receiver
        await receiver.subscribe(channel)
        # Refused in subscribed mode: the error reply comes to read(), as redis-py's.
        await receiver.link.conn.send_command("GET", "x")
        error = await listener.failed()
        assert isinstance(error, redis.ResponseError)
        assert "only (P|S)SUBSCRIBE" in str(error)


@pytest.mark.parametrize("parser", PARSERS)
async def test_pubsub_connection_killed_is_lost_with_either_parser(
    parser: str, channel: str
) -> None:
    from django_broadcast.backends.base import ConnectionLost

    async with pubsub_listener(parser) as listener:
        receiver: Any = listener.receiver
        await receiver.subscribe(channel)
        event_id = listener.backend.publish(channel, b"before")
        [message] = await listener.next(1)
        assert message.id == event_id
        name = receiver.backend.connection_name("pubsub")
        killer = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            [mine] = [c for c in await killer.client_list() if c["name"] == name]
            assert await killer.client_kill_filter(_id=mine["id"]) == 1
        finally:
            await killer.aclose()
        assert isinstance(await listener.failed(), ConnectionLost)


async def test_pubsub_messages_carry_the_channel_string_they_were_subscribed_with(
    channel: str,
) -> None:
    async with pubsub_listener("hiredis") as listener:
        receiver: Any = listener.receiver
        name = "".join([channel, ".same"])  # made here: not an interned string
        await receiver.subscribe(name)
        listener.backend.publish(name, b"x")
        [message] = await listener.next(1)
        # The hub and the layer key their dictionaries by that string.
        assert message.channel is name


def test_pubsub_names_a_message_of_a_channel_no_longer_subscribed_from_its_key() -> None:
    """A message on its way while its channel was unsubscribed is still named (the
    hub then drops it: nobody subscribes to it)."""
    with using(alias_settings("redis")) as bc:
        backend: Any = bc.backend
        key = backend.key("gone").encode()
        messages: list[Any] = []
        reply = [b"message", key, b"abc-1\npayload"]
        backend.receiver()._handle(reply, len(backend.prefix), messages)
    assert [(m.channel, m.id, m.payload) for m in messages] == [("gone", "abc-1", b"payload")]


@pytest.mark.parametrize("parser", PARSERS)
async def test_pubsub_reads_at_most_a_batch_at_a_time_with_either_parser(
    parser: str, channel: str
) -> None:
    """With more at hand than READ_BATCH, a read returns READ_BATCH messages and the
    next read the rest, in order."""
    async with pubsub_listener(parser) as listener:
        await listener.receiver.subscribe(channel)
        payloads = [b"%d" % n for n in range(3 * READ_BATCH)]
        # One pipeline: the broker writes them to the subscriber together.
        ids = listener.backend.publish_many([(channel, payload) for payload in payloads])
        got = await listener.next(len(payloads))
        assert [(m.id, m.payload) for m in got] == list(zip(ids, payloads, strict=True))
        assert max(listener.batches) == READ_BATCH


async def test_subscribers_run_between_the_batches_the_hub_fans_out(channel: str) -> None:
    """The hub lets the subscribers it woke run after each READ_BATCH messages, rather
    than fan out all the broker sent before any of them runs."""
    with using(alias_settings("redis")) as bc:
        try:
            async with bc.subscribe(channel) as sub:
                items = [(channel, bc._encode(channel, "message", n)[0]) for n in range(300)]
                bc.backend.publish_many(items)  # one pipeline, read by the hub together

                async def first() -> tuple[Any, int]:
                    """The first event, and how many wait behind it as it is taken."""
                    event = await anext(sub)
                    return event.data, sub.queued

                # Woken by the first batch, it runs before the hub fans out the next.
                data, queued = await asyncio.wait_for(first(), TIMEOUT)
                assert data == 0
                assert queued < READ_BATCH
                rest = [await asyncio.wait_for(anext(sub), TIMEOUT) for _ in range(299)]
                assert [event.data for event in rest] == list(range(1, 300))
        finally:
            await bc.aclose()
