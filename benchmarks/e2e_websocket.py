"""End to end over WebSocket: publish-to-browser latency and sustained deliveries.

    python -m benchmarks.e2e_websocket [--clients 200] [--rates 1,2,5,...] [--seconds 4]
    python -m benchmarks.e2e_websocket --quick       # a few clients, a second, smoke

For each case, one daphne process serves K WebSocket clients (all opened by this
process); a publisher in another process (``benchmarks.e2e.publisher``) sends at
rising rates from plain sync code, each event stamped with its send time. Per rate:
p50 and p99 publish-to-client latency, deliveries per second achieved, and events
lost (an event must reach all K clients). A rate is *sustained* when nothing is lost,
p99 is under 100 ms and the publisher kept up (90% of the rate); a case stops at its
first rate not sustained.

Cases (``benchmarks.e2e.CASES``): the anchor, a plain Channels
``AsyncWebsocketConsumer`` with ``groups`` on channels_redis's pub/sub layer published
to with ``async_to_sync(group_send)``; the same consumer on ``BroadcastChannelLayer``
published to with ``broadcast.publish()``; and ``BroadcastWebsocketConsumer``.

Two diagnostic cases run the same Channels consumer without the
``aclose_old_connections()`` that Channels (4.2 and later) awaits before every handler:
a thread hop through the one thread-sensitive executor per message per consumer, which
serializes a fan-out to K consumers and bounds both layers alike. With it skipped on
both, the two layers are compared alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from ._common import REDIS_URL, Table, delete_keys, machine, verdict
from .e2e import CASES

ROOT = Path(__file__).resolve().parent.parent
P99_LIMIT_MS = 100.0
DRAIN = 5.0


@dataclass
class Round:
    """What one rate of one case measured."""

    rate: float
    sent: int = 0
    achieved: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    clients: int = 0

    @property
    def deliveries_per_s(self) -> float:
        return self.achieved * self.clients

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("inf")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def sustained(self) -> bool:
        return (
            self.lost == 0
            and self.percentile(0.99) < P99_LIMIT_MS
            and self.achieved >= 0.9 * self.rate
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def case_env(case: str, prefix: str) -> dict[str, str]:
    """The environment of a case's server and publisher processes."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.e2e.settings",
        "E2E_CASE": case,
        "E2E_PREFIX": prefix,
        "REDIS_URL": REDIS_URL,
        "PYTHONPATH": str(ROOT),
    }


@contextmanager
def server(
    case: str, prefix: str, kind: str = "daphne", env: dict[str, str] | None = None
) -> Iterator[tuple[int, int]]:
    """A daphne (or uvicorn) process serving ``case``; yields (port, pid)."""
    port = _free_port()
    app = "benchmarks.e2e.asgi:application"
    if kind == "daphne":
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    else:
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--lifespan", "auto"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env={**case_env(case, prefix), **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} for case {case!r} did not start") from None
                time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Client:
    """One WebSocket client: connects, subscribes, records each event's latency."""

    def __init__(self, case: str, port: int) -> None:
        self.case = case
        self.url = f"ws://127.0.0.1:{port}/" + ("broadcast/ws/" if case == "consumer" else "bench/")
        self.origin = websockets.Origin(f"http://127.0.0.1:{port}")
        self.connection: websockets.ClientConnection | None = None
        self.received: dict[int, float] = {}  # n -> latency in ms
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.connection = await websockets.connect(
            self.url, origin=self.origin, max_queue=None, open_timeout=30
        )
        if self.case == "consumer":
            await self.connection.send(json.dumps({"op": "subscribe", "channel": "bench"}))
            reply = json.loads(await asyncio.wait_for(self.connection.recv(), 30))
            if reply.get("op") != "subscribed":
                raise RuntimeError(f"subscribe refused: {reply}")
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.connection is not None
        consumer = self.case == "consumer"
        async for text in self.connection:
            now = time.time_ns()
            frame = json.loads(text)
            event = frame["data"] if consumer else frame
            if event["n"] >= 0:
                self.received[event["n"]] = (now - event["t"]) / 1e6

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.connection is not None:
            await self.connection.close()


