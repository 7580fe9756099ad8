"""In-process fan-out: one publisher, N local subscribers of one channel, through Redis.

    python -m benchmarks.fanout [--sizes 1000,10000] [--events 20] [--rounds 3]

Every case subscribes N receivers to one channel in one process and event loop; a
publisher in another process (``_fanout_publisher.py``, connected beforehand) then
publishes ``--events`` events with the library's own async API, and the clock runs
from its go until every receiver has every event. The figure is deliveries per second
(N x events / elapsed), median of rounds. Every case collects garbage before the go,
so the subscribers it just made are old, as a server's long-connected ones are.
Receivers iterate as a WebSocket or SSE consumer would (``async for`` / ``receive()``),
without per-event timeouts.

Cases: ``broadcast.subscribe`` on ``redis://``, ``redis+streams://``, ``nats://``
(JetStream at ``NATS_URL``), ``postgres://`` (at ``POSTGRES_URL``) and
``redis+cluster://`` (sharded pub/sub on ``REDIS_CLUSTER_URL``, or on a local
three-master cluster started for the run); Channels layers,
``BroadcastChannelLayer`` on ``redis://`` and channels_redis core and pub/sub (one
``new_channel()`` per consumer, all in one group, ``group_send``); encode/broadcaster
(``Broadcast.subscribe``). broadcaster delivers nothing with redis-py 8, so it runs in
its own virtualenv (``.venv-broadcaster``, made on first use) with the redis-py it works
with, :data:`BROADCASTER_REQUIREMENTS`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

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
    machine,
    nats_prefix,
    setup_django,
    streams_url,
    verdict,
)

#: What encode/broadcaster is measured with (it receives nothing on redis-py 8).
BROADCASTER_REQUIREMENTS = ["broadcaster==0.3.1", "redis==5.2.1"]
BROADCASTER_VENV = Path(__file__).resolve().parent.parent / ".venv-broadcaster"
TIMEOUT = 300.0

Case = Callable[[int, int, str], Coroutine[Any, Any, float]]
PUBLISHER = Path(__file__).with_name("_fanout_publisher.py")


class Publisher:
    """The publisher process of one round: connected and waiting for the go."""

    def __init__(self, python: str, kind: str, url: str, prefix: str, channel: str) -> None:
        self.args = [python, str(PUBLISHER), kind, url, prefix, channel]
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Publisher:
        return self

    async def start(self, events: int) -> None:
        """Start the process and wait until it has connected."""
        self.process = await asyncio.create_subprocess_exec(
            *self.args, str(events), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT)
        if line.strip() != b"ready":
            raise RuntimeError(f"publisher {self.args[2]} did not start")

    def go(self) -> float:
        """Collect garbage, tell it to publish, and return the start time.

        The N subscribers were made just now; without the collection, the first
        collections inside the timed window would scan and promote them, a set-up cost
        of tens of milliseconds that weighs most on the fastest case.
        """
        assert self.process is not None and self.process.stdin is not None
        gc.collect()
        self.process.stdin.write(b"go\n")
        return time.perf_counter()

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _django_broadcast(url: str, prefix: str, n: int, events: int, channel: str) -> float:
    from django_broadcast import broadcasts

    bc = broadcasts["bench"]
    subscribed = finished = 0
    all_subscribed, all_received = asyncio.Event(), asyncio.Event()

    async def subscriber() -> None:
        nonlocal subscribed, finished
        async with bc.subscribe(channel) as sub:
            subscribed += 1
            if subscribed == n:
                all_subscribed.set()
            received = 0
            async for _event in sub:
                received += 1
                if received == events:
                    break
            finished += 1
            if finished == n:
                all_received.set()

    async with Publisher(sys.executable, "django_broadcast", url, prefix, channel) as publisher:
        await publisher.start(events)
        tasks = [asyncio.create_task(subscriber()) for _ in range(n)]
        try:
            await asyncio.wait_for(all_subscribed.wait(), TIMEOUT)
            start = publisher.go()
            await asyncio.wait_for(all_received.wait(), TIMEOUT)
            return time.perf_counter() - start
        finally:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)
            await bc.aclose()


async def _channels_layer(kind: str, prefix: str, n: int, events: int, channel: str) -> float:
    """A Channels layer: one ``new_channel()`` per consumer, all in one group."""
    layer: Any
    if kind == "core":
        from channels_redis.core import RedisChannelLayer

        layer = RedisChannelLayer(hosts=[REDIS_URL], prefix=prefix + "core", capacity=events * 2)
    elif kind == "pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        layer = RedisPubSubChannelLayer(hosts=[REDIS_URL], prefix=prefix + "ps")
    else:
        from django_broadcast.layers import BroadcastChannelLayer

        layer = BroadcastChannelLayer(using="bench", capacity=events * 2)
    names = [await layer.new_channel() for _ in range(n)]
    for name in names:
        await layer.group_add(channel, name)

    async def consumer(name: str) -> None:
        for _ in range(events):
            await layer.receive(name)

    async with Publisher(sys.executable, f"layer-{kind}", REDIS_URL, prefix, channel) as publisher:
        await publisher.start(events)
        tasks = [asyncio.create_task(consumer(name)) for name in names]
        try:
            await asyncio.sleep(0.5)  # let every receive() start; pub/sub needs it to buffer
            start = publisher.go()
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            return time.perf_counter() - start
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await layer.flush()


def _broadcaster_python() -> Path:
    python = BROADCASTER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {BROADCASTER_VENV} with {' '.join(BROADCASTER_REQUIREMENTS)}")
        subprocess.run([sys.executable, "-m", "venv", str(BROADCASTER_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *BROADCASTER_REQUIREMENTS],
            check=True,
        )
    return python


async def _broadcaster(n: int, events: int, channel: str) -> float:
    proc = await asyncio.create_subprocess_exec(
        str(_broadcaster_python()),
        str(Path(__file__).with_name("_broadcaster_fanout.py")),
        str(PUBLISHER),
        REDIS_URL,
        channel,
        str(n),
        str(events),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT + 30)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    if proc.returncode:
        raise RuntimeError(f"broadcaster run failed with exit code {proc.returncode}")
    elapsed: float = json.loads(out)["elapsed"]
    return elapsed


def _cases(prefix: str, cluster: str | None) -> dict[str, tuple[str, Case]]:
    """Each case and the URL of its ``bench`` alias."""
    streams = streams_url()
    cases: dict[str, tuple[str, Case]] = {
        "django_broadcast redis://": (
            REDIS_URL,
            lambda n, e, c: _django_broadcast(REDIS_URL, prefix, n, e, c),
        ),
        "django_broadcast redis+streams://": (
            streams,
            lambda n, e, c: _django_broadcast(streams, prefix, n, e, c),
        ),
        "django_broadcast nats://": (
            NATS_URL,
            lambda n, e, c: _django_broadcast(NATS_URL, nats_prefix(prefix), n, e, c),
        ),
        "django_broadcast postgres://": (
            POSTGRES_URL,
            lambda n, e, c: _django_broadcast(POSTGRES_URL, prefix, n, e, c),
        ),
        "django_broadcast BroadcastChannelLayer redis://": (
            REDIS_URL,
            lambda n, e, c: _channels_layer("broadcast", prefix, n, e, c),
        ),
        "channels_redis core": (
            REDIS_URL,
            lambda n, e, c: _channels_layer("core", prefix, n, e, c),
        ),
        "channels_redis pubsub": (
            REDIS_URL,
            lambda n, e, c: _channels_layer("pubsub", prefix, n, e, c),
        ),
        "encode/broadcaster 0.3.1 (redis-py 5.2.1)": (
            REDIS_URL,
            lambda n, e, c: _broadcaster(n, e, prefix + c),
        ),
    }
    if cluster is not None:
        cases["django_broadcast redis+cluster://"] = (
            cluster,
            lambda n, e, c: _django_broadcast(cluster, prefix, n, e, c),
        )
    return cases


def run(sizes: list[int], events: int, rounds: int) -> Table:
    """Measure every case at every size; return the table (used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    # channels_redis core leaves clean-up tasks failing when its receivers are
    # cancelled at the end of a round; asyncio would log each one.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    setup_django()
    with cluster_url() as cluster:
        table = _measure(prefix, cluster, sizes, events, rounds)
    if cluster is None:
        table.add(NO_CLUSTER, *([""] * (len(table.columns) - 1)))
    return table


def _measure(prefix: str, cluster: str | None, sizes: list[int], events: int, rounds: int) -> Table:
    from django.test import override_settings

    results: dict[tuple[str, int], float | None] = {}
    failures: dict[tuple[str, int], str] = {}
    for label, (url, case) in _cases(prefix, cluster).items():
        options = {"prefix": nats_prefix(prefix) if url == NATS_URL else prefix}
        aliases = {
            "default": {"URL": "memory://"},
            "bench": {"URL": url, "OPTIONS": options},
        }
        with override_settings(BROADCAST=aliases):
            for n in sizes:
                rates = []
                for r in range(rounds):
                    channel = f"fan-{n}-{r}-{uuid.uuid4().hex[:6]}"
                    try:
                        elapsed = asyncio.run(case(n, events, channel))
                    except Exception as exc:  # an anchor that falls over is a result
                        failures[label, n] = type(exc).__name__
                        break
                    rates.append(n * events / elapsed)
                results[label, n] = statistics.median(rates) if len(rates) == rounds else None
    delete_keys(prefix)
    delete_nats_stream(prefix)
    delete_rows(prefix)
    return _table(results, failures, sizes, events, rounds)


def _table(
    results: dict[tuple[str, int], float | None],
    failures: dict[tuple[str, int], str],
    sizes: list[int],
    events: int,
    rounds: int,
) -> Table:
    anchors = ["channels_redis pubsub", "encode/broadcaster 0.3.1 (redis-py 5.2.1)"]
    table = Table(
        f"In-process fan-out: {events} events to N subscribers of one channel, "
        f"deliveries/s, median of {rounds} rounds ({machine()})",
        ["case", *(f"N={n:,}" for n in sizes), *(f"vs {a.split(' (')[0]}" for a in anchors)],
    )
    largest = sizes[-1]
    for label in dict.fromkeys(label for label, _ in results):
        cells = [_rate(results[label, n], failures.get((label, n))) for n in sizes]
        ratios = []
        for anchor in anchors:
            ours, theirs = results[label, largest], results[anchor, largest]
            ratios.append(f"{ours / theirs:,.1f}x" if ours and theirs else "-")
        table.add(label, *cells, *ratios)
    ours = results["django_broadcast redis://", largest] or 0.0
    for anchor, factor in zip(anchors, (5, 3), strict=True):
        theirs = results[anchor, largest]
        met = theirs is None or ours >= factor * theirs  # or the anchor failed
        table.add(
            f"target: redis:// >= {factor}x {anchor.split(' (')[0]} at N={largest:,}",
            *([""] * len(sizes)),
            *(verdict(met) if a == anchor else "" for a in anchors),
        )
    return table


def _rate(rate: float | None, failure: str | None) -> str:
    return f"failed ({failure})" if rate is None else f"{rate:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(run(sizes, args.events, args.rounds).render())


if __name__ == "__main__":
    main()
