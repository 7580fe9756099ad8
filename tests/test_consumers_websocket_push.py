"""The WebSocket consumer sends event frames from the hub's fan-out, in one pass.

An event reaches every local client in the pass that fans it out, through the
server's own ``send`` (no task woken per subscription, no middleware per frame); a
client whose server holds its frames back (a full socket) is left behind on its own,
its queue's ``OVERFLOW`` applying; a client whose server fails to send is dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from django_broadcast import Broadcast
from django_broadcast.consumers import BroadcastWebsocketConsumer
from django_broadcast.consumers.outlet import capture_server_send

from .conftest import alias_settings, using

TIMEOUT = 5

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def public() -> Iterator[None]:
    with override_settings(BROADCAST_AUTH={"PUBLIC": ["t-*"]}):
        yield


class ServerSide:
    """The server's ``send`` of one connection: records who sent each event frame,
    and can hold frames back (a client that does not read) or fail (one gone)."""

    def __init__(self) -> None:
        self.event_senders: list[asyncio.Task[Any] | None] = []
        self.gate: asyncio.Event | None = None
        self.broken = False

    def wrap(self, send: Any) -> Any:
        async def server_send(message: dict[str, Any]) -> None:
            if '"op":"event"' in message.get("text", ""):
                self.event_senders.append(asyncio.current_task())
                if self.broken:
                    raise OSError("the client went away")
            if self.gate is not None:
                await self.gate.wait()
            await send(message)

        return server_send


def passing_through(app: Any, seen: list[str]) -> Any:
    """A middleware that wraps ``send``, as Channels' session middleware does."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        async def wrapped(message: dict[str, Any]) -> None:
            seen.append(message.get("text", message["type"]))
            await send(message)

        return await app(scope, receive, wrapped)

    return middleware


async def connect(side: ServerSide, seen: list[str] | None = None) -> WebsocketCommunicator:
    inner = passing_through(BroadcastWebsocketConsumer.as_asgi(), seen if seen is not None else [])
    served = capture_server_send(inner)

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        return await served(scope, receive, side.wrap(send))

    communicator = WebsocketCommunicator(application, "/broadcast/ws/")
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def subscribe(ws: WebsocketCommunicator, channel: str) -> None:
    await ws.send_json_to({"op": "subscribe", "channel": channel})
    reply = await ws.receive_json_from(timeout=TIMEOUT)
    assert reply["op"] == "subscribed", reply


async def frames(ws: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    return [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(count)]


@pytest.fixture
def memory() -> Iterator[Broadcast]:
    with using(alias_settings("memory", QUEUE_SIZE=4)) as bc:
        yield bc


async def test_one_pass_of_the_fan_out_sends_every_client_its_frames_in_order(
    bc: Broadcast, channel: str
) -> None:
    sides = [ServerSide() for _ in range(10)]
    clients = [await connect(side) for side in sides]
    try:
        for ws in clients:
            await subscribe(ws, channel)
        for n in range(5):
            await bc.apublish(channel, n)
        for ws in clients:
            assert [frame["data"] for frame in await frames(ws, 5)] == [0, 1, 2, 3, 4]
        # Every frame of every client was sent by the one task that fans the events
        # out (the hub's listener), not by a task per subscription.
        senders = {task for side in sides for task in side.event_senders}
        assert len(senders) == 1
    finally:
        for ws in clients:
            await ws.disconnect()


async def test_an_idle_subscription_holds_no_task(memory: Broadcast, channel: str) -> None:
    ws = await connect(ServerSide())
    try:
        await subscribe(ws, channel)  # the first starts the hub's listener
        before = len(asyncio.all_tasks())
        for n in range(5):
            await subscribe(ws, f"{channel}-{n}")
        assert len(asyncio.all_tasks()) == before
    finally:
        await ws.disconnect()


async def test_event_frames_skip_the_middlewares_send_wrappers(
    memory: Broadcast, channel: str
) -> None:
    seen: list[str] = []
    ws = await connect(ServerSide(), seen)
    try:
        await subscribe(ws, channel)
        await memory.apublish(channel, "live")
        [frame] = await frames(ws, 1)
        assert frame["data"] == "live"
        # Control frames pass the middlewares (the accept, the reply to subscribe);
        # event frames go straight to the server.
        assert any('"op":"subscribed"' in text for text in seen)
        assert not any('"op":"event"' in text for text in seen)
    finally:
        await ws.disconnect()


async def test_a_client_left_behind_does_not_hold_the_others_up(
    memory: Broadcast, channel: str
) -> None:
    slow, fast = ServerSide(), ServerSide()
    slow_ws, fast_ws = await connect(slow), await connect(fast)
    try:
        await subscribe(slow_ws, channel)
        await subscribe(fast_ws, channel)
        slow.gate = asyncio.Event()  # its socket is full: send() waits
        for n in range(10):
            await memory.apublish(channel, n)
        assert [frame["data"] for frame in await frames(fast_ws, 10)] == list(range(10))
        slow.gate.set()
        # The frame in flight, then the overflow notice for what QUEUE_SIZE (4)
        # could not hold, then the newest events, in order.
        received = await frames(slow_ws, 6)
        assert received[0]["data"] == 0
        assert received[1]["type"] == "broadcast.gap"
        assert received[1]["data"]["reason"] == "overflow"
        assert [frame["data"] for frame in received[2:]] == [6, 7, 8, 9]
        # Caught up: it is sent from the fan-out again.
        await memory.apublish(channel, "marker")
        assert (await frames(slow_ws, 1))[0]["data"] == "marker"
        assert (await frames(fast_ws, 1))[0]["data"] == "marker"
    finally:
        await slow_ws.disconnect()
        await fast_ws.disconnect()


async def test_a_client_whose_server_fails_to_send_is_dropped(
    memory: Broadcast, channel: str
) -> None:
    gone, alive = ServerSide(), ServerSide()
    gone_ws, alive_ws = await connect(gone), await connect(alive)
    try:
        await subscribe(gone_ws, channel)
        await subscribe(alive_ws, channel)
        gone.broken = True
        for n in range(3):
            await memory.apublish(channel, n)
        assert [frame["data"] for frame in await frames(alive_ws, 3)] == [0, 1, 2]
        # The failed client was sent one frame and let go: the others go on.
        assert len(gone.event_senders) == 1
        assert memory._hubs.census()[0][channel] == 1
    finally:
        await gone_ws.disconnect()
        await alive_ws.disconnect()


IN_MEMORY_LAYER = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


class RoomConsumer(BroadcastWebsocketConsumer):
    groups = ["room"]  # noqa: RUF012 (Channels reads it as a class attribute)

    async def room_note(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"note": message["text"]}))


