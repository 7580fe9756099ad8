"""Fuzzing the browser path and publish with Hypothesis.

Invariants: whatever a client sends, it gets one answer frame (never a close, never a
traceback, never text the server could not encode), its other subscriptions still
deliver, and nothing is left behind once it goes; whatever an SSE request carries, it
gets a prompt answer; whatever ``publish`` is given, it either sends the event or
raises one of the documented errors, naming the channel.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_broadcast import Broadcast, MessageTooLarge, broadcasts
from django_broadcast.consumers import BroadcastWebsocketConsumer, EventStreamConsumer

from .brokers import BROKERS
from .conftest import REDIS_URL, alias_settings, require_broker
from .servers import SERVERS

TIMEOUT = 5
T = TypeVar("T")

# Channels' consumers close stale database connections before every handler.
pytestmark = pytest.mark.django_db(transaction=True)

#: How many inputs each fuzz test tries (reported in the closing notes of the work).
WEBSOCKET_FRAMES = 400
SSE_REQUESTS = 250
PUBLISHES = 400
SERVER_FRAMES = 150  # per server, through a real daphne and uvicorn


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Strings with everything JSON can carry, lone surrogates included (they arrive as
# "\ud800" escapes in a text frame).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
channel_names = (
    any_text
    | st.from_regex(r"[A-Za-z0-9_.\-]{1,100}", fullmatch=True)
    | st.sampled_from(["t-x", "broadcast.layer.inbox.x", "private.x", "x" * 101])
)
event_ids = (
    any_text
    | st.integers(min_value=0, max_value=2**70).map(str)
    | st.tuples(st.integers(0, 2**66), st.integers(0, 2**66)).map(lambda t: f"{t[0]}-{t[1]}")
    | st.sampled_from(["\u0661\u0667-\u0660", "1-0", "0", "live", "-1-0", "1e5-0"])
)
frame_dicts = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["subscribe", "unsubscribe", "publish"]) | json_values,
        "channel": channel_names | json_values,
        "since": event_ids | json_values,
        "type": st.sampled_from(["message", "websocket.receive", "broadcast.gap", ""])
        | any_text
        | json_values,
        "data": json_values,
    },
)
text_frames = (
    frame_dicts.map(json.dumps)
    | json_values.map(json.dumps)
    | st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)
    | st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    | st.text(max_size=200)
)
client_frames = text_frames.map(lambda text: {"text": text}) | st.binary(max_size=64).map(
    lambda data: {"bytes": data}
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    new = asyncio.new_event_loop()
    yield new
    pending = asyncio.all_tasks(new)
    for task in pending:
        task.cancel()

    async def finish() -> None:
        await asyncio.gather(*pending, return_exceptions=True)

    new.run_until_complete(finish())
    new.close()


def runner(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, T]], T]:
    def run(coroutine: Coroutine[Any, Any, T]) -> T:
        return loop.run_until_complete(asyncio.wait_for(coroutine, 4 * TIMEOUT))

    return run


@pytest.fixture
def public() -> Iterator[None]:
    with override_settings(BROADCAST_AUTH={"PUBLIC": ["t-*"], "PUBLISH": ["t-*"]}):
        yield


@pytest.mark.usefixtures("public")
@pytest.mark.features("history")
def test_no_websocket_frame_breaks_the_connection(
    backend_name: str, loop: asyncio.AbstractEventLoop
) -> None:
    run = runner(loop)
    with override_settings(BROADCAST={"default": alias_settings(backend_name)}):
        bc = broadcasts["default"]
        ws = WebsocketCommunicator(BroadcastWebsocketConsumer.as_asgi(), "/broadcast/ws/")
        assert run(ws.connect(timeout=TIMEOUT))[0]
        run(ws.send_json_to({"op": "subscribe", "channel": "t-live"}))
        assert run(ws.receive_json_from(TIMEOUT))["op"] == "subscribed"
        # A publish first: what the backend starts for it (a pool's workers) is there
        # before the count, and outlives the connection by design.
        warm = run(bc.apublish("t-live", "warm-up"))
        assert run(_next_event(ws, "t-live"))["id"] == warm.id
        tasks_before = run(_task_count())

        @fuzz(WEBSOCKET_FRAMES)
        @given(client_frames)
        def exchange(frame: dict[str, Any]) -> None:
            run(ws.send_input({"type": "websocket.receive", **frame}))
            reply = run(ws.receive_output(TIMEOUT))
            assert reply["type"] == "websocket.send", reply  # never websocket.close
            text = reply["text"]
            text.encode("utf-8")  # the server can always put it on the wire
            answer = json.loads(text)
            assert answer["op"] in {"error", "subscribed", "unsubscribed", "published", "event"}
            if answer["op"] == "error":
                assert answer["code"] != "internal", answer
                assert "redis://" not in answer["message"]
            # Whatever it was, drain what it caused (a replay, a publish's echo).
            run(_drain(ws))

        exchange()
        # Still up, and the first subscription still delivers.
        run(ws.send_json_to({"op": "unsubscribe", "channel": "t-x"}))
        run(_drain(ws))
        marker = run(bc.apublish("t-live", "marker"))
        assert run(_next_event(ws, "t-live"))["id"] == marker.id
        run(ws.disconnect())
        run(_settle(bc))
        assert run(_hub_channels(bc)) == set()
        assert run(_task_count()) <= tasks_before
        run(bc.aclose())


@pytest.mark.usefixtures("public")
def test_no_request_leaves_an_event_stream_hanging(
    backend_name: str, loop: asyncio.AbstractEventLoop
) -> None:
    run = runner(loop)
    queries = st.lists(
        st.tuples(st.sampled_from(["channel", "last_event_id", "x"]), channel_names | event_ids),
        max_size=4,
    )
    header_values = st.binary(max_size=300) | event_ids.map(
        lambda s: s.encode("utf-8", "surrogatepass")
    )

    with override_settings(BROADCAST={"default": alias_settings(backend_name)}):
        bc = broadcasts["default"]

        @fuzz(SSE_REQUESTS)
        @given(
            st.sampled_from(["GET", "GET", "GET", "POST", "HEAD"]),
            queries,
            st.none() | header_values,
        )
        def request(method: str, query: list[tuple[str, str]], last_event_id: bytes | None) -> None:
            from urllib.parse import urlencode

            query_string = urlencode(
                [(k, v.encode("utf-8", "surrogatepass")) for k, v in query]
            ).encode()
            headers = [] if last_event_id is None else [(b"last-event-id", last_event_id)]
            app = ApplicationCommunicator(
                EventStreamConsumer.as_asgi(),
                {"type": "http", "method": method, "path": "/broadcast/events/",
                 "query_string": query_string, "headers": headers},
            )  # fmt: skip
            run(app.send_input({"type": "http.request", "body": b""}))
            start = run(app.receive_output(TIMEOUT))
            assert start["type"] == "http.response.start"
            assert start["status"] in {200, 400, 403, 405}, start
            body = run(app.receive_output(TIMEOUT))
            assert body["type"] == "http.response.body"
            if start["status"] != 200:
                assert body["body"] and not body.get("more_body")
            run(app.send_input({"type": "http.disconnect"}))
            run(app.wait(TIMEOUT))

        request()
        run(_settle(bc))
        assert run(_hub_channels(bc)) == set()
        run(bc.aclose())


def test_publish_sends_or_raises_a_documented_error(
    backend_name: str, loop: asyncio.AbstractEventLoop
) -> None:
    run = runner(loop)
    odd_values = st.sampled_from(
        [object(), {1, 2}, b"bytes", float("nan"), float("inf"), "x" * (1024 * 1024 + 1)]
    )
    payloads = st.recursive(
        json_values | odd_values,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ) | st.integers(1, 5000).map(_nested)

    with override_settings(BROADCAST={"default": alias_settings(backend_name)}):
        bc = broadcasts["default"]
        subscription = bc.subscribe("t-fuzz")
        run(subscription.open())

        @fuzz(PUBLISHES)
        @given(channel_names, payloads, any_text)
        def publish(channel: str, data: Any, type_: str) -> None:
            try:
                event = bc.publish(channel, data, type=type_ or "message", on_commit=False)
            except (TypeError, ValueError, MessageTooLarge) as exc:
                message = str(exc)
                assert message and ("channel" in message or "type" in message), message
                return
            assert event is not None and event.channel == channel
            if channel == "t-fuzz":
                received = run(subscription.get(timeout=TIMEOUT))
                assert received.id == event.id
                assert received.data == json.loads(json.dumps(received.data))

        publish()
        run(subscription.aclose())
        run(bc.aclose())


@pytest.mark.parametrize("kind", SERVERS)
def test_no_frame_breaks_a_connection_through_a_real_server(
    kind: str, serve: Any, loop: asyncio.AbstractEventLoop
) -> None:
    require_broker("redis", REDIS_URL)
    import websockets

    run = runner(loop)
    server = serve(kind, url=BROKERS["redis+streams"].url())
    ws = run(server.websocket())
    run(ws.send(json.dumps({"op": "subscribe", "channel": "t-live"})))

    async def reply() -> dict[str, Any]:
        while True:
            answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if answer["op"] != "event":
                return answer

    assert run(reply())["op"] == "subscribed"
    frames = text_frames.filter(lambda text: len(text.encode("utf-8", "surrogatepass")) < 60_000)

    @fuzz(SERVER_FRAMES)
    @given(frames | st.binary(min_size=1, max_size=64))
    def exchange(frame: str | bytes) -> None:
        try:
            run(ws.send(frame))
            answer = run(reply())
        except websockets.ConnectionClosed as exc:
            raise AssertionError(f"the server closed the connection: {exc!r}") from exc
        assert answer["op"] in {"error", "subscribed", "unsubscribed", "published"}, answer
        assert answer.get("code") != "internal", answer

    exchange()
    diagnostics = run(server.diagnostics())
    assert "t-live" in diagnostics["channels"]
    run(ws.close())


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def _drain(ws: WebsocketCommunicator) -> None:
    """Read what is already waiting, until nothing comes within a short moment.

    (A bounded pause is fine here: it only trims pending frames between examples;
    every invariant is checked on frames that were awaited.)"""
    while not await ws.receive_nothing(timeout=0.01, interval=0.002):
        output = await ws.receive_output(TIMEOUT)
        assert output["type"] == "websocket.send", output


async def _next_event(ws: WebsocketCommunicator, channel: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = await ws.receive_json_from(TIMEOUT)
        if frame["op"] == "event" and frame["channel"] == channel:
            return frame


async def _settle(bc: Broadcast) -> None:
    """Wait (boundedly) for the clean-up that closing started: the hub releases."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while bc._hub().channels and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def _hub_channels(bc: Broadcast) -> set[str]:
    return bc._hub().channels


async def _task_count() -> int:
    return len(asyncio.all_tasks())
