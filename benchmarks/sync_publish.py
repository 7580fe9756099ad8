"""Sync publish: what a Django view pays per event, side by side in one run.

    python -m benchmarks.sync_publish [--events N] [--rounds R]

Cases, each the median of several rounds with the spread (min-max) beside it:

- the floors, encoding each event as the project does (the envelope, per call): raw
  redis-py ``PUBLISH`` and ``XADD`` and nats-py's JetStream publish;
- ``broadcast.publish`` on ``redis://``, ``redis+streams://``, ``nats://`` (JetStream,
  at ``NATS_URL``), ``postgres://`` (at ``POSTGRES_URL``), ``memory://`` and
  ``redis+cluster://`` (sharded pub/sub on ``REDIS_CLUSTER_URL``, or on a local
  three-master cluster started for the run);
- ten publishes in one ``transaction.atomic()`` (sent at its commit, in one round
  trip) against ten outside one, on ``redis://`` and ``redis+streams://``;
- one thread publishing against eight at once (their publishes coalesced);
- ``group_send`` of ``BroadcastChannelLayer`` and of channels_redis's core and
  pub/sub layers, layer against layer on one persistent event loop, and through
  ``async_to_sync`` (what a view pays with Channels today).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from ._common import (
    NATS_URL,
    NO_CLUSTER,
    POSTGRES_URL,
    REDIS_URL,
    Spread,
    Table,
    cluster_url,
    delete_keys,
    delete_nats_stream,
    delete_rows,
    machine,
    nats_prefix,
    streams_url,
    timed,
    verdict,
)

PAYLOAD = {"text": "hello world", "user": 42, "tags": ["a", "b"]}
#: Publishes per transaction in the transaction rows.
PER_TRANSACTION = 10
#: Threads of the concurrent row.
THREADS = 8

#: (label, one call, calls per round, events per call)
Case = tuple[str, Callable[[], object], int, int]


def _setup_django() -> None:
    """A minimal Django with a database (for ``atomic()``), unless one is configured
    (as under pytest); the script then sets ``BROADCAST`` with ``override_settings``."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            INSTALLED_APPS=["django_broadcast"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            SILENCED_SYSTEM_CHECKS=["django_broadcast.W001"],
        )
        django.setup()


