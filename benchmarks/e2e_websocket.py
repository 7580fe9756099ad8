"""End to end over WebSocket: publish-to-browser latency and sustained deliveries.

    python -m benchmarks.e2e_websocket [--clients 200,1000,2000] [--rates 1,2,5,...]
        [--seconds 4] [--repeats 3] [--rows ceiling,anchor,...] [--baseline PATH]
    python -m benchmarks.e2e_websocket --quick       # a few clients, a second, smoke

For each row and client count, one server process serves K WebSocket clients (all
opened by this process, on uvloop where it is installed); a publisher in another
process (``benchmarks.e2e.publisher``) sends at rising rates from plain sync code,
each event stamped with its send time. Each rate runs ``--repeats`` times (3 by
default): per run, p50 and p99 publish-to-client latency, deliveries per second,
events lost (an event must reach all K clients) and the server's CPU time per
delivery (user and system, from ``/proc``). A rate is *sustained* when, over its
runs, the median p99 is under 100 ms, the median run lost nothing and the publisher
kept up (90% of the rate); a row stops after two rates in a row not sustained. Every
figure prints as "median (min-max)" over the runs.

Rows: the ceiling, a minimal ``websockets`` server (``benchmarks.e2e.ceiling``: one
Redis subscription, ``websockets.broadcast`` to every client; no Django, no ASGI);
the anchor, a plain Channels ``AsyncWebsocketConsumer`` with ``groups`` on
channels_redis's pub/sub layer published to with ``async_to_sync(group_send)``, on
daphne; the same consumer on ``BroadcastChannelLayer`` published to with
``broadcast.publish()``; and ``BroadcastWebsocketConsumer`` on daphne and on uvicorn.
A row that fails (its server does not start, say) is "failed" and a target measured
against it "not measured", never "met". ``--baseline PATH`` adds
``BroadcastWebsocketConsumer`` rows run from another checkout (the code before a
change), for a before/after in the same run.

Two diagnostic rows run the same Channels consumer without the
``aclose_old_connections()`` that Channels (4.2 and later) awaits before every handler:
a thread hop through the one thread-sensitive executor per message per consumer, which
serializes a fan-out to K consumers and bounds both layers alike. With it skipped on
both, the two layers are compared alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import websockets

from ._common import REDIS_URL, Spread, Table, delete_keys, machine, verdict
from .e2e import CASES

ROOT = Path(__file__).resolve().parent.parent
P99_LIMIT_MS = 100.0
DRAIN = 5.0
MISSES = 2  # rates in a row not sustained before a row stops
#: Set to "1" (``--deflate``), the clients offer permessage-deflate, as browsers do.
#: Off by default: uvicorn and the ceiling would accept it and compress every frame for
#: every client, daphne declines it, so the rows would not send the same bytes.
DEFLATE = "E2E_DEFLATE"
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    """One server setup of the table: what runs (``case``, see
    :data:`benchmarks.e2e.CASES`) on which server."""

    key: str
    case: str
    server: str  # daphne, uvicorn or websockets
    baseline: str | None = None

    @property
    def label(self) -> str:
        where = "" if self.server == "websockets" else f" on {self.server}"
        before = " (baseline)" if self.baseline else ""
        return f"{CASES[self.case]}{where}{before}"


ROWS = [
    Row("ceiling", "ceiling", "websockets"),
    Row("anchor", "anchor", "daphne"),
    Row("layer", "layer", "daphne"),
    Row("consumer", "consumer", "daphne"),
    Row("consumer-uvicorn", "consumer", "uvicorn"),
    Row("anchor-nodb", "anchor-nodb", "daphne"),
    Row("layer-nodb", "layer-nodb", "daphne"),
]


@dataclass
class Round:
    """What one run of one rate measured."""

    rate: float
    sent: int = 0
    achieved: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    clients: int = 0
    cpu_s: float = 0.0  # the server's CPU time while it delivered this run

    @property
    def deliveries_per_s(self) -> float:
        return self.achieved * self.clients

    @property
    def cpu_us_per_delivery(self) -> float:
        delivered = self.sent * self.clients - self.lost
        return self.cpu_s * 1e6 / delivered if delivered > 0 else float("inf")

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("inf")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Rate:
    """The runs of one rate of one row."""

    rate: float
    runs: list[Round]

    def spread(self, figure: Callable[[Round], float]) -> Spread:
        return Spread.of([figure(run) for run in self.runs])

    @property
    def sustained(self) -> bool:
        median = statistics.median
        return (
            median(run.percentile(0.99) for run in self.runs) < P99_LIMIT_MS
            and median(run.lost for run in self.runs) == 0
            and median(run.achieved for run in self.runs) >= 0.9 * self.rate
        )

    @property
    def deliveries_per_s(self) -> float:
        return self.spread(lambda run: run.deliveries_per_s).median


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def case_env(case: str, prefix: str, baseline: str | None = None) -> dict[str, str]:
    """The environment of a case's server and publisher processes (with
    ``baseline``, the package is imported from that checkout)."""
    path = str(ROOT) if baseline is None else os.pathsep.join([baseline, str(ROOT)])
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.e2e.settings",
        "E2E_CASE": case,
        "E2E_PREFIX": prefix,
        "REDIS_URL": REDIS_URL,
        "PYTHONPATH": path,
    }


@contextmanager
def server(
    case: str,
    prefix: str,
    kind: str = "daphne",
    env: dict[str, str] | None = None,
    baseline: str | None = None,
) -> Iterator[tuple[int, int]]:
    """A daphne, uvicorn or (for the ceiling) ``websockets`` process serving
    ``case``; yields (port, pid)."""
    port = _free_port()
    app = "benchmarks.e2e.asgi:application"
    if kind == "websockets":
        command = [sys.executable, "-m", "benchmarks.e2e.ceiling", str(port)]
    elif kind == "daphne":
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]
    else:
        command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--lifespan", "auto"]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=baseline or ROOT, env={**case_env(case, prefix, baseline), **(env or {})},
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


class _Lean(asyncio.Protocol):
    """The client side of one WebSocket, kept as cheap as can be, so that the clients
    are not what limits the servers: the handshake, then frames parsed by hand (a
    server's frames are not masked), pings answered, text frames handed on."""

    def __init__(self, request: bytes, on_text: Callable[[bytes], None]) -> None:
        self.request = request
        self.on_text = on_text
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))

    def send(self, opcode: int, payload: bytes) -> None:
        """A client frame: masked, with a mask of zeros (allowed, and nothing to do)."""
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + bytes(4) + payload)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.opened.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buffer[: buffer.find(b"\r\n")]:
                self.opened.set_exception(ConnectionError(bytes(buffer[:end]).decode()))
                return
            del buffer[: end + 4]
            self.opened.set_result(None)
        start = 0
        size = len(buffer)
        while size - start >= 2:
            opcode, length = buffer[start] & 0x0F, buffer[start + 1] & 0x7F
            head = 2
            if length == 126:
                head, length = 4, int.from_bytes(buffer[start + 2 : start + 4], "big")
            elif length == 127:
                head, length = 10, int.from_bytes(buffer[start + 2 : start + 10], "big")
            if size - start < head + length:
                break
            payload = bytes(buffer[start + head : start + head + length])
            start += head + length
            if opcode == 1:
                self.on_text(payload)
            elif opcode == 9:  # ping
                self.send(10, payload)
            elif opcode == 8 and self.transport is not None:  # close
                self.transport.close()
        del buffer[:start]


