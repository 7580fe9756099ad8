"""Plain channels (the layer's queues): what a ``runworker`` pipeline pays, side by
side with channels_redis's core layer in one run.

    python -m benchmarks.plain_channels [--messages N] [--rounds R]

Each case sends ``N`` messages to a plain channel while one receiver takes them (both
on one event loop, as a worker and its producer in one process would be), through
``BroadcastChannelLayer`` on ``redis://``, ``redis+streams://``, ``nats://`` and
``memory://``, and
``BroadcastChannelLayer`` on ``redis://``, ``redis+streams://``, ``postgres://`` (at
``POSTGRES_URL``) and ``memory://``, and
through channels_redis's ``RedisChannelLayer``. Prints the median of several rounds
(the cases take turns in every round) and the spread.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from ._common import (
    NATS_URL,
    POSTGRES_URL,
    REDIS_URL,
    Table,
    delete_keys,
    delete_nats_stream,
    delete_rows,
    machine,
    nats_prefix,
    setup_django,
    streams_url,
    verdict,
)

MESSAGE = {"type": "thumbnail.make", "id": 42, "path": "/media/cat.jpg"}


async def _one_round(layer: Any, messages: int) -> float:
    """Seconds for ``messages`` to travel from ``send`` to ``receive``."""
    channel = f"bench-{uuid.uuid4().hex[:8]}"

    async def take() -> None:
        for _ in range(messages):
            await layer.receive(channel)

    started = time.perf_counter()
    receiver = asyncio.ensure_future(take())
    for _ in range(messages):
        await layer.send(channel, MESSAGE)
    await receiver
    return time.perf_counter() - started


def run(messages: int, rounds: int) -> Table:
    """Measure every case; return the table (also used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    setup_django()
    from django.test import override_settings

    aliases = {
        "default": {"URL": "memory://"},
        "pubsub": {"URL": REDIS_URL, "OPTIONS": {"prefix": prefix}},
        "streams": {"URL": streams_url(), "OPTIONS": {"prefix": prefix}},
        "nats": {"URL": NATS_URL, "OPTIONS": {"prefix": nats_prefix(prefix)}},
        "postgres": {"URL": POSTGRES_URL, "OPTIONS": {"prefix": prefix}},
    }
    try:
        with override_settings(BROADCAST=aliases):
            return asyncio.run(_run(messages, rounds, prefix))
    finally:
        delete_keys(prefix)
        delete_nats_stream(prefix)
        delete_rows(prefix)


async def _run(messages: int, rounds: int, prefix: str) -> Table:
    from django_broadcast import broadcasts
    from django_broadcast.layers import BroadcastChannelLayer

    # Capacity above the messages in flight: the sender may run ahead of the receiver.
    capacity = messages + 1
    cases: dict[str, Any] = {
        "BroadcastChannelLayer redis://": BroadcastChannelLayer("pubsub", capacity=capacity),
        "BroadcastChannelLayer redis+streams://": BroadcastChannelLayer(
            "streams", capacity=capacity
        ),
        "BroadcastChannelLayer nats://": BroadcastChannelLayer("nats", capacity=capacity),
        "BroadcastChannelLayer postgres://": BroadcastChannelLayer("postgres", capacity=capacity),
        "BroadcastChannelLayer memory://": BroadcastChannelLayer("default", capacity=capacity),
    }
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:
        pass
    else:
        cases["channels_redis core"] = RedisChannelLayer(
            hosts=[REDIS_URL], prefix=prefix + "core", capacity=capacity
        )
    for layer in cases.values():  # warm up: connections, scripts
        await _one_round(layer, max(1, messages // 10))
    samples: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(rounds):
        for label, layer in cases.items():
            samples[label].append(messages / await _one_round(layer, messages))
    for layer in cases.values():
        await layer.flush()
    for alias in aliases_of(cases):
        await broadcasts[alias].aclose()

    anchor = (
        statistics.median(samples["channels_redis core"]) if "channels_redis core" in samples else 0
    )
    table = Table(
        f"Plain channel send -> receive, {messages} messages, median of {rounds} rounds "
        f"({machine()})",
        ["case", "messages/s", "spread (min-max)", "vs channels_redis core"],
    )
    for label, rates in samples.items():
        median = statistics.median(rates)
        table.add(
            label,
            f"{median:,.0f}",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            f"{median / anchor:.2f}x" if anchor else "-",
        )
    ours = statistics.median(samples["BroadcastChannelLayer redis://"])
    table.add(
        "target: redis:// >= 1x channels_redis core",
        "",
        "",
        verdict(ours >= anchor if anchor else None),
    )
    return table


def aliases_of(cases: dict[str, Any]) -> list[str]:
    """The broadcast aliases the layers of ``cases`` travel through."""
    return sorted({layer.using for layer in cases.values() if hasattr(layer, "using")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(run(args.messages, args.rounds).render())


if __name__ == "__main__":
    main()