def run(events: int, rounds: int, anchor_events: int | None = None) -> Table:
    """Measure every case; return the table (also used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    _setup_django()
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


def envelope() -> dict[str, Any]:
    """What the project encodes per publish, made per call on both sides."""
    return {"type": "message", "time": time.time_ns() // 1_000_000, "data": PAYLOAD}


def _run(events: int, rounds: int, anchor_events: int | None, prefix: str, cluster: bool) -> Table:
    import nats
    import redis

    from django_broadcast import broadcasts
    from django_broadcast.codec import JSONCodec

    encode = JSONCodec().encode
    raw = redis.Redis.from_url(REDIS_URL)
    cases: list[Case] = [
        (FLOOR, lambda: raw.publish(f"{prefix}raw", encode(envelope())), events, 1),
        (
            "redis-py XADD MAXLEN~ (raw floor)",
            lambda: raw.xadd(f"{prefix}rx", {"m": encode(envelope())}, maxlen=1000),
            events,
            1,
        ),
    ]  # fmt: skip
    # The NATS floor: nats-py's JetStream publish, each run to its end on a loop of its
    # own, on the stream the nats:// alias makes (one publish through it first).
    broadcasts["nats"].publish("warm-up", PAYLOAD, on_commit=False)
    nats_loop = asyncio.new_event_loop()
    nats_client = nats_loop.run_until_complete(nats.connect(NATS_URL))
    subject = f"{nats_prefix(prefix)}.raw"
    cases.append(
        (
            "nats-py JetStream publish (raw floor)",
            lambda: nats_loop.run_until_complete(
                nats_client.jetstream().publish(subject, encode(envelope()))
            ),
            events,
            1,
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
                lambda instance=instance: instance.publish("bench", PAYLOAD),  # type: ignore[misc]
                events,
                1,
            )
        )
    cases += _transaction_cases(broadcasts, events)
    cases += _thread_cases(broadcasts["pubsub"], events)
    layer_loop = asyncio.new_event_loop()
    layer_cases, on_loop = _layer_cases(
        _layers(prefix), layer_loop, events, anchor_events or max(50, events // 20)
    )
    cases += layer_cases

    samples = _sample(cases, rounds)
    rates = {label: Spread.of(values) for label, values in samples.items()}
    trips = {
        label: _round_trips(partial(_ten, broadcasts[alias], atomic))
        for label, alias, atomic in _TRIP_CASES
    }

    floor = rates[FLOOR].median
    anchor_spread = rates.get(ANCHOR)
    anchor = anchor_spread.median if anchor_spread else 0.0
    table = Table(
        f"Sync publish, median of {rounds} rounds, spread in brackets ({machine()})",
        ["case", "us/event", "events/s (min-max)", "vs raw PUBLISH", "vs channels_redis core"],
    )
    for label, spread in rates.items():
        table.add(
            label,
            f"{1e6 / spread.median:,.1f}",
            spread.format(),
            f"{spread.median / floor:.2f}x",
            f"{spread.median / anchor:,.1f}x" if anchor else "-",
        )
    for label, count in trips.items():
        table.add(f"round trips of {label}", "", str(count), "", "")
    if not cluster:
        table.add(NO_CLUSTER, "", "", "", "")
    ours = rates["django_broadcast publish redis://"].median
    table.add(
        "target: sync publish redis:// >= 0.9x raw PUBLISH (both encode per call)",
        "",
        "",
        verdict(ours >= 0.9 * floor),
        "",
    )
    one, many = (rates[_thread_label(n)].median for n in (1, THREADS))
    table.add(
        f"target: {THREADS} threads publish more than 1 (redis://)", "", verdict(many > one), "", ""
    )
    table.add(
        f"target: a transaction of {PER_TRANSACTION} in one round trip (redis://)",
        "",
        verdict(trips[_TRIP_CASES[0][0]] == 1),
        "",
        "",
    )
    table.add(
        "target: redis:// >= 20x channels_redis",
        "",
        "",
        "",
        verdict(ours >= 20 * anchor if anchor else None),
    )
    raw.close()
    nats_loop.run_until_complete(nats_client.close())
    nats_loop.close()
    layer_loop.run_until_complete(_close_layers(on_loop))
    layer_loop.run_until_complete(broadcasts["pubsub"].aclose())
    layer_loop.close()
    broadcasts["nats"].close()
    broadcasts["postgres"].close()
    delete_keys(prefix)
    delete_nats_stream(prefix)
    delete_rows(prefix)
    return table


FLOOR = "redis-py PUBLISH (raw floor)"
ANCHOR = "channels_redis core: async_to_sync(group_send)"
#: The transactions whose round trips are counted: (label, alias, in atomic()).
_TRIP_CASES = [
    (f"{PER_TRANSACTION} publishes in one atomic() redis://", "pubsub", True),
    (f"{PER_TRANSACTION} publishes outside a transaction redis://", "pubsub", False),
]


def _ten(instance: Any, atomic: bool) -> None:
    """Ten publishes, in one transaction or not."""
    from django.db import transaction

    with transaction.atomic() if atomic else _nothing():
        for _ in range(PER_TRANSACTION):
            instance.publish("bench", PAYLOAD)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _transaction_cases(broadcasts: Any, events: int) -> list[Case]:
    calls = max(1, events // PER_TRANSACTION)
    cases: list[Case] = []
    for alias, label in [("pubsub", "redis://"), ("streams", "redis+streams://")]:
        for atomic, where in [(True, "in one atomic()"), (False, "outside a transaction")]:
            cases.append(
                (
                    f"{PER_TRANSACTION} publishes {where} {label}",
                    lambda instance=broadcasts[alias], atomic=atomic: _ten(instance, atomic),  # type: ignore[misc]
                    calls,
                    PER_TRANSACTION,
                )
            )
    return cases


def _thread_label(threads: int) -> str:
    return f"redis:// from {threads} thread{'s' if threads > 1 else ''} at once"


def _thread_cases(instance: Any, events: int) -> list[Case]:
    def publishing(threads: int) -> Callable[[], None]:
        def publish(count: int) -> None:
            for _ in range(count):
                instance.publish("bench", PAYLOAD)

        def run() -> None:
            started = [
                threading.Thread(target=publish, args=(events // threads,)) for _ in range(threads)
            ]
            for thread in started:
                thread.start()
            for thread in started:
                thread.join()

        return run

    return [
        (_thread_label(n), publishing(n), 1, events // n * n) for n in (1, THREADS)
    ]  # fmt: skip


def _layers(prefix: str) -> list[tuple[str, Callable[[], Any]]]:
    """Each layer's name and how to make one (one per event loop it runs on)."""
    from django_broadcast.layers import BroadcastChannelLayer

    layers: list[tuple[str, Callable[[], Any]]] = [
        ("BroadcastChannelLayer redis://", lambda: BroadcastChannelLayer("pubsub"))
    ]
    try:
        from channels_redis.core import RedisChannelLayer
        from channels_redis.pubsub import RedisPubSubChannelLayer
    except ImportError:
        return layers
    return [
        *layers,
        (
            "channels_redis core",
            partial(RedisChannelLayer, hosts=[REDIS_URL], prefix=prefix + "core"),
        ),
        (
            "channels_redis pubsub",
            partial(RedisPubSubChannelLayer, hosts=[REDIS_URL], prefix=prefix + "ps"),
        ),
    ]


