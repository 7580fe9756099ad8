"""The live server list across real server processes: each announces itself, one that
is killed drops off within three heartbeats, one that stops cleanly says goodbye."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from django_broadcast import Broadcast

from .brokers import BROKERS
from .conftest import PREFIX, REDIS_URL, require_broker, using

TIMEOUT = 20
HEARTBEAT = 0.3


async def listed(bc: Broadcast, *, until: Any) -> list[dict[str, Any]]:
    """Ask for the server list until ``until(pids)`` holds (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        servers = await bc.aservers(listen=HEARTBEAT * 2)
        if until({server["pid"] for server in servers}):
            return servers
        assert time.monotonic() < deadline, f"the server list stayed {servers}"
        await asyncio.sleep(HEARTBEAT / 2)


@pytest.mark.parametrize("backend", ["redis+streams", "redis"])
async def test_servers_come_and_go(serve: Any, backend: str) -> None:
    require_broker("redis", REDIS_URL)
    url = BROKERS[backend].url()
    clients = {"HEARTBEAT": HEARTBEAT}
    daphne = serve("daphne", url=url, clients=clients)
    uvicorn = serve("uvicorn", url=url, clients=clients)  # announced at its lifespan startup
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        await http.get(daphne.url("/diagnostics/"))  # daphne: at its first request
    with using({"URL": url, "OPTIONS": {"prefix": PREFIX + "mp:"}}) as bc:
        servers = await listed(bc, until=lambda pids: {daphne.pid, uvicorn.pid} <= pids)
        kinds = {server["pid"]: server["server"].split()[0] for server in servers}
        assert kinds[daphne.pid] == "daphne" and kinds[uvicorn.pid] == "uvicorn"
        killed = time.monotonic()
        daphne.stop(signal.SIGKILL)
        await listed(bc, until=lambda pids: daphne.pid not in pids)
        assert time.monotonic() - killed < 3 * HEARTBEAT + 2  # within three heartbeats
        uvicorn.stop(signal.SIGTERM)  # a clean shutdown says goodbye
        if bc.features.history:
            # Read at once: without the goodbye its last heartbeat would still count.
            assert uvicorn.pid not in {server["pid"] for server in await bc.aservers()}
        await listed(bc, until=lambda pids: uvicorn.pid not in pids)
        await bc.aclose()


async def test_the_heartbeat_names_the_busiest_channels_and_carries_added_sections() -> None:
    from django_broadcast import presence

    presence.add_section("requests", lambda: {"per_second": 1.5})
    presence.add_section("broken", lambda: 1 / 0)  # logged, left out, the rest is sent
    try:
        with using({"URL": "memory://"}) as bc:
            async with (
                bc.subscribe("room.a") as a1,
                bc.subscribe("room.a") as a2,
                bc.subscribe("room.b") as b,
                bc.subscribe("broadcast.servers") as mine,
            ):
                beat = presence.snapshot(bc, 5.0, {})
                del a1, a2, b, mine
    finally:
        presence.remove_section("requests")
        presence.remove_section("broken")
    assert beat["channels"] == [["room.a", 2], ["room.b", 1]]  # reserved ones left out
    assert beat["channel_count"] == 2
    assert beat["requests"] == {"per_second": 1.5} and "broken" not in beat


async def test_heartbeats_delivered_are_not_counted_as_the_sites_traffic() -> None:
    from django_broadcast.events import HEARTBEAT, SERVERS_CHANNEL

    with using({"URL": "memory://"}) as bc:
        async with bc.subscribe(SERVERS_CHANNEL) as servers, bc.subscribe("room") as room:
            await bc.apublish(SERVERS_CHANNEL, {"id": "x"}, type=HEARTBEAT)
            await bc.apublish("room", "marker")
            assert (await servers.get(timeout=5)).type == HEARTBEAT
            assert (await room.get(timeout=5)).data == "marker"
            assert bc.stats()["delivered"] == 1
