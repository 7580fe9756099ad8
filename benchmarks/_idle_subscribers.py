"""One case of the memory benchmark, run in a fresh process per case.

    python _idle_subscribers.py KIND URL PREFIX N

KIND is ``django_broadcast`` (URL picks the backend), ``channels_redis-core``,
``channels_redis-pubsub`` or ``broadcaster``. Connects, measures RSS, starts N idle
subscribers of one channel (each a task waiting for an event, as a consumer would be),
measures RSS again and prints ``{"bytes_per_subscriber": ...}``. Standalone (no
package imports), so that broadcaster's own virtualenv can run it too.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

CHANNEL = "idle"
Subscriber = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def rss() -> int:
    """Resident set size of this process, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _django_broadcast(url: str, prefix: str) -> Subscriber:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django_broadcast"],
        USE_TZ=True,
        BROADCAST={"default": {"URL": url, "OPTIONS": {"prefix": prefix}}},
    )
    django.setup()
    from django_broadcast import broadcast

    async with broadcast.subscribe(CHANNEL + "-warm-up"):
        pass

    async def subscriber(ready: asyncio.Event) -> None:
        async with broadcast.subscribe(CHANNEL) as sub:
            ready.set()
            async for _event in sub:
                pass

    return subscriber


async def _channels_redis(kind: str, url: str, prefix: str) -> Subscriber:
    layer: Any
    if kind == "core":
        from channels_redis.core import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[url], prefix=prefix + "core")
    else:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        layer = RedisPubSubChannelLayer(hosts=[url], prefix=prefix + "ps")
    await layer.group_add(CHANNEL + "-warm-up", await layer.new_channel())

    async def subscriber(ready: asyncio.Event) -> None:
        name = await layer.new_channel()
        await layer.group_add(CHANNEL, name)
        ready.set()
        while True:
            await layer.receive(name)

    return subscriber


async def _broadcaster(url: str) -> Subscriber:
    from broadcaster import Broadcast  # type: ignore[import-not-found, unused-ignore]

    broadcast = Broadcast(url)
    await broadcast.connect()
    async with broadcast.subscribe(channel=CHANNEL + "-warm-up"):
        pass

    async def subscriber(ready: asyncio.Event) -> None:
        async with broadcast.subscribe(channel=CHANNEL) as sub:
            ready.set()
            async for _event in sub:
                pass

    return subscriber


async def main(kind: str, url: str, prefix: str, n: int) -> dict[str, float]:
    if kind == "django_broadcast":
        make = await _django_broadcast(url, prefix)
    elif kind.startswith("channels_redis-"):
        make = await _channels_redis(kind.split("-", 1)[1], url, prefix)
    elif kind == "broadcaster":
        make = await _broadcaster(url)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    gc.collect()
    before = rss()
    tasks: list[asyncio.Task[None]] = []
    for _ in range(n):  # one after the other, as connections arrive
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(make(ready)))
        await asyncio.wait_for(ready.wait(), 60)
    gc.collect()
    after = rss()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"bytes_per_subscriber": (after - before) / n}


if __name__ == "__main__":
    kind, url, prefix, n = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(kind, url, prefix, int(n)))))