class Client:
    """One WebSocket client: connects, subscribes, records each event's latency."""

    def __init__(self, case: str, port: int) -> None:
        self.case = case
        self.port = port
        self.path = "/broadcast/ws/" if case == "consumer" else "/bench/"
        self.received: dict[int, float] = {}  # n -> latency in ms
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.protocol: _Lean | None = None
        self.connection: websockets.ClientConnection | None = None  # with --deflate
        self.task: asyncio.Task[None] | None = None

    def _take(self, text: bytes | str) -> None:
        now = time.time_ns()
        frame = json.loads(text)
        if self.case == "consumer":
            if frame.get("op") != "event":
                self.replies.put_nowait(frame)
                return
            frame = frame["data"]
        if frame["n"] >= 0:
            self.received[frame["n"]] = (now - frame["t"]) / 1e6

    async def connect(self) -> None:
        subscribe = json.dumps({"op": "subscribe", "channel": "bench"})
        if os.environ.get(DEFLATE) == "1":  # the library's client, which can inflate
            url = f"ws://127.0.0.1:{self.port}{self.path}"
            origin = websockets.Origin(f"http://127.0.0.1:{self.port}")
            self.connection = await websockets.connect(
                url, origin=origin, max_queue=None, open_timeout=30, compression="deflate"
            )
            self.task = asyncio.get_running_loop().create_task(self._read())
            if self.case == "consumer":
                await self.connection.send(subscribe)
        else:
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{self.port}\r\n\r\n"
            )
            loop = asyncio.get_running_loop()
            _, self.protocol = await loop.create_connection(
                lambda: _Lean(request.encode(), self._take), "127.0.0.1", self.port
            )
            await asyncio.wait_for(self.protocol.opened, 30)
            if self.case == "consumer":
                self.protocol.send(1, subscribe.encode())
        if self.case == "consumer":
            reply = await asyncio.wait_for(self.replies.get(), 30)
            if reply.get("op") != "subscribed":
                raise RuntimeError(f"subscribe refused: {reply}")

    async def _read(self) -> None:
        assert self.connection is not None
        async for text in self.connection:
            self._take(text)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.connection is not None:
            await self.connection.close()
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.send(8, (1000).to_bytes(2, "big"))
            self.protocol.transport.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _run_rate(
    row: Row, prefix: str, clients: list[Client], pid: int, rate: float, seconds: float
) -> Round:
    for client in clients:
        client.received.clear()
    cpu = cpu_seconds(pid)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.e2e.publisher", str(rate), str(seconds),
        cwd=ROOT, env=case_env(row.case, prefix, row.baseline), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), seconds * 20 + 60)
    if proc.returncode:
        raise RuntimeError(f"publisher of row {row.key!r} failed")
    report = json.loads(out)
    result = Round(rate, report["sent"], report["rate"], clients=len(clients))
    deadline = time.monotonic() + DRAIN
    while time.monotonic() < deadline:
        if all(len(c.received) >= result.sent for c in clients):
            break
        await asyncio.sleep(0.05)
    result.cpu_s = cpu_seconds(pid) - cpu
    for client in clients:
        result.latencies_ms.extend(client.received.values())
        result.lost += result.sent - len(client.received)
    return result


