"""In-process fan-out: one publisher, N local subscribers of one channel, through Redis.

    python -m benchmarks.fanout [--sizes 1000,10000] [--events 20] [--rounds 3]
                                [--many 10000] [--many-events 5] [--cases CASES]

Every case subscribes N receivers to one channel in one process and event loop; a
publisher in another process (``_fanout_publisher.py``, connected beforehand) then
publishes ``--events`` events with the library's own async API, and the clock runs
from its go until every receiver has every event. The figure is deliveries per second
(N x events / elapsed): the median of ``--rounds`` rounds, with the least and the
greatest beside it. Every case collects garbage before the go,
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

A second table, many channels: ``--many`` consumers each in a group of its own
(``BroadcastChannelLayer`` and channels_redis pub/sub), ``--many-events`` events sent
to every group. Its publisher sends the very ``PUBLISH`` commands each layer's
``group_send`` would, pipelined (see ``_fanout_publisher.py``), so that the clock
measures the receiving process. ``--cases`` keeps the cases whose names contain one of
its comma-separated words; a target whose anchor was not measured says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
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
    Spread,
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

LAYER = "django_broadcast BroadcastChannelLayer redis://"
PUBSUB = "channels_redis pubsub"
BROADCASTER = "encode/broadcaster 0.3.1 (redis-py 5.2.1)"
#: The layers of the many-channels table, by their publisher's kind.
MANY = {"broadcast": LAYER, "pubsub": PUBSUB}


class Publisher:
    """The publisher process of one round: connected and waiting for the go."""

    def __init__(
        self, python: str, kind: str, url: str, prefix: str, channel: str, groups: int = 0
    ) -> None:
        self.args = [python, str(PUBLISHER), kind, url, prefix, channel]
        self.groups = groups
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Publisher:
        return self

    async def start(self, events: int) -> None:
        """Start the process and wait until it has connected."""
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            str(events),
            str(self.groups),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
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


async def _channels_layer(
    kind: str, prefix: str, n: int, events: int, channel: str, *, many: bool = False
) -> float:
    """A Channels layer: one ``new_channel()`` per consumer, all in one group (or, with
    ``many``, each in a group of its own, ``channel-0`` to ``channel-<n-1>``)."""
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
    for number, name in enumerate(names):
        await layer.group_add(f"{channel}-{number}" if many else channel, name)

    async def consumer(name: str) -> None:
        for _ in range(events):
            await layer.receive(name)

    publisher_kind = f"many-{kind}" if many else f"layer-{kind}"
    groups = n if many else 0
    async with Publisher(
        sys.executable, publisher_kind, REDIS_URL, prefix, channel, groups
    ) as publisher:
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
        LAYER: (
            REDIS_URL,
            lambda n, e, c: _channels_layer("broadcast", prefix, n, e, c),
        ),
        "channels_redis core": (
            REDIS_URL,
            lambda n, e, c: _channels_layer("core", prefix, n, e, c),
        ),
        PUBSUB: (
            REDIS_URL,
            lambda n, e, c: _channels_layer("pubsub", prefix, n, e, c),
        ),
        BROADCASTER: (
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


Rates = dict[tuple[str, int], list[float]]
Failures = dict[tuple[str, int], str]


def _selected(label: str, cases: list[str] | None) -> bool:
    return cases is None or any(word.lower() in label.lower() for word in cases)


def run(sizes: list[int], events: int, rounds: int, cases: list[str] | None = None) -> Table:
    """Measure every case (or those named in ``cases``) at every size; return the table
    (used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    # channels_redis core leaves clean-up tasks failing when its receivers are
    # cancelled at the end of a round; asyncio would log each one.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    setup_django()
    # The cluster case starts a local cluster where none is configured: only if asked.
    clustered = _selected("django_broadcast redis+cluster://", cases)
    try:
        with cluster_url() if clustered else contextlib.nullcontext() as cluster:
            rates, failures = _measure(prefix, cluster, sizes, events, rounds, cases)
    finally:
        delete_keys(prefix)
        delete_nats_stream(prefix)
        delete_rows(prefix)
    table = _table(rates, failures, sizes, events, rounds)
    if cluster is None and clustered:
        table.add(NO_CLUSTER, *([""] * (len(table.columns) - 1)))
    return table


def _rounds(case: Case, n: int, events: int, rounds: int) -> tuple[list[float], str | None]:
    """Deliveries/s of each round, or the name of the error that stopped them."""
    rates: list[float] = []
    for r in range(rounds):
        channel = f"fan-{n}-{r}-{uuid.uuid4().hex[:6]}"
        try:
            elapsed = asyncio.run(case(n, events, channel))
        except Exception as exc:  # an anchor that falls over is a result
            return rates, type(exc).__name__
        rates.append(n * events / elapsed)
    return rates, None


def _measure(
    prefix: str,
    cluster: str | None,
    sizes: list[int],
    events: int,
    rounds: int,
    cases: list[str] | None,
) -> tuple[Rates, Failures]:
    from django.test import override_settings

    rates: Rates = {}
    failures: Failures = {}
    for label, (url, case) in _cases(prefix, cluster).items():
        if not _selected(label, cases):
            continue
        options = {"prefix": nats_prefix(prefix) if url == NATS_URL else prefix}
        aliases = {
            "default": {"URL": "memory://"},
            "bench": {"URL": url, "OPTIONS": options},
        }
        with override_settings(BROADCAST=aliases):
            for n in sizes:
                rates[label, n], failure = _rounds(case, n, events, rounds)
                if failure is not None:
                    failures[label, n] = failure
    return rates, failures


def _median(rates: Rates, failures: Failures, label: str, n: int) -> float | None:
    """The median of a case's rounds; None where it was not run or did not finish."""
    if (label, n) in failures or not rates.get((label, n)):
        return None
    return Spread.of(rates[label, n]).median


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:,.1f}x" if ours and theirs else "-"