async def test_a_connection_holds_no_channels_layer_unless_its_class_has_groups(
    memory: Broadcast,
) -> None:
    with override_settings(CHANNEL_LAYERS=IN_MEMORY_LAYER):
        layer = get_channel_layer()
        assert layer is not None
        plain = WebsocketCommunicator(BroadcastWebsocketConsumer.as_asgi(), "/broadcast/ws/")
        assert (await plain.connect(timeout=TIMEOUT))[0]
        # No channel name received on: nothing is waiting in the layer.
        assert not layer.channels
        room = WebsocketCommunicator(RoomConsumer.as_asgi(), "/broadcast/ws/")
        assert (await room.connect(timeout=TIMEOUT))[0]
        await layer.group_send("room", {"type": "room.note", "text": "hello"})
        assert await room.receive_json_from(timeout=TIMEOUT) == {"note": "hello"}
        await plain.disconnect()
        await room.disconnect()


async def test_the_websocket_routing_hands_its_consumers_the_servers_own_send(
    memory: Broadcast,
) -> None:
    from django.urls import path

    from django_broadcast.routing import websocket_router

    seen: dict[str, Any] = {}

    async def probe(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(send=send, scope=scope)
        await send({"type": "websocket.close"})

    async def server_send(message: dict[str, Any]) -> None:
        seen.setdefault("sent", []).append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    scope = {
        "type": "websocket", "path": "/probe/",
        "headers": [(b"cookie", b"sessionid=nope"), (b"origin", b"http://127.0.0.1")],
        "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    with override_settings(ALLOWED_HOSTS=["*"]):
        router = websocket_router([path("probe/", probe)])  # type: ignore[arg-type]
        await asyncio.wait_for(router(scope, receive, server_send), TIMEOUT)
    # No middleware wraps the send of a WebSocket: a session is saved on HTTP
    # responses only, and a wrapper would cost every frame a call.
    assert seen["send"] is server_send
    assert seen["sent"] == [{"type": "websocket.close"}]
    assert seen["scope"]["cookies"] == {"sessionid": "nope"}
    assert seen["scope"]["session"].session_key is None  # no such session
    assert not seen["scope"]["user"].is_authenticated


class Unmeasured:
    """An outlet of a server whose buffer cannot be read (``send()`` waits)."""

    def behind(self) -> bool:
        return False


async def test_a_send_the_server_makes_wait_finishes_before_the_next() -> None:
    from django_broadcast.consumers.sending import Sender

    gate = asyncio.Event()
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        if message["text"] == "first":
            await gate.wait()  # the client's socket is full
        sent.append(message["text"])

    sender = Sender(send, Unmeasured(), lambda: None)  # type: ignore[arg-type]
    sender.send_now({"type": "websocket.send", "text": "first"})
    assert not sender.free and sent == []
    second = asyncio.ensure_future(sender.send({"type": "websocket.send", "text": "second"}))
    await asyncio.sleep(0)
    assert sent == []
    gate.set()
    await asyncio.wait_for(second, TIMEOUT)
    assert sent == ["first", "second"] and sender.free


@pytest.mark.parametrize("swallows", [False, True], ids=["raises", "swallows"])
async def test_a_waiting_send_that_is_cancelled_ends_cleanly(swallows: bool) -> None:
    from django_broadcast.consumers.sending import Sender

    ended: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not swallows:
                raise
        finally:
            ended.append(message["text"])

    failures: list[None] = []
    sender = Sender(send, Unmeasured(), lambda: failures.append(None))  # type: ignore[arg-type]
    sender.send_now({"type": "websocket.send", "text": "stuck"})
    inflight = sender._inflight
    assert inflight is not None
    await asyncio.sleep(0)  # the task takes over the waiting send
    inflight.cancel()
    await asyncio.wait([inflight], timeout=TIMEOUT)
    assert ended == ["stuck"] and inflight.done()
    assert sender.free and not failures