async def _run_rate(
    case: str, prefix: str, clients: list[Client], rate: float, seconds: float
) -> Round:
    for client in clients:
        client.received.clear()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.e2e.publisher", str(rate), str(seconds),
        cwd=ROOT, env=case_env(case, prefix), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), seconds * 20 + 60)
    if proc.returncode:
        raise RuntimeError(f"publisher of case {case!r} failed")
    report = json.loads(out)
    result = Round(rate, report["sent"], report["rate"], clients=len(clients))
    deadline = time.monotonic() + DRAIN
    while time.monotonic() < deadline:
        if all(len(c.received) >= result.sent for c in clients):
            break
        await asyncio.sleep(0.05)
    for client in clients:
        result.latencies_ms.extend(client.received.values())
        result.lost += result.sent - len(client.received)
    return result


async def _run_case(
    case: str, port: int, prefix: str, count: int, rates: list[float], seconds: float
) -> list[Round]:
    clients = [Client(case, port) for _ in range(count)]
    try:
        for client in clients:
            await client.connect()
        rounds = []
        for rate in rates:
            result = await _run_rate(case, prefix, clients, rate, seconds)
            rounds.append(result)
            if not result.sustained:
                break
        return rounds
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def run(clients: int, rates: list[float], seconds: float) -> Table:
    """Measure every case; return the table (used by the smoke test)."""
    results: dict[str, list[Round]] = {}
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    for case in CASES:
        with server(case, prefix) as (port, _pid):
            results[case] = asyncio.run(_run_case(case, port, prefix, clients, rates, seconds))
    table = Table(
        f"End to end over WebSocket: {clients} clients on one daphne process, publisher in "
        f"another, {seconds:g} s per rate ({machine()})",
        ["case", "events/s", "deliveries/s", "p50 ms", "p99 ms", "lost", "sustained"],
    )
    best: dict[str, float] = {}
    for case, rounds in results.items():
        for result in rounds:
            table.add(
                CASES[case],
                f"{result.rate:g} (sent {result.achieved:,.0f})",
                f"{result.deliveries_per_s:,.0f}",
                f"{result.percentile(0.5):,.1f}",
                f"{result.percentile(0.99):,.1f}",
                result.lost,
                "yes" if result.sustained else "no",
            )
        sustained = [r.deliveries_per_s for r in rounds if r.sustained]
        best[case] = max(sustained, default=0.0)
    anchor = best["anchor"]
    for case in CASES:
        ratio = f"{best[case] / anchor:,.1f}x anchor" if anchor else "-"
        table.add(f"highest sustained: {CASES[case]}", "", f"{best[case]:,.0f}", "", "", "", ratio)
    ours = max(best["layer"], best["consumer"])
    table.add(
        "target: >= 3x the anchor's sustained deliveries/s at p99 < 100 ms",
        "", "", "", "", "", verdict(ours >= 3 * anchor if anchor > 0 else None),
    )  # fmt: skip
    theirs = best["anchor-nodb"]
    table.add(
        "layers alone (diagnostic cases): BroadcastChannelLayer / channels_redis pubsub",
        "", "", "", "", "", f"{best['layer-nodb'] / theirs:,.1f}x" if theirs else "-",
    )  # fmt: skip
    delete_keys(prefix)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rates", default="1,2,3,5,10,15,20,25,30,40,50,75,100,150,200,300")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="5 clients, rates 5,10, 1 s")
    args = parser.parse_args()
    if args.quick:
        print(run(5, [5.0, 10.0], 1.0).render())
    else:
        rates = [float(r) for r in args.rates.split(",")]
        print(run(args.clients, rates, args.seconds).render())


if __name__ == "__main__":
    main()