def _cell(rates: Rates, failures: Failures, label: str, n: int) -> str:
    failure = failures.get((label, n))
    if failure is not None:
        return f"failed ({failure})"
    return Spread.of(rates[label, n]).format()


def _met(ours: float | None, theirs: float | None, factor: float) -> bool | None:
    """Whether ``ours`` is at least ``factor`` times ``theirs``; None where either was
    not measured (the anchor failed, or the case was left out)."""
    if ours is None or theirs is None:
        return None
    return ours >= factor * theirs


def _table(rates: Rates, failures: Failures, sizes: list[int], events: int, rounds: int) -> Table:
    anchors = [PUBSUB, BROADCASTER]
    table = Table(
        f"In-process fan-out: {events} events to N subscribers of one channel, "
        f"deliveries/s, median (min-max) of {rounds} rounds ({machine()})",
        ["case", *(f"N={n:,}" for n in sizes), *(f"vs {a.split(' (')[0]}" for a in anchors)],
    )
    largest = sizes[-1]
    for label in dict.fromkeys(label for label, _ in rates):
        cells = [_cell(rates, failures, label, n) for n in sizes]
        ours = _median(rates, failures, label, largest)
        ratios = [_ratio(ours, _median(rates, failures, a, largest)) for a in anchors]
        table.add(label, *cells, *ratios)
    ours = _median(rates, failures, "django_broadcast redis://", largest)
    for anchor, factor in zip(anchors, (5, 3), strict=True):
        met = _met(ours, _median(rates, failures, anchor, largest), factor)
        table.add(
            f"target: redis:// >= {factor}x {anchor.split(' (')[0]} at N={largest:,}",
            *([""] * len(sizes)),
            *(verdict(met) if a == anchor else "" for a in anchors),
        )
    for n in sizes:
        layer, pubsub = _median(rates, failures, LAYER, n), _median(rates, failures, PUBSUB, n)
        table.add(
            f"target: layer >= 2x channels_redis pubsub at N={n:,}",
            *(_ratio(layer, pubsub) if size == n else "" for size in sizes),
            verdict(_met(layer, pubsub, 2)),
            "",
        )
    return table


def many_channels(channels: int, events: int, rounds: int, cases: list[str] | None = None) -> Table:
    """The many-channels table: ``channels`` consumers, each in a group of its own,
    ``events`` events to every group, through each layer (or those named in ``cases``)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    setup_django()
    from django.test import override_settings

    rates: Rates = {}
    failures: Failures = {}
    aliases = {
        "default": {"URL": "memory://"},
        "bench": {"URL": REDIS_URL, "OPTIONS": {"prefix": prefix}},
    }
    try:
        with override_settings(BROADCAST=aliases):
            for kind, label in MANY.items():
                if not _selected(label, cases):
                    continue

                def case(n: int, e: int, c: str, kind: str = kind) -> Coroutine[Any, Any, float]:
                    return _channels_layer(kind, prefix, n, e, c, many=True)

                rates[label, channels], failure = _rounds(case, channels, events, rounds)
                if failure is not None:
                    failures[label, channels] = failure
    finally:
        delete_keys(prefix)
    table = Table(
        f"Many channels: {events} events to each of N groups of one member, "
        f"deliveries/s, median (min-max) of {rounds} rounds ({machine()})",
        ["case", f"N={channels:,} channels x 1 member", "vs channels_redis pubsub"],
    )
    pubsub = _median(rates, failures, PUBSUB, channels)
    for label in dict.fromkeys(label for label, _ in rates):
        ours = _median(rates, failures, label, channels)
        table.add(label, _cell(rates, failures, label, channels), _ratio(ours, pubsub))
    layer = _median(rates, failures, LAYER, channels)
    table.add(
        f"target: layer >= 2x channels_redis pubsub, many channels ({channels:,} x 1 member)",
        "",
        verdict(_met(layer, pubsub, 2)),
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="1000,10000", help="comma-separated N (0: no fan-out table)"
    )
    parser.add_argument("--events", type=int, default=20, help="events per fan-out round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (at least 3)")
    parser.add_argument(
        "--many", type=int, default=10_000, help="channels of the many-channels table (0: none)"
    )
    parser.add_argument(
        "--many-events", type=int, default=5, help="events to each group of the many-channels table"
    )
    parser.add_argument(
        "--cases", default=None, help="comma-separated words: only the cases that contain one"
    )
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds: at least 3, so that each figure is a median with its spread")
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = args.cases.split(",") if args.cases else None
    if sizes != [0]:
        print(run(sizes, args.events, args.rounds, cases).render())
    if args.many:
        print(many_channels(args.many, args.many_events, args.rounds, cases).render())


if __name__ == "__main__":
    main()
