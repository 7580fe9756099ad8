"""The publisher of the fan-out benchmark, run as a separate process.

    python _fanout_publisher.py KIND URL PREFIX CHANNEL EVENTS [GROUPS]

KIND is ``django_broadcast`` (URL picks the backend), ``layer-broadcast``
(``BroadcastChannelLayer`` over URL), ``layer-core`` or ``layer-pubsub`` (channels_redis)
or ``broadcaster``. It connects, prints ``ready``, waits for a line on stdin, publishes
EVENTS events with the library's own async API as fast as it goes, and prints ``done``.

KIND ``many-broadcast`` or ``many-pubsub`` sends EVENTS events to each of GROUPS groups,
``CHANNEL-0`` to ``CHANNEL-<GROUPS-1>``: the very ``PUBLISH`` commands (Redis channel
and payload) that ``BroadcastChannelLayer.group_send`` or channels_redis pub/sub's
``group_send`` sends, made with the library's own encoding before the go and sent
after it, packed before it too, in writes of :data:`PIPELINE` commands (their replies
read after each event's last write). A ``group_send`` at a time would measure
the publisher (channels_redis's takes a lock per ``PUBLISH``), not the receivers.

Standalone (no package imports), so that broadcaster's own virtualenv can run it too.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Publish = Callable[[int], Awaitable[Any]]
#: ``PUBLISH`` commands per write in the many-groups cases.
PIPELINE = 1000


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


def _frames_broadcast(url: str, prefix: str) -> Callable[[str, dict[str, Any]], tuple[str, bytes]]:
    """What ``BroadcastChannelLayer.group_send(group, message)`` publishes on redis://."""
    _configure(url, prefix)
    from django_broadcast import broadcast

    backend: Any = broadcast.backend

    def frame(group: str, message: dict[str, Any]) -> tuple[str, bytes]:
        data = {key: value for key, value in message.items() if key != "type"}
        payload, _ms = broadcast._encode(group, message["type"], data)
        _id, framed = backend._frame(payload)
        return backend.prefix + group, framed

    return frame


def _frames_pubsub(url: str, prefix: str) -> Callable[[str, dict[str, Any]], tuple[str, bytes]]:
    """What channels_redis pub/sub's ``group_send(group, message)`` publishes."""
    from channels_redis.pubsub import RedisPubSubChannelLayer

    layer = RedisPubSubChannelLayer(hosts=[url], prefix=prefix + "ps")

    def frame(group: str, message: dict[str, Any]) -> tuple[str, bytes]:
        return layer._get_group_channel_name(group), layer.serialize(message)

    return frame


async def _many(
    kind: str, url: str, prefix: str, channel: str, events: int, groups: int
) -> Publish:
    import redis.asyncio

    frame = _frames_broadcast(url, prefix) if kind == "broadcast" else _frames_pubsub(url, prefix)
    names = [f"{channel}-{n}" for n in range(groups)]
    # Made before the go: the clock measures the receivers.
    by_event = [
        [frame(name, {"type": "fan.event", "n": n, "text": "hello"}) for name in names]
        for n in range(events)
    ]
    client = redis.asyncio.Redis.from_url(url)
    conn = client.connection_pool.make_connection()
    await conn.connect()
    # Packed before the go too: the publisher writes bytes and reads the replies.
    packed = [
        [
            conn.pack_commands(
                [("PUBLISH", key, payload) for key, payload in frames[at : at + PIPELINE]]
            )
            for at in range(0, len(frames), PIPELINE)
        ]
        for frames in by_event
    ]

    async def publish(n: int) -> None:
        for chunk in packed[n]:
            await conn.send_packed_command(chunk, check_health=False)
        for _ in by_event[n]:
            await conn.read_response()

    return publish


async def _broadcaster(url: str, channel: str) -> Publish:
    import json

    from broadcaster import Broadcast  # type: ignore[import-not-found, unused-ignore]

    broadcast = Broadcast(url)
    await broadcast.connect()
    return lambda n: broadcast.publish(channel=channel, message=json.dumps({"n": n}))


async def main(kind: str, url: str, prefix: str, channel: str, events: int, groups: int) -> None:
    if kind == "django_broadcast":
        publish = await _django_broadcast(url, prefix, channel)
    elif kind.startswith("many-"):
        publish = await _many(kind.split("-", 1)[1], url, prefix, channel, events, groups)
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
    groups = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    asyncio.run(main(kind, url, prefix, channel, int(events), groups))