async def _run_row(
    row: Row, port: int, pid: int, prefix: str, count: int, rates: list[float],
    seconds: float, repeats: int,
) -> list[Rate]:  # fmt: skip
    clients = [Client(row.case, port) for _ in range(count)]
    try:
        for client in clients:
            await client.connect()
        ladder: list[Rate] = []
        misses = 0
        for rate in rates:
            runs = [
                await _run_rate(row, prefix, clients, pid, rate, seconds) for _ in range(repeats)
            ]
            ladder.append(Rate(rate, runs))
            misses = 0 if ladder[-1].sustained else misses + 1
            if misses >= MISSES:
                break
        return ladder
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the clients' side on uvloop where it is installed: the clients must not be
    what limits the servers."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in the test extras
        return asyncio.run(main)
    return uvloop.run(main)


def _measure(
    rows: list[Row], counts: list[int], rates: list[float], seconds: float, repeats: int
) -> dict[tuple[str, int], list[Rate] | str]:
    results: dict[tuple[str, int], list[Rate] | str] = {}
    prefix = f"bench:{uuid.uuid4().hex[:6]}:"
    try:
        for count in counts:
            for row in rows:
                try:
                    with server(row.case, prefix, row.server, baseline=row.baseline) as (
                        port,
                        pid,
                    ):
                        results[row.key, count] = run_loop(
                            _run_row(row, port, pid, prefix, count, rates, seconds, repeats)
                        )
                except Exception as exc:  # a row that fails is reported, not fatal
                    results[row.key, count] = f"failed ({str(exc)[:60] or type(exc).__name__})"
    finally:
        delete_keys(prefix)
    return results


def _best(ladder: list[Rate] | str | None) -> float | None:
    """The highest sustained deliveries/s of a row (0 where no rate was); None when
    the row failed or did not run."""
    if ladder is None or isinstance(ladder, str):
        return None
    return max((rate.deliveries_per_s for rate in ladder if rate.sustained), default=0.0)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:,.2f}x"