def _layer_cases(
    layers: list[tuple[str, Callable[[], Any]]],
    loop: asyncio.AbstractEventLoop,
    events: int,
    anchor: int,
) -> tuple[list[Case], list[Any]]:
    """The layer cases, and the layers made on ``loop`` (to close there)."""
    from asgiref.sync import async_to_sync

    message = {"type": "chat.message", **PAYLOAD}
    cases: list[Case] = []
    on_loop: list[Any] = []
    for name, make in layers:
        layer = make()
        on_loop.append(layer)
        if name == "channels_redis core":  # a member, whose queue each send fills
            loop.run_until_complete(layer.group_add("bench", "member!x"))

        async def many(layer: Any = layer) -> None:
            for _ in range(events):
                await layer.group_send("bench", message)

        cases.append(
            (
                f"{name}: group_send on a persistent loop",
                lambda many=many: loop.run_until_complete(many()),  # type: ignore[misc]
                1,
                events,
            )
        )
    for name, make in layers:
        send = async_to_sync(make().group_send)
        cases.append(
            (
                f"{name}: async_to_sync(group_send)",
                lambda send=send: send("bench", message),  # type: ignore[misc]
                anchor,
                1,
            )
        )
    return cases, on_loop


async def _close_layers(layers: list[Any]) -> None:
    for layer in layers:
        for name in ("close_pools", "flush"):  # channels_redis core's, pubsub's
            close = getattr(layer, name, None)
            if close is not None and "channels_redis" in type(layer).__module__:
                await close()
                break


def _sample(cases: list[Case], rounds: int) -> dict[str, list[float]]:
    """Time each case once per round, the cases taking turns in every round, so that
    a change in the machine's load touches every case alike; return each case's
    events per second, per round."""
    for _label, fn, calls, _ in cases:
        timed(fn, max(1, calls // 10))  # warm up: connections, caches
    samples: dict[str, list[float]] = {label: [] for label, _, _, _ in cases}
    for _ in range(rounds):
        for label, fn, calls, per_call in cases:
            samples[label].append(calls * per_call / timed(fn, calls))
    return samples


def _round_trips(fn: Callable[[], object]) -> int:
    """How many writes to Redis ``fn`` makes (each a round trip): redis-py's
    connections counted while it runs."""
    import redis.connection

    original = redis.connection.AbstractConnection.send_packed_command
    count = 0

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return original(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        fn()
    finally:
        redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.events, args.rounds).render())


if __name__ == "__main__":
    main()
