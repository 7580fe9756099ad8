"""The browser path through real servers, daphne and uvicorn: hostile frames, quiet
channels resumed, a broker down, a client that stops reading, a shutdown with streams
open. These bugs live where the server encodes, buffers and shuts down, so the tests
talk to a server process over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from .brokers import BROKERS
from .conftest import PREFIX, REDIS_URL, PrivateRedis, require_broker, using
from .servers import SERVERS, Server

TIMEOUT = 10
STREAMS = BROKERS["redis+streams"].url()

pytestmark = pytest.mark.usefixtures("redis_up")


@pytest.fixture
def redis_up() -> None:
    require_broker("redis", REDIS_URL)


@pytest.fixture(params=SERVERS)
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def unique(prefix: str = "t-") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def publisher(url: str) -> Any:
    """The alias a test publishes through: the server's broker, with its key prefix."""
    entry: dict[str, Any] = {"URL": url}
    if not url.startswith("memory:"):
        entry["OPTIONS"] = {"prefix": PREFIX + "mp:"}
    return using(entry)


async def frame(ws: Any, op: str | None = None) -> dict[str, Any]:
    """The next frame (of ``op``, skipping others)."""
    while True:
        received: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if op is None or received["op"] == op:
            return received


async def subscribe(ws: Any, channel: str, since: str | None = None) -> dict[str, Any]:
    request = {"op": "subscribe", "channel": channel}
    if since is not None:
        request["since"] = since
    await ws.send(json.dumps(request))
    return await frame(ws)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class SSE:
    """One SSE response read block by block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def block(self) -> dict[str, str]:
        """The next block's fields (``retry``, ``id``, ``event``, ``data``, ``:``)."""
        fields: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(anext(self.lines), TIMEOUT)
            if not line:
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or ":"] = value.strip()

    async def event(self) -> dict[str, Any]:
        while True:
            block = await self.block()
            if "data" in block:
                return {**block, "data": json.loads(block["data"])}


async def open_stream(
    client: httpx.AsyncClient, server: Server, channels: list[str], **headers: str
) -> SSE:
    request = client.build_request(
        "GET",
        server.url("/broadcast/events/"),
        params=[("channel", c) for c in channels],
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )
    response = await client.send(request, stream=True)
    return SSE(response)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        yield client


# Quiet channels resume without loss ---------------------------------------------------


async def test_a_quiet_channel_resumes_from_its_position(
    serve: Any, kind: str, http: httpx.AsyncClient
) -> None:
    server = serve(kind, url=STREAMS)
    quiet = unique()
    with publisher(STREAMS) as bc:
        # WebSocket: the subscribed frame gives the position of a channel never used.
        ws = await server.websocket()
        reply = await subscribe(ws, quiet)
        assert reply["op"] == "subscribed" and reply["position"] == "0-0"
        await ws.close()
        missed = [await bc.apublish(quiet, n) for n in range(3)]
        ws = await server.websocket()
        reply = await subscribe(ws, quiet, since=reply["position"])
        assert reply["recovered"] is True
        assert [(await frame(ws, "event"))["id"] for _ in range(3)] == [e.id for e in missed]
        await ws.close()

        # SSE: the stream's first id covers the quiet channel; Last-Event-ID resumes it.
        other = unique()
        stream = await open_stream(http, server, [other])
        head = await stream.block()
        assert head == {"retry": "3000", "id": "0-0"}  # before any event
        position = head["id"]
        await stream.response.aclose()
        sent = await bc.apublish(other, "while away")
        stream = await open_stream(http, server, [other], last_event_id=position)
        await stream.block()
        event = await stream.event()
        assert event["data"]["id"] == sent.id and event["id"] == sent.id
        await stream.response.aclose()
        await bc.aclose()


async def test_on_pub_sub_every_resumed_channel_gets_a_gap_notice(
    serve: Any, kind: str, http: httpx.AsyncClient
) -> None:
    server = serve(kind, url=REDIS_URL)
    a, b = unique(), unique()
    stream = await open_stream(http, server, [a, b])
    head = await stream.block()
    assert head["id"] == f"{a}=live;{b}=live"
    await stream.response.aclose()
    stream = await open_stream(http, server, [a, b], last_event_id=head["id"])
    await stream.block()
    gaps = {(await stream.event())["data"]["channel"] for _ in range(2)}
    assert gaps == {a, b}
    await stream.response.aclose()
    ws = await server.websocket()
    reply = await subscribe(ws, a)
    assert reply["position"] is None
    await ws.close()


# Hostile input ------------------------------------------------------------------------

HOSTILE = [
    ('{"op": "subscribe", "channel": "\\ud800"}', "invalid_channel"),
    ("[" * 5000 + "]" * 5000, "malformed"),
    ('{"op": "subscribe", "channel": "t-x", "since": "18446744073709551616-0"}', "bad_since"),
    ('{"op": "subscribe", "channel": "t-x", "since": "\\u0661\\u0667-\\u0660"}', "bad_since"),
    ('{"op": "subscribe", "channel": "boom-1"}', "forbidden"),
    ('{"op": "subscribe", "channel": "broadcast.layer.inbox.x"}', "forbidden"),
    ('{"op": "publish", "channel": "t-x", "type": "websocket.receive", "data": 1}', "invalid_data"),
    ('{"op": "publish", "channel": "t-x", "type": "http.disconnect", "data": 1}', "invalid_data"),
    ('{"op": "publish", "channel": "t-x", "data": {"type": "forged"}}', "invalid_data"),
    ('{"op": "publish", "channel": "t-x", "data": {"channel": "other"}}', "invalid_data"),
    ('{"op": "dance", "channel": "\\udfff"}', "malformed"),
]


