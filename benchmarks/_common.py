"""What every benchmark script shares: Django set-up, timing, and the table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def streams_url(url: str = REDIS_URL) -> str:
    """The redis+streams:// form of a redis:// URL."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}+streams://{rest}"


@contextmanager
def cluster_url() -> Iterator[str | None]:
    """A ``redis+cluster://`` URL for the cluster rows: ``REDIS_CLUSTER_URL`` where it
    is set, else a local three-master cluster started for the run (and stopped after
    it), else None where redis-server or redis-cli is missing."""
    given = os.environ.get("REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    from tests.brokers import PrivateCluster, reachable_binaries

    if not reachable_binaries():
        yield None
        return
    cluster = PrivateCluster()
    try:
        yield cluster.url.replace("redis://", "redis+cluster://", 1)
    finally:
        cluster.stop()


#: The row that stands for the cluster rows where no cluster could be had.
NO_CLUSTER = (
    "redis+cluster:// skipped: set REDIS_CLUSTER_URL, or put redis-server and redis-cli on PATH"
)


def delete_keys(prefix: str) -> None:
    """Delete every Redis key a run wrote (each run writes under its own prefix)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def nats_prefix(prefix: str) -> str:
    """The NATS subject prefix of a run's key prefix (``bench:ab12:`` -> ``bench-ab12``)."""
    return prefix.strip(":").replace(":", "-")


def delete_nats_stream(prefix: str) -> None:
    """Delete the JetStream streams a run made on ``NATS_URL`` (its events' and its
    queues', where it made them)."""
    import asyncio
    import contextlib

    import nats
    import nats.js.errors

    async def delete() -> None:
        client = await nats.connect(NATS_URL)
        try:
            for stream in (nats_prefix(prefix), f"{nats_prefix(prefix)}_queues"):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await client.jetstream().delete_stream(stream)
        finally:
            await client.close()

    asyncio.run(delete())


def delete_rows(prefix: str) -> None:
    """Delete every PostgreSQL row a run wrote (each run writes under its own prefix)."""
    import psycopg

    from django_broadcast.backends.postgres import schema

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for table in (schema.TABLE, schema.TRIMMED):
            conn.execute(f"DELETE FROM {table} WHERE starts_with(channel, %s)".encode(), [prefix])
        conn.execute(f"DELETE FROM {schema.QUEUED} WHERE starts_with(queue, %s)".encode(), [prefix])


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def setup_django() -> None:
    """Configure a minimal Django for a benchmark process, unless one is configured
    (as under pytest); scripts then set ``BROADCAST`` with ``override_settings``."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            USE_TZ=True,
            INSTALLED_APPS=["django_broadcast"],
            DATABASES={},
            SILENCED_SYSTEM_CHECKS=["django_broadcast.W001"],
        )
        django.setup()


def interleaved_rates(
    cases: Sequence[tuple[str, Callable[[], Any], int]], rounds: int
) -> dict[str, tuple[float, float]]:
    """Time each case's ``n`` calls once per round, the cases taking turns in every
    round, so that a change in the machine's load touches every case alike.

    Return, per case, (median seconds per call, calls per second at that median).
    """
    for _label, fn, n in cases:
        timed(fn, max(1, n // 10))  # warm up: connections, caches
    samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(rounds):
        for label, fn, n in cases:
            samples[label].append(timed(fn, n) / n)
    medians = {label: statistics.median(values) for label, values in samples.items()}
    return {label: (per_op, 1 / per_op) for label, per_op in medians.items()}


def timed(fn: Callable[[], Any], n: int) -> float:
    """Call ``fn`` ``n`` times; return the elapsed seconds."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


@dataclass
class Table:
    """A plain-text table, printed the same way by every benchmark."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([self.title, rule, line(self.columns), rule, *map(line, self.rows), rule])


def machine() -> str:
    """One line naming the machine, for the record."""
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one figure: the median, printed with the least and
    the greatest beside it, so a reader sees how far one run may stray."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one measurement")
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self, spec: str = ",.0f") -> str:
        """``median (min-max)``, each formatted with ``spec``."""
        if len(self.values) == 1:
            return format(self.median, spec)
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"


def verdict(met: bool | None) -> str:
    """How a target fared: None when its anchor could not be measured, never "met"."""
    if met is None:
        return "not measured"
    return "met" if met else "NOT MET"
