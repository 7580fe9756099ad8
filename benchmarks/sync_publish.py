"""Sync publish: what a Django view pays per event, side by side in one run.

    python -m benchmarks.sync_publish [--events N] [--rounds R]

Cases: raw redis-py PUBLISH and XADD and nats-py's JetStream publish (the floors),
``broadcast.publish`` on ``redis://``, ``redis+streams://``, ``nats://`` (JetStream,
at ``NATS_URL``), ``postgres://`` (at ``POSTGRES_URL``), ``memory://`` and
``redis+cluster://`` (sharded pub/sub on ``REDIS_CLUSTER_URL``, or on a local
three-master cluster started for the run), and
``async_to_sync(channel_layer.group_send)`` on channels_redis's core and pub/sub
layers (what a view pays with Channels today). Prints the median of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Callable

from ._common import (
    NATS_URL,
    NO_CLUSTER,
    POSTGRES_URL,
    REDIS_URL,
    Table,
    cluster_url,
    delete_keys,
    delete_nats_stream,
    delete_rows,
    interleaved_rates,
    machine,
    nats_prefix,
    setup_django,
    streams_url,
    verdict,
)

PAYLOAD = {"text": "hello world", "user": 42, "tags": ["a", "b"]}


def run(events: int, rounds: int, anchor_events: int | None = None) -> Table:
    """Measure every case; return the table (also used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    setup_django()
    from django.test import override_settings

    with cluster_url() as cluster:
        aliases = {
            "default": {"URL": "memory://"},
            "pubsub": {"URL": REDIS_URL, "OPTIONS": {"prefix": prefix}},
            "streams": {"URL": streams_url(), "OPTIONS": {"prefix": prefix, "history": 1000}},
            "nats": {
                "URL": NATS_URL,
                "OPTIONS": {"prefix": nats_prefix(prefix), "history": 1000},
            },
            "postgres": {"URL": POSTGRES_URL, "OPTIONS": {"prefix": prefix, "history": 1000}},
        }
        if cluster is not None:
            aliases["cluster"] = {"URL": cluster, "OPTIONS": {"prefix": prefix}}
        with override_settings(BROADCAST=aliases):
            return _run(events, rounds, anchor_events, prefix, cluster is not None)


def _run(events: int, rounds: int, anchor_events: int | None, prefix: str, cluster: bool) -> Table:
    import nats
    import redis
    from asgiref.sync import async_to_sync

    from django_broadcast import broadcasts
    from django_broadcast.codec import JSONCodec

    codec = JSONCodec()
    raw = redis.Redis.from_url(REDIS_URL)
    encoded = codec.encode({"type": "message", "time": 0, "data": PAYLOAD})
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("redis-py PUBLISH (raw floor)", lambda: raw.publish(f"{prefix}raw", encoded), events),
        (
            "redis-py XADD MAXLEN~ (raw floor)",
            lambda: raw.xadd(f"{prefix}rawx", {"m": encoded}, maxlen=1000, approximate=True),
            events,
        ),
    ]
    # The NATS floor: nats-py's JetStream publish, each run to its end on a loop of its
    # own, on the stream the nats:// alias makes (one publish through it first).
    broadcasts["nats"].publish("warm-up", PAYLOAD, on_commit=False)
    nats_loop = asyncio.new_event_loop()
    nats_client = nats_loop.run_until_complete(nats.connect(NATS_URL))
    subject = f"{nats_prefix(prefix)}.raw"
    cases.append(
        (
            "nats-py JetStream publish (raw floor)",
            lambda: nats_loop.run_until_complete(nats_client.jetstream().publish(subject, encoded)),
            events,
        )
    )
    for alias, label in [
        ("pubsub", "redis://"),
        ("streams", "redis+streams://"),
        ("nats", "nats://"),
        ("postgres", "postgres://"),
        ("default", "memory://"),
        *([("cluster", "redis+cluster://")] if cluster else []),
    ]:
        instance = broadcasts[alias]
        cases.append(
            (
                f"django_broadcast publish {label}",
                lambda instance=instance: instance.publish("bench", PAYLOAD, on_commit=False),  # type: ignore[misc]
                events,
            )
        )
    try:
        from channels_redis.core import RedisChannelLayer
        from channels_redis.pubsub import RedisPubSubChannelLayer
    except ImportError:
        layers = []
    else:
        core = RedisChannelLayer(hosts=[REDIS_URL], prefix=prefix + "core")
        pubsub = RedisPubSubChannelLayer(hosts=[REDIS_URL], prefix=prefix + "ps")
        async_to_sync(core.group_add)("bench", "member!x")
        layers = [("core", core), ("pubsub", pubsub)]
    message = {"type": "chat.message", **PAYLOAD}
    for name, layer in layers:
        send = async_to_sync(layer.group_send)
        cases.append(
            (
                f"channels_redis {name}: async_to_sync(group_send)",
                lambda send=send: send("bench", message),  # type: ignore[misc]
                anchor_events or max(50, events // 20),
            )
        )

    results = interleaved_rates(cases, rounds)

    floor = results["redis-py PUBLISH (raw floor)"][1]
    anchor = results.get("channels_redis core: async_to_sync(group_send)", (0, 0))[1]
    table = Table(
        f"Sync publish, median of {rounds} rounds ({machine()})",
        ["case", "us/event", "events/s", "vs raw PUBLISH", "vs channels_redis core"],
    )
    for label, (per_op, rate) in results.items():
        table.add(
            label,
            f"{per_op * 1e6:,.1f}",
            f"{rate:,.0f}",
            f"{rate / floor:.0%}",
            f"{rate / anchor:,.1f}x" if anchor else "-",
        )
    if not cluster:
        table.add(NO_CLUSTER, "", "", "", "")
    ours = results["django_broadcast publish redis://"][1]
    table.add("target: redis:// >= 80% of raw PUBLISH", "", "", verdict(ours >= 0.8 * floor), "")
    if anchor:
        table.add(
            "target: redis:// >= 20x channels_redis", "", "", "", verdict(ours >= 20 * anchor)
        )
    raw.close()
    nats_loop.run_until_complete(nats_client.close())
    nats_loop.close()
    broadcasts["nats"].close()
    broadcasts["postgres"].close()
    delete_keys(prefix)
    delete_nats_stream(prefix)
    delete_rows(prefix)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.events, args.rounds).render())


if __name__ == "__main__":
    main()
