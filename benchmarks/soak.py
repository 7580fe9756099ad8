"""Soak: many WebSocket clients churning subscriptions against one server, for a while.

    python -m benchmarks.soak [--clients 1000] [--seconds 60] [--server daphne|uvicorn]
                              [--rate 200] [--channels 50]

One server process (the ``consumer`` case of ``e2e_websocket``: the shipped
``BroadcastWebsocketConsumer``) on Redis pub/sub. ``--clients`` clients connect and,
for ``--seconds``, keep subscribing to random channels (three at a time, resuming from
the position of the last subscription to the same channel), unsubscribing, and now and
then dropping their connection and opening a new one. A publisher sends ``--rate``
events per second across ``--channels`` channels, and one more client subscribes to
every channel and then never reads again (a frozen tab).

What it checks, and prints:

- first, alone: a client that never reads while 60 MB are published to it (and to a
  client that reads): the server's RSS must not grow with what it is sent;
- the server's RSS, sampled every second: after the warm-up (the first half) it
  must stay flat, however much the stalled client is sent;
- no event is delivered twice to one subscription;
- once every client has gone, the server holds no Redis subscription.

No number here is asserted in the test suite beyond those three checks, run small
(``tests/test_soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import websockets

from ._common import REDIS_URL, Table, delete_keys, machine, rss, setup_django
from .e2e_websocket import server

#: Allowed RSS growth after the warm-up, in MiB, for "flat".
FLAT_MIB = 30


@dataclass
class Tally:
    """What the clients saw."""

    deliveries: int = 0
    duplicates: int = 0
    subscribes: int = 0
    reconnects: int = 0
    gaps: int = 0
    errors: dict[str, int] = field(default_factory=dict)


async def _client(
    port: int, channels: list[str], stop: float, tally: Tally, rng: random.Random
) -> None:
    positions: dict[str, str] = {}
    while time.monotonic() < stop:
        try:
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/broadcast/ws/",
                origin=websockets.Origin(f"http://127.0.0.1:{port}"),
                open_timeout=30,
            )
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake):
            tally.errors["connect"] = tally.errors.get("connect", 0) + 1
            await asyncio.sleep(rng.random())
            continue
        seen: dict[str, set[str]] = {}
        held: list[str] = []
        reconnect_at = time.monotonic() + rng.uniform(5, 30)
        try:
            while time.monotonic() < min(stop, reconnect_at):
                if len(held) >= 3:
                    old = held.pop(0)
                    seen.pop(old, None)
                    await ws.send(json.dumps({"op": "unsubscribe", "channel": old}))
                channel = rng.choice([c for c in channels if c not in held])
                frame: dict[str, Any] = {"op": "subscribe", "channel": channel}
                if channel in positions:
                    frame["since"] = positions[channel]
                await ws.send(json.dumps(frame))
                held.append(channel)
                seen[channel] = set()
                tally.subscribes += 1
                until = time.monotonic() + rng.uniform(0.5, 3)
                while time.monotonic() < until:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), until - time.monotonic())
                    except asyncio.TimeoutError:
                        break
                    _count(json.loads(raw), seen, positions, tally)
        except websockets.ConnectionClosed:
            tally.errors["closed"] = tally.errors.get("closed", 0) + 1
        finally:
            await ws.close()
            tally.reconnects += 1


def _count(
    frame: dict[str, Any], seen: dict[str, set[str]], positions: dict[str, str], tally: Tally
) -> None:
    op, channel = frame.get("op"), frame.get("channel", "")
    if op == "event":
        if frame["type"] == "broadcast.gap":
            tally.gaps += 1
            return
        ids = seen.get(channel)
        if ids is None:
            return  # a straggler of a channel just unsubscribed
        if frame["id"] in ids:
            tally.duplicates += 1
        ids.add(frame["id"])
        tally.deliveries += 1
        positions[channel] = frame["id"]
    elif op == "subscribed":
        if frame.get("position"):
            positions[channel] = frame["position"]
    elif op == "error" and frame["code"] != "not_subscribed":
        tally.errors[frame["code"]] = tally.errors.get(frame["code"], 0) + 1


def _stalled_client(port: int, channels: list[str]) -> socket.socket:
    """Subscribe to ``channels`` over a raw socket, then never read again."""
    import base64
    import os

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /broadcast/ws/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Origin: http://127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    for channel in channels:
        payload = json.dumps({"op": "subscribe", "channel": channel}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


async def _publish(prefix: str, channels: list[str], rate: float, stop: float, pad: int) -> int:
    """Publish ``rate`` events per second until ``stop``, as the application would."""
    setup_django()
    from django.test import override_settings

    from django_broadcast import broadcasts

    sent = 0
    started = time.monotonic()
    entry = {"URL": REDIS_URL, "OPTIONS": {"prefix": prefix}}
    with override_settings(BROADCAST={"default": entry}):
        bc = broadcasts["default"]
        try:
            while time.monotonic() < stop:
                await bc.apublish(random.choice(channels), {"n": sent, "pad": "x" * pad})
                sent += 1
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await bc.aclose()
    return sent


async def _sample(pid: int, stop: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop:
        samples.append((time.monotonic() - started, rss(pid)))
        await asyncio.sleep(1)


def _left_subscribed(prefix: str) -> list[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        channels = client.pubsub_channels(f"{prefix}soak-*")
        return [c.decode() if isinstance(c, bytes) else str(c) for c in channels]
    finally:
        client.close()


async def soak(
    clients: int, seconds: float, kind: str, rate: float, channel_count: int, pad: int
) -> dict[str, Any]:
    """Run one soak; return what was measured."""
    prefix = f"bench:soak:{uuid.uuid4().hex[:8]}:"
    channels = [f"soak-{n}" for n in range(channel_count)]
    tally = Tally()
    samples: list[tuple[float, int]] = []
    env = {"E2E_QUEUE_SIZE": "200"}
    try:
        with server("consumer", prefix, kind=kind, env=env) as (port, pid):
            stalled = _stalled_client(port, channels)
            start = time.monotonic()
            stop = start + seconds
            rng = random.Random(7)
            tasks = [
                asyncio.create_task(
                    _client(port, channels, stop, tally, random.Random(rng.random()))
                )
                for _ in range(clients)
            ]
            sampler = asyncio.create_task(_sample(pid, stop, samples))
            sent = await _publish(prefix, channels, rate, stop, pad)
            await asyncio.gather(*tasks, sampler)
            stalled.close()
            left: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                left = _left_subscribed(prefix)
                if not left:
                    break
                await asyncio.sleep(0.2)
    finally:
        delete_keys(prefix)
    warm = [rss for t, rss in samples if t >= seconds / 2]
    return {
        "server": kind,
        "clients": clients,
        "seconds": seconds,
        "published": sent,
        "tally": tally,
        "rss_warm": warm[0] if warm else 0,
        "rss_end": warm[-1] if warm else 0,
        "rss_max": max(warm) if warm else 0,
        "rss_median": statistics.median(warm) if warm else 0,
        "timeline": samples,
        "left": left,
    }


async def stalled(kind: str, events: int, size: int) -> dict[str, Any]:
    """RSS of one server while ``events`` events of ``size`` bytes are published to a
    client that never reads (and to one that does, which paces the publisher)."""
    prefix = f"bench:stall:{uuid.uuid4().hex[:8]}:"
    channel = "soak-stalled"
    setup_django()
    from django.test import override_settings

    from django_broadcast import broadcasts

    env = {"E2E_QUEUE_SIZE": "100"}
    try:
        with server("consumer", prefix, kind=kind, env=env) as (port, pid):
            sock = _stalled_client(port, [channel])
            reader = await websockets.connect(
                f"ws://127.0.0.1:{port}/broadcast/ws/",
                origin=websockets.Origin(f"http://127.0.0.1:{port}"),
            )
            await reader.send(json.dumps({"op": "subscribe", "channel": channel}))
            await reader.recv()
            before = rss(pid)
            peak = before
            entry = {"URL": REDIS_URL, "OPTIONS": {"prefix": prefix}}
            with override_settings(BROADCAST={"default": entry}):
                bc = broadcasts["default"]
                for n in range(events):
                    await bc.apublish(channel, {"n": n, "pad": "x" * size})
                    if n % 20 == 19:  # the reading client keeps up; the stalled one never
                        while json.loads(await reader.recv()).get("data", {}).get("n") != n:
                            pass
                        peak = max(peak, rss(pid))
                await bc.aclose()
            after = rss(pid)
            await reader.close()
            sock.close()
    finally:
        delete_keys(prefix)
    return {"server": kind, "sent": events * size, "before": before, "peak": peak, "after": after}


def stalled_table(results: list[dict[str, Any]]) -> Table:
    out = Table(
        "A client that never reads",
        ["server", "MB published to it", "RSS before MiB", "peak", "grown", "verdict"],
    )
    for r in results:
        grown = r["peak"] - r["before"]
        out.add(
            r["server"], f"{r['sent'] / 1e6:,.0f}", _mib(r["before"]), _mib(r["peak"]),
            _mib(grown), "met" if grown < FLAT_MIB * 2**20 else "NOT MET",
        )  # fmt: skip
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def table(results: list[dict[str, Any]]) -> Table:
    out = Table(
        f"Soak ({machine()})",
        ["server", "clients", "s", "published", "deliveries", "subscribes", "reconnects",
         "duplicates", "RSS after warm-up MiB", "end", "max", "grown", "left subscribed",
         "verdict"],
    )  # fmt: skip
    for r in results:
        tally: Tally = r["tally"]
        grown = r["rss_max"] - r["rss_warm"]
        ok = tally.duplicates == 0 and not r["left"] and grown < FLAT_MIB * 2**20
        out.add(
            r["server"], r["clients"], int(r["seconds"]), f"{r['published']:,}",
            f"{tally.deliveries:,}", f"{tally.subscribes:,}", f"{tally.reconnects:,}",
            tally.duplicates, _mib(r["rss_warm"]), _mib(r["rss_end"]), _mib(r["rss_max"]),
            _mib(grown), len(r["left"]), "met" if ok else "NOT MET",
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--server", choices=["daphne", "uvicorn", "both"], default="both")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--pad", type=int, default=2000, help="bytes of padding per event")
    args = parser.parse_args()
    kinds = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    stalls = [asyncio.run(stalled(kind, events=3000, size=20_000)) for kind in kinds]
    print(stalled_table(stalls).render())
    results = [
        asyncio.run(soak(args.clients, args.seconds, kind, args.rate, args.channels, args.pad))
        for kind in kinds
    ]
    print(table(results).render())
    for r in results:
        points = r["timeline"][:: max(1, len(r["timeline"]) // 12)]
        print(
            f"{r['server']} RSS MiB over time: "
            + ", ".join(f"{t:.0f}s {rss / 2**20:.0f}" for t, rss in points)
        )
    for r in results:
        if r["tally"].errors:
            print(f"{r['server']}: error frames and closes seen by clients: {r['tally'].errors}")


if __name__ == "__main__":
    main()
