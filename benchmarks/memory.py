"""Memory: resident bytes per idle subscriber and per idle WebSocket connection.

    python -m benchmarks.memory [--subscribers 10000] [--connections 1000] [--repeats 3]

Each case runs in a fresh process (``_idle_subscribers.py``): connect, read RSS,
start N idle subscribers of one channel one after the other (each a task waiting for
an event, as a consumer is), read RSS again. Cases: ``broadcast.subscribe`` on
``redis://`` and ``redis+streams://``; channels_redis core and pub/sub layers
(``new_channel()`` + ``group_add`` + a pending ``receive()`` per subscriber, what a
Channels consumer with ``groups`` holds); encode/broadcaster in its own virtualenv.

Per idle WebSocket connection: the RSS of one daphne process (the servers of
``e2e_websocket``) before and after ``--connections`` clients connect and subscribe,
for the Channels anchor (channels_redis pub/sub), the same consumer on
``BroadcastChannelLayer``, and ``BroadcastWebsocketConsumer``; ``--repeats`` rounds,
the cases taking turns in each, printed as median (min-max), and a target row each:
``BroadcastWebsocketConsumer`` at most the anchor, the Channels consumer on
``BroadcastChannelLayer`` below it ("not measured" where the anchor failed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

from ._common import REDIS_URL, Spread, Table, delete_keys, machine, rss, streams_url, verdict
from .e2e import CASES
from .e2e_websocket import Client, server
from .fanout import _broadcaster_python

SCRIPT = Path(__file__).with_name("_idle_subscribers.py")
TIMEOUT = 600


def _measure(python: str, kind: str, url: str, prefix: str, n: int) -> float | str:
    try:
        done = subprocess.run(
            [python, str(SCRIPT), kind, url, prefix, str(n)],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "failed (timeout)"
    if done.returncode:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"failed ({last[0][:60] if last else done.returncode})"
    per: float = json.loads(done.stdout)["bytes_per_subscriber"]
    return per


async def _connections_rss(case: str, port: int, pid: int, connections: int) -> float:
    warm = [Client(case, port) for _ in range(10)]  # first connections load code
    clients = [Client(case, port) for _ in range(connections)]
    try:
        for client in warm:
            await client.connect()
        await asyncio.sleep(0.5)
        before = rss(pid)
        for client in clients:
            await client.connect()
        await asyncio.sleep(1.0)
        return (rss(pid) - before) / connections
    finally:
        await asyncio.gather(*(c.close() for c in [*warm, *clients]), return_exceptions=True)


def websocket_table(connections: int, repeats: int = 3) -> Table:
    """RSS per idle WebSocket connection of one daphne process, per case: ``repeats``
    rounds, the cases taking turns in each, printed as median (min-max)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    cases = ("anchor", "layer", "consumer")  # the diagnostic cases add nothing here
    samples: dict[str, list[float]] = {case: [] for case in cases}
    try:
        for _ in range(repeats):
            for case in cases:
                with server(case, prefix) as (port, pid):
                    used = asyncio.run(_connections_rss(case, port, pid, connections))
                samples[case].append(used / 1024)
    finally:
        delete_keys(prefix)
    results = {case: Spread.of(values) for case, values in samples.items()}
    anchor = results["anchor"].median
    table = Table(
        f"Memory per idle WebSocket connection, {connections:,} on one daphne process, "
        f"{repeats} round(s), median (min-max) ({machine()})",
        ["case", "KiB/connection", "vs anchor"],
    )
    for case, spread in results.items():
        ratio = f"{spread.median / anchor:.2f}x" if anchor > 0 else "-"
        table.add(CASES[case], spread.format(".1f"), ratio)
    measured = anchor > 0
    for case, label in (
        ("consumer", "BroadcastWebsocketConsumer <= the anchor"),
        ("layer", "Channels consumer on BroadcastChannelLayer < the anchor"),
    ):
        kib = results[case].median
        met = kib <= anchor if case == "consumer" else kib < anchor
        table.add(f"target: {label}", "", verdict(met if measured else None))
    return table


def run(subscribers: int, repeats: int = 3) -> Table:
    """Measure every idle-subscriber case, ``repeats`` rounds with the cases taking
    turns; return the table (used by the smoke test)."""
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    ours = sys.executable
    cases = [
        ("django_broadcast redis://", ours, "django_broadcast", REDIS_URL),
        ("django_broadcast redis+streams://", ours, "django_broadcast", streams_url()),
        ("channels_redis core", ours, "channels_redis-core", REDIS_URL),
        ("channels_redis pubsub", ours, "channels_redis-pubsub", REDIS_URL),
        (
            "encode/broadcaster 0.3.1 (redis-py 5.2.1)",
            str(_broadcaster_python()),
            "broadcaster",
            REDIS_URL,
        ),
    ]
    samples: dict[str, list[float]] = {label: [] for label, *_ in cases}
    failures: dict[str, str] = {}
    try:
        for _ in range(repeats):
            for label, python, kind, url in cases:
                if label in failures:
                    continue
                per = _measure(python, kind, url, prefix, subscribers)
                if isinstance(per, str):
                    failures[label] = per
                else:
                    samples[label].append(per / 1024)
    finally:
        delete_keys(prefix)
    anchor_label = "channels_redis pubsub"
    anchor = None if anchor_label in failures else Spread.of(samples[anchor_label]).median
    table = Table(
        f"Memory per idle subscriber, {subscribers:,} subscribers of one channel, "
        f"{repeats} round(s), median (min-max) ({machine()})",
        ["case", "KiB/subscriber", "vs channels_redis pubsub"],
    )
    for label, *_ in cases:
        if label in failures:
            table.add(label, failures[label], "-")
            continue
        spread = Spread.of(samples[label])
        ratio = f"{spread.median / anchor:.2f}x" if anchor else "-"
        table.add(label, spread.format(".2f"), ratio)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(args.subscribers, args.repeats).render())
    print()
    print(websocket_table(args.connections, args.repeats).render())


if __name__ == "__main__":
    main()