def run(
    clients: int | list[int],
    rates: list[float],
    seconds: float,
    repeats: int = 3,
    rows: list[Row] | None = None,
) -> Table:
    """Measure every row at every client count; return the table (used by the
    smoke test)."""
    counts = [clients] if isinstance(clients, int) else clients
    rows = ROWS if rows is None else rows
    results = _measure(rows, counts, rates, seconds, repeats)
    table = Table(
        f"End to end over WebSocket: K clients on one server process, publisher in "
        f"another, {seconds:g} s per run, {repeats} run(s) per rate, median (min-max) "
        f"({machine()})",
        ["row", "K", "events/s", "deliveries/s", "p50 ms", "p99 ms", "lost",
         "server us/delivery", "sustained"],
    )  # fmt: skip
    for count in counts:
        for row in rows:
            ladder = results[row.key, count]
            if isinstance(ladder, str):
                table.add(row.label, count, "", "", "", "", "", "", ladder)
                continue
            for rate in ladder:
                table.add(
                    row.label,
                    count,
                    f"{rate.rate:g} (sent {rate.spread(lambda r: r.achieved).format()})",
                    rate.spread(lambda r: r.deliveries_per_s).format(),
                    rate.spread(lambda r: r.percentile(0.5)).format(",.1f"),
                    rate.spread(lambda r: r.percentile(0.99)).format(",.1f"),
                    rate.spread(lambda r: r.lost).format(),
                    rate.spread(lambda r: r.cpu_us_per_delivery).format(",.1f"),
                    "yes" if rate.sustained else "no",
                )
    keys = {row.key for row in rows}
    for count in counts:
        best = {row.key: _best(results.get((row.key, count))) for row in rows}
        anchor, ceiling = best.get("anchor"), best.get("ceiling")
        for row in rows:
            value = best[row.key]
            shown = "failed" if value is None else f"{value:,.0f}"
            ratios = f"{_ratio(value, anchor)} anchor, {_ratio(value, ceiling)} ceiling"
            table.add(f"highest sustained: {row.label}", count, "", shown, "", "", "", "", ratios)
        if {"anchor", "layer", "consumer"} <= keys:
            ours = max(best["layer"] or 0.0, best["consumer"] or 0.0)
            table.add(
                "target: >= 3x the anchor's sustained deliveries/s at p99 < 100 ms", count,
                "", "", "", "", "", "", verdict(ours >= 3 * anchor if anchor else None),
            )  # fmt: skip
        for key, server_name in (("consumer-uvicorn", "uvicorn"), ("consumer", "daphne")):
            if {"ceiling", key} <= keys:
                value = best[key] or 0.0
                table.add(
                    f"target: BroadcastWebsocketConsumer on {server_name} >= 0.5x the ceiling",
                    count, "", "", "", "", "", "",
                    verdict(value >= 0.5 * ceiling if ceiling else None),
                )  # fmt: skip
        if {"anchor-nodb", "layer-nodb"} <= keys:
            table.add(
                "layers alone (diagnostic rows): BroadcastChannelLayer / channels_redis pubsub",
                count, "", "", "", "", "", "", _ratio(best["layer-nodb"], best["anchor-nodb"]),
            )  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="200,1000,2000")
    parser.add_argument("--rates", default="1,2,3,5,8,10,15,20,25,30,40,50,75,100,150,200,300")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default=",".join(row.key for row in ROWS))
    parser.add_argument("--baseline", help="also run BroadcastWebsocketConsumer from this checkout")
    parser.add_argument("--quick", action="store_true", help="5 clients, rates 5,10, 1 s")
    parser.add_argument(
        "--deflate", action="store_true", help="clients offer permessage-deflate, as browsers do"
    )
    args = parser.parse_args()
    if args.deflate:
        os.environ[DEFLATE] = "1"
    chosen = args.rows.split(",")
    rows = [row for row in ROWS if row.key in chosen]
    if args.baseline:
        path = str(Path(args.baseline).resolve())
        rows += [
            Row("baseline", "consumer", "daphne", path),
            Row("baseline-uvicorn", "consumer", "uvicorn", path),
        ]
    if args.quick:
        print(run(5, [5.0, 10.0], 1.0, repeats=1, rows=rows).render())
    else:
        counts = [int(c) for c in args.clients.split(",")]
        rates = [float(r) for r in args.rates.split(",")]
        print(run(counts, rates, args.seconds, args.repeats, rows).render())


if __name__ == "__main__":
    main()
