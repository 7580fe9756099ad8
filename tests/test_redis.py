"""What the Redis backends do (URLs, stream ids, trimmed and deleted history), and the
receiver contract checked at the receiver level, as the hub drives it, on every backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis

from django_broadcast import GAP, BroadcastUnavailable
from django_broadcast.backends.base import Backend, Message, Receiver
from django_broadcast.backends.redis import RedisStreamsBackend, safe_url

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


def test_stream_ids_are_checked() -> None:
    backend = RedisStreamsBackend("redis+streams://127.0.0.1/0", {}, timeout=1)
    assert backend.id_key("1700000000000-3") == (1700000000000, 3)
    for bad in ("17", "a-1", "1-", "-1", "1-2-3"):
        try:
            backend.id_key(bad)
        except ValueError as exc:
            assert "stream id" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


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
        assert [e.data for e in bc.history(channel, since=ids[2])] == [3, 4]


def test_history_of_a_stream_that_never_existed(channel: str) -> None:
    require_broker("redis", REDIS_URL)
    with using(alias_settings("redis+streams")) as bc:
        assert bc.history(channel, since="0-0") == []
        [notice] = bc.history(channel, since="1700000000000-0")
        assert notice.type == GAP


# The receiver contract, as the hub sees it, on every backend ---------------------------


class Listener:
    """An open receiver of a backend with a task reading it, as the hub's listener."""

    def __init__(self, backend: Backend, receiver: Receiver) -> None:
        self.backend = backend
        self.receiver = receiver
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for message in await self.receiver.read():
                self.messages.put_nowait(message)

    async def next(self, count: int) -> list[Message]:
        """The next ``count`` messages, each within TIMEOUT."""
        return [await asyncio.wait_for(self.messages.get(), TIMEOUT) for _ in range(count)]


@asynccontextmanager
async def listening(entry: dict[str, Any]) -> AsyncIterator[Listener]:
    """The backend of the alias ``entry`` and a receiver of it, opened and read."""
    with using(entry) as bc:
        receiver = bc.backend.receiver()
        await receiver.open()
        listener = Listener(bc.backend, receiver)
        try:
            yield listener
        finally:
            listener.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener.task
            await receiver.close()
            await bc.aclose()


async def test_subscribe_returns_the_channel_position(backend_name: str, channel: str) -> None:
    empty, busy = f"{channel}.empty", f"{channel}.busy"
    async with listening(alias_settings(backend_name)) as listener:
        backend, receiver = listener.backend, listener.receiver
        old = [await backend.apublish(busy, b"old") for _ in range(3)]
        positions = [await receiver.subscribe(empty), await receiver.subscribe(busy)]
        if not backend.supports_history:
            assert positions == [None, None]
        else:
            assert positions == [backend.origin, old[-1]]
        # Published right after subscribe returned: read, and after the position.
        sent = [await backend.apublish(busy, b"new"), await backend.apublish(empty, b"new")]
        received = await listener.next(2)
    assert sorted((m.channel, m.id, m.payload) for m in received) == sorted(
        [(busy, sent[0], b"new"), (empty, sent[1], b"new")]
    )
    if backend.supports_history:
        assert backend.id_key(sent[0]) > backend.id_key(old[-1])
        assert backend.id_key(sent[1]) > backend.id_key(str(backend.origin))
