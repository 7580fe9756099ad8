"""Two daphne servers sharing Redis, clients on both, a publisher in a third process.

Every WebSocket and SSE client on either server gets every event once, in order; a
plain Channels consumer's ``group_send`` on one server reaches clients of the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from .conftest import PREFIX, REDIS_URL, free_port, require_broker

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20
EVENTS = 30


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.multiprocess.settings",
        "MULTIPROCESS_PREFIX": PREFIX + "mp:",
        "REDIS_URL": REDIS_URL,
        "PYTHONPATH": str(ROOT),
    }


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne on port {port} did not start") from None
            time.sleep(0.05)


@pytest.fixture
def servers() -> Iterator[list[int]]:
    require_broker("redis", REDIS_URL)
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p"]
    app = "tests.multiprocess.asgi:application"
    processes = [
        subprocess.Popen(
            [*command, str(port), app], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL
        )
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            _wait_for_port(port, process)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _publish_from_another_process(channel: str, count: int) -> None:
    script = (
        "import django, sys; django.setup()\n"
        "from django_broadcast import broadcast\n"
        "for n in range(int(sys.argv[2])):\n"
        "    broadcast.publish(sys.argv[1], {'n': n})\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, channel, str(count)],
        cwd=ROOT, env=_env(), check=True, timeout=TIMEOUT,
    )  # fmt: skip


async def _websocket(port: int, path: str) -> websockets.ClientConnection:
    return await websockets.connect(
        f"ws://127.0.0.1:{port}{path}", origin=websockets.Origin(f"http://127.0.0.1:{port}")
    )


async def _ws_events(ws: websockets.ClientConnection, count: int) -> list[int]:
    received: list[int] = []
    while len(received) < count:
        frame = json.loads(await ws.recv())
        if frame["op"] == "event":
            received.append(frame["data"]["n"])
    return received


async def _sse_events(lines: AsyncIterator[str], count: int) -> list[int]:
    received = []
    async for line in lines:
        if line.startswith("data:"):
            received.append(json.loads(line[5:])["data"]["n"])
            if len(received) == count:
                break
    return received


async def test_every_client_on_both_servers_gets_every_event_once_in_order(
    servers: list[int],
) -> None:
    channel = f"mp-{uuid.uuid4().hex[:10]}"
    sockets = []
    for port in servers:
        for _ in range(2):
            ws = await _websocket(port, "/broadcast/ws/")
            await ws.send(json.dumps({"op": "subscribe", "channel": channel}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply["op"] == "subscribed", reply
            sockets.append(ws)
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        streams = []
        for port in servers:
            request = client.build_request(
                "GET", f"http://127.0.0.1:{port}/broadcast/events/", params={"channel": channel}
            )
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            streams.append(response)
        try:
            await asyncio.to_thread(_publish_from_another_process, channel, EVENTS)
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(_ws_events(ws, EVENTS) for ws in sockets),
                    *(_sse_events(r.aiter_lines(), EVENTS) for r in streams),
                ),
                TIMEOUT,
            )
        finally:
            for response in streams:
                await response.aclose()
            for ws in sockets:
                await ws.close()
    assert len(results) == 6
    for received in results:
        assert received == list(range(EVENTS))


async def test_group_send_on_one_server_reaches_clients_of_the_other(servers: list[int]) -> None:
    room = f"mp-room-{uuid.uuid4().hex[:8]}"
    first = await _websocket(servers[0], f"/chat/{room}/")
    second = await _websocket(servers[1], f"/chat/{room}/")
    try:
        await first.send(json.dumps({"text": "hello from server one"}))
        for ws in (second, first):
            message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert message["text"] == "hello from server one" and message["id"]
    finally:
        await first.close()
        await second.close()