async def test_no_frame_closes_the_connection_and_nothing_leaks(serve: Any, kind: str) -> None:
    server = serve(kind, url=STREAMS)
    warm_up = await server.websocket()  # the process's own tasks start: the layer's inbox
    await subscribe(warm_up, unique())
    await warm_up.close()
    await eventually(lambda: _no_channels(server))
    before = await server.diagnostics()
    live = unique()
    ws = await server.websocket()
    assert (await subscribe(ws, live))["op"] == "subscribed"
    for text, code in HOSTILE:
        await ws.send(text)
        reply = await frame(ws)
        assert reply["op"] == "error" and reply["code"] == code, (text[:60], reply)
        assert "127.0.0.1" not in reply["message"]
    await ws.send(b"\x00\x01")
    assert (await frame(ws))["code"] == "malformed"
    # The connection is up and its subscription still delivers.
    with publisher(STREAMS) as bc:
        marker = await bc.apublish(live, "still here")
        assert (await frame(ws, "event"))["id"] == marker.id
        await bc.aclose()
    assert live in (await server.diagnostics())["channels"]
    await ws.close()

    async def released() -> bool:
        now = await server.diagnostics()
        return now["channels"] == [] and now["tasks"] <= before["tasks"]

    await eventually(released)


async def _no_channels(server: Server) -> bool:
    return (await server.diagnostics())["channels"] == []


async def test_a_bad_last_event_id_or_method_is_a_prompt_refusal(
    serve: Any, kind: str, http: httpx.AsyncClient
) -> None:
    server = serve(kind, url=STREAMS)
    url = server.url("/broadcast/events/")
    for bad in ("18446744073709551616-0", "\u0661-0", "x" * 5000):
        headers = {b"last-event-id": bad.encode()}
        response = await http.get(url, params={"channel": "t-x"}, headers=headers)
        assert response.status_code == 400, bad
        assert "Last-Event-ID" in response.text
    for method in ("POST", "OPTIONS", "DELETE"):
        response = await http.request(method, url, params={"channel": "t-x"})
        assert response.status_code == 405 and response.headers["allow"] == "GET"


# The broker down ----------------------------------------------------------------------


async def test_consumers_start_and_recover_while_the_broker_is_down(
    serve: Any, kind: str, http: httpx.AsyncClient, private_redis: PrivateRedis
) -> None:
    url = private_redis.url
    private_redis.kill()
    server = serve(kind, url=url, entry={"TIMEOUT": 1})  # with the channel layer
    channel = unique()
    ws = await server.websocket()  # the consumer starts: no HTTP 500
    reply = await subscribe(ws, channel)
    assert reply["op"] == "error" and reply["code"] == "unavailable"
    assert str(private_redis.port) not in reply["message"]
    stream = await open_stream(http, server, [channel])
    assert stream.response.status_code == 200
    head = await stream.block()
    unavailable = await stream.block()
    assert "retry" in head and unavailable["event"] == "unavailable"
    with pytest.raises(StopAsyncIteration):
        while True:
            await stream.block()  # the response ends: EventSource will try again

    private_redis.start()
    reply = await subscribe(ws, channel)  # what broadcast.js does after its backoff
    assert reply["op"] == "subscribed"
    stream = await open_stream(http, server, [channel])
    await stream.block()
    with publisher(url) as bc:
        sent = await bc.apublish(channel, "back")
        assert (await frame(ws, "event"))["id"] == sent.id
        assert (await stream.event())["data"]["id"] == sent.id
        await bc.aclose()
    await stream.response.aclose()
    await ws.close()


# A client that stops reading ----------------------------------------------------------


async def test_a_client_that_stops_reading_does_not_grow_the_server(serve: Any, kind: str) -> None:
    server = serve(
        kind,
        url=REDIS_URL,
        entry={"QUEUE_SIZE": 50},
        clients={"MAX_BUFFER": 65536},
        layer=False,
    )
    channel = unique()
    stalled = server.stalled_websocket({"op": "subscribe", "channel": channel})
    reader = await server.websocket()
    assert (await subscribe(reader, channel))["op"] == "subscribed"
    baseline = server.rss()
    payload = "x" * 20_000
    try:
        with publisher(REDIS_URL) as bc:
            for n in range(3000):  # 60 MB in all
                await bc.apublish(channel, {"n": n, "pad": payload})
                if n % 20 == 19:  # the reading client keeps up
                    while (await frame(reader, "event"))["data"].get("n") != n:
                        pass
            await bc.aclose()
        grown = server.rss() - baseline
        assert grown < 25 * 1024 * 1024, f"{kind} grew {grown / 2**20:.0f} MiB"
        assert (await server.diagnostics())["dropped"] > 2000
    finally:
        stalled.close()
        await reader.close()


# Shutdown -----------------------------------------------------------------------------


async def test_open_streams_end_when_the_server_shuts_down(
    serve: Any, kind: str, http: httpx.AsyncClient
) -> None:
    server = serve(kind, url=REDIS_URL)
    stream = await open_stream(http, server, [unique()])
    await stream.block()
    ws = await server.websocket()
    await subscribe(ws, unique())
    took = server.stop(signal.SIGTERM, timeout=10)
    assert took is not None and took < 8, f"{kind} took {took} s to stop"
    # uvicorn exits by raising the signal again once it has shut down gracefully.
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output()
    if kind == "uvicorn":
        assert "Application shutdown complete" in server.output()
