"""The publisher of the fan-out benchmark, run as a separate process.

    python _fanout_publisher.py KIND URL PREFIX CHANNEL EVENTS

KIND is ``django_broadcast`` (URL picks the backend), ``layer-broadcast``
(``BroadcastChannelLayer`` over URL), ``layer-core`` or ``layer-pubsub`` (channels_redis)
or ``broadcaster``. It connects, prints ``ready``, waits for a line on stdin, publishes
EVENTS events with the library's own async API as fast as it goes, and prints ``done``.
Standalone (no package imports), so that broadcaster's own virtualenv can run it too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Publish = Callable[[int], Awaitable[Any]]


def _configure(url: str, prefix: str) -> None:
    """Set up Django with one broadcast alias, ``default``, on ``url``."""
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django_broadcast"],
        USE_TZ=True,
        BROADCAST={"default": {"URL": url, "OPTIONS": {"prefix": prefix}}},
    )
    django.setup()


async def _django_broadcast(url: str, prefix: str, channel: str) -> Publish:
    _configure(url, prefix)
    from django_broadcast import broadcast

    await broadcast.apublish(channel + "-warm-up", 0)
    return lambda n: broadcast.apublish(channel, {"n": n, "text": "hello"})


async def _layer(kind: str, url: str, prefix: str, channel: str) -> Publish:
    layer: Any
    if kind == "broadcast":
        _configure(url, prefix)
        from django_broadcast.layers import BroadcastChannelLayer

        layer = BroadcastChannelLayer()
    elif kind == "core":
        from channels_redis.core import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[url], prefix=prefix + "core")
    else:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        layer = RedisPubSubChannelLayer(hosts=[url], prefix=prefix + "ps")
    await layer.group_send(channel + "-warm-up", {"type": "warm.up"})
    return lambda n: layer.group_send(channel, {"type": "fan.event", "n": n, "text": "hello"})


async def _broadcaster(url: str, channel: str) -> Publish:
    import json

    from broadcaster import Broadcast  # type: ignore[import-not-found, unused-ignore]

    broadcast = Broadcast(url)
    await broadcast.connect()
    return lambda n: broadcast.publish(channel=channel, message=json.dumps({"n": n}))


async def main(kind: str, url: str, prefix: str, channel: str, events: int) -> None:
    if kind == "django_broadcast":
        publish = await _django_broadcast(url, prefix, channel)
    elif kind.startswith("layer-"):
        publish = await _layer(kind.split("-", 1)[1], url, prefix, channel)
    elif kind == "broadcaster":
        publish = await _broadcaster(url, channel)
    else:
        raise SystemExit(f"unknown publisher kind {kind!r}")
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for n in range(events):
        await publish(n)
    print("done", flush=True)


if __name__ == "__main__":
    kind, url, prefix, channel, events = sys.argv[1:6]
    asyncio.run(main(kind, url, prefix, channel, int(events)))
