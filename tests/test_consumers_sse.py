"""The Server-Sent Events consumer, driven through its ASGI interface."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator
from django.test import override_settings

from django_broadcast import Broadcast
from django_broadcast.consumers import EventStreamConsumer
from django_broadcast.consumers.sse import format_position, parse_position

from .brokers import Broker
from .conftest import PrivateRedis, alias_settings, using

TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def public() -> Iterator[None]:
    with override_settings(BROADCAST_AUTH={"PUBLIC": ["t-*"]}):
        yield


class Stream:
    """One SSE request: its response head, then its body as parsed events."""

    def __init__(self, query: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.app = ApplicationCommunicator(
            EventStreamConsumer.as_asgi(),
            {
                "type": "http",
                "method": "GET",
                "path": "/broadcast/events/",
                "query_string": query.encode(),
                "headers": headers or [],
            },
        )
        self.buffer = ""

    async def start(self) -> dict[str, Any]:
        await self.app.send_input({"type": "http.request", "body": b""})
        start: dict[str, Any] = await self.app.receive_output(TIMEOUT)
        assert start["type"] == "http.response.start"
        return start

    async def body(self) -> str:
        message = await self.app.receive_output(TIMEOUT)
        assert message["type"] == "http.response.body"
        return bytes(message["body"]).decode()

    async def block(self) -> str:
        """The next SSE block (up to a blank line)."""
        while "\n\n" not in self.buffer:
            self.buffer += await self.body()
        block, self.buffer = self.buffer.split("\n\n", 1)
        return block

    async def event(self) -> dict[str, Any]:
        """The next event block as {"id", "event", "data"}, skipping comments."""
        while True:
            block = await self.block()
            if block.startswith(":") or block.startswith("retry:"):
                continue
            fields: dict[str, Any] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": ")
                fields[name] = value
            fields["data"] = json.loads(fields["data"])
            return fields

    async def close(self) -> None:
        await self.app.send_input({"type": "http.disconnect"})
        await self.app.wait(TIMEOUT)


async def test_headers_retry_and_events(bc: Broadcast, channel: str) -> None:
    stream = Stream(f"channel={channel}")
    start = await stream.start()
    headers = dict(start["headers"])
    assert start["status"] == 200
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-accel-buffering"] == b"no"
    # Before any event: the retry, and the position the stream would resume from.
    assert await stream.block() == f"retry: 3000\nid: {bc.features.origin or 'live'}"
    event = await sync_to_async(bc.publish)(channel, {"text": "hi"}, type="chat")
    assert event is not None
    assert await stream.event() == {
        "id": event.id,
        "event": "chat",
        "data": {"channel": channel, "id": event.id, "type": "chat", "data": {"text": "hi"}},
    }
    await stream.close()


async def test_disconnect_releases_the_subscription(bc: Broadcast, channel: str) -> None:
    stream = Stream(f"channel={channel}")
    await stream.start()
    assert channel in bc._hub().channels
    await stream.close()
    assert channel not in bc._hub().channels


async def test_keep_alive_comments(bc: Broadcast, channel: str) -> None:
    with override_settings(BROADCAST_CLIENTS={"KEEPALIVE": 0.05}):
        stream = Stream(f"channel={channel}")
        await stream.start()
        assert (await stream.block()).startswith("retry: 3000\nid: ")
        assert await stream.block() == ": keep-alive"
        await stream.close()


@pytest.mark.features("history")
async def test_multi_channel_resume_from_last_event_id(backend_name: str, channel: str) -> None:
    a, b = f"{channel}-a", f"{channel}-b"
    with using(alias_settings(backend_name)) as bc:
        stream = Stream(f"channel={a}&channel={b}")
        await stream.start()
        await bc.apublish(a, "a0")
        await bc.apublish(b, "b0")
        first, second = await stream.event(), await stream.event()
        await stream.close()
        position = second["id"]
        assert position == format_position(
            {a: first["data"]["id"], b: second["data"]["id"]}, (a, b)
        )
        # Missed while away, on both channels:
        await bc.apublish(b, "b1")
        await bc.apublish(a, "a1")
        resumed = Stream(f"channel={a}&channel={b}", [(b"last-event-id", position.encode())])
        await resumed.start()
        got = {(await resumed.event())["data"]["data"] for _ in range(2)}
        assert got == {"a1", "b1"}
        await resumed.close()
        await bc.aclose()


async def test_gap_is_an_event_named_gap(broker: Broker, backend_name: str, channel: str) -> None:
    # Without history, any resume is a gap.
    options = {"history": 5} if broker.features.history else {}
    with using(alias_settings(backend_name, OPTIONS=options)) as bc:
        first = bc.publish(channel, 0, on_commit=False)
        for n in range(1, 300):
            bc.publish(channel, n, on_commit=False)
        assert first is not None
        stream = Stream(f"channel={channel}&last_event_id={first.id}")
        await stream.start()
        gap = await stream.event()
        assert gap["event"] == "gap" and "id" not in gap
        assert gap["data"]["type"] == "broadcast.gap"
        await stream.close()
        await bc.aclose()


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "at least one channel"),
        ("channel=has space", 400, "a space"),
        ("channel=private.x", 403, "not allowed"),
        ("channel=t-x&last_event_id=a%3D", 400, "malformed"),
    ],
)
async def test_refusals(bc: Broadcast, query: str, status: int, words: str) -> None:
    stream = Stream(query)
    start = await stream.start()
    assert start["status"] == status
    assert words in await stream.body()


async def test_too_many_channels(bc: Broadcast) -> None:
    with override_settings(BROADCAST_CLIENTS={"MAX_CHANNELS_PER_STREAM": 2}):
        stream = Stream("channel=t-1&channel=t-2&channel=t-3")
        start = await stream.start()
        assert start["status"] == 400
        assert "at most 2" in await stream.body()


async def test_history_permission_is_needed_to_resume(bc: Broadcast, channel: str) -> None:
    with override_settings(BROADCAST_AUTH={"POLICY": f"{__name__}.deny_history"}):
        stream = Stream(f"channel={channel}&last_event_id={bc.features.origin or '1-1'}")
        assert (await stream.start())["status"] == 403
        stream = Stream(f"channel={channel}")
        assert (await stream.start())["status"] == 200
        await stream.close()


def deny_history(user: Any, channel: str, action: str) -> bool:
    return action == "subscribe"


def test_positions_round_trip() -> None:
    channels = ("a", "b")
    assert parse_position(format_position({"a": "1-0", "b": "2-0"}, channels), channels) == {
        "a": "1-0",
        "b": "2-0",
    }
    assert parse_position("7", ("a",)) == {"a": "7"}
    assert format_position({"a": "7"}, ("a",)) == "7"
    assert parse_position("", channels) == {}


async def test_alias_close_ends_the_stream(bc: Broadcast, channel: str) -> None:
    stream = Stream(f"channel={channel}")
    await stream.start()
    await bc.aclose()
    text = ""
    while True:
        message = await asyncio.wait_for(stream.app.receive_output(TIMEOUT), TIMEOUT)
        text += bytes(message["body"]).decode()
        if not message.get("more_body"):
            break
    assert ": closed" in text


async def test_a_stream_that_loses_the_broker_ends_without_naming_it(
    private_redis: PrivateRedis, channel: str
) -> None:
    with using({"URL": private_redis.url, "TIMEOUT": 1, "RECONNECT_TIMEOUT": 1}) as bc:
        stream = Stream(f"channel={channel}")
        await stream.start()
        private_redis.kill()
        text = ""
        while True:
            message = await asyncio.wait_for(stream.app.receive_output(15), 15)
            text += bytes(message["body"]).decode()
            if not message.get("more_body"):
                break
        assert ": closed" in text
        assert str(private_redis.port) not in text and "redis" not in text
        await bc.aclose()


async def test_lifespan_shutdown_ends_streams_and_closes_the_aliases(
    bc: Broadcast, channel: str
) -> None:
    from django_broadcast.routing import lifespan

    stream = Stream(f"channel={channel}")
    await stream.start()
    assert channel in bc._hub().channels
    app = ApplicationCommunicator(lifespan, {"type": "lifespan"})
    await app.send_input({"type": "lifespan.startup"})
    assert (await app.receive_output(TIMEOUT))["type"] == "lifespan.startup.complete"
    await app.send_input({"type": "lifespan.shutdown"})
    assert (await app.receive_output(TIMEOUT))["type"] == "lifespan.shutdown.complete"
    text = ""
    while True:
        message = await stream.app.receive_output(TIMEOUT)
        text += bytes(message["body"]).decode()
        if not message.get("more_body"):
            break
    assert ": the server is shutting down" in text
    assert bc._hub().channels == set()
