"""What every benchmark script shares: Django set-up, timing, and the table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def streams_url(url: str = REDIS_URL) -> str:
    """The redis+streams:// form of a redis:// URL."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}+streams://{rest}"


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


def median_rate(run: Callable[[int], float], n: int, rounds: int) -> tuple[float, float]:
    """Run ``run(n)`` (which returns elapsed seconds) ``rounds`` times.

    Return (median seconds per operation, operations per second at that median).
    """
    run(max(1, n // 10))  # warm up: connections, caches
    per_op = statistics.median(run(n) / n for _ in range(rounds))
    return per_op, 1 / per_op


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


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"
